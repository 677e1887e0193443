//! Data sets: inputs `[N, *input_shape]` and targets, split into batches of consecutive samples.

use curvops_tensor::Float;

/// Targets of a data set.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets<T> {
    /// Class indices `[N]` (cross-entropy).
    Classes(Vec<usize>),
    /// Dense targets `[N, C]`: regression values, class probabilities or binary labels.
    Dense(Vec<T>),
}

/// A borrowed slice of targets (one batch).
#[derive(Clone, Copy, Debug)]
pub enum TargetsRef<'a, T> {
    /// Class indices `[n]`.
    Classes(&'a [usize]),
    /// Dense targets `[n, C]`.
    Dense(&'a [T]),
}

/// A data set held in memory.
#[derive(Clone, Debug)]
pub struct Dataset<T> {
    /// Inputs, row-major `[N, *sample_shape]`.
    pub x: Vec<T>,
    /// Per-sample input shape.
    pub sample_shape: Vec<usize>,
    /// Number of samples.
    pub n: usize,
    /// Targets.
    pub y: Targets<T>,
    /// Width `C` of dense targets; for class indices 0 (one per sample) or the number of
    /// positions `T` per sample (sequence outputs `[T, C]`).
    pub target_width: usize,
}

/// A batch: consecutive samples `start..start + n` of a data set.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a, T> {
    /// Inputs `[n, I]`.
    pub x: &'a [T],
    /// Targets.
    pub y: TargetsRef<'a, T>,
    /// Samples in the batch.
    pub n: usize,
    /// Index of the first sample in the data set (keys Monte-Carlo draws).
    pub start: usize,
    /// The global index of each sample when the batch comes from a subset of a data set
    /// (`None`: samples `start..start + n`); Monte-Carlo draws are keyed by it.
    pub keys: Option<&'a [usize]>,
}

impl<T> Batch<'_, T> {
    /// The global index of sample `i` of the batch (the key of its Monte-Carlo draws).
    pub fn key(&self, i: usize) -> usize {
        self.keys.map_or(self.start + i, |k| k[i])
    }
}

impl<T: Float> Dataset<T> {
    /// Per-sample input size.
    pub fn sample_size(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// Samples `start..start + len`.
    pub fn batch(&self, start: usize, len: usize) -> Batch<'_, T> {
        let s = self.sample_size();
        let y = match &self.y {
            Targets::Classes(v) => {
                let t = self.target_width.max(1);
                TargetsRef::Classes(&v[start * t..(start + len) * t])
            }
            Targets::Dense(v) => {
                let c = self.target_width;
                TargetsRef::Dense(&v[start * c..(start + len) * c])
            }
        };
        Batch { x: &self.x[start * s..(start + len) * s], y, n: len, start, keys: None }
    }

    /// Batches of at most `batch_size` consecutive samples covering the data set
    /// (`batch_size = 0` means one batch with everything).
    pub fn batches(&self, batch_size: usize) -> Vec<Batch<'_, T>> {
        let bs = if batch_size == 0 { self.n.max(1) } else { batch_size };
        (0..self.n).step_by(bs).map(|s| self.batch(s, bs.min(self.n - s))).collect()
    }

    /// A new data set of the samples with the given indices (in that order).
    pub fn select(&self, idx: &[usize]) -> Self {
        let s = self.sample_size();
        let mut x = Vec::with_capacity(idx.len() * s);
        for &i in idx {
            x.extend_from_slice(&self.x[i * s..(i + 1) * s]);
        }
        let y = match &self.y {
            Targets::Classes(v) => {
                let t = self.target_width.max(1);
                Targets::Classes(idx.iter().flat_map(|&i| v[i * t..(i + 1) * t].iter().copied()).collect())
            }
            Targets::Dense(v) => {
                let c = self.target_width;
                let mut out = Vec::with_capacity(idx.len() * c);
                for &i in idx {
                    out.extend_from_slice(&v[i * c..(i + 1) * c]);
                }
                Targets::Dense(out)
            }
        };
        Self { x, sample_shape: self.sample_shape.clone(), n: idx.len(), y, target_width: self.target_width }
    }
}
