//! A dense matrix as a linear operator.

use crate::decomp::{dense_logdet, dense_solve, Eigh};
use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::gemm::matmul;
use curvops_tensor::{threads, Float};
use faer::{Accum, Mat, MatMut, MatRef};

/// A dense `m × n` matrix (faer `Mat`) with declared structure.
///
/// Exact operations (faer's dense decompositions, computed on each call — nothing is cached,
/// since `mat` is public):
/// * `trace`, `diagonal`: read off;
/// * `logdet_shifted(s)`, `solve_shifted(s)`: Cholesky of `M + s·I` when tagged PSD and
///   `s ≥ 0` (a failure reports the column, "not positive definite at column k"), LU with
///   partial pivoting otherwise (log |det|; a zero pivot is a [`LinalgError::Singular`]);
/// * `eigh`: faer's self-adjoint eigensolver (symmetric tag required).
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
    /// Materializes any operator (`ncols` matvecs, in blocks of 64 unit vectors), keeping its
    /// structure tags — e.g. to get exact logdet/solve/eigh of a small submatrix.
    /// Errors when an application of `op` fails.
    pub fn from_operator<O: LinearOperator<T> + ?Sized>(op: &O) -> Result<Self, LinalgError> {
        Ok(Self { mat: op.to_dense()?, structure: op.structure() })
    }
    fn square(&self, what: &'static str) -> Result<usize, LinalgError> {
        if self.mat.nrows() != self.mat.ncols() {
            return Err(LinalgError::Dimension(format!("{what} of non-square {}", self.describe())));
        }
        Ok(self.mat.nrows())
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
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        matmul(out, Accum::Replace, self.mat.as_ref(), rhs, T::one(), threads::par());
        Ok(())
    }
    fn has_transpose(&self) -> bool {
        true
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), crate::LinalgError> {
        matmul(out, Accum::Replace, self.mat.transpose(), rhs, T::one(), threads::par());
        Ok(())
    }
    fn to_dense(&self) -> Result<Mat<T>, LinalgError> {
        Ok(self.mat.clone())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        let n = self.square("trace")?;
        Ok((0..n).map(|i| self.mat[(i, i)]).sum())
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        let n = self.square("diagonal")?;
        Ok((0..n).map(|i| self.mat[(i, i)]).collect())
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.square("logdet")?;
        let pd = self.structure.psd && shift >= T::zero();
        dense_logdet(self.mat.as_ref(), shift, pd, &self.describe())
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.square("solve")?;
        let pd = self.structure.psd && shift >= T::zero();
        dense_solve(self.mat.as_ref(), shift, pd, out, rhs, &self.describe())
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        self.square("eigh")?;
        if !self.structure.symmetric {
            return Err(LinalgError::Structure { needed: "symmetric", structure: self.structure });
        }
        Eigh::from_dense(self.mat.as_ref())
    }
}
