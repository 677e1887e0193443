//! `curvops diag CURV --method exact|mc|hutchinson|xdiag --samples S --out d.npy`.
//!
//! `exact` for `ggn`, `hessian`, `ef` and `fisher-mc` computes the diagonal without forming the
//! matrix (`curvops::diag`: the loss-Hessian factor, sampled gradients or per-sample gradients
//! backpropagated, BackPACK's DiagGGN / DiagHessian); for `kfac` / `ekfac` it is read off the
//! factors; for other operators it falls back to unit-vector products. `mc` is the Monte-Carlo
//! GGN diagonal (`--mc-samples`, `--seed`; for `ggn` and `fisher-mc`). `--blocks` does not
//! change a diagonal.

use crate::args::Curv as C;
use crate::args::{Common, Curv};
use crate::commands::trace::ProbeArg;
use crate::common::{CliResult, ProgressOp};
use crate::obj;
use crate::output::emit;
use curvops::diag::{curvature_diag, DiagKind};
use curvops::{ActiveSet, Problem};
use curvops_linalg::estimators::{diag_exact, diag_hutchinson, diag_xdiag, EstimatorOptions};
use curvops_nn::io::write_npy;
use curvops_tensor::Float;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiagMethod {
    /// The exact diagonal.
    Exact,
    /// Monte-Carlo GGN diagonal (sampled labels, `--mc-samples`).
    Mc,
    Hutchinson,
    Xdiag,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    pub curv: Curv,
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "exact")]
    pub method: DiagMethod,
    /// Matrix-vector products the estimator may use.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    #[arg(long, value_enum, default_value = "rademacher")]
    pub probe: ProbeArg,
    /// Output (.npy, [D]).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run<T: Float>(a: &Args, p: &Problem<T>, active: ActiveSet, bs: usize) -> CliResult<()> {
    let c = &a.common;
    let o = EstimatorOptions { probe: a.probe.probe(), seed: c.seed, block_size: 64 };
    let (values, std_err, matvecs, how) = match a.method {
        DiagMethod::Mc => {
            if !matches!(a.curv, C::Ggn | C::FisherMc) {
                let curv = format!("{:?}", a.curv).to_lowercase();
                return Err(format!("diag --method mc: the Monte-Carlo diagonal is of ggn / fisher-mc, not {curv}"));
            }
            if c.mc_samples == 0 {
                return Err("--mc-samples must be positive".into());
            }
            let kind = DiagKind::GgnMc { samples: c.mc_samples, seed: c.seed };
            (curvature_diag(p, kind, &active, bs), None, 0, "monte-carlo ggn diagonal (sampled labels)")
        }
        DiagMethod::Exact if matches!(a.curv, C::Ggn | C::Hessian | C::Ef | C::FisherMc) => {
            let kind = match a.curv {
                C::Ggn => DiagKind::Ggn,
                C::Hessian => DiagKind::Hessian,
                C::Ef => DiagKind::Ef,
                _ => {
                    if c.mc_samples == 0 {
                        return Err("--mc-samples must be positive".into());
                    }
                    DiagKind::GgnMc { samples: c.mc_samples, seed: c.seed }
                }
            };
            (curvature_diag(p, kind, &active, bs), None, 0, "exact (backpropagated factors)")
        }
        DiagMethod::Exact => {
            let op = super::make_operator(a.curv, p, active, bs, c)?;
            let op = ProgressOp::new(op.as_ref(), "diag");
            let d = diag_exact(&op, 64).map_err(|e| format!("diag: {e}"))?;
            (d.values, d.std_err, d.matvecs, "exact (structure or unit-vector blocks)")
        }
        DiagMethod::Hutchinson | DiagMethod::Xdiag => {
            if a.samples == 0 {
                return Err("--samples must be positive".into());
            }
            let op = super::make_operator(a.curv, p, active, bs, c)?;
            let op = ProgressOp::new(op.as_ref(), "diag");
            let d = if a.method == DiagMethod::Hutchinson {
                diag_hutchinson(&op, a.samples, &o)
            } else {
                diag_xdiag(&op, a.samples, &o)
            }
            .map_err(|e| format!("diag: {e}"))?;
            (d.values, d.std_err, d.matvecs, if a.method == DiagMethod::Hutchinson { "hutchinson" } else { "xdiag" })
        }
    };
    write_npy(&a.out, &[values.len()], &values).map_err(|e| e.to_string())?;
    let se_mean = std_err.map(|s| s.iter().sum::<f64>() / s.len().max(1) as f64);
    emit(
        c.json,
        obj! {"out" => a.out.display().to_string(), "D" => values.len(), "matvecs" => matvecs, "method" => how,
        "mean_std_err" => se_mean, "sum" => values.iter().map(|v| v.as_f64()).sum::<f64>()},
    );
    Ok(())
}
