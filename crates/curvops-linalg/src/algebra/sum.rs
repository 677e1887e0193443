//! Sums `A + B`.

use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{Mat, MatMut, MatRef};

/// `A + B` (same shape): symmetric if both are, PSD if both are.
///
/// Exact: `tr(A + B) = tr A + tr B`, `diag(A + B) = diag A + diag B`. Log-determinant, solve
/// and eigendecomposition of a general sum have no structure to use (use the iterative
/// solvers and eigensolvers); for `A + λI` use [`crate::algebra::DampedOp`], which does.
#[derive(Clone, Debug)]
pub struct SumOp<A, B> {
    a: A,
    b: B,
}

impl<A, B> SumOp<A, B> {
    /// `a + b`; the shapes must agree.
    pub fn new<T: Float>(a: A, b: B) -> Result<Self, LinalgError>
    where
        A: LinearOperator<T>,
        B: LinearOperator<T>,
    {
        if a.nrows() != b.nrows() || a.ncols() != b.ncols() {
            return Err(LinalgError::Dimension(format!(
                "sum of {} ({}x{}) and {} ({}x{})",
                a.describe(),
                a.nrows(),
                a.ncols(),
                b.describe(),
                b.nrows(),
                b.ncols()
            )));
        }
        Ok(Self { a, b })
    }
    /// The two terms.
    pub fn terms(&self) -> (&A, &B) {
        (&self.a, &self.b)
    }
}

fn add_into<T: Float>(mut out: MatMut<'_, T>, tmp: &Mat<T>) {
    for j in 0..out.ncols() {
        for i in 0..out.nrows() {
            out[(i, j)] += tmp[(i, j)];
        }
    }
}

impl<T: Float, A: LinearOperator<T>, B: LinearOperator<T>> LinearOperator<T> for SumOp<A, B> {
    fn nrows(&self) -> usize {
        self.a.nrows()
    }
    fn ncols(&self) -> usize {
        self.a.ncols()
    }
    fn structure(&self) -> Structure {
        let (sa, sb) = (self.a.structure(), self.b.structure());
        Structure { symmetric: sa.symmetric && sb.symmetric, psd: sa.psd && sb.psd }
    }
    fn describe(&self) -> String {
        format!("({}) + ({})", self.a.describe(), self.b.describe())
    }
    fn apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.a.apply(out.as_mut(), rhs)?;
        let mut tmp = Mat::<T>::zeros(self.nrows(), rhs.ncols());
        self.b.apply(tmp.as_mut(), rhs)?;
        add_into(out, &tmp);
        Ok(())
    }
    fn has_transpose(&self) -> bool {
        self.a.has_transpose() && self.b.has_transpose()
    }
    fn apply_transpose(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.a.apply_transpose(out.as_mut(), rhs)?;
        let mut tmp = Mat::<T>::zeros(self.ncols(), rhs.ncols());
        self.b.apply_transpose(tmp.as_mut(), rhs)?;
        add_into(out, &tmp);
        Ok(())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        Ok(self.a.trace()? + self.b.trace()?)
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        let (da, db) = (self.a.diagonal()?, self.b.diagonal()?);
        Ok(da.into_iter().zip(db).map(|(x, y)| x + y).collect())
    }
}
