//! LSMR (faer's implementation through [`crate::FaerOp`]).

use super::SolveInfo;
use crate::counting::CountingOp;
use crate::util::check_rows;
use crate::{FaerOp, LinalgError, LinearOperator};
use curvops_tensor::{threads, Float};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::matrix_free::lsmr::{lsmr as faer_lsmr, lsmr_scratch, LsmrError, LsmrParams};
use faer::matrix_free::{IdentityPrecond, InitialGuessStatus};
use faer::{Mat, MatRef};

/// Options of [`lsmr`].
#[derive(Clone, Debug)]
pub struct LsmrOptions {
    /// Relative tolerance on the normal-equation residual `‖Aᵀ(b − Ax)‖ ≤ tol·‖Aᵀb‖`
    /// (faer's criterion, over the whole block).
    pub tol: f64,
    /// Maximum iterations (default `max(4n, 100)`).
    pub max_iters: Option<usize>,
}

impl Default for LsmrOptions {
    fn default() -> Self {
        Self { tol: 1e-12, max_iters: None }
    }
}

/// LSMR (Fong & Saunders 2011) for `min ‖AX − B‖_F` with any-shaped `A` that has a
/// transpose; for square nonsingular `A` this solves `AX = B`. This is faer's block LSMR
/// (`faer::matrix_free::lsmr`) run on the operator through [`FaerOp`] — it works, so it is
/// not rewritten. Reports iterations, matvecs (`A` and `Aᵀ` columns) and faer's relative
/// normal-equation residual for every column (it is a block quantity).
pub fn lsmr<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    rhs: MatRef<'_, T>,
    opts: &LsmrOptions,
) -> Result<(Mat<T>, SolveInfo), LinalgError> {
    check_rows(rhs, op.nrows(), "lsmr")?;
    if !op.has_transpose() {
        return Err(LinalgError::unsupported("lsmr (needs the transpose)", op.describe()));
    }
    let counted = CountingOp::new(op);
    let fop = FaerOp::new(&counted);
    let n = op.ncols();
    let k = rhs.ncols();
    let mut x = Mat::<T>::zeros(n, k);
    if k == 0 || n == 0 {
        return Ok((x, SolveInfo { iterations: 0, matvecs: 0, rel_residuals: vec![0.0; k] }));
    }
    let par = threads::par();
    let precond = IdentityPrecond { dim: n };
    let mut mem = MemBuffer::new(lsmr_scratch(precond, &fop, k, par));
    let params = LsmrParams {
        initial_guess: InitialGuessStatus::Zero,
        abs_tolerance: T::zero(),
        rel_tolerance: T::of(opts.tol),
        max_iters: opts.max_iters.unwrap_or((4 * n).max(100)),
        ..Default::default()
    };
    let result = faer_lsmr(x.as_mut(), precond, &fop, rhs, params, |_| {}, par, MemStack::new(&mut mem));
    if let Some(e) = fop.take_error() {
        return Err(e);
    }
    match result {
        Ok(info) => Ok((
            x,
            SolveInfo {
                iterations: info.iter_count,
                matvecs: counted.count(),
                rel_residuals: vec![info.rel_residual.as_f64(); k],
            },
        )),
        Err(LsmrError::NoConvergence { rel_residual, .. }) => Err(LinalgError::NoConvergence(format!(
            "lsmr on {}: relative normal-equation residual {:.3e} > {:.1e} after {} iterations",
            op.describe(),
            rel_residual.as_f64(),
            opts.tol,
            params.max_iters
        ))),
    }
}
