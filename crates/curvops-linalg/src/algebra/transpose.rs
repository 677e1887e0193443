//! Transposes (adjoints) `Aᵀ`.

use crate::decomp::Eigh;
use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{MatMut, MatRef};

/// `Aᵀ` (the adjoint, for real scalars), for operators with a transpose.
///
/// Exact from `A`: `tr Aᵀ = tr A`, `diag Aᵀ = diag A`, `det(Aᵀ + sI) = det(A + sI)`; solve and
/// eigendecomposition when `A` is symmetric (then `Aᵀ = A`).
#[derive(Clone, Debug)]
pub struct TransposeOp<A> {
    op: A,
}

impl<A> TransposeOp<A> {
    /// `opᵀ`; the operator must have a transpose.
    pub fn new<T: Float>(op: A) -> Result<Self, LinalgError>
    where
        A: LinearOperator<T>,
    {
        if !op.has_transpose() {
            return Err(LinalgError::unsupported("transpose", op.describe()));
        }
        Ok(Self { op })
    }
    /// The operator `A` whose transpose this is.
    pub fn inner(&self) -> &A {
        &self.op
    }
}

impl<T: Float, A: LinearOperator<T>> LinearOperator<T> for TransposeOp<A> {
    fn nrows(&self) -> usize {
        self.op.ncols()
    }
    fn ncols(&self) -> usize {
        self.op.nrows()
    }
    fn structure(&self) -> Structure {
        self.op.structure()
    }
    fn describe(&self) -> String {
        format!("({})ᵀ", self.op.describe())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.apply_transpose(out, rhs)
    }
    fn has_transpose(&self) -> bool {
        true
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.apply(out, rhs)
    }
    fn trace(&self) -> Result<T, LinalgError> {
        self.op.trace()
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        self.op.diagonal()
    }
    fn logdet(&self) -> Result<T, LinalgError> {
        self.op.logdet()
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.op.logdet_shifted(shift)
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        if !self.op.structure().symmetric {
            let op = if shift == T::zero() { "solve" } else { "solve with A + λI" };
            return Err(LinalgError::unsupported(op, self.describe()));
        }
        self.op.solve_shifted(shift, out, rhs)
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        if !self.op.structure().symmetric {
            return Err(LinalgError::Structure { needed: "symmetric", structure: self.op.structure() });
        }
        self.op.eigh()
    }
}
