//! The block-diagonal restriction of an operator to a partition of its indices.

use super::BlockDiagOp;
use crate::{DenseOp, LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{Mat, MatMut, MatRef};

/// The block diagonal of a square operator `A` for a partition of `0..n` into consecutive
/// blocks of given sizes (e.g. per layer or per parameter tensor):
/// `diag(A[I₁, I₁], …, A[I_L, I_L])`, in `A`'s coordinates.
///
/// Applying a block of `K` columns is **one** application of `A` to `L·K` columns (block `b`'s
/// columns carry the input restricted to `I_b`; the output keeps rows `I_b` of them), so an
/// operator with per-call overhead (a forward pass) pays it once. Same structure tags as `A`;
/// trace and diagonal are `A`'s. Other exact operations need the blocks:
/// [`BlockRestrictOp::to_dense_blocks`] materializes them (`n` matvecs) into a
/// [`BlockDiagOp`] of [`DenseOp`]s, which offers logdet/solve/eigh.
#[derive(Clone, Debug)]
pub struct BlockRestrictOp<A> {
    op: A,
    offsets: Vec<usize>,
}

impl<A> BlockRestrictOp<A> {
    /// The block diagonal of `op` with consecutive blocks of `sizes` (summing to `op`'s size).
    pub fn new<T: Float>(op: A, sizes: &[usize]) -> Result<Self, LinalgError>
    where
        A: LinearOperator<T>,
    {
        let n = crate::util::check_square(&op, "block restriction")?;
        let mut offsets = vec![0];
        for &s in sizes {
            offsets.push(offsets.last().unwrap() + s);
        }
        if *offsets.last().unwrap() != n {
            return Err(LinalgError::Dimension(format!(
                "block sizes sum to {} but {} has size {n}",
                offsets.last().unwrap(),
                op.describe()
            )));
        }
        Ok(Self { op, offsets })
    }
    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.offsets.len() - 1
    }
    /// Index range of block `b`.
    pub fn block_range(&self, b: usize) -> std::ops::Range<usize> {
        self.offsets[b]..self.offsets[b + 1]
    }
    /// The restricted operator.
    pub fn inner(&self) -> &A {
        &self.op
    }

    /// The dense blocks `A[I_b, I_b]` (block `b` costs `|I_b|` matvecs), as a block-diagonal
    /// operator with `A`'s structure tags. Errors when an application of `A` fails.
    pub fn to_dense_blocks<T: Float>(&self) -> Result<BlockDiagOp<DenseOp<T>>, LinalgError>
    where
        A: LinearOperator<T>,
    {
        let n = self.op.nrows();
        let s = self.op.structure();
        let blocks = (0..self.num_blocks())
            .map(|b| {
                let r = self.block_range(b);
                let nb = r.len();
                let mut e = Mat::<T>::zeros(n, nb);
                for j in 0..nb {
                    e[(r.start + j, j)] = T::one();
                }
                let mut y = Mat::<T>::zeros(n, nb);
                self.op.apply(y.as_mut(), e.as_ref())?;
                Ok(DenseOp::with_structure(y.as_ref().subrows(r.start, nb).to_owned(), s))
            })
            .collect::<Result<_, LinalgError>>()?;
        Ok(BlockDiagOp::new(blocks))
    }

    fn restricted_apply<T: Float>(
        &self,
        apply: impl FnOnce(MatMut<'_, T>, MatRef<'_, T>) -> Result<(), LinalgError>,
        mut out: MatMut<'_, T>,
        rhs: MatRef<'_, T>,
    ) -> Result<(), LinalgError> {
        let (n, k, l) = (rhs.nrows(), rhs.ncols(), self.num_blocks());
        let mut big = Mat::<T>::zeros(n, l * k);
        for b in 0..l {
            let r = self.block_range(b);
            for c in 0..k {
                for i in r.clone() {
                    big[(i, b * k + c)] = rhs[(i, c)];
                }
            }
        }
        let mut y = Mat::<T>::zeros(n, l * k);
        apply(y.as_mut(), big.as_ref())?;
        for b in 0..l {
            for c in 0..k {
                for i in self.block_range(b) {
                    out[(i, c)] = y[(i, b * k + c)];
                }
            }
        }
        Ok(())
    }
}

impl<T: Float, A: LinearOperator<T>> LinearOperator<T> for BlockRestrictOp<A> {
    fn nrows(&self) -> usize {
        self.op.nrows()
    }
    fn ncols(&self) -> usize {
        self.op.ncols()
    }
    fn structure(&self) -> Structure {
        self.op.structure()
    }
    fn describe(&self) -> String {
        format!("blocks({}; {} blocks)", self.op.describe(), self.num_blocks())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.restricted_apply(|o, r| self.op.apply(o, r), out, rhs)
    }
    fn has_transpose(&self) -> bool {
        self.op.has_transpose()
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.restricted_apply(|o, r| self.op.apply_transpose(o, r), out, rhs)
    }
    fn trace(&self) -> Result<T, LinalgError> {
        self.op.trace()
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        self.op.diagonal()
    }
}
