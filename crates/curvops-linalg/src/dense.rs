//! A dense matrix as a linear operator.

use crate::{LinearOperator, Structure};
use curvops_tensor::{threads, Float};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef};

/// A dense `m × n` matrix (faer `Mat`) with declared structure.
#[derive(Clone, Debug)]
pub struct DenseOp<T: Float> {
    /// The matrix.
    pub mat: Mat<T>,
    /// Declared structure (not verified).
    pub structure: Structure,
}

impl<T: Float> DenseOp<T> {
    /// A general dense operator.
    pub fn new(mat: Mat<T>) -> Self {
        Self { mat, structure: Structure::GENERAL }
    }
    /// A dense operator with declared structure.
    pub fn with_structure(mat: Mat<T>, structure: Structure) -> Self {
        Self { mat, structure }
    }
}

impl<T: Float> LinearOperator<T> for DenseOp<T> {
    fn nrows(&self) -> usize {
        self.mat.nrows()
    }
    fn ncols(&self) -> usize {
        self.mat.ncols()
    }
    fn structure(&self) -> Structure {
        self.structure
    }
    fn describe(&self) -> String {
        format!("dense {}x{}", self.mat.nrows(), self.mat.ncols())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) {
        matmul(out, Accum::Replace, self.mat.as_ref(), rhs, T::one(), threads::par());
    }
    fn has_transpose(&self) -> bool {
        true
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), crate::LinalgError> {
        matmul(out, Accum::Replace, self.mat.transpose(), rhs, T::one(), threads::par());
        Ok(())
    }
}
