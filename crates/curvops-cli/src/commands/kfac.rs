//! KFAC / EKFAC operators for the CLI (`CURV` = `kfac` | `ekfac`; SPEC.md §3), the KFAC
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
use curvops::kfac::{DampingMode, Ekfac, FisherType, Kfac, KfacApprox, KfacOptions};
use curvops::{ActiveSet, LinearOperator, Problem};
use curvops_linalg::{Eigh, LinalgError, Structure};
use curvops_tensor::Float;
use faer::{MatMut, MatRef};
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
        None => Kfac::fit(p, active, &options(c, bs)?).map_err(|e| format!("kfac: {e}")),
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
        None => Ekfac::fit(p, active, &options(c, bs)?).map_err(|e| format!("ekfac: {e}")),
    }
}

/// KFAC whose `A + λI` in `solve` / `logdet` follows `--kfac-damping` (`same` / `pi`: the
/// factor-damped approximation; `exact`: KFAC's own exact operations).
struct FactorDamped<T: Float> {
    k: Kfac<T>,
    mode: DampingMode,
}

impl<T: Float> LinearOperator<T> for FactorDamped<T> {
    fn nrows(&self) -> usize {
        self.k.nrows()
    }
    fn ncols(&self) -> usize {
        self.k.ncols()
    }
    fn structure(&self) -> Structure {
        self.k.structure()
    }
    fn describe(&self) -> String {
        format!("{} [{} damping]", self.k.describe(), self.mode.name())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) {
        self.k.apply(out, rhs)
    }
    fn trace(&self) -> Result<T, LinalgError> {
        self.k.trace()
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        self.k.diagonal()
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.k.logdet_damped(shift.as_f64(), self.mode)
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let inv = self.k.inverse(shift.as_f64(), self.mode).map_err(|e| LinalgError::Other(e.to_string()))?;
        inv.apply(out, rhs);
        Ok(())
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        self.k.eigh()
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
    match curv {
        Curv::Kfac => {
            let k = kfac_of(p, &active, bs, c)?;
            Ok(if mode == DampingMode::Exact { Box::new(k) } else { Box::new(FactorDamped { k, mode }) })
        }
        Curv::Ekfac => {
            if mode != DampingMode::Exact {
                return Err(format!("--kfac-damping {}: EKFAC supports exact damping only", mode.name()));
            }
            Ok(Box::new(ekfac_of(p, &active, bs, c)?))
        }
        other => Err(format!("{other:?} is not a Kronecker-factored operator").to_lowercase()),
    }
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
    /// Output (safetensors; keys `{layer}.A`, `{layer}.B`, and for EKFAC `{layer}.Q_A`,
    /// `{layer}.Q_B`, `{layer}.E_weight|E_bias|E_joint`; see README).
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
            (k.trace().map_err(|e| e.to_string())?.as_f64(), k.factors().layers.len(), (k.factors().options, secs))
        }
        FitKind::Ekfac => {
            let e = ekfac_of(p, &active, bs, c)?;
            let secs = t.elapsed().as_secs_f64();
            save_ekfac(&a.out, &e).map_err(|e| e.to_string())?;
            (e.trace().map_err(|e| e.to_string())?.as_f64(), e.factors().layers.len(), (e.factors().options, secs))
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
