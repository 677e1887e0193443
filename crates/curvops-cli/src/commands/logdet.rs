//! `curvops logdet CURV --damping λ`: log det(CURV + λI), exact where the structure allows
//! (Kronecker, low rank, block diagonal), else from the dense matrix when D is small, else an
//! SLQ estimate of tr log(CURV + λI).

use crate::args::{Common, Curv};
use crate::common::{CliResult, ProgressOp};
use crate::obj;
use crate::output::emit;
use curvops::{ActiveSet, Problem};
use curvops_linalg::slq::{lanczos_quadrature, SlqOptions};
use curvops_linalg::{DenseOp, LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub curv: Curv,
    #[command(flatten)]
    pub common: Common,
    /// Damping λ added to the diagonal.
    #[arg(long, default_value_t = 0.0)]
    pub damping: f64,
    /// Largest D for which the dense matrix is formed when no exact structured log-determinant exists.
    #[arg(long, default_value_t = 4096)]
    pub dense_max: usize,
    /// SLQ random starts (when the log-determinant is estimated).
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// SLQ Lanczos steps per start.
    #[arg(long, default_value_t = 60)]
    pub steps: usize,
}

pub fn run<T: Float>(a: &Args, p: &Problem<T>, active: ActiveSet, bs: usize) -> CliResult<()> {
    let c = &a.common;
    let op = super::make_operator(a.curv, p, active, bs, c)?;
    let lam = T::of(a.damping);
    let (value, method, se) = match op.logdet_shifted(lam) {
        Ok(v) => (v.as_f64(), "exact (structured)", None),
        Err(LinalgError::Unsupported { .. }) if op.nrows() <= a.dense_max => {
            let pop = ProgressOp::new(op.as_ref(), "logdet");
            let mut dense = DenseOp::from_operator(&pop).map_err(|e| format!("logdet: {e}"))?;
            // symmetrize against rounding; keep the operator's tags (PSD → Cholesky)
            let s = op.structure();
            let n = dense.mat.nrows();
            for i in 0..n {
                for j in 0..i {
                    let v = (dense.mat[(i, j)] + dense.mat[(j, i)]) * T::of(0.5);
                    dense.mat[(i, j)] = v;
                    dense.mat[(j, i)] = v;
                }
            }
            let dense = DenseOp::with_structure(dense.mat, if s.symmetric { s } else { Structure::GENERAL });
            (dense.logdet_shifted(lam).map_err(|e| format!("logdet: {e}"))?.as_f64(), "exact (dense)", None)
        }
        Err(LinalgError::Unsupported { .. }) => {
            let damped = curvops_linalg::DampedOp::new(op.as_ref(), lam).map_err(|e| e.to_string())?;
            let pop = ProgressOp::new(&damped, "logdet (SLQ)");
            let q = lanczos_quadrature(
                &pop,
                &SlqOptions { starts: a.samples, steps: a.steps, seed: c.seed, ..Default::default() },
            )
            .map_err(|e| format!("logdet: {e}"))?;
            let n = op.nrows() as f64;
            let (m, se) = q.mean_of(|x| x.max(f64::MIN_POSITIVE).ln());
            (n * m, "slq estimate", se.map(|s| n * s))
        }
        Err(e) => return Err(format!("logdet: {e}")),
    };
    emit(c.json, obj! {"logdet" => value, "damping" => a.damping, "method" => method, "std_err" => se});
    Ok(())
}
