//! Submatrices `A[rows, cols]` for arbitrary index sets.

use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{Mat, MatMut, MatRef};

/// The submatrix `A[rows, cols] = P_r A P_cᵀ`, with `P_r`, `P_c` the selection matrices of
/// arbitrary index lists (any order; repeated indices allowed).
///
/// Applying scatters the input into a zero vector of `A`'s width (`P_cᵀ x`, adding repeated
/// indices), applies `A`, and gathers the selected rows. A principal submatrix (`rows == cols`)
/// keeps `A`'s symmetric/PSD tags; otherwise it is general. Exact, for principal submatrices:
/// the diagonal and the trace (gathered from `A`'s diagonal). Other exact operations are
/// unsupported; [`crate::DenseOp::from_operator`] materializes a small submatrix.
#[derive(Clone, Debug)]
pub struct SubmatrixOp<A> {
    op: A,
    rows: Vec<usize>,
    cols: Vec<usize>,
}

impl<A> SubmatrixOp<A> {
    /// `op[rows, cols]`; indices must be in range.
    pub fn new<T: Float>(op: A, rows: Vec<usize>, cols: Vec<usize>) -> Result<Self, LinalgError>
    where
        A: LinearOperator<T>,
    {
        if let Some(&r) = rows.iter().find(|&&r| r >= op.nrows()) {
            return Err(LinalgError::Dimension(format!("row index {r} out of range for {}", op.describe())));
        }
        if let Some(&c) = cols.iter().find(|&&c| c >= op.ncols()) {
            return Err(LinalgError::Dimension(format!("column index {c} out of range for {}", op.describe())));
        }
        Ok(Self { op, rows, cols })
    }
    /// The principal submatrix `op[idx, idx]`.
    pub fn principal<T: Float>(op: A, idx: Vec<usize>) -> Result<Self, LinalgError>
    where
        A: LinearOperator<T>,
    {
        Self::new(op, idx.clone(), idx)
    }
    /// The selected rows.
    pub fn rows(&self) -> &[usize] {
        &self.rows
    }
    /// The selected columns.
    pub fn cols(&self) -> &[usize] {
        &self.cols
    }
    fn principal_sel(&self) -> bool {
        self.rows == self.cols
    }
}

/// `out ← P_out · M · P_inᵀ · rhs` where `apply` applies `M` (`m × n`).
fn select_apply<T: Float>(
    (m, n): (usize, usize),
    out_idx: &[usize],
    in_idx: &[usize],
    apply: impl FnOnce(MatMut<'_, T>, MatRef<'_, T>) -> Result<(), LinalgError>,
    mut out: MatMut<'_, T>,
    rhs: MatRef<'_, T>,
) -> Result<(), LinalgError> {
    let k = rhs.ncols();
    let mut full = Mat::<T>::zeros(n, k);
    for c in 0..k {
        for (j, &idx) in in_idx.iter().enumerate() {
            full[(idx, c)] += rhs[(j, c)];
        }
    }
    let mut tmp = Mat::<T>::zeros(m, k);
    apply(tmp.as_mut(), full.as_ref())?;
    for c in 0..k {
        for (i, &idx) in out_idx.iter().enumerate() {
            out[(i, c)] = tmp[(idx, c)];
        }
    }
    Ok(())
}

impl<T: Float, A: LinearOperator<T>> LinearOperator<T> for SubmatrixOp<A> {
    fn nrows(&self) -> usize {
        self.rows.len()
    }
    fn ncols(&self) -> usize {
        self.cols.len()
    }
    fn structure(&self) -> Structure {
        if self.principal_sel() {
            self.op.structure()
        } else {
            Structure::GENERAL
        }
    }
    fn describe(&self) -> String {
        format!("({})[{} rows, {} cols]", self.op.describe(), self.rows.len(), self.cols.len())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let dims = (self.op.nrows(), self.op.ncols());
        let f = |o: MatMut<'_, T>, r: MatRef<'_, T>| self.op.apply(o, r);
        select_apply(dims, &self.rows, &self.cols, f, out, rhs)
    }
    fn has_transpose(&self) -> bool {
        self.op.has_transpose()
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let dims = (self.op.ncols(), self.op.nrows());
        let f = |o: MatMut<'_, T>, r: MatRef<'_, T>| self.op.apply_transpose(o, r);
        select_apply(dims, &self.cols, &self.rows, f, out, rhs)
    }
    fn trace(&self) -> Result<T, LinalgError> {
        Ok(self.diagonal()?.into_iter().sum())
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        if !self.principal_sel() {
            return Err(LinalgError::unsupported("diagonal (non-principal submatrix)", self.describe()));
        }
        let d = self.op.diagonal()?;
        Ok(self.rows.iter().map(|&i| d[i]).collect())
    }
}
