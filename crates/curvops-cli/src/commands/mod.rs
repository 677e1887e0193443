//! The subcommands.

mod bench;
mod demo;
mod dense;
mod info;
mod loss_grad;
mod matvec;
mod per_sample;

use crate::args::{Cli, Command, Common, Curv, Dtype};
use crate::common::{self, CliResult};
use curvops::{ActiveSet, Curvature, CurvatureOperator, JacobianOperator, LinearOperator, Problem};
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
    }
}

fn run_typed<T: Float>(cmd: Command, c: &Common) -> CliResult<()> {
    let p = common::load::<T>(c)?;
    let active = common::active(c, &p)?;
    let bs = common::batch_size(c)?;
    match cmd {
        Command::Info { .. } => info::run(c, &p, &active),
        Command::LossGrad { out, .. } => loss_grad::run(c, &p, &active, bs, out.as_deref()),
        Command::Dense { curv, mc_samples, out, .. } => dense::run(c, &p, active, bs, curv, mc_samples, &out),
        Command::Matvec { curv, vectors, mc_samples, out, .. } => {
            matvec::run(c, &p, active, bs, curv, mc_samples, &vectors, &out)
        }
        Command::PerSample { quantity, out, .. } => per_sample::run(c, &p, &active, bs, quantity, &out),
        Command::Demo { .. } | Command::Bench { .. } => unreachable!("handled above"),
    }
}

/// The curvature kind of a `CURV` that is a square curvature matrix.
pub fn curvature_of(curv: Curv, mc_samples: usize, seed: u64) -> CliResult<Option<Curvature>> {
    Ok(match curv {
        Curv::Hessian => Some(Curvature::Hessian),
        Curv::Ggn => Some(Curvature::Ggn),
        Curv::Ef => Some(Curvature::Ef),
        Curv::FisherMc => {
            if mc_samples == 0 {
                return Err("--mc-samples must be positive".into());
            }
            Some(Curvature::FisherMc { samples: mc_samples, seed })
        }
        Curv::Jacobian | Curv::JacobianT => None,
    })
}

/// The operator named by `CURV`.
pub fn make_operator<'a, T: Float>(
    curv: Curv,
    p: &'a Problem<T>,
    active: ActiveSet,
    bs: usize,
    mc_samples: usize,
    seed: u64,
) -> CliResult<Box<dyn LinearOperator<T> + 'a>> {
    Ok(match curvature_of(curv, mc_samples, seed)? {
        Some(kind) => Box::new(CurvatureOperator::new(p, kind, active, bs)),
        None => Box::new(JacobianOperator::new(p, active, bs, curv == Curv::JacobianT)),
    })
}
