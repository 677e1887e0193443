//! Matrix-free linear algebra for curvops.
//!
//! The core is the [`LinearOperator`] trait: an `m × n` matrix that can be applied to a block
//! of `K` columns at once (`out = A · X`), with [`Structure`] tags (symmetric, positive
//! semi-definite) that algorithms check. Blocks are faer column-major views (`MatRef`/`MatMut`),
//! so a block of `K` parameter-space vectors of length `D` is `K` contiguous vectors.
//!
//! In the style of GPyTorch's `linear_operator`, the trait has a tiny core (`apply`, shape,
//! structure) plus exact operations with defaults (`trace`, `diagonal`, `logdet`,
//! `logdet_shifted`, `solve`, `solve_shifted`, `eigh`) that return
//! [`LinalgError::Unsupported`] unless a structured operator overrides them with a fast exact
//! formula. The shifted variants let `A + λI` ([`algebra::DampedOp`]) pass the damping down
//! to structured operators (Kronecker, low rank, diagonal, dense, block diagonal).
//!
//! Modules:
//! * [`algebra`]: sum, scaling, composition, transpose, damping, block diagonal, Kronecker,
//!   diagonal, low rank, identity, submatrix, block restriction; [`DenseOp`].
//! * [`eigen`]: extreme eigenpairs of symmetric operators (thick-restart Lanczos with full
//!   reorthogonalization), power (subspace) iteration as a baseline.
//! * [`slq`]: spectral densities by stochastic Lanczos quadrature.
//! * [`estimators`]: randomized trace (Hutchinson, Hutch++, XTrace), diagonal (Hutchinson,
//!   XDiag) and squared-Frobenius estimators, exact trace/diagonal by unit-vector blocks.
//! * [`solvers`]: block CG (preconditioned), MINRES, LSMR (faer's), truncated Neumann series,
//!   inverse operators and `damped_solve`.
//!
//! [`FaerOp`] adapts any `LinearOperator` to faer's `LinOp`/`BiLinOp`, so faer's matrix-free
//! algorithms run on it directly (LSMR does, see [`solvers::lsmr`]). Why the others are ours:
//! faer 0.24's Krylov–Schur `partial_self_adjoint_eigen` only finds the largest-*magnitude*
//! eigenvalues with an *absolute* residual tolerance, while curvops needs largest/smallest
//! algebraic eigenvalues with the relative criterion `‖Au − λu‖ ≤ τ|λ|`; faer's CG reports
//! a non-positive-definite operator without the column and iteration; faer has no MINRES,
//! Neumann series, SLQ or randomized estimators.
//!
//! This crate knows nothing about neural networks.

#![warn(missing_docs)]

pub mod algebra;
pub mod counting;
pub mod decomp;
pub mod dense;
pub mod eigen;
pub mod estimators;
pub mod operator;
pub mod slq;
pub mod solvers;
mod util;

pub use algebra::{
    BlockDiagOp, BlockRestrictOp, ComposeOp, DampedOp, DiagonalOp, IdentityOp, KronOp, LowRankOp, OperatorExt,
    ScaledOp, SubmatrixOp, SumOp, TransposeOp,
};
pub use counting::CountingOp;
pub use decomp::Eigh;
pub use dense::DenseOp;
pub use operator::{ErrorSource, FaerOp, LinalgError, LinearOperator, Structure};
