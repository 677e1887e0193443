//! Kronecker-factored curvature: KFAC and EKFAC, as curvlinops' `KFACLinearOperator` and
//! `EKFACLinearOperator` define them (SPEC.md §3, `reference-graph/README.md` for graphs),
//! on any graph model.
//!
//! # Kronecker-factored maps
//! What is a Kronecker-factored linear map, and what its inputs and output cotangents are, is
//! the layers' knowledge ([`curvops_nn::layers::Layer::kfac_maps`], `kfac_inputs`,
//! `kfac_output_cotangents`, see [`curvops_nn::layers::KfacMap`]): per sample a map sends `R`
//! inputs `a_r ∈ ℝ^in` (the positions sharing the weight) to `y_r = W a_r + b`, `W` viewed as
//! `[out, in]`:
//!
//! | layer | map(s) | `a_r` | `R` | cotangent `g_r = ∂/∂y_r` |
//! |---|---|---|---|---|
//! | `linear` (any rank, `transposed` storage) | `W` | input rows | rows of the input (`T` for `[T, E]`) | the node's own |
//! | `conv2d` | `W` as `[O, C/G·kh·kw]` | unfolded patches (averaged over the `G` groups, as curvlinops) | output positions | the node's own |
//! | `multihead_attention` | `in_proj` | the input `X` | `T` | at `[Q \| K \| V]`, from the node's output cotangent through `out_proj` and the attention core |
//! | | `out_proj` | the concatenated heads `O` | `T` | the node's own |
//! | `embedding` | `Wᵀ` (`[dim, num]`, stored `[num, dim]`) | one-hot `e_{id}` | ids per sample | the node's own |
//!
//! With the parameter vector's row-major layout, `(B ⊗ A) vec(W) = vec(B W A)` for a weight
//! stored `[out, in]`; a weight stored `[in, out]` gets `A ⊗ B` on its layout (the same operator).
//!
//! # KFAC
//! * weight block `B ⊗ A`, bias block `B` (separate, curvlinops' default
//!   `separate_weight_and_bias=True`), or with `joint_bias` one block `B ⊗ Ā` acting on
//!   `[W | b]` (`[out, in + 1]`), `Ā` the input factor of the inputs augmented by a constant 1.
//! * **Input factor** `A = 1/(N·R) Σ_n Σ_r a_{nr} a_{nr}ᵀ` — the mean over the `N` data points
//!   and the `R` positions sharing the weight (for an embedding `A = diag(count_i)/(N·R)`, the
//!   id counts). With `reduce` (Eschenhagen et al. 2023) the inputs are first averaged over
//!   positions: `A = 1/N Σ_n ā_n ā_nᵀ`, `ā_n = 1/R Σ_r a_{nr}`.
//! * **Gradient factor** `B = Σ_n Σ_k Σ_r g_{nkr} g_{nkr}ᵀ` (`reduce`: `Σ_n Σ_k ĝ_{nk} ĝ_{nk}ᵀ`,
//!   `ĝ_{nk} = Σ_r g_{nkr}`), where `g_{nk}` is the cotangent at the map's output for the `k`-th
//!   output cotangent `u_{nk}` of sample `n`, backpropagated through the graph in one pass per
//!   `k` (summed where a value fans out). `B` carries every loss-scaling factor
//!   (`L = c Σ_n ℓ_n`):
//!
//!   | Fisher type | cotangents `u_{nk}` |
//!   |---|---|
//!   | `type-2` | `√c Σ_t S_{nt} e_k`: column `k` of the loss-Hessian factor (`S S ᵀ = ∇²_f ℓ`) of every output position `t` at once (for vector outputs simply `√c S_n e_k`) |
//!   | `mc` | `√(c/M) ∇_f ℓ(f_n, ŷ_{nm})`, `M` labels drawn from the model (all positions of a draw at once), keyed by (seed, n, m) |
//!   | `empirical` | `√c ∇_f ℓ_n` |
//!   | `forward-only` | none: `B = I` |
//!
//!   For a sequence output (`[T, V]` per sample) the type-2 columns are summed over the `T`
//!   positions before the backward pass, as curvlinops does (one backward pass of
//!   `Σ_m ⟨f_m, S_m[:, k]⟩` over all rows); `B` then holds products between tokens for maps
//!   upstream of an attention (the reference's formula: `B = M²/(N·M/N) Σ_j Σ_{n,r} g gᵀ`
//!   with `S` scaled by `1/M`, which is `c Σ` of the unscaled columns).
//!
//! # Other parameters
//! * **Tied tensors** used only as map weights (a GPT's token embedding and output layer):
//!   the sum of the uses' Kronecker blocks `Σ_u L_u ⊗ R_u` on the tensor as `[rows, cols]`
//!   (`(B_u, A_u)` for a use storing it `[out, in]`, `(A_u, B_u)` for `[in, out]`): each use
//!   as an untied map, the cross terms between uses dropped as KFAC drops those between
//!   layers. Products, trace, diagonal and Frobenius norm come from the factors; log-det,
//!   solves, eigendecomposition, inverses (exact damping in every mode) and EKFAC use the dense
//!   block's eigendecomposition (at most [`DENSE_MAX`] entries). Likewise a tensor used only as
//!   map biases: `Σ_u B_u`.
//! * **Any other tensor** (LayerNorm, BatchNorm, `parameter` nodes, a tie mixing roles): its
//!   exact dense block of the curvature of the Fisher type, `Σ_n Σ_k (J_{n,t}ᵀ u_{nk})(…)ᵀ`
//!   with `J_{n,t}` the Jacobian of sample `n`'s outputs with respect to the tensor — the GGN's
//!   block for `type-2` (from every position's own columns `√c S_{nt} e_j`), the MC Fisher's
//!   for `mc`, the empirical Fisher's for `empirical` — from the per-sample gradients of the
//!   same backward pass as `B`, or for `type-2` on outputs with several positions from `D_t`
//!   forward-mode products `c Σ_n (J_{n,t} e_i)ᵀ ∇²ℓ_n (J_{n,t} e_j)`. At most [`DENSE_MAX`]
//!   entries; none with `forward-only` (an error naming the tensor).
//!
//! Everything is a sum over data points normalized by the data-set size, so the factors do not
//! depend on how the data is split into batches.
//!
//! # EKFAC
//! George et al. (2018): with the eigendecompositions `A = Q_A Λ_A Q_Aᵀ`, `B = Q_B Λ_B Q_Bᵀ`,
//! EKFAC is `(Q_B ⊗ Q_A) diag(E) (Q_B ⊗ Q_A)ᵀ` with the corrected eigenvalues
//! `E[i, j] = Σ_n Σ_k (q_{B,i}ᵀ G_{nk} q_{A,j})²` from the per-example gradients
//! `G_{nk} = Σ_r g_{nkr} a_{nr}ᵀ` of the same cotangents as `B` (bias:
//! `E[i] = Σ (q_{B,i}ᵀ Σ_r g_{nkr})²`) — for sequence outputs the position-summed columns
//! (curvlinops has no EKFAC there; this is the same definition on the same cotangents). As in
//! curvlinops, the corrections always use the expanded (per-position) inputs, also with
//! `reduce`. Dense and tied blocks keep KFAC's block (their eigenvalues, uncorrected).
//!
//! # Modules
//! * [`factors`]: the data pass (statistics) that fits the factors ([`fit_kfac`]).
//! * [`operator`]: [`Kfac`], the block-diagonal Kronecker operator with exact trace, log-det,
//!   determinant, Frobenius norm, diagonal, eigendecomposition and damped solves.
//! * [`inverse`]: [`KfacInverse`], `inverse(δ, mode)` with the three damping modes.
//! * [`ekfac`]: [`Ekfac`], [`fit_ekfac`] and [`fit_ekfac_split`] (bases and eigenvalues from different samples).
//! * [`io`]: saving and loading fitted factors (safetensors).

pub mod ekfac;
pub mod factors;
pub mod inverse;
pub mod io;
mod kernels;
pub mod operator;
mod plan;
mod slots;

pub use ekfac::{fit_ekfac, fit_ekfac_on, fit_ekfac_split, Ekfac};
pub use factors::{fit_kfac, fit_kfac_on, KfacFactors, LayerFactors, ParamRef, TiedFactors, TiedUse};
pub use inverse::{DampingMode, KfacInverse};
pub use operator::{DampedKfac, Kfac};
pub use plan::DENSE_MAX;

use curvops_linalg::LinalgError;

/// Which backpropagated vectors form the gradient factor `B` (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FisherType {
    /// Columns of the loss-Hessian factor `S` (the type-2 Fisher = GGN for these losses).
    Type2,
    /// Gradients at labels sampled from the model's predictive distribution.
    Mc {
        /// Draws `M` per data point.
        samples: usize,
        /// Seed of the keyed draws.
        seed: u64,
    },
    /// Per-sample loss gradients (empirical Fisher).
    Empirical,
    /// No backward pass: `B = I` (FOOF / ISAAC).
    ForwardOnly,
}

impl FisherType {
    /// The CLI / file name: `type-2`, `mc`, `empirical`, `forward-only`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Type2 => "type-2",
            Self::Mc { .. } => "mc",
            Self::Empirical => "empirical",
            Self::ForwardOnly => "forward-only",
        }
    }
}

/// How weight sharing (convolution positions) enters the factors (Eschenhagen et al. 2023).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KfacApprox {
    /// Positions as extra data points.
    Expand,
    /// Inputs averaged and output gradients summed over positions first.
    Reduce,
}

impl KfacApprox {
    /// The CLI / file name: `expand` or `reduce`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Expand => "expand",
            Self::Reduce => "reduce",
        }
    }
}

/// Options of a KFAC / EKFAC fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KfacOptions {
    /// Gradient-factor type.
    pub fisher: FisherType,
    /// Weight-sharing approximation.
    pub approx: KfacApprox,
    /// One block for weight and bias of a layer (curvlinops' `separate_weight_and_bias=False`).
    pub joint_bias: bool,
    /// Mini-batch size of the data pass (0: one batch); the result does not depend on it.
    pub batch_size: usize,
}

impl Default for KfacOptions {
    /// curvlinops' defaults for the reference files: type-2, expand, separate weight and bias.
    fn default() -> Self {
        Self { fisher: FisherType::Type2, approx: KfacApprox::Expand, joint_bias: false, batch_size: 0 }
    }
}

/// Errors of the KFAC module.
#[derive(Debug, thiserror::Error)]
pub enum KfacError {
    /// A parameter or option KFAC does not support (the message names it).
    #[error("{0}")]
    Unsupported(String),
    /// A parameter tensor KFAC cannot cover with these options (a dense block that is too large,
    /// no block for `forward-only`): leave it out of the active set.
    #[error("{msg}")]
    Parameter {
        /// The parameter's name.
        param: String,
        /// The message, naming the parameter and why.
        msg: String,
    },
    /// A factors file that cannot be read or does not fit the problem.
    #[error("{0}")]
    File(String),
    /// A linear-algebra failure (eigendecomposition, singular factor).
    #[error(transparent)]
    Linalg(#[from] LinalgError),
}
