//! Operator algebra: building operators from operators, with structure tags that carry
//! through and exact operations where the structure gives them.
//!
//! | operator | matrix | structure | exact operations |
//! |---|---|---|---|
//! | [`IdentityOp`] | `I` | PSD | all |
//! | [`DiagonalOp`] | `diag(d)` | symmetric; PSD if `d ≥ 0` | all |
//! | [`LowRankOp`] | `U diag(λ) Uᵀ` | symmetric; PSD if `λ ≥ 0` | all (eigen of `R diag(λ) Rᵀ` from `U = QR`); logdet/solve need a shift when rank < n |
//! | [`crate::DenseOp`] | `M` | declared | all (faer Cholesky / LU / self-adjoint eigen) |
//! | [`SumOp`] | `A + B` | symmetric if both; PSD if both | trace, diagonal |
//! | [`ScaledOp`] | `c·A` | as `A`; PSD if `c ≥ 0` | those of `A`, rescaled |
//! | [`DampedOp`] | `A + λI` | as `A`; PSD if `λ ≥ 0` | those of `A` (shifts are passed down) |
//! | [`ComposeOp`] | `A·B` | declared (general by default) | logdet, solve (square factors) |
//! | [`TransposeOp`] | `Aᵀ` | as `A` | trace, diagonal, logdet; solve/eigh if symmetric |
//! | [`BlockDiagOp`] | `diag(A₁, …, A_L)` | symmetric/PSD if all blocks are | per block |
//! | [`KronOp`] | `A ⊗ B` | symmetric/PSD if both factors are | trace, diagonal, logdet, solve, eigh, also `+ λI` (from the factors' eigendecompositions) |
//! | [`SubmatrixOp`] | `A[rows, cols]` | as `A` when `rows == cols` | trace, diagonal (principal) |
//! | [`BlockRestrictOp`] | block diagonal of `A` | as `A` | trace, diagonal; dense blocks on request |
//!
//! Everything else returns [`crate::LinalgError::Unsupported`] naming the operator
//! (its `describe()`) and the operation.
//!
//! Children are generic (`SumOp<A, B>`), so nested operators are zero-cost; use
//! `Box<dyn LinearOperator<T>>` children for operators chosen at run time, and `&O` to borrow.

mod block_diag;
mod compose;
mod damped;
mod diagonal;
mod identity;
mod kron;
mod lowrank;
mod restrict;
mod scaled;
mod submatrix;
mod sum;
mod transpose;

pub use block_diag::BlockDiagOp;
pub use compose::ComposeOp;
pub use damped::DampedOp;
pub use diagonal::DiagonalOp;
pub use identity::IdentityOp;
pub use kron::KronOp;
pub use lowrank::LowRankOp;
pub use restrict::BlockRestrictOp;
pub use scaled::ScaledOp;
pub use submatrix::SubmatrixOp;
pub use sum::SumOp;
pub use transpose::TransposeOp;

use crate::{LinalgError, LinearOperator};
use curvops_tensor::Float;

/// Fluent constructors for the algebra, available on every sized operator.
pub trait OperatorExt<T: Float>: LinearOperator<T> + Sized {
    /// `c · A`.
    fn scaled(self, c: T) -> ScaledOp<T, Self> {
        ScaledOp::new(self, c)
    }
    /// `A + λ·I` (square operators).
    fn damped(self, lambda: T) -> Result<DampedOp<T, Self>, LinalgError> {
        DampedOp::new(self, lambda)
    }
    /// `A + B`.
    fn plus<B: LinearOperator<T>>(self, b: B) -> Result<SumOp<Self, B>, LinalgError> {
        SumOp::new(self, b)
    }
    /// `A · B`.
    fn compose<B: LinearOperator<T>>(self, b: B) -> Result<ComposeOp<Self, B>, LinalgError> {
        ComposeOp::new(self, b)
    }
    /// `Aᵀ`.
    fn transposed(self) -> Result<TransposeOp<Self>, LinalgError> {
        TransposeOp::new(self)
    }
    /// `A ⊗ B`.
    fn kron<B: LinearOperator<T>>(self, b: B) -> KronOp<T, Self, B> {
        KronOp::new(self, b)
    }
    /// `A[rows, cols]`.
    fn submatrix(self, rows: Vec<usize>, cols: Vec<usize>) -> Result<SubmatrixOp<Self>, LinalgError> {
        SubmatrixOp::new(self, rows, cols)
    }
    /// Boxed as a trait object (for heterogeneous collections, e.g. block-diagonal blocks).
    fn boxed<'a>(self) -> Box<dyn LinearOperator<T> + 'a>
    where
        Self: 'a,
    {
        Box::new(self)
    }
}

impl<T: Float, O: LinearOperator<T> + Sized> OperatorExt<T> for O {}
