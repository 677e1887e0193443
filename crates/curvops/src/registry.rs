//! The operator registry: one description of an operator turns into a `LinearOperator`.
//!
//! A front end (the CLI today, the Python package next) parses its flags or keyword arguments
//! into an [`OperatorSpec`] — which curvature, over which parameters and data, with which blocks,
//! caching and damping — and calls [`build`]; it never assembles operators itself. The returned
//! operator borrows the [`Problem`] (its model, `θ` and data) for its lifetime, so a cache it
//! keeps always belongs to that `θ`, and owns its [`DataWalk`] (the whole data set or a subset).
//!
//! | `kind` | operator | shape |
//! |---|---|---|
//! | `Hessian` | `∇²L` | `D_S × D_S` |
//! | `Ggn` | `c Σ_n J_nᵀ ∇²_f ℓ_n J_n` | `D_S × D_S` |
//! | `Ef` | `c Σ_n ∇ℓ_n ∇ℓ_nᵀ` | `D_S × D_S` |
//! | `FisherMc` | `c Σ_n J_nᵀ (1/M Σ_m g_nm g_nmᵀ) J_n` | `D_S × D_S` |
//! | `Jacobian` / `JacobianT` | `J` / `Jᵀ` of all outputs | `N·C × D_S` / `D_S × N·C` |
//!
//! | `Kfac` / `Ekfac` | KFAC / EKFAC fitted on the spec's data (`Kfac::fit_on`) | `D_S × D_S` |
//!
//! `blocks` restricts a square operator to its block diagonal (one block per node — a tied
//! tensor belongs to its first node — or per parameter tensor); `damping` adds `λI`. KFAC and
//! EKFAC are fitted once when the operator is built, on the same data walk (whole data set or
//! subset) as every other kind; factors loaded from a file are wrapped by the caller.

use crate::kfac::{DampedKfac, DampingMode, Ekfac, Kfac, KfacError, KfacOptions};
use crate::walk::{DataWalk, SubsetError};
use crate::{ActiveSet, Curvature, CurvatureOperator, JacobianOperator, Problem};
use curvops_linalg::{BlockRestrictOp, DampedOp, LinalgError, LinearOperator};
use curvops_nn::NnError;
use curvops_tensor::Float;

/// Which operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorKind {
    /// A curvature matrix of the engine.
    Curvature(Curvature),
    /// The Jacobian of all outputs.
    Jacobian,
    /// Its transpose.
    JacobianT,
    /// KFAC fitted on the spec's data ([`crate::kfac`]; `options.batch_size` is replaced by the
    /// spec's), whose damped solves and log-determinants follow `damping`.
    Kfac {
        /// The fit's options.
        options: KfacOptions,
        /// How a shift `λ` enters `solve_shifted` / `logdet_shifted`.
        damping: DampingMode,
    },
    /// EKFAC fitted on the spec's data (exact damping only).
    Ekfac {
        /// The fit's options.
        options: KfacOptions,
    },
}

/// Block-diagonal restriction of a square operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocks {
    /// One block per node (its parameter tensors that are consecutive in the flat order).
    Layer,
    /// One block per parameter tensor.
    Param,
}

/// The description of an operator (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorSpec {
    /// Which operator.
    pub kind: OperatorKind,
    /// Parameter keys or node names to differentiate (`None`: all), as [`ActiveSet::from_names`].
    pub params: Option<Vec<String>>,
    /// Block-diagonal restriction.
    pub blocks: Option<Blocks>,
    /// Samples per batch (0: all in one batch); results do not depend on it beyond rounding.
    pub batch_size: usize,
    /// The samples the operator sums over (`None`: all), with their reduction factor.
    pub subset: Option<Vec<usize>>,
    /// Forward-pass cache budget in bytes (0: none).
    pub cache_bytes: usize,
    /// `λ` of `A + λI` (0: none).
    pub damping: f64,
}

impl OperatorSpec {
    /// `kind` over all parameters and data, one batch, no cache, no damping.
    pub fn new(kind: OperatorKind) -> Self {
        Self { kind, params: None, blocks: None, batch_size: 0, subset: None, cache_bytes: 0, damping: 0.0 }
    }
}

/// Why an operator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A parameter name that the model does not have.
    #[error(transparent)]
    Params(#[from] NnError),
    /// A sample index out of range.
    #[error("subset: {0}")]
    Subset(#[from] SubsetError),
    /// An option that does not apply to the operator.
    #[error("{0}")]
    Option(String),
    /// The linear algebra refused (e.g. damping a rectangular operator).
    #[error(transparent)]
    Linalg(#[from] LinalgError),
    /// The KFAC / EKFAC fit failed (e.g. a parameter it cannot cover).
    #[error(transparent)]
    Kfac(#[from] KfacError),
}

/// Sizes of the blocks of `blocks` over the active parameters, in the subset vector's order
/// (consecutive tensors of one node form one block).
pub fn block_sizes<T: Float>(p: &Problem<T>, active: &ActiveSet, blocks: Blocks) -> Vec<usize> {
    let mut sizes: Vec<usize> = Vec::new();
    let mut last_layer = usize::MAX;
    for (e, _) in active.names(&p.net.layout) {
        match blocks {
            Blocks::Param => sizes.push(e.len),
            Blocks::Layer => {
                if e.layer == last_layer {
                    *sizes.last_mut().expect("a previous block") += e.len;
                } else {
                    sizes.push(e.len);
                    last_layer = e.layer;
                }
            }
        }
    }
    sizes
}

/// The active parameters of a spec.
pub fn active_set<T: Float>(p: &Problem<T>, spec: &OperatorSpec) -> Result<ActiveSet, RegistryError> {
    Ok(match &spec.params {
        None => ActiveSet::all(&p.net.layout),
        Some(names) => ActiveSet::from_names(&p.net.layout, names)?,
    })
}

/// Builds the operator that `spec` describes on `p`.
pub fn build<'a, T: Float>(
    p: &'a Problem<T>,
    spec: &OperatorSpec,
) -> Result<Box<dyn LinearOperator<T> + 'a>, RegistryError> {
    build_active(p, spec, active_set(p, spec)?)
}

/// [`build`] over an already resolved parameter subset (`spec.params` is not read).
pub fn build_active<'a, T: Float>(
    p: &'a Problem<T>,
    spec: &OperatorSpec,
    active: ActiveSet,
) -> Result<Box<dyn LinearOperator<T> + 'a>, RegistryError> {
    let walk = match &spec.subset {
        None => DataWalk::new(&p.data, spec.batch_size),
        Some(idx) => DataWalk::subset(&p.data, idx, spec.batch_size)?,
    };
    let sizes = spec.blocks.map(|b| block_sizes(p, &active, b));
    let op: Box<dyn LinearOperator<T> + 'a> = match spec.kind {
        OperatorKind::Curvature(kind) => {
            if let Curvature::FisherMc { samples: 0, .. } = kind {
                return Err(RegistryError::Option("the Monte-Carlo Fisher needs at least one sample".into()));
            }
            Box::new(CurvatureOperator::on(p, kind, active, walk).with_cache(spec.cache_bytes))
        }
        OperatorKind::Jacobian | OperatorKind::JacobianT => {
            if spec.blocks.is_some() {
                return Err(RegistryError::Option(
                    "blocks apply to square curvature operators, not to the Jacobian".into(),
                ));
            }
            if spec.damping != 0.0 {
                return Err(RegistryError::Option("damping applies to square operators, not to the Jacobian".into()));
            }
            Box::new(JacobianOperator::on(p, active, walk, spec.kind == OperatorKind::JacobianT))
        }
        OperatorKind::Kfac { options, damping } => {
            let o = KfacOptions { batch_size: spec.batch_size, ..options };
            let k = Kfac::fit_on(p, &walk, &active, &o)?;
            if damping == DampingMode::Exact {
                Box::new(k)
            } else {
                Box::new(DampedKfac::new(k, damping))
            }
        }
        OperatorKind::Ekfac { options } => {
            let o = KfacOptions { batch_size: spec.batch_size, ..options };
            Box::new(Ekfac::fit_on(p, &walk, &active, &o)?)
        }
    };
    let op = match sizes {
        Some(s) => Box::new(BlockRestrictOp::new(op, &s)?),
        None => op,
    };
    Ok(if spec.damping != 0.0 { Box::new(DampedOp::new(op, T::of(spec.damping))?) } else { op })
}
