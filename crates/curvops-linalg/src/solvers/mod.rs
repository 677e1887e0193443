//! Iterative solvers on linear operators, inverse operators, and `damped_solve`.
//!
//! | solver | system | needs | notes |
//! |---|---|---|---|
//! | [`cg()`] | `Ax = b` | symmetric, positive definite | block (all active columns in one apply), preconditioned; error names column and iteration when `pᵀAp ≤ 0` |
//! | [`minres()`] | `Ax = b` | symmetric (indefinite allowed) | Paige–Saunders, block-applied |
//! | [`lsmr()`] | `min ‖Ax − b‖` | transpose | faer's block LSMR through [`crate::FaerOp`] |
//! | [`neumann()`] | `Ax = b` | spectrum of `αA` in `(0, 2)` | truncated series `α Σ_{i<k} (I − αA)ⁱ b`, divergence check |
//!
//! Every solver works on a block of right-hand sides and reports per-column relative
//! residuals `‖b − Ax‖/‖b‖` (LSMR: of the normal equations, as faer reports it), iterations
//! and matvecs. [`InverseOp`] wraps a solver as a [`crate::LinearOperator`] whose `apply` solves;
//! [`damped_solve`] solves `(A + λI)x = b` with the best available method.

mod cg;
mod inverse;
mod lsmr;
mod minres;
mod neumann;

pub use cg::{cg, CgOptions};
pub use inverse::{damped_solve, solve_with, InverseOp, SolveMethod};
pub use lsmr::{lsmr, LsmrOptions};
pub use minres::{minres, MinresOptions};
pub use neumann::{neumann, NeumannOptions};

/// What a solver did.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveInfo {
    /// Iterations (of the slowest column).
    pub iterations: usize,
    /// Operator applications (columns).
    pub matvecs: usize,
    /// Final relative residual of each column.
    pub rel_residuals: Vec<f64>,
}
