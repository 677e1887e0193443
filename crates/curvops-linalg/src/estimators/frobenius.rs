//! Squared Frobenius norm.

use super::{for_probe_blocks, Estimate, EstimatorOptions};
use crate::counting::CountingOp;
use crate::util::mean_se;
use crate::{LinalgError, LinearOperator};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;

/// `‖A‖_F² = tr(AᵀA) = E‖Aω‖²` (`E[ωωᵀ] = I`), estimated by `(1/S) Σᵢ ‖Aωᵢ‖²` for an
/// operator of any shape (e.g. a Jacobian). Standard error: sample standard deviation of the
/// `‖Aωᵢ‖²` over `√S`.
pub fn frobenius_sq<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    samples: usize,
    opts: &EstimatorOptions,
) -> Result<Estimate, LinalgError> {
    if samples == 0 {
        return Err(LinalgError::Dimension("Frobenius estimation: at least one probe".into()));
    }
    let a = CountingOp::new(op);
    let m = op.nrows();
    let mut rng = Rng::new(opts.seed);
    let mut terms = Vec::with_capacity(samples);
    for_probe_blocks(&a, samples, &mut rng, opts, |_, y, _| {
        for c in 0..y.ncols() {
            terms.push((0..m).map(|i| y[(i, c)].as_f64().powi(2)).sum());
        }
    })?;
    let (value, std_err) = mean_se(&terms);
    Ok(Estimate { value, std_err, matvecs: a.count() })
}
