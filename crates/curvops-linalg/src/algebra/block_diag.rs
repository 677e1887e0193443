//! Block-diagonal operators `diag(A₁, …, A_L)`.

use crate::decomp::Eigh;
use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{Mat, MatMut, MatRef};

/// The block-diagonal operator `diag(A₁, …, A_L)`: block `b` maps rows
/// `row_offset(b)..row_offset(b) + A_b.nrows()` of the output from the corresponding column
/// range of the input. Blocks may be rectangular.
///
/// Symmetric / PSD when every block is. Exact operations are computed per block: trace and
/// log-determinant are sums, the diagonal and solves concatenate, the eigendecomposition
/// gathers the blocks' eigenpairs (completing a partial block decomposition when the blocks'
/// complement eigenvalues differ). Use `Box<dyn LinearOperator<T>>` blocks to mix kinds.
#[derive(Clone, Debug)]
pub struct BlockDiagOp<O> {
    blocks: Vec<O>,
    row_off: Vec<usize>,
    col_off: Vec<usize>,
}

impl<O> BlockDiagOp<O> {
    /// `diag(blocks…)`.
    pub fn new<T: Float>(blocks: Vec<O>) -> Self
    where
        O: LinearOperator<T>,
    {
        let mut row_off = vec![0];
        let mut col_off = vec![0];
        for b in &blocks {
            row_off.push(row_off.last().unwrap() + b.nrows());
            col_off.push(col_off.last().unwrap() + b.ncols());
        }
        Self { blocks, row_off, col_off }
    }
    /// The blocks.
    pub fn blocks(&self) -> &[O] {
        &self.blocks
    }
    /// First row of block `b`.
    pub fn row_offset(&self, b: usize) -> usize {
        self.row_off[b]
    }
    /// First column of block `b`.
    pub fn col_offset(&self, b: usize) -> usize {
        self.col_off[b]
    }
}

impl<O> BlockDiagOp<O> {
    fn square<T: Float>(&self, what: &'static str) -> Result<(), LinalgError>
    where
        O: LinearOperator<T>,
    {
        for (i, b) in self.blocks.iter().enumerate() {
            if b.nrows() != b.ncols() {
                return Err(LinalgError::Dimension(format!(
                    "{what} of {}: block {i} ({}) is not square",
                    self.describe(),
                    b.describe()
                )));
            }
        }
        Ok(())
    }
}

impl<T: Float, O: LinearOperator<T>> LinearOperator<T> for BlockDiagOp<O> {
    fn nrows(&self) -> usize {
        *self.row_off.last().unwrap()
    }
    fn ncols(&self) -> usize {
        *self.col_off.last().unwrap()
    }
    fn structure(&self) -> Structure {
        let sym = self.blocks.iter().all(|b| b.structure().symmetric);
        let psd = self.blocks.iter().all(|b| b.structure().psd);
        Structure { symmetric: sym, psd: sym && psd }
    }
    fn describe(&self) -> String {
        let inner: Vec<String> = self.blocks.iter().take(4).map(|b| b.describe()).collect();
        let more = if self.blocks.len() > 4 { format!(", … ({} blocks)", self.blocks.len()) } else { String::new() };
        format!("blockdiag[{}{}]", inner.join(", "), more)
    }
    fn apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        for (i, b) in self.blocks.iter().enumerate() {
            let (r0, c0) = (self.row_off[i], self.col_off[i]);
            b.apply(out.as_mut().subrows_mut(r0, b.nrows()), rhs.subrows(c0, b.ncols()))?;
        }
        Ok(())
    }
    fn has_transpose(&self) -> bool {
        self.blocks.iter().all(|b| b.has_transpose())
    }
    fn apply_transpose(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        for (i, b) in self.blocks.iter().enumerate() {
            let (r0, c0) = (self.row_off[i], self.col_off[i]);
            b.apply_transpose(out.as_mut().subrows_mut(c0, b.ncols()), rhs.subrows(r0, b.nrows()))?;
        }
        Ok(())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        self.square::<T>("trace")?;
        let mut t = T::zero();
        for b in &self.blocks {
            t += b.trace()?;
        }
        Ok(t)
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        self.square::<T>("diagonal")?;
        let mut d = Vec::with_capacity(self.nrows());
        for b in &self.blocks {
            d.extend(b.diagonal()?);
        }
        Ok(d)
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.square::<T>("logdet")?;
        let mut t = T::zero();
        for b in &self.blocks {
            t += b.logdet_shifted(shift)?;
        }
        Ok(t)
    }
    fn solve_shifted(&self, shift: T, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.square::<T>("solve")?;
        for (i, b) in self.blocks.iter().enumerate() {
            let r0 = self.row_off[i];
            b.solve_shifted(shift, out.as_mut().subrows_mut(r0, b.nrows()), rhs.subrows(r0, b.nrows()))?;
        }
        Ok(())
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        self.square::<T>("eigh")?;
        let mut eighs = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            eighs.push(b.eigh()?);
        }
        // One complement eigenvalue for the whole operator: partial block decompositions with
        // another complement eigenvalue are completed.
        let common = eighs.iter().find(|e| !e.is_complete()).map(|e| e.rest);
        for e in &mut eighs {
            if !e.is_complete() && Some(e.rest) != common {
                *e = e.complete();
            }
        }
        let r: usize = eighs.iter().map(|e| e.rank()).sum();
        let n = self.nrows();
        let mut vectors = Mat::<T>::zeros(n, r);
        let mut values = Vec::with_capacity(r);
        let mut c = 0;
        for (i, e) in eighs.iter().enumerate() {
            let r0 = self.row_off[i];
            vectors.as_mut().submatrix_mut(r0, c, e.dim(), e.rank()).copy_from(e.vectors.as_ref());
            values.extend_from_slice(&e.values);
            c += e.rank();
        }
        Ok(Eigh::new_sorted(values, vectors, common.unwrap_or(T::zero())))
    }
}
