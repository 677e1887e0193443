//! Losses on network outputs `f` (`[N, C]`): value, gradient, Hessian-vector product, a
//! symmetric factor of the Hessian and sampling from the predictive distribution.
//!
//! `ℓ_n` is sample `n`'s loss summed over its outputs; the data-set loss is `L = c Σ_n ℓ_n`
//! with the reduction factor `c` of [`Loss::factor`] (SPEC.md §3). All per-sample quantities
//! here are of `ℓ_n`, unscaled.

mod bce;
mod cross_entropy;
mod mse;

use crate::data::TargetsRef;
use curvops_tensor::Float;

/// The loss function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    /// `ℓ_n = Σ_c (f_c − y_c)²`.
    Mse,
    /// `ℓ_n = −log softmax(f)_y` (or `−Σ_c y_c log softmax(f)_c` for probabilities).
    CrossEntropy,
    /// `ℓ_n = Σ_c −y_c log σ(f_c) − (1 − y_c) log(1 − σ(f_c))`.
    BceWithLogits,
}

/// PyTorch's reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// Average (over `N` for cross-entropy, over `N·C` for MSE and BCE).
    Mean,
    /// Sum.
    Sum,
}

/// A loss with its reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loss {
    /// Which loss.
    pub kind: LossKind,
    /// Which reduction.
    pub reduction: Reduction,
    /// Positions per sample for cross-entropy on outputs `[T, C]` (`T`; 1 for `[C]`): sample
    /// `n`'s loss is the sum over its `T` positions, each a softmax over the last axis, and
    /// `mean` averages over all `N·T` positions (as `F.cross_entropy(out.reshape(-1, C), y.reshape(-1))`).
    pub positions: usize,
}

impl Loss {
    /// A loss on vector outputs (one position per sample).
    pub fn new(kind: LossKind, reduction: Reduction) -> Self {
        Self { kind, reduction, positions: 1 }
    }
}

/// `[n, K, T, V]` ↔ `[n, T, K, V]`: swaps the tangent and position axes of each sample.
fn swap_kt<T: Float>(v: &[T], n: usize, a: usize, b: usize, w: usize) -> Vec<T> {
    let mut out = vec![T::zero(); v.len()];
    for s in 0..n {
        for i in 0..a {
            for j in 0..b {
                let src = ((s * a + i) * b + j) * w;
                let dst = ((s * b + j) * a + i) * w;
                out[dst..dst + w].copy_from_slice(&v[src..src + w]);
            }
        }
    }
    out
}

impl Loss {
    /// The reduction factor `c` with `L = c Σ_n ℓ_n` for `n_total` samples of `c_out` outputs.
    pub fn factor(&self, n_total: usize, c_out: usize) -> f64 {
        match (self.reduction, self.kind) {
            (Reduction::Sum, _) => 1.0,
            (Reduction::Mean, LossKind::CrossEntropy) => 1.0 / (n_total * self.positions) as f64,
            (Reduction::Mean, _) => 1.0 / (n_total * c_out) as f64,
        }
    }

    /// `ℓ_n` for each sample: `[n]`.
    pub fn values<T: Float>(&self, f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> Vec<T> {
        let t = self.positions;
        if t > 1 {
            let per = cross_entropy::values(f, y, n * t, c / t);
            return per.chunks_exact(t).map(|r| r.iter().fold(T::zero(), |a, &b| a + b)).collect();
        }
        match self.kind {
            LossKind::Mse => mse::values(f, dense(y), n, c),
            LossKind::CrossEntropy => cross_entropy::values(f, y, n, c),
            LossKind::BceWithLogits => bce::values(f, dense(y), n, c),
        }
    }

    /// `∇_f ℓ_n`: `[n, C]`.
    pub fn grad<T: Float>(&self, f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> Vec<T> {
        let t = self.positions;
        if t > 1 {
            return cross_entropy::grad(f, y, n * t, c / t);
        }
        match self.kind {
            LossKind::Mse => mse::grad(f, dense(y), n, c),
            LossKind::CrossEntropy => cross_entropy::grad(f, y, n, c),
            LossKind::BceWithLogits => bce::grad(f, dense(y), n, c),
        }
    }

    /// [`Loss::values`] and [`Loss::grad`] together (cross-entropy: from one softmax pass).
    pub fn values_and_grad<T: Float>(&self, f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> (Vec<T>, Vec<T>) {
        let t = self.positions;
        if t > 1 {
            let (per, g) = cross_entropy::values_and_grad(f, y, n * t, c / t);
            let vals = per.chunks_exact(t).map(|r| r.iter().fold(T::zero(), |a, &b| a + b)).collect();
            return (vals, g);
        }
        match self.kind {
            LossKind::CrossEntropy => cross_entropy::values_and_grad(f, y, n, c),
            _ => (self.values(f, y, n, c), self.grad(f, y, n, c)),
        }
    }

    /// `∇²_f ℓ_n v_{n,k}` for `K` vectors per sample: `v` and result `[n, K, C]`.
    pub fn hess_vp<T: Float>(&self, f: &[T], y: TargetsRef<T>, v: &[T], n: usize, c: usize, k: usize) -> Vec<T> {
        let t = self.positions;
        if t > 1 {
            let w = c / t;
            let vt = swap_kt(v, n, k, t, w);
            let hv = cross_entropy::hess_vp(f, y, &vt, n * t, w, k);
            return swap_kt(&hv, n, t, k, w);
        }
        match self.kind {
            LossKind::Mse => v.iter().map(|&x| T::of(2.0) * x).collect(),
            LossKind::CrossEntropy => cross_entropy::hess_vp(f, y, v, n, c, k),
            LossKind::BceWithLogits => bce::hess_vp(f, v, n, c, k),
        }
    }

    /// A factor `S_n` (`C × R`) with `S_n S_nᵀ = ∇²_f ℓ_n`, returned as its columns:
    /// `[n, R, C]` (so it is directly a block of `R` output cotangents), and `R`.
    pub fn hess_factor<T: Float>(&self, f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> (Vec<T>, usize) {
        let t = self.positions;
        if t > 1 {
            // block diagonal over positions: column (t, j) holds position t's column j
            let w = c / t;
            let per = cross_entropy::factor(f, y, n * t, w); // [n·T, w, w]
            let mut out = vec![T::zero(); n * c * c];
            for s in 0..n {
                for p in 0..t {
                    for j in 0..w {
                        let src = ((s * t + p) * w + j) * w;
                        let dst = (s * c + p * w + j) * c + p * w;
                        out[dst..dst + w].copy_from_slice(&per[src..src + w]);
                    }
                }
            }
            return (out, c);
        }
        match self.kind {
            LossKind::Mse => (mse::factor(n, c), c),
            LossKind::CrossEntropy => (cross_entropy::factor(f, y, n, c), c),
            LossKind::BceWithLogits => (bce::factor(f, n, c), c),
        }
    }

    /// Dense per-sample Hessians `∇²_f ℓ_n`: `[n, C, C]`.
    /// The loss-Hessian factor with each column summed over the positions (curvlinops' KFAC
    /// for sequence outputs): column `j` of sample `n` holds `S_{n,t}[:, j]` at every position
    /// `t`, `[n, C/T, C]`, and the number of columns `C/T`. Equals [`Self::hess_factor`] for one
    /// position.
    pub fn hess_factor_position_summed<T: Float>(
        &self,
        f: &[T],
        y: TargetsRef<T>,
        n: usize,
        c: usize,
    ) -> (Vec<T>, usize) {
        let t = self.positions;
        if t <= 1 {
            return self.hess_factor(f, y, n, c);
        }
        let w = c / t;
        let per = cross_entropy::factor(f, y, n * t, w); // [n·T, w, w]
        let mut out = vec![T::zero(); n * w * c];
        for s in 0..n {
            for p in 0..t {
                for j in 0..w {
                    let src = ((s * t + p) * w + j) * w;
                    let dst = (s * w + j) * c + p * w;
                    out[dst..dst + w].copy_from_slice(&per[src..src + w]);
                }
            }
        }
        (out, w)
    }

    pub fn hess_dense<T: Float>(&self, f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> Vec<T> {
        let mut eye = vec![T::zero(); n * c * c];
        for s in 0..n {
            for j in 0..c {
                eye[(s * c + j) * c + j] = T::one();
            }
        }
        // rows of the symmetric Hessian = H e_j
        self.hess_vp(f, y, &eye, n, c, c)
    }

    /// [`Self::sampled_grads`] for a batch: draws keyed by each sample's global index
    /// ([`crate::data::Batch::key`]), so a subset of a data set draws what the full set draws
    /// for the same samples.
    pub fn sampled_grads_batch<T: Float>(
        &self,
        f: &[T],
        batch: &crate::data::Batch<T>,
        c: usize,
        seed: u64,
        m_draws: usize,
    ) -> Vec<T> {
        match batch.keys {
            None => self.sampled_grads(f, batch.n, c, seed, batch.start, m_draws),
            Some(keys) => {
                let mut out = Vec::with_capacity(batch.n * m_draws * c);
                for (i, &key) in keys.iter().enumerate() {
                    out.extend(self.sampled_grads(&f[i * c..(i + 1) * c], 1, c, seed, key, m_draws));
                }
                out
            }
        }
    }

    /// Output gradients `∇_f ℓ(f_n, ŷ_{n,m})` at `m_draws` labels per sample drawn from the
    /// model's predictive distribution, keyed by `(seed, start + n, m)`: `[n, M, C]`.
    ///
    /// Predictive distributions: MSE `N(f, ½ I)` (so that `E[g gᵀ] = 2I = ∇²ℓ`),
    /// cross-entropy `Categorical(softmax f)`, BCE `Bernoulli(σ(f_c))` per output.
    /// For each, `E[g gᵀ]` equals the loss Hessian (for cross-entropy with hard labels or
    /// probabilities summing to one).
    pub fn sampled_grads<T: Float>(
        &self,
        f: &[T],
        n: usize,
        c: usize,
        seed: u64,
        start: usize,
        m_draws: usize,
    ) -> Vec<T> {
        let t = self.positions;
        if t > 1 {
            // one draw per position, keyed by (seed, global sample · T + position, draw)
            let w = c / t;
            let g = cross_entropy::sampled_grads(f, n * t, w, seed, start * t, m_draws); // [n·T, M, w]
            return swap_kt(&g, n, t, m_draws, w);
        }
        match self.kind {
            LossKind::Mse => mse::sampled_grads(n, c, seed, start, m_draws),
            LossKind::CrossEntropy => cross_entropy::sampled_grads(f, n, c, seed, start, m_draws),
            LossKind::BceWithLogits => bce::sampled_grads(f, n, c, seed, start, m_draws),
        }
    }
}

fn dense<T>(y: TargetsRef<'_, T>) -> &[T] {
    match y {
        TargetsRef::Dense(v) => v,
        TargetsRef::Classes(_) => panic!("this loss needs dense targets (validated at load time)"),
    }
}
