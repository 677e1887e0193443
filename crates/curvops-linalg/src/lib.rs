//! Matrix-free linear algebra for curvops.
//!
//! The core is the [`LinearOperator`] trait: an `m × n` matrix that can be applied to a block
//! of `K` columns at once (`out = A · X`), with [`Structure`] tags (symmetric, positive
//! semi-definite) that algorithms check. Blocks are faer column-major views (`MatRef`/`MatMut`),
//! so a block of `K` parameter-space vectors of length `D` is `K` contiguous vectors.
//!
//! [`FaerOp`] adapts any `LinearOperator` to faer's `LinOp`/`BiLinOp`, so faer's matrix-free
//! conjugate gradients, LSMR and Krylov–Schur eigensolvers run on it directly.
//!
//! This crate knows nothing about neural networks.

pub mod dense;
pub mod operator;

pub use dense::DenseOp;
pub use operator::{FaerOp, LinalgError, LinearOperator, Structure};
