//! `curvops trace CURV --method exact|hutchinson|hutchpp|xtrace --samples S`.

use crate::args::{Common, Curv};
use crate::common::{CliResult, ProgressOp};
use crate::obj;
use crate::output::emit;
use curvops::{ActiveSet, Problem};
use curvops_linalg::estimators::{trace_exact, trace_hutchinson, trace_hutchpp, trace_xtrace, EstimatorOptions, Probe};
use curvops_tensor::Float;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceMethod {
    Exact,
    Hutchinson,
    Hutchpp,
    Xtrace,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeArg {
    Rademacher,
    Gaussian,
}

impl ProbeArg {
    pub fn probe(self) -> Probe {
        match self {
            Self::Rademacher => Probe::Rademacher,
            Self::Gaussian => Probe::Gaussian,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    pub curv: Curv,
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "exact")]
    pub method: TraceMethod,
    /// Matrix-vector products the estimator may use.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    #[arg(long, value_enum, default_value = "rademacher")]
    pub probe: ProbeArg,
    /// Probe vectors per operator application.
    #[arg(long, default_value_t = 64)]
    pub block_size: usize,
}

pub fn run<T: Float>(a: &Args, p: &Problem<T>, active: ActiveSet, bs: usize) -> CliResult<()> {
    let c = &a.common;
    let op = super::make_operator(a.curv, p, active, bs, c)?;
    let op = ProgressOp::new(op.as_ref(), "trace");
    let o = EstimatorOptions { probe: a.probe.probe(), seed: c.seed, block_size: a.block_size.max(1) };
    if a.method != TraceMethod::Exact && a.samples == 0 {
        return Err("--samples must be positive".into());
    }
    let est = match a.method {
        TraceMethod::Exact => trace_exact(&op, o.block_size),
        TraceMethod::Hutchinson => trace_hutchinson(&op, a.samples, &o),
        TraceMethod::Hutchpp => trace_hutchpp(&op, a.samples, &o),
        TraceMethod::Xtrace => trace_xtrace(&op, a.samples, &o),
    }
    .map_err(|e| format!("trace: {e}"))?;
    emit(
        c.json,
        obj! {"trace" => est.value, "std_err" => est.std_err, "matvecs" => est.matvecs, "method" => format!("{:?}", a.method).to_lowercase()},
    );
    Ok(())
}
