//! Randomized and exact estimators of the trace, the diagonal and the squared Frobenius norm.
//!
//! Every estimator draws its probes from a seeded [`curvops_tensor::rng::Rng`] column by
//! column (so results do not depend on the block size), applies them in blocks of up to
//! [`EstimatorOptions::block_size`] columns (one `apply` per block), and reports the estimate,
//! a standard error where one is meaningful, and the number of matvecs (columns applied).
//!
//! | estimator | quantity | matvecs | reference |
//! |---|---|---|---|
//! | [`trace_hutchinson`] | `tr A` | `S` | Hutchinson 1989 |
//! | [`trace_hutchpp`] | `tr A` | `m` | Meyer, Musco, Musco, Woodruff 2021 |
//! | [`trace_xtrace`] | `tr A` | `m` (even) | Epperly, Tropp, Webber 2024 |
//! | [`trace_exact`] | `tr A` | 0 (structure) or `n` | unit vectors |
//! | [`diag_hutchinson`] | `diag A` | `S` | Bekas, Kokiopoulou, Saad 2007 |
//! | [`diag_xdiag`] | `diag A` | `m` (even) | Epperly, Tropp, Webber 2024 |
//! | [`diag_exact`] | `diag A` | 0 (structure) or `n` | unit vectors |
//! | [`frobenius_sq`] | `‖A‖_F²` (any shape) | `S` | `E‖Aω‖² = tr(AᵀA)` |

mod diag;
mod frobenius;
mod trace;

pub use diag::{diag_exact, diag_hutchinson, diag_xdiag};
pub use frobenius::frobenius_sq;
pub use trace::{trace_exact, trace_hutchinson, trace_hutchpp, trace_xtrace};

use crate::util::fill_probes;
use crate::{LinalgError, LinearOperator};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use faer::Mat;

/// Probe distribution: both have `E[ωωᵀ] = I`, which makes the estimators unbiased.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Probe {
    /// Independent ±1 entries (lower variance for trace and diagonal estimation).
    #[default]
    Rademacher,
    /// Independent standard normal entries.
    Gaussian,
}

/// Options shared by the randomized estimators.
#[derive(Clone, Debug)]
pub struct EstimatorOptions {
    /// Probe distribution.
    pub probe: Probe,
    /// Seed of the probes.
    pub seed: u64,
    /// Maximum number of probe columns per operator application.
    pub block_size: usize,
}

impl Default for EstimatorOptions {
    fn default() -> Self {
        Self { probe: Probe::Rademacher, seed: 0, block_size: 64 }
    }
}

/// A scalar estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// The estimate.
    pub value: f64,
    /// Its standard error (sample standard deviation of the per-probe terms over √count);
    /// `None` for exact values or too few samples.
    pub std_err: Option<f64>,
    /// Operator applications (columns).
    pub matvecs: usize,
}

/// A diagonal estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct DiagEstimate<T> {
    /// The estimated diagonal.
    pub values: Vec<T>,
    /// Entry-wise standard errors; `None` for exact values or too few samples.
    pub std_err: Option<Vec<f64>>,
    /// Operator applications (columns).
    pub matvecs: usize,
}

/// Applies `count` fresh probes in blocks, calling `f(probes, images, first_index)` per block.
pub(crate) fn for_probe_blocks<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    count: usize,
    rng: &mut Rng,
    opts: &EstimatorOptions,
    mut f: impl FnMut(&Mat<T>, &Mat<T>, usize),
) -> Result<(), LinalgError> {
    let n = op.ncols();
    // at most 4 Mi entries per block, so that probe and image buffers stay small enough for the
    // allocator to reuse them (the probes themselves do not depend on the block size)
    let bs = opts.block_size.max(1).min(((1usize << 22) / n.max(1)).max(1));
    let mut start = 0;
    while start < count {
        let b = bs.min(count - start);
        let om = fill_probes::<T>(rng, n, b, opts.probe);
        let mut y = Mat::<T>::zeros(op.nrows(), b);
        op.apply(y.as_mut(), om.as_ref())?;
        f(&om, &y, start);
        start += b;
    }
    Ok(())
}

/// Applies `op` to `x` in column blocks of `bs`.
pub(crate) fn apply_blocked<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    x: &Mat<T>,
    bs: usize,
) -> Result<Mat<T>, LinalgError> {
    let mut y = Mat::<T>::zeros(op.nrows(), x.ncols());
    let bs = bs.max(1);
    let mut s = 0;
    while s < x.ncols() {
        let b = bs.min(x.ncols() - s);
        op.apply(y.as_mut().subcols_mut(s, b), x.as_ref().subcols(s, b))?;
        s += b;
    }
    Ok(y)
}
