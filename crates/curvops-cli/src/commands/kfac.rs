//! KFAC / EKFAC operators for the CLI (`CURV` = `kfac` | `ekfac`). Owned by the KFAC work
//! (issue 4); until it lands these return a clear error.

use crate::args::{Common, Curv};
use crate::common::CliResult;
use curvops::{ActiveSet, LinearOperator, Problem};
use curvops_tensor::Float;

/// The KFAC or EKFAC operator of the problem (`--fisher`, `--kfac-approx`, `--joint-bias`,
/// `--kfac-factors`).
pub fn make_operator<'a, T: Float>(
    curv: Curv,
    _p: &'a Problem<T>,
    _active: ActiveSet,
    _bs: usize,
    _c: &Common,
) -> CliResult<Box<dyn LinearOperator<T> + 'a>> {
    Err(format!("{curv:?}: not available in this build").to_lowercase())
}

/// `(KFAC + λI)⁻¹` as a preconditioner for CG.
pub fn make_preconditioner<'a, T: Float>(
    _p: &'a Problem<T>,
    _active: ActiveSet,
    _bs: usize,
    _c: &Common,
    _damping: f64,
) -> CliResult<Box<dyn LinearOperator<T> + 'a>> {
    Err("--precond kfac: not available in this build".into())
}
