//! `curvops eigs CURV --k K`: extreme eigenpairs by thick-restart Lanczos (or power iteration).

use crate::args::{Common, Curv};
use crate::common::{CliResult, ProgressOp};
use crate::obj;
use crate::output::emit;
use curvops::{ActiveSet, Problem};
use curvops_linalg::eigen::{eigsh, power_iteration, EigshOptions, PowerOptions, Which};
use curvops_linalg::LinearOperator;
use curvops_nn::io::write_npy;
use curvops_tensor::Float;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhichArg {
    /// Algebraically largest (scipy's LA).
    Largest,
    /// Algebraically smallest (scipy's SA).
    Smallest,
    /// Largest |λ| (scipy's LM).
    Magnitude,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EigMethod {
    /// Thick-restart Lanczos with full reorthogonalization.
    Lanczos,
    /// Block power (subspace) iteration, the baseline.
    Power,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    pub curv: Curv,
    #[command(flatten)]
    pub common: Common,
    /// Number of eigenpairs.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    #[arg(long, value_enum, default_value = "largest")]
    pub which: WhichArg,
    /// Converged when ‖Au − λu‖ ≤ tol·|λ| for each pair.
    #[arg(long, default_value_t = 1e-8)]
    pub tol: f64,
    #[arg(long, value_enum, default_value = "lanczos")]
    pub method: EigMethod,
    /// Krylov subspace dimension (default max(2k+1, 20)).
    #[arg(long)]
    pub krylov_dim: Option<usize>,
    /// Maximum restarts (Lanczos) or iterations (power).
    #[arg(long)]
    pub max_iters: Option<usize>,
    /// Write the eigenvectors ([D, K], .npy).
    #[arg(long)]
    pub vectors_out: Option<PathBuf>,
}

pub fn run<T: Float>(a: &Args, p: &Problem<T>, active: ActiveSet, bs: usize) -> CliResult<()> {
    let c = &a.common;
    let op = super::make_operator(a.curv, p, active, bs, c)?;
    let op = ProgressOp::new(op.as_ref(), "eigs");
    let which = match a.which {
        WhichArg::Largest => Which::Largest,
        WhichArg::Smallest => Which::Smallest,
        WhichArg::Magnitude => Which::Magnitude,
    };
    if a.tol <= 0.0 {
        return Err("--tol must be positive".into());
    }
    let res = match a.method {
        EigMethod::Lanczos => {
            let mut o = EigshOptions { tol: a.tol, max_dim: a.krylov_dim, seed: c.seed, ..Default::default() };
            if let Some(m) = a.max_iters {
                o.max_restarts = m;
            }
            eigsh(&op, a.k, which, &o)
        }
        EigMethod::Power => {
            let mut o = PowerOptions { tol: a.tol, seed: c.seed, ..Default::default() };
            if let Some(m) = a.max_iters {
                o.max_iters = m;
            }
            power_iteration(&op, a.k, &o)
        }
    }
    .map_err(|e| format!("eigs: {e}"))?;
    if let Some(path) = &a.vectors_out {
        let (n, k) = (res.vectors.nrows(), res.vectors.ncols());
        let flat: Vec<T> = (0..n).flat_map(|i| (0..k).map(move |j| (i, j))).map(|(i, j)| res.vectors[(i, j)]).collect();
        write_npy(path, &[n, k], &flat).map_err(|e| e.to_string())?;
    }
    let values: Vec<f64> = res.values.iter().map(|v| v.as_f64()).collect();
    let rel: Vec<f64> = res.residuals.iter().zip(&values).map(|(r, v)| r / v.abs().max(f64::MIN_POSITIVE)).collect();
    emit(
        c.json,
        obj! {"eigenvalues" => values, "matvecs" => res.matvecs, "iterations" => res.iterations,
        "relative_residuals" => rel, "operator" => op.describe()},
    );
    Ok(())
}
