//! The data seam: the one place that walks the data.
//!
//! A [`DataWalk`] is the data a computation sums over — a whole data set or a subset of its
//! samples (an index set) — split into batches of consecutive samples. It knows
//!
//! * the number of samples `N` of the view, which sets the loss's reduction factor `c`
//!   (`L = c Σ_{n ∈ view} ℓ_n`, SPEC.md §3: for a subset `B`, `L_B` is the loss PyTorch computes
//!   on that mini-batch);
//! * each sample's global index in the data set, which keys its Monte-Carlo draws, so an
//!   operator on a subset draws exactly what the full-data operator draws for those samples
//!   (see [`curvops_nn::data::Batch::key`]);
//! * the batch order, in which per-batch results are summed ([`DataWalk::sum`]), so results do
//!   not depend on the thread count and, beyond rounding, not on the batch size.
//!
//! Operators ([`crate::CurvatureOperator`], [`crate::JacobianOperator`]) and the gradient
//! functions take their batches from a walk; their forward-pass caches live inside the
//! operator, which borrows its problem (so `θ` cannot change under it) and owns its walk (so a
//! cache always belongs to one `θ` and one subset).

use curvops_nn::data::{Batch, Dataset};
use curvops_nn::Network;
use curvops_tensor::Float;
use std::borrow::Cow;

/// Batches of a data set or of a subset of its samples (see the module docs).
#[derive(Clone, Debug)]
pub struct DataWalk<'a, T: Float> {
    data: Cow<'a, Dataset<T>>,
    keys: Option<Vec<usize>>,
    batch_size: usize,
}

/// A subset index out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sample index {index} is out of range (the data set has {n} samples)")]
pub struct SubsetError {
    /// The offending index.
    pub index: usize,
    /// Samples in the data set.
    pub n: usize,
}

impl<'a, T: Float> DataWalk<'a, T> {
    /// All of `data`, in batches of `batch_size` consecutive samples (0: one batch).
    pub fn new(data: &'a Dataset<T>, batch_size: usize) -> Self {
        Self { data: Cow::Borrowed(data), keys: None, batch_size }
    }

    /// The samples `idx` of `data` (in that order; repeats allowed), in batches of
    /// `batch_size`. Monte-Carlo draws stay keyed by the global indices.
    pub fn subset(data: &'a Dataset<T>, idx: &[usize], batch_size: usize) -> Result<Self, SubsetError> {
        if let Some(&index) = idx.iter().find(|&&i| i >= data.n) {
            return Err(SubsetError { index, n: data.n });
        }
        Ok(Self { data: Cow::Owned(data.select(idx)), keys: Some(idx.to_vec()), batch_size })
    }

    /// A subset of this walk's samples (indices local to this walk; keys stay global).
    pub fn sub(&self, idx: &[usize]) -> Result<DataWalk<'static, T>, SubsetError> {
        if let Some(&index) = idx.iter().find(|&&i| i >= self.n()) {
            return Err(SubsetError { index, n: self.n() });
        }
        let keys = idx.iter().map(|&i| self.key(i)).collect();
        Ok(DataWalk { data: Cow::Owned(self.data.select(idx)), keys: Some(keys), batch_size: self.batch_size })
    }

    /// Samples `N` in the view.
    pub fn n(&self) -> usize {
        self.data.n
    }

    /// The view's data (the selected samples for a subset).
    pub fn data(&self) -> &Dataset<T> {
        &self.data
    }

    /// The batch size (0: all samples in one batch).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The global index of the view's sample `i`.
    pub fn key(&self, i: usize) -> usize {
        self.keys.as_ref().map_or(i, |k| k[i])
    }

    /// The global indices of the view's samples, when it is a subset.
    pub fn keys(&self) -> Option<&[usize]> {
        self.keys.as_deref()
    }

    /// The batches in order, each with its samples' global indices.
    pub fn batches(&self) -> Vec<Batch<'_, T>> {
        self.batches_of(self.batch_size)
    }

    /// The batches of `batch_size` consecutive samples of the view (0: one batch), each with
    /// its samples' global indices — for passes that bound their batch size by memory.
    pub fn batches_of(&self, batch_size: usize) -> Vec<Batch<'_, T>> {
        let mut b = self.data.batches(batch_size);
        if let Some(keys) = &self.keys {
            for batch in &mut b {
                batch.keys = Some(&keys[batch.start..batch.start + batch.n]);
            }
        }
        b
    }

    /// The reduction factor `c` of `net`'s loss over the view's `N` samples.
    pub fn factor(&self, net: &Network<T>) -> f64 {
        net.loss.factor(self.n(), net.out_size())
    }

    /// Runs `f(batch index, batch, acc)` on every batch in order, accumulating into `acc`.
    pub fn sum<R>(&self, mut acc: R, mut f: impl FnMut(usize, &Batch<'_, T>, &mut R)) -> R {
        for (i, b) in self.batches().iter().enumerate() {
            f(i, b, &mut acc);
        }
        acc
    }
}
