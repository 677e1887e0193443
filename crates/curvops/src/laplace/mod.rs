//! Laplace approximations `N(θ_MAP, P⁻¹)` of a trained network's posterior, with the
//! conventions of laplace-torch 0.3 (SPEC.md §4).
//!
//! # The model
//! For a data set of `N` samples with `C` outputs, a likelihood `p(y | f(x; θ))` and a Gaussian
//! prior `N(0, diag(τ)⁻¹)` on the parameters of the posterior (all, the last layer, or a
//! subnetwork), the Laplace approximation at the MAP `θ*` is `N(θ*, P⁻¹)` with posterior
//! precision
//!
//! `P = h·H + diag(τ)`,   `h = 1/(σ²·T)`,
//!
//! where `H` approximates the Hessian of the negative log-likelihood `Σ_n ℓ_n` (the loss
//! **summed** over the data, whatever `model.json`'s reduction):
//!
//! | likelihood (loss) | `−log p(y | f)` | `H` (GGN) |
//! |---|---|---|
//! | classification (`cross_entropy`) | `ℓ_n` | `Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n` |
//! | regression (`mse`), `N(y; f, σ²)` | `½σ⁻²‖f − y‖² + C log(σ√2π)` | `Σ_n J_nᵀ J_n` |
//! | binary (`bce_with_logits`) | `ℓ_n` | `Σ_n J_nᵀ diag(p(1 − p)) J_n` |
//!
//! In engine terms `H = s · Curv(Σ_n ℓ_n)` with `s = ½` for MSE (whose per-sample loss is
//! `‖f − y‖²`) and `s = 1` otherwise; the curvature can be the GGN, the empirical Fisher
//! (`s Σ_n ∇ℓ_n ∇ℓ_nᵀ`, laplace-torch's convention), the Monte-Carlo Fisher, or the exact
//! Hessian (full structure only). `σ` (regression noise) and `T` (temperature) are 1 for
//! classification.
//!
//! # Structures ([`HessianStructure`])
//! * `Full`: the dense `D × D` matrix (`P` factored by Cholesky);
//! * `Diag`: the exact diagonal of `H`;
//! * `Kron` (KFAC): per linear layer, weight and bias blocks separately (curvlinops'
//!   `separate_weight_and_bias=True`), `H_W ≈ B ⊗ A` with `A = 1/N Σ_n a_n a_nᵀ` (layer inputs)
//!   and `B = s Σ_n Σ_r g_nr g_nrᵀ` (the loss-Hessian factor columns backpropagated to the
//!   layer output, "type-2"), `H_b = B` exactly; the prior is added exactly to the Kronecker
//!   eigenvalues: `eig(P_W) = h λ_B,i λ_A,j + τ`;
//!   ([`KfacSampling`] estimates the blocks on a random subset of the training samples, or
//!   debiased: eigenbases from one batch, eigenvalues from an independent one, see
//!   [`KfacSampling::Debiased`]);
//! * `LowRank`: the top-`k` eigenpairs of `H` by Lanczos, `P = h U Λ Uᵀ + diag(τ)` (Woodbury).
//!
//! # Log marginal likelihood
//! `log p(D) ≈ log p(D | θ*) − ½ (log det P − Σ_i log τ_i + Σ_i τ_i θ*_i²)` with
//! `log p(D | θ*) = −h Σ_n sℓ_n − N·C·log(σ√2π)` (the last term for regression only).
//!
//! # Predictive ([`predictive`])
//! Linearized (GLM): `f ~ N(f(x; θ*), J(x) P⁻¹ J(x)ᵀ)` with the probit link
//! `softmax(f_μ / √(1 + π/8 · diag Σ_f))` or Monte-Carlo over `f`; regression mean and
//! variance `diag Σ_f + σ²`; and the sampled-network predictive over `θ ~ N(θ*, P⁻¹)`.
//! Functional variances need only `P⁻¹` applied to the `C` Jacobian rows of each test point
//! (structured solves), never a `D × D` covariance for diag/KFAC/low-rank.
//!
//! # Prior precision
//! Fixed, tuned by maximizing the log marginal likelihood ([`marglik`]: scalar or per-tensor
//! `τ`, and `σ` for regression; the exact optimum, by root finding on the posterior's
//! eigenvalues where the structure allows it, MacKay's fixed point otherwise), or by grid
//! search on validation NLL ([`marglik::gridsearch`]).

mod fit;
pub mod io;
mod kfac_fit;
mod kron;
pub mod marglik;
mod posterior;
pub mod predictive;
pub mod select;

pub(crate) use fit::output_factor;
pub use fit::{fit, HessianApprox, KronBlock, LaplaceFit, ParamGroup};
pub use kfac_fit::{sample_split, KfacSampling, SampleSets};
pub use marglik::{optimize_marglik, MarglikOptions, MarglikResult, PriorStructure};
pub use posterior::{Posterior, PosteriorCovarianceOp, PosteriorPrecisionOp};
pub use predictive::{GlmOutput, Link};
pub use select::{select_prior, PredictiveMetrics, PriorChoice, PriorSelection};

use crate::Curvature;
use curvops_nn::{ActiveSet, LossKind, Network};
use curvops_tensor::Float;

/// The parameters of a last-layer Laplace approximation: those of the last node that has any
/// (all its roles; for an output layer tied to an earlier tensor, such as a language model's
/// `lm_head` sharing the token embedding, the tied tensor). `None` without parameters.
pub fn last_layer<T: Float>(net: &Network<T>) -> Option<ActiveSet> {
    let lay = &net.layout;
    let last = lay.layer_entries.iter().rposition(|r| !r.is_empty())?;
    let mut mask = vec![false; lay.entries.len()];
    for &i in &lay.layer_entries[last] {
        mask[i] = true;
    }
    Some(ActiveSet::from_mask(lay, &mask))
}

/// An error of the Laplace library: a one-line message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LaplaceError(pub String);

impl From<curvops_linalg::LinalgError> for LaplaceError {
    fn from(e: curvops_linalg::LinalgError) -> Self {
        Self(e.to_string())
    }
}

/// The likelihood of the Laplace approximation, given by the model's loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Likelihood {
    /// Categorical on softmax(f) (`cross_entropy`).
    Classification,
    /// Gaussian `N(y; f, σ²)` (`mse`).
    Regression,
    /// Independent Bernoullis on sigmoid(f) (`bce_with_logits`).
    Binary,
}

impl Likelihood {
    /// The likelihood of a loss.
    pub fn of(kind: LossKind) -> Self {
        match kind {
            LossKind::CrossEntropy => Self::Classification,
            LossKind::Mse => Self::Regression,
            LossKind::BceWithLogits => Self::Binary,
        }
    }
    /// `s` with `H = s · Curv(Σ_n ℓ_n)`: ½ for regression (`ℓ_n = ‖f − y‖²`), 1 otherwise.
    pub fn scale(&self) -> f64 {
        match self {
            Self::Regression => 0.5,
            _ => 1.0,
        }
    }
    /// The name used in files and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Classification => "classification",
            Self::Regression => "regression",
            Self::Binary => "binary",
        }
    }
}

/// How the curvature `H` is approximated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HessianStructure {
    /// Dense `D × D`.
    Full,
    /// The exact diagonal.
    Diag,
    /// KFAC (weight `B ⊗ A`, bias `B`, per linear layer).
    Kron,
    /// Top-`rank` eigenpairs (Lanczos).
    LowRank {
        /// Number of eigenpairs.
        rank: usize,
    },
}

impl HessianStructure {
    /// The name used in files, JSON and on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Diag => "diag",
            Self::Kron => "kfac",
            Self::LowRank { .. } => "lowrank",
        }
    }
}

/// A prior precision: one `τ`, one per parameter group (tensor), or one per parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum PriorPrecision {
    /// `τ I`.
    Scalar(f64),
    /// `τ_g` for every parameter of group `g` (laplace-torch's "layerwise": weight and bias
    /// tensors separately).
    Layerwise(Vec<f64>),
    /// One `τ_i` per parameter.
    Diagonal(Vec<f64>),
}

impl PriorPrecision {
    /// The per-parameter precisions for groups of the given sizes.
    pub fn expand(&self, group_sizes: &[usize]) -> Vec<f64> {
        let d: usize = group_sizes.iter().sum();
        match self {
            Self::Scalar(t) => vec![*t; d],
            Self::Layerwise(v) => {
                assert_eq!(v.len(), group_sizes.len(), "layerwise prior: one value per group");
                group_sizes.iter().zip(v).flat_map(|(&n, &t)| std::iter::repeat_n(t, n)).collect()
            }
            Self::Diagonal(v) => {
                assert_eq!(v.len(), d, "diagonal prior: one value per parameter");
                v.clone()
            }
        }
    }
    /// The per-group precisions, if the prior is constant on each group.
    pub fn per_group(&self, groups: usize) -> Option<Vec<f64>> {
        match self {
            Self::Scalar(t) => Some(vec![*t; groups]),
            Self::Layerwise(v) => Some(v.clone()),
            Self::Diagonal(_) => None,
        }
    }
    /// A JSON value: a number or a list.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Scalar(t) => serde_json::json!(t),
            Self::Layerwise(v) | Self::Diagonal(v) => serde_json::json!(v),
        }
    }
    /// Checks that every precision is positive and finite.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |t: &f64| t.is_finite() && *t > 0.0;
        let all = match self {
            Self::Scalar(t) => ok(t),
            Self::Layerwise(v) | Self::Diagonal(v) => v.iter().all(ok),
        };
        if all {
            Ok(())
        } else {
            Err("the prior precision must be positive and finite".into())
        }
    }
}

/// What to fit.
#[derive(Clone, Debug)]
pub struct LaplaceOptions {
    /// The structure of `H`.
    pub structure: HessianStructure,
    /// The curvature (`Ggn`, `Ef`, `FisherMc` or `Hessian`).
    pub curvature: Curvature,
    /// Mini-batch size of the data pass (0: all data in one batch); the result does not depend
    /// on it.
    pub batch_size: usize,
    /// Lanczos tolerance for the low-rank structure.
    pub lanczos_tol: f64,
    /// Seed of the Lanczos start vector.
    pub seed: u64,
    /// The training samples a KFAC curvature is estimated on (the KFAC structure only).
    pub kfac_sampling: KfacSampling,
}

impl Default for LaplaceOptions {
    fn default() -> Self {
        Self {
            structure: HessianStructure::Full,
            curvature: Curvature::Ggn,
            batch_size: 0,
            lanczos_tol: 1e-10,
            seed: 0,
            kfac_sampling: KfacSampling::All,
        }
    }
}
