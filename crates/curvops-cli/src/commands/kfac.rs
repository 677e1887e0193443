//! KFAC / EKFAC operators for the CLI (`CURV` = `kfac` | `ekfac`; SPEC.md §3; chains and graph
//! models alike: maps get Kronecker blocks, tied tensors the sum of their uses' blocks, other
//! parameters their exact curvature block, see docs/kfac.md), the KFAC
//! preconditioner of `solve --precond kfac`, and `curvops kfac-fit` (fit once, save the factors,
//! reuse them with `--kfac-factors`).
//!
//! Flags (in `Common`): `--fisher type-2|mc|empirical|forward-only` (`--mc-samples`, `--seed`
//! for `mc`), `--kfac-approx expand|reduce`, `--joint-bias`, `--kfac-factors FILE` (load instead
//! of fitting; the file's options are used), `--kfac-damping exact|same|pi` (how `--damping λ`
//! enters `solve` / `logdet` of KFAC and the preconditioner: `exact` is `KFAC + λI`;
//! `same` and `pi` add `λ` to the Kronecker factors, as KFAC optimizers do).

use crate::args::{Common, Curv, FisherType as FisherArg, KfacApprox as ApproxArg, KfacDamping};
use crate::common::CliResult;
use crate::obj;
use crate::output::emit;
use curvops::kfac::io::{load_factors, save_ekfac, save_kfac, LoadedFactors};
use curvops::kfac::{DampedKfac, DampingMode, Ekfac, FisherType, Kfac, KfacApprox, KfacOptions};
use curvops::registry::{OperatorKind, OperatorSpec, RegistryError};
use curvops::{ActiveSet, LinearOperator, Problem};
use curvops_tensor::Float;
use std::path::PathBuf;

/// The fit options of the flags.
pub fn options(c: &Common, bs: usize) -> CliResult<KfacOptions> {
    let fisher = match c.fisher {
        FisherArg::Type2 => FisherType::Type2,
        FisherArg::Mc => {
            if c.mc_samples == 0 {
                return Err("--mc-samples must be positive".into());
            }
            FisherType::Mc { samples: c.mc_samples, seed: c.seed }
        }
        FisherArg::Empirical => FisherType::Empirical,
        FisherArg::ForwardOnly => FisherType::ForwardOnly,
    };
    let approx = match c.kfac_approx {
        ApproxArg::Expand => KfacApprox::Expand,
        ApproxArg::Reduce => KfacApprox::Reduce,
    };
    Ok(KfacOptions { fisher, approx, joint_bias: c.joint_bias, batch_size: bs })
}

/// `--kfac-damping` as the library's mode.
pub fn damping_mode(c: &Common) -> DampingMode {
    match c.kfac_damping {
        KfacDamping::Exact => DampingMode::Exact,
        KfacDamping::Same => DampingMode::Same,
        KfacDamping::Pi => DampingMode::Pi,
    }
}

/// KFAC fitted on the data, or loaded from `--kfac-factors` (an EKFAC file also holds KFAC's
/// factors).
pub fn kfac_of<T: Float>(p: &Problem<T>, active: &ActiveSet, bs: usize, c: &Common) -> CliResult<Kfac<T>> {
    match &c.kfac_factors {
        Some(path) => match load_factors(path, p, active).map_err(|e| e.to_string())? {
            LoadedFactors::Kfac(k) => Ok(k),
            LoadedFactors::Ekfac(e) => Ok(Kfac::new(e.factors().clone())),
        },
        None => Kfac::fit(p, active, &options(c, bs)?).map_err(|e| fit_error("kfac", e)),
    }
}

/// EKFAC fitted on the data, or loaded from `--kfac-factors` (which must be an EKFAC file).
pub fn ekfac_of<T: Float>(p: &Problem<T>, active: &ActiveSet, bs: usize, c: &Common) -> CliResult<Ekfac<T>> {
    match &c.kfac_factors {
        Some(path) => match load_factors(path, p, active).map_err(|e| e.to_string())? {
            LoadedFactors::Ekfac(e) => Ok(e),
            LoadedFactors::Kfac(_) => Err(format!(
                "{}: holds KFAC factors without EKFAC's corrected eigenvalues (fit with `curvops kfac-fit ekfac`)",
                path.display()
            )),
        },
        None => Ekfac::fit(p, active, &options(c, bs)?).map_err(|e| fit_error("ekfac", e)),
    }
}

/// The KFAC or EKFAC operator of the problem (`--fisher`, `--kfac-approx`, `--joint-bias`,
/// `--kfac-factors`, `--kfac-damping`).
pub fn make_operator<'a, T: Float>(
    curv: Curv,
    p: &'a Problem<T>,
    active: ActiveSet,
    bs: usize,
    c: &Common,
) -> CliResult<Box<dyn LinearOperator<T> + 'a>> {
    if c.blocks.is_some() {
        return Err("--blocks: KFAC and EKFAC are block diagonal already".into());
    }
    let mode = damping_mode(c);
    if curv == Curv::Ekfac && mode != DampingMode::Exact {
        return Err(format!("--kfac-damping {}: EKFAC supports exact damping only", mode.name()));
    }
    if c.kfac_factors.is_some() {
        // factors from a file: wrapped here, not fitted
        return match curv {
            Curv::Kfac => {
                let k = kfac_of(p, &active, bs, c)?;
                Ok(if mode == DampingMode::Exact { Box::new(k) } else { Box::new(DampedKfac::new(k, mode)) })
            }
            Curv::Ekfac => Ok(Box::new(ekfac_of(p, &active, bs, c)?)),
            other => Err(format!("{other:?} is not a Kronecker-factored operator").to_lowercase()),
        };
    }
    let options = options(c, bs)?;
    let (kind, what) = match curv {
        Curv::Kfac => (OperatorKind::Kfac { options, damping: mode }, "kfac"),
        Curv::Ekfac => (OperatorKind::Ekfac { options }, "ekfac"),
        other => return Err(format!("{other:?} is not a Kronecker-factored operator").to_lowercase()),
    };
    let spec = OperatorSpec { batch_size: bs, ..OperatorSpec::new(kind) };
    curvops::registry::build_active(p, &spec, active).map_err(|e| match e {
        RegistryError::Kfac(e) => fit_error(what, e),
        e => format!("{what}: {e}"),
    })
}

/// `(KFAC + λ)⁻¹` (`--kfac-damping` mode) as a preconditioner for CG.
pub fn make_preconditioner<'a, T: Float>(
    p: &'a Problem<T>,
    active: ActiveSet,
    bs: usize,
    c: &Common,
    damping: f64,
) -> CliResult<Box<dyn LinearOperator<T> + 'a>> {
    let k = kfac_of(p, &active, bs, c)?;
    let inv = k.inverse(damping, damping_mode(c)).map_err(|e| format!("--precond kfac: {e}"))?;
    Ok(Box::new(inv))
}

/// Which operator `kfac-fit` fits.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FitKind {
    Kfac,
    Ekfac,
}

/// `curvops kfac-fit kfac|ekfac --out FACTORS.safetensors`.
#[derive(clap::Args, Debug)]
pub struct FitArgs {
    /// What to fit.
    #[arg(value_enum, default_value = "kfac")]
    pub kind: FitKind,
    #[command(flatten)]
    pub common: Common,
    /// Output (safetensors; keys `{block}.A`, `{block}.B` per map (`{block}` = the node's name,
    /// with `.in_proj`/`.out_proj` for attention), `{tensor}.B` per dense block,
    /// `{tensor}.use{u}.A|B` per use of a tied tensor, and for EKFAC `{block}.Q_A`, `{block}.Q_B`,
    /// `{block}.E_weight|E_bias|E_joint`, `{tensor}.Q`, `{tensor}.E`; see docs/kfac.md).
    #[arg(long)]
    pub out: PathBuf,
}

/// Fits KFAC / EKFAC on the data and writes the factors.
pub fn fit<T: Float>(a: &FitArgs, p: &Problem<T>, active: ActiveSet, bs: usize) -> CliResult<()> {
    let c = &a.common;
    if c.kfac_factors.is_some() {
        return Err("kfac-fit: --kfac-factors loads fitted factors; kfac-fit fits them (drop one)".into());
    }
    let t = std::time::Instant::now();
    let (trace, layers, o) = match a.kind {
        FitKind::Kfac => {
            let k = kfac_of(p, &active, bs, c)?;
            let secs = t.elapsed().as_secs_f64();
            save_kfac(&a.out, &k).map_err(|e| e.to_string())?;
            let f = k.factors();
            (k.trace().map_err(|e| e.to_string())?.as_f64(), f.layers.len() + f.tied.len(), (f.options, secs))
        }
        FitKind::Ekfac => {
            let e = ekfac_of(p, &active, bs, c)?;
            let secs = t.elapsed().as_secs_f64();
            save_ekfac(&a.out, &e).map_err(|e| e.to_string())?;
            let f = e.factors();
            (e.trace().map_err(|e| e.to_string())?.as_f64(), f.layers.len() + f.tied.len(), (f.options, secs))
        }
    };
    let (opts, secs) = o;
    emit(
        c.json,
        obj! {"out" => a.out.display().to_string(), "kind" => format!("{:?}", a.kind).to_lowercase(),
        "D" => active.dim, "layers" => layers, "fisher" => opts.fisher.name(), "kfac_approx" => opts.approx.name(),
        "joint_bias" => opts.joint_bias, "trace" => trace, "fit_seconds" => secs},
    );
    Ok(())
}

/// A fit error as one line; a parameter KFAC cannot cover gets the flag that leaves it out.
fn fit_error(what: &str, e: curvops::kfac::KfacError) -> String {
    match e {
        curvops::kfac::KfacError::Parameter { .. } => format!("{what}: {e} (restrict the operator with --params)"),
        e => format!("{what}: {e}"),
    }
}
