//! The subcommands.

mod bench;
pub mod bias;
pub mod demo;
mod dense;
pub mod diag;
pub mod eigs;
mod info;
pub mod kfac;
pub mod laplace;
pub mod logdet;
mod loss_grad;
mod matvec;
mod per_sample;
pub mod solve;
pub mod spectrum;
pub mod trace;
pub mod train;
pub mod vivit;

use crate::args::{Blocks, Cli, Command, Common, Curv, Dtype};
use crate::common::{self, CliResult};
use curvops::{ActiveSet, Curvature, LinearOperator, Problem};
use curvops_tensor::Float;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> CliResult<()> {
    match cli.command {
        Command::Bench { dir, common, reps, dtypes, thread_counts, ops } => {
            bench::run(&dir, &common, reps, dtypes, thread_counts, ops)
        }
        Command::Demo { common } => {
            common::set_threads(&common)?;
            demo::run(&common)
        }
        Command::Train(a) => with_dtype(&a.common, |c| train::run(&a, c)),
        Command::Bias(a) => with_dtype(&a.common, |c| bias::run(&a, c)),
        Command::Laplace(a) => laplace::run(&a),
        cmd => {
            let c = common_of(&cmd).clone();
            common::set_threads(&c)?;
            match common::dtype_of(&c)? {
                Dtype::F32 => run_typed::<f32>(cmd, &c),
                Dtype::F64 => run_typed::<f64>(cmd, &c),
            }
        }
    }
}

fn common_of(cmd: &Command) -> &Common {
    match cmd {
        Command::Info { common }
        | Command::LossGrad { common, .. }
        | Command::Dense { common, .. }
        | Command::Matvec { common, .. }
        | Command::PerSample { common, .. }
        | Command::Demo { common }
        | Command::Bench { common, .. } => common,
        Command::Eigs(a) => &a.common,
        Command::Trace(a) => &a.common,
        Command::Diag(a) => &a.common,
        Command::Logdet(a) => &a.common,
        Command::Spectrum(a) => &a.common,
        Command::Solve(a) => &a.common,
        Command::Vivit(a) => &a.common,
        Command::Train(a) => &a.common,
        Command::Bias(a) => &a.common,
        Command::KfacFit(a) => &a.common,
        Command::Laplace(_) => unreachable!("laplace dispatches itself"),
    }
}

/// Sets threads and runs `f` after choosing the dtype (`--dtype`, else the weights').
pub fn with_dtype(c: &Common, f: impl FnOnce(&Common) -> CliResult<()>) -> CliResult<()> {
    common::set_threads(c)?;
    f(c)
}

fn run_typed<T: Float>(cmd: Command, c: &Common) -> CliResult<()> {
    let p = common::load::<T>(c)?;
    let active = common::active(c, &p)?;
    let bs = common::batch_size(c)?;
    match cmd {
        Command::Info { .. } => info::run(c, &p, &active),
        Command::LossGrad { out, .. } => loss_grad::run(c, &p, &active, bs, out.as_deref()),
        Command::Dense { curv, out, .. } => dense::run(c, &p, active, bs, curv, &out),
        Command::Matvec { curv, vectors, out, .. } => matvec::run(c, &p, active, bs, curv, &vectors, &out),
        Command::PerSample { quantity, out, .. } => per_sample::run(c, &p, &active, bs, quantity, &out),
        Command::Eigs(a) => eigs::run(&a, &p, active, bs),
        Command::Trace(a) => trace::run(&a, &p, active, bs),
        Command::Diag(a) => diag::run(&a, &p, active, bs),
        Command::Logdet(a) => logdet::run(&a, &p, active, bs),
        Command::Spectrum(a) => spectrum::run(&a, &p, active, bs),
        Command::Solve(a) => solve::run(&a, &p, active, bs),
        Command::Vivit(a) => vivit::run(&a, &p, active, bs),
        Command::KfacFit(a) => kfac::fit(&a, &p, active, bs),
        Command::Demo { .. } | Command::Bench { .. } | Command::Train(_) | Command::Bias(_) | Command::Laplace(_) => {
            unreachable!("handled above")
        }
    }
}

/// The curvature kind of a `CURV` that is a square curvature matrix computed by the engine.
pub fn curvature_of(curv: Curv, c: &Common) -> CliResult<Option<Curvature>> {
    Ok(match curv {
        Curv::Hessian => Some(Curvature::Hessian),
        Curv::Ggn => Some(Curvature::Ggn),
        Curv::Ef => Some(Curvature::Ef),
        Curv::FisherMc => {
            if c.mc_samples == 0 {
                return Err("--mc-samples must be positive".into());
            }
            Some(Curvature::FisherMc { samples: c.mc_samples, seed: c.seed })
        }
        Curv::Jacobian | Curv::JacobianT | Curv::Kfac | Curv::Ekfac => None,
    })
}

fn registry_blocks(b: Blocks) -> curvops::registry::Blocks {
    match b {
        Blocks::Layer => curvops::registry::Blocks::Layer,
        Blocks::Param => curvops::registry::Blocks::Param,
    }
}

/// The operator named by `CURV` (with `--blocks`, its block diagonal), built by the library's
/// registry (KFAC/EKFAC by the kfac module).
pub fn make_operator<'a, T: Float>(
    curv: Curv,
    p: &'a Problem<T>,
    active: ActiveSet,
    bs: usize,
    c: &Common,
) -> CliResult<Box<dyn LinearOperator<T> + 'a>> {
    use curvops::registry::{OperatorKind, OperatorSpec};
    let kind = match curv {
        Curv::Kfac | Curv::Ekfac => return kfac::make_operator(curv, p, active, bs, c),
        Curv::Jacobian => OperatorKind::Jacobian,
        Curv::JacobianT => OperatorKind::JacobianT,
        _ => OperatorKind::Curvature(curvature_of(curv, c)?.expect("a curvature")),
    };
    if c.blocks.is_some() && matches!(kind, OperatorKind::Jacobian | OperatorKind::JacobianT) {
        return Err("--blocks applies to square curvature operators, not to the Jacobian".into());
    }
    let spec = OperatorSpec {
        kind,
        params: c.params.clone(),
        blocks: c.blocks.map(registry_blocks),
        batch_size: bs,
        subset: None,
        cache_bytes: c.cache_mb << 20,
        damping: 0.0,
    };
    curvops::registry::build_active(p, &spec, active).map_err(|e| e.to_string())
}
