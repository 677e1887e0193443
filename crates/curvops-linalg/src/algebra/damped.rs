//! Damping `A + λI`.

use crate::decomp::Eigh;
use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{MatMut, MatRef};

/// `A + λ·I` (square `A`): structure of `A`, PSD if `A` is and `λ ≥ 0`.
///
/// Every exact operation is passed to `A` with the shift added: `logdet_shifted(s)` of the
/// damped operator is `A.logdet_shifted(λ + s)`, likewise `solve_shifted`; so
/// `kron + λI`, `low rank + λI`, `block diagonal + λI`, `dense + λI` are all exact.
/// `tr = tr A + nλ`, `diag = diag A + λ`, `eigh = eigh(A)` shifted by `λ`.
#[derive(Clone, Debug)]
pub struct DampedOp<T: Float, A> {
    op: A,
    lambda: T,
}

impl<T: Float, A: LinearOperator<T>> DampedOp<T, A> {
    /// `op + lambda·I`; `op` must be square.
    pub fn new(op: A, lambda: T) -> Result<Self, LinalgError> {
        crate::util::check_square(&op, "damping")?;
        Ok(Self { op, lambda })
    }
    /// The damping `λ`.
    pub fn lambda(&self) -> T {
        self.lambda
    }
    /// The undamped operator.
    pub fn inner(&self) -> &A {
        &self.op
    }
    fn add(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) {
        for j in 0..rhs.ncols() {
            for i in 0..rhs.nrows() {
                out[(i, j)] += self.lambda * rhs[(i, j)];
            }
        }
    }
}

impl<T: Float, A: LinearOperator<T>> LinearOperator<T> for DampedOp<T, A> {
    fn nrows(&self) -> usize {
        self.op.nrows()
    }
    fn ncols(&self) -> usize {
        self.op.ncols()
    }
    fn structure(&self) -> Structure {
        let s = self.op.structure();
        Structure { symmetric: s.symmetric, psd: s.psd && self.lambda >= T::zero() }
    }
    fn describe(&self) -> String {
        format!("({}) + {}·I", self.op.describe(), self.lambda)
    }
    fn apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.apply(out.as_mut(), rhs)?;
        self.add(out, rhs);
        Ok(())
    }
    fn has_transpose(&self) -> bool {
        self.op.has_transpose()
    }
    fn apply_transpose(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.apply_transpose(out.as_mut(), rhs)?;
        self.add(out, rhs);
        Ok(())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        Ok(self.op.trace()? + self.lambda * T::of(self.op.nrows() as f64))
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        Ok(self.op.diagonal()?.into_iter().map(|x| x + self.lambda).collect())
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.op.logdet_shifted(self.lambda + shift)
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.solve_shifted(self.lambda + shift, out, rhs)
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        Ok(self.op.eigh()?.shifted(self.lambda))
    }
}
