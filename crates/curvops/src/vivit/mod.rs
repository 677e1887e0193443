//! ViViT (Dangel, Tatzel & Hennig, TMLR 2022): the GGN's low-rank structure.
//!
//! The GGN of `L = c Σ_n ℓ_n` (SPEC.md §3) is `G = V Vᵀ` with `V = [V_1 … V_N]`,
//! `V_n = √c J_nᵀ S_n` (`S_n S_nᵀ = ∇²_f ℓ_n`, `R` columns), so `rank G ≤ N·R` and the nonzero
//! eigenpairs of `G` come from the small Gram matrix `G̃ = Vᵀ V` (`N·R × N·R`):
//! `G̃ ẽ = λ ẽ` ⇒ `G (V ẽ) = λ (V ẽ)`, with `e = V ẽ / √λ` of unit norm.
//!
//! * [`Vivit`]: the factor `V` — exact (`S_n` from the loss), Monte-Carlo (`M` columns
//!   `∇_f ℓ(f_n, ŷ_{nm}) / √M` at labels drawn from the model, keyed like `fisher-mc`), on a
//!   random subset of `N'` samples (scaled by `√(N/N')`, so `E[V Vᵀ] = G`), for the whole
//!   network or per parameter group (layer / tensor: the block-diagonal GGN).
//! * [`gram`]: `G̃` without materializing `V`: per layer, from the layer inputs and the
//!   backpropagated output cotangents (`linear`: `(g_aᵀ g_b)(x_aᵀ x_b)`; `conv2d`:
//!   `⟨G_a K_{ab}, G_b⟩` with the unfolded inputs' Gram `K_{ab} = U_aᵀ U_b`, or the per-sample
//!   gradients when they are cheaper; other layers: per-sample gradients of that layer only).
//! * [`Vivit::eigen`]: the nonzero eigenvalues (relative threshold) and the top-`k`
//!   eigenvectors `e_k = V ẽ_k / √λ_k`, by one backward pass with the combined cotangents
//!   `Σ_r ẽ_{nr,k} √c S_n e_r / √λ_k` (`V` is never formed).
//! * [`Vivit::directional`]: per-sample `γ_nk = e_kᵀ ∇ℓ_n` and `λ_nk = ‖S̃_nᵀ J_n e_k‖²`
//!   (`S̃_n` the factor of `V`), from one forward-mode pass with all `K` directions.
//! * [`LowRankGgn`]: `V Vᵀ` (from its eigenpairs) as a [`curvops_linalg::LinearOperator`] with
//!   the exact Woodbury solve of `V Vᵀ + δI`.
//! * [`newton_step`]: the directionally damped Newton step with constant or bootstrap damping.
//!
//! See `docs/vivit.md` for the math, the memory formula and measurements.

mod directional;
mod factor;
pub mod gram;
mod lowrank;
mod newton;

pub use directional::Directional;
pub use factor::{Group, Vivit};
pub use gram::{critical_batch_size, memory_estimate, MemoryEstimate};
pub use lowrank::LowRankGgn;
pub use newton::{newton_step, Damping, NewtonStep};

use curvops_linalg::LinalgError;

/// Which output-space factor forms `V`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactorKind {
    /// The exact loss-Hessian factor `S_n` (`R = C` columns; the GGN).
    Exact,
    /// `M` gradients at labels sampled from the model, each scaled by `1/√M` (`R = M`; the
    /// MC Fisher), keyed by `(seed, sample index, draw)` as `fisher-mc`.
    MonteCarlo {
        /// Draws `M` per sample.
        samples: usize,
        /// Seed.
        seed: u64,
    },
}

/// Parameter groups: one Gram matrix (and one set of eigenpairs) per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// All active parameters together (the full GGN).
    Full,
    /// One group per layer (weight and bias together): the layer-block-diagonal GGN.
    Layer,
    /// One group per parameter tensor.
    Param,
}

/// How a `conv2d` layer's Gram contribution is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvGram {
    /// The cheaper of the two by a flop count.
    Auto,
    /// `⟨G_a K_{ab}, G_b⟩` with the unfolded inputs' Gram (`O(N²L²(J + R·O))`).
    Unfolded,
    /// Per-sample weight gradients `G_a U_aᵀ` and their Gram (`O(N·R·O·J·(L + N·R))`).
    Materialized,
}

/// How the Gram matrices are diagonalized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spectrum {
    /// [`Spectrum::All`] for small Gram matrices (`N·R ≤ 512` or `k ≥ N·R/4`), else
    /// [`Spectrum::Top`].
    Auto,
    /// Full dense eigendecomposition (`O((NR)³)`): every nonzero eigenvalue.
    All,
    /// The top `k` of each group by Lanczos on the explicit Gram matrix (`O((NR)²)` per
    /// iteration; relative residual `1e-11` in f64, `1e-5` in f32): only those are listed in
    /// [`Eigenpairs::nonzero`].
    Top,
}

/// Options of [`Vivit::new`].
#[derive(Clone, Debug)]
pub struct VivitOptions {
    /// Exact or Monte-Carlo factor.
    pub factor: FactorKind,
    /// Use a random subset of `N'` samples (`(N', seed)`), scaled by `√(N/N')`.
    pub subsample: Option<(usize, u64)>,
    /// Parameter groups.
    pub grouping: Grouping,
    /// Mini-batch size of the passes over the data (0: one batch).
    pub batch_size: usize,
    /// Eigenvalues `≤ rtol·λ_max` (per group) count as zero; default
    /// [`default_rtol`] (`1e-10` in f64, `1e-5` in f32).
    pub rtol: Option<f64>,
    /// Conv2d Gram form.
    pub conv: ConvGram,
    /// Full or partial eigendecomposition of the Gram matrices.
    pub spectrum: Spectrum,
}

impl Default for VivitOptions {
    fn default() -> Self {
        Self {
            factor: FactorKind::Exact,
            subsample: None,
            grouping: Grouping::Full,
            batch_size: 0,
            rtol: None,
            conv: ConvGram::Auto,
            spectrum: Spectrum::Auto,
        }
    }
}

/// The default relative threshold for nonzero eigenvalues: `1e-10` for f64, `1e-5` for f32
/// (about `100·ε`: the Gram matrix's eigenvalues carry absolute errors of order `ε·λ_max`).
pub fn default_rtol<T: curvops_tensor::Float>() -> f64 {
    if T::BYTES == 4 {
        1e-5
    } else {
        1e-10
    }
}

/// Eigenvectors whose eigenvalue is below `√ε·λ_max` are flagged: `e = Vẽ/√λ` carries errors of
/// order `ε·λ_max/λ`, so such directions are accurate to fewer than half the digits.
pub fn warn_rtol<T: curvops_tensor::Float>() -> f64 {
    if T::BYTES == 4 {
        (f32::EPSILON as f64).sqrt()
    } else {
        f64::EPSILON.sqrt()
    }
}

/// Errors of the ViViT computations.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum VivitError {
    /// An option is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A dense decomposition failed.
    #[error(transparent)]
    Linalg(#[from] LinalgError),
}

/// Eigenpairs of the (block-diagonal) GGN from the Gram matrices.
#[derive(Clone, Debug)]
pub struct Eigenpairs<T> {
    /// The top-`k` eigenvalues, descending.
    pub values: Vec<T>,
    /// The eigenvectors `e_k`, `[K, D_S]` row-major (vector `k` contiguous).
    pub vectors: Vec<T>,
    /// Group of each eigenpair.
    pub group: Vec<usize>,
    /// All nonzero eigenvalues (every group), descending — when [`Self::complete`]; else the
    /// nonzero ones among the top `k` of each group.
    pub nonzero: Vec<T>,
    /// Whether every Gram matrix was fully diagonalized.
    pub complete: bool,
    /// Dimension `D_S`.
    pub dim: usize,
    /// Remarks (tiny eigenvalues, fewer nonzero eigenvalues than asked for).
    pub warnings: Vec<String>,
}

impl<T: curvops_tensor::Float> Eigenpairs<T> {
    /// Number of eigenpairs `K`.
    pub fn k(&self) -> usize {
        self.values.len()
    }
    /// Eigenvector `k` (`[D_S]`).
    pub fn vector(&self, k: usize) -> &[T] {
        &self.vectors[k * self.dim..(k + 1) * self.dim]
    }
    /// The eigenvectors as a faer matrix `[D_S, K]`.
    pub fn vectors_mat(&self) -> faer::Mat<T> {
        faer::Mat::from_fn(self.dim, self.k(), |i, j| self.vectors[j * self.dim + i])
    }
}
