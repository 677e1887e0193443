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
}

impl Loss {
    /// The reduction factor `c` with `L = c Σ_n ℓ_n` for `n_total` samples of `c_out` outputs.
    pub fn factor(&self, n_total: usize, c_out: usize) -> f64 {
        match (self.reduction, self.kind) {
            (Reduction::Sum, _) => 1.0,
            (Reduction::Mean, LossKind::CrossEntropy) => 1.0 / n_total as f64,
            (Reduction::Mean, _) => 1.0 / (n_total * c_out) as f64,
        }
    }

    /// `ℓ_n` for each sample: `[n]`.
    pub fn values<T: Float>(&self, f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> Vec<T> {
        match self.kind {
            LossKind::Mse => mse::values(f, dense(y), n, c),
            LossKind::CrossEntropy => cross_entropy::values(f, y, n, c),
            LossKind::BceWithLogits => bce::values(f, dense(y), n, c),
        }
    }

    /// `∇_f ℓ_n`: `[n, C]`.
    pub fn grad<T: Float>(&self, f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> Vec<T> {
        match self.kind {
            LossKind::Mse => mse::grad(f, dense(y), n, c),
            LossKind::CrossEntropy => cross_entropy::grad(f, y, n, c),
            LossKind::BceWithLogits => bce::grad(f, dense(y), n, c),
        }
    }

    /// `∇²_f ℓ_n v_{n,k}` for `K` vectors per sample: `v` and result `[n, K, C]`.
    pub fn hess_vp<T: Float>(&self, f: &[T], y: TargetsRef<T>, v: &[T], n: usize, c: usize, k: usize) -> Vec<T> {
        match self.kind {
            LossKind::Mse => v.iter().map(|&x| T::of(2.0) * x).collect(),
            LossKind::CrossEntropy => cross_entropy::hess_vp(f, y, v, n, c, k),
            LossKind::BceWithLogits => bce::hess_vp(f, v, n, c, k),
        }
    }

    /// A factor `S_n` (`C × R`) with `S_n S_nᵀ = ∇²_f ℓ_n`, returned as its columns:
    /// `[n, R, C]` (so it is directly a block of `R` output cotangents), and `R`.
    pub fn hess_factor<T: Float>(&self, f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> (Vec<T>, usize) {
        match self.kind {
            LossKind::Mse => (mse::factor(n, c), c),
            LossKind::CrossEntropy => (cross_entropy::factor(f, y, n, c), c),
            LossKind::BceWithLogits => (bce::factor(f, n, c), c),
        }
    }

    /// Dense per-sample Hessians `∇²_f ℓ_n`: `[n, C, C]`.
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
