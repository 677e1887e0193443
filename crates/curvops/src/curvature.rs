//! Curvature matrices of `L(θ) = c Σ_n ℓ_n(f(x_n; θ), y_n)` as linear operators.
//!
//! One application to `K` vectors `V` (`[D_S, K]`) runs, per batch: a forward pass (or takes it
//! from the [`ForwardCache`]), the forward-mode product `J V` through the network (one GEMM per
//! layer for all `K`), the output-space curvature, and one backward pass:
//!
//! | kind | output space | backward |
//! |---|---|---|
//! | GGN | `c ∇²_f ℓ_n (J_n v)` | VJP |
//! | empirical Fisher | `c g_n g_nᵀ (J_n v)`, `g_n = ∇_f ℓ_n` | VJP |
//! | MC Fisher | `c/M Σ_m g_nm g_nmᵀ (J_n v)`, `g_nm` at sampled labels | VJP |
//! | Hessian | `R(g) = c ∇²_f ℓ_n (J_n v)`, `g = c ∇_f ℓ_n` | R-op backward (second-order terms) |
//!
//! Results are summed over batches with the data-set reduction factor `c`, so they do not
//! depend on the batch size.

use crate::cache::{BatchState, ForwardCache};
use crate::walk::DataWalk;
use crate::{block_to_vec, vec_to_block, Problem};
use curvops_linalg::{LinalgError, LinearOperator, Structure};
use curvops_nn::data::Batch;
use curvops_nn::ActiveSet;
use curvops_tensor::Float;
use faer::{MatMut, MatRef};
use std::sync::Arc;

/// Which curvature matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curvature {
    /// The Hessian `∇²_θ L`.
    Hessian,
    /// The generalized Gauss-Newton `c Σ_n J_nᵀ ∇²_f ℓ_n J_n`.
    Ggn,
    /// The empirical Fisher `c Σ_n ∇ℓ_n ∇ℓ_nᵀ` (curvlinops' `EFLinearOperator`).
    Ef,
    /// The Monte-Carlo Fisher `c Σ_n J_nᵀ (1/M Σ_m g_nm g_nmᵀ) J_n` with labels drawn from the
    /// model's predictive distribution, keyed by `(seed, sample index, draw index)`.
    FisherMc {
        /// Draws `M` per sample.
        samples: usize,
        /// Seed.
        seed: u64,
    },
}

impl Curvature {
    /// The CLI name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hessian => "hessian",
            Self::Ggn => "ggn",
            Self::Ef => "ef",
            Self::FisherMc { .. } => "fisher-mc",
        }
    }
}

/// A curvature matrix over the active parameters of a problem (see module docs).
pub struct CurvatureOperator<'a, T: Float> {
    problem: &'a Problem<T>,
    kind: Curvature,
    active: ActiveSet,
    walk: DataWalk<'a, T>,
    cache: ForwardCache<T>,
    c: T,
}

impl<'a, T: Float> CurvatureOperator<'a, T> {
    /// The operator `kind` of `problem` over the `active` parameters, accumulated over batches
    /// of `batch_size` samples (0: one batch), without caching.
    pub fn new(problem: &'a Problem<T>, kind: Curvature, active: ActiveSet, batch_size: usize) -> Self {
        Self::on(problem, kind, active, DataWalk::new(&problem.data, batch_size))
    }

    /// The operator over the data of `walk` (e.g. a subset of the samples: the mini-batch
    /// curvature `C_B` with `B`'s reduction factor and Monte-Carlo keys).
    pub fn on(problem: &'a Problem<T>, kind: Curvature, active: ActiveSet, walk: DataWalk<'a, T>) -> Self {
        let c = T::of(walk.factor(&problem.net));
        Self { problem, kind, active, walk, cache: ForwardCache::new(0), c }
    }

    /// The data it sums over.
    pub fn walk(&self) -> &DataWalk<'a, T> {
        &self.walk
    }

    /// Keeps forward passes and loss factors of up to `budget_bytes` across applications.
    pub fn with_cache(mut self, budget_bytes: usize) -> Self {
        self.cache = ForwardCache::new(budget_bytes);
        self
    }

    /// The cache (for inspection).
    pub fn cache(&self) -> &ForwardCache<T> {
        &self.cache
    }

    /// Which curvature.
    pub fn kind(&self) -> Curvature {
        self.kind
    }

    /// The active parameters.
    pub fn active(&self) -> &ActiveSet {
        &self.active
    }

    /// The problem.
    pub fn problem(&self) -> &'a Problem<T> {
        self.problem
    }

    /// The batch size (0: all data in one batch).
    pub fn batch_size(&self) -> usize {
        self.walk.batch_size()
    }

    /// The reduction factor `c`.
    pub fn reduction_factor(&self) -> T {
        self.c
    }

    /// Forward pass and output-space factor of a batch (scaled by `√c`; see [`BatchState`]).
    pub fn batch_state(&self, index: usize, batch: &Batch<T>) -> Arc<BatchState<T>> {
        self.cache.get_or_compute(index, || {
            let net = &self.problem.net;
            let tape = net.forward(&self.problem.theta, batch.x, batch.n);
            let cdim = net.out_size();
            let (factor, rank) = match self.kind {
                Curvature::Ef => {
                    let mut g = net.loss.grad(tape.output(), batch.y, batch.n, cdim);
                    curvops_tensor::ops::scale(self.c.sqrt(), &mut g);
                    (g, 1)
                }
                Curvature::FisherMc { samples, seed } => {
                    let mut g = net.loss.sampled_grads_batch(tape.output(), batch, cdim, seed, samples);
                    curvops_tensor::ops::scale((self.c / T::of(samples as f64)).sqrt(), &mut g);
                    (g, samples)
                }
                Curvature::Ggn | Curvature::Hessian => (Vec::new(), 0),
            };
            BatchState { tape, factor, rank }
        })
    }

    /// `A V` for a contiguous block `V` (`[K, D_S]` row-major, i.e. `K` vectors), returned in
    /// the same layout.
    pub fn apply_block(&self, v: &[T], k: usize) -> Vec<T> {
        let d = self.active.dim;
        assert_eq!(v.len(), d * k, "apply_block: expected {k} vectors of length {d}");
        let net = &self.problem.net;
        let theta = &self.problem.theta;
        let cdim = net.out_size();
        let mut acc = vec![T::zero(); d * k];
        for (bi, batch) in self.walk.batches().iter().enumerate() {
            let st = self.batch_state(bi, batch);
            let tape = &st.tape;
            let n = batch.n;
            let keep_all = self.kind == Curvature::Hessian;
            let mut tangents = net.jvp(theta, tape, v, k, &self.active, keep_all);
            let jv = tangents[net.layers.len()].take().expect("output tangent");
            match self.kind {
                Curvature::Ggn => {
                    let mut u = net.loss.hess_vp(tape.output(), batch.y, &jv, n, cdim, k);
                    curvops_tensor::ops::scale(self.c, &mut u);
                    net.vjp(theta, tape, u, k, &self.active, &mut acc);
                }
                Curvature::Ef | Curvature::FisherMc { .. } => {
                    let u = factor_product(&st.factor, st.rank, &jv, n, k, cdim);
                    net.vjp(theta, tape, u, k, &self.active, &mut acc);
                }
                Curvature::Hessian => {
                    let mut g = net.loss.grad(tape.output(), batch.y, n, cdim);
                    curvops_tensor::ops::scale(self.c, &mut g);
                    let mut rg = net.loss.hess_vp(tape.output(), batch.y, &jv, n, cdim, k);
                    curvops_tensor::ops::scale(self.c, &mut rg);
                    net.hvp_backward(theta, tape, &tangents, v, g, rg, k, &self.active, &mut acc);
                }
            }
        }
        acc
    }
}

/// `u[n, k] = Σ_r ⟨F[n, r], w[n, k]⟩ F[n, r]` for factor columns `F` (`[n, R, C]`) and
/// output tangents `w` (`[n, K, C]`).
pub fn factor_product<T: Float>(f: &[T], r: usize, w: &[T], n: usize, k: usize, c: usize) -> Vec<T> {
    let mut u = vec![T::zero(); n * k * c];
    for s in 0..n {
        for kk in 0..k {
            let wv = &w[(s * k + kk) * c..(s * k + kk + 1) * c];
            let uv = &mut u[(s * k + kk) * c..(s * k + kk + 1) * c];
            for rr in 0..r {
                let col = &f[(s * r + rr) * c..(s * r + rr + 1) * c];
                let a = curvops_tensor::ops::dot(col, wv);
                curvops_tensor::ops::axpy(a, col, uv);
            }
        }
    }
    u
}

/// Largest parameter-space block (`K·D` entries) that [`CurvatureOperator`]'s
/// `LinearOperator::apply` hands to one [`CurvatureOperator::apply_block`] call (256 Ki entries:
/// 1 MiB in f32), so that the block's copies stay in cache.
pub const MAX_BLOCK_ELEMS: usize = 1 << 18;

/// Largest tangent block (`N·K·S` entries for a batch of `N` samples and the widest layer `S`)
/// of one [`CurvatureOperator::apply_block`] call from `LinearOperator::apply` (1 Mi entries).
pub const MAX_TANGENT_ELEMS: usize = 1 << 20;

impl<T: Float> CurvatureOperator<'_, T> {
    /// Columns per [`CurvatureOperator::apply_block`] call when applied as a `LinearOperator`:
    /// blocks share each layer's weights and activations across columns (one GEMM per layer),
    /// but once the `[K, D]` parameter block or the `[N, K, S]` tangents no longer fit in cache,
    /// the extra memory traffic costs more than the shared work saves, so `K` is capped by
    /// [`MAX_BLOCK_ELEMS`]` / D` and [`MAX_TANGENT_ELEMS`]` / (N·S)` (at least 1).
    pub fn block_chunk(&self) -> usize {
        let net = &self.problem.net;
        let width = net.layers.iter().map(|l| l.in_size().max(l.out_size())).max().unwrap_or(1).max(1);
        let (bs, nw) = (self.walk.batch_size(), self.walk.n());
        let n = if bs == 0 { nw } else { bs.min(nw) };
        let by_params = MAX_BLOCK_ELEMS / self.active.dim.max(1);
        let by_tangents = MAX_TANGENT_ELEMS / (n.max(1) * width);
        by_params.min(by_tangents).max(1)
    }
}

impl<T: Float> LinearOperator<T> for CurvatureOperator<'_, T> {
    fn nrows(&self) -> usize {
        self.active.dim
    }
    fn ncols(&self) -> usize {
        self.active.dim
    }
    fn structure(&self) -> Structure {
        match self.kind {
            Curvature::Hessian => Structure::SYMMETRIC,
            _ => Structure::PSD,
        }
    }
    fn describe(&self) -> String {
        format!("{} (D={})", self.kind.name(), self.active.dim)
    }
    /// Applies to the columns in chunks (see [`CurvatureOperator::block_chunk`]): each chunk is
    /// one pass over the data with one GEMM per layer.
    fn apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let k = rhs.ncols();
        let chunk = self.block_chunk().clamp(1, k.max(1));
        let mut j = 0;
        while j < k {
            let kc = chunk.min(k - j);
            let v = block_to_vec(rhs.subcols(j, kc));
            let r = self.apply_block(&v, kc);
            vec_to_block(&r, out.as_mut().subcols_mut(j, kc));
            j += kc;
        }
        Ok(())
    }
}
