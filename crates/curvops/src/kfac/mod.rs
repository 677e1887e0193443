//! Kronecker-factored curvature: KFAC and EKFAC, as curvlinops' `KFACLinearOperator` and
//! `EKFACLinearOperator` define them (SPEC.md §3).
//!
//! # KFAC
//! For a `linear` or `conv2d` layer with weight `W` viewed as an `[out, in]` matrix (a
//! convolution's `[O, C/G·kh·kw]`, row-major as in the flat parameter vector) and bias `b`, KFAC
//! approximates the curvature block of the layer by Kronecker products. With the parameter
//! vector's row-major layout, `(B ⊗ A) vec(W) = vec(B W A)`:
//!
//! * weight block `B ⊗ A`, bias block `B` (separate, curvlinops' default
//!   `separate_weight_and_bias=True`), or with `joint_bias` one block `B ⊗ Ā` acting on
//!   `[W | b]` (`[out, in + 1]`), `Ā` the input factor of the inputs augmented by a constant 1.
//! * **Input factor** `A = 1/(N·P) Σ_n Σ_p a_{np} a_{np}ᵀ` — the mean over the `N` data points
//!   and the `P` weight-sharing positions of the layer input (for a convolution: the unfolded
//!   patches, averaged over channel groups as curvlinops does; `P = 1` for a linear layer).
//!   With `reduce` (Eschenhagen et al. 2023) the patches are first averaged over positions:
//!   `A = 1/N Σ_n ā_n ā_nᵀ`, `ā_n = 1/P Σ_p a_{np}`.
//! * **Gradient factor** `B = Σ_n Σ_r Σ_p g_{nrp} g_{nrp}ᵀ` (`reduce`: `Σ_n Σ_r ĝ_{nr} ĝ_{nr}ᵀ`,
//!   `ĝ_{nr} = Σ_p g_{nrp}`), where `g_{nr}` is the backpropagated vector at the layer output
//!   for the `r`-th output cotangent `u_{nr}` of sample `n`. `B` carries every loss-scaling
//!   factor (`L = c Σ_n ℓ_n`):
//!
//!   | Fisher type | cotangents `u_{nr}` |
//!   |---|---|
//!   | `type-2` | `√c S_n e_r`, the columns of the loss-Hessian factor (`S_n S_nᵀ = ∇²_f ℓ_n`) |
//!   | `mc` | `√(c/M) ∇_f ℓ(f_n, ŷ_{nm})`, `M` labels drawn from the model, keyed by (seed, n, m) |
//!   | `empirical` | `√c ∇_f ℓ_n` |
//!   | `forward-only` | none: `B = I` |
//!
//! Everything is a sum over data points normalized by the data-set size, so the factors do not
//! depend on how the data is split into batches.
//!
//! # EKFAC
//! George et al. (2018): with the eigendecompositions `A = Q_A Λ_A Q_Aᵀ`, `B = Q_B Λ_B Q_Bᵀ`,
//! EKFAC is `(Q_B ⊗ Q_A) diag(E) (Q_B ⊗ Q_A)ᵀ` with the corrected eigenvalues
//! `E[i, j] = Σ_n Σ_r (q_{B,i}ᵀ G_{nr} q_{A,j})²` from the per-example gradients
//! `G_{nr} = Σ_p g_{nrp} a_{np}ᵀ` of the same cotangents as `B` (bias: `E[i] = Σ (q_{B,i}ᵀ Σ_p g_{nrp})²`).
//! As in curvlinops, the corrections always use the expanded (per-position) patches, also with
//! `reduce`.
//!
//! # Modules
//! * [`factors`]: the data pass (statistics) that fits the factors ([`fit_kfac`]).
//! * [`operator`]: [`Kfac`], the block-diagonal Kronecker operator with exact trace, log-det,
//!   determinant, Frobenius norm, diagonal, eigendecomposition and damped solves.
//! * [`inverse`]: [`KfacInverse`], `inverse(δ, mode)` with the three damping modes.
//! * [`ekfac`]: [`Ekfac`] and [`fit_ekfac`].
//! * [`io`]: saving and loading fitted factors (safetensors).

pub mod ekfac;
pub mod factors;
pub mod inverse;
pub mod io;
mod kernels;
pub mod operator;
mod slots;

pub use ekfac::{fit_ekfac, Ekfac};
pub use factors::{fit_kfac, KfacFactors, LayerFactors};
pub use inverse::{DampingMode, KfacInverse};
pub use operator::Kfac;

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
    /// A factors file that cannot be read or does not fit the problem.
    #[error("{0}")]
    File(String),
    /// A linear-algebra failure (eigendecomposition, singular factor).
    #[error(transparent)]
    Linalg(#[from] LinalgError),
}
