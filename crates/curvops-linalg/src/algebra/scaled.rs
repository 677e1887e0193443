//! Scalar multiples `c·A`.

use crate::decomp::Eigh;
use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{Mat, MatMut, MatRef};

/// `c · A`: structure of `A` (PSD only if `c ≥ 0`).
///
/// Exact operations come from `A`: `tr(cA) = c·tr A`, `diag(cA) = c·diag A`,
/// `log|det(cA + sI)| = n·log|c| + log|det(A + (s/c)I)|`, `(cA + sI)⁻¹ = (A + (s/c)I)⁻¹ / c`,
/// `eigh(cA) = (c·λ, V)`. For `c = 0` the operator is treated as the zero matrix.
#[derive(Clone, Debug)]
pub struct ScaledOp<T: Float, A> {
    op: A,
    c: T,
}

impl<T: Float, A: LinearOperator<T>> ScaledOp<T, A> {
    /// `c · op`.
    pub fn new(op: A, c: T) -> Self {
        Self { op, c }
    }
    /// The scalar.
    pub fn scalar(&self) -> T {
        self.c
    }
    /// The scaled operator.
    pub fn inner(&self) -> &A {
        &self.op
    }
    fn scale(&self, mut out: MatMut<'_, T>) {
        for j in 0..out.ncols() {
            for i in 0..out.nrows() {
                out[(i, j)] = self.c * out[(i, j)];
            }
        }
    }
}

impl<T: Float, A: LinearOperator<T>> LinearOperator<T> for ScaledOp<T, A> {
    fn nrows(&self) -> usize {
        self.op.nrows()
    }
    fn ncols(&self) -> usize {
        self.op.ncols()
    }
    fn structure(&self) -> Structure {
        let s = self.op.structure();
        Structure { symmetric: s.symmetric, psd: s.psd && self.c >= T::zero() }
    }
    fn describe(&self) -> String {
        format!("{}·({})", self.c, self.op.describe())
    }
    fn apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.apply(out.as_mut(), rhs)?;
        self.scale(out);
        Ok(())
    }
    fn has_transpose(&self) -> bool {
        self.op.has_transpose()
    }
    fn apply_transpose(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.apply_transpose(out.as_mut(), rhs)?;
        self.scale(out);
        Ok(())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        Ok(self.c * self.op.trace()?)
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        Ok(self.op.diagonal()?.into_iter().map(|x| self.c * x).collect())
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        let n = self.op.nrows();
        if self.c == T::zero() {
            // 0·A + sI = sI
            return Eigh { values: vec![], vectors: Mat::zeros(n, 0), rest: shift }.logdet(&self.describe());
        }
        Ok(T::of(n as f64) * self.c.abs().ln() + self.op.logdet_shifted(shift / self.c)?)
    }
    fn solve_shifted(&self, shift: T, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        if self.c == T::zero() {
            let n = self.op.nrows();
            let e = Eigh { values: vec![], vectors: Mat::zeros(n, 0), rest: shift };
            return e.solve(out, rhs, &self.describe());
        }
        self.op.solve_shifted(shift / self.c, out.as_mut(), rhs)?;
        let inv = self.c.recip();
        for j in 0..out.ncols() {
            for i in 0..out.nrows() {
                out[(i, j)] = inv * out[(i, j)];
            }
        }
        Ok(())
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        if self.c == T::zero() && self.op.structure().symmetric {
            let n = self.op.nrows();
            return Ok(Eigh { values: vec![], vectors: Mat::zeros(n, 0), rest: T::zero() });
        }
        Ok(self.op.eigh()?.scaled(self.c))
    }
}
