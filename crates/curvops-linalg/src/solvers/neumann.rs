//! Truncated Neumann series.

use super::SolveInfo;
use crate::counting::CountingOp;
use crate::util::{check_rows, check_square, col_norm};
use crate::{LinalgError, LinearOperator};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use faer::{Mat, MatRef};

/// Options of [`neumann`].
#[derive(Clone, Debug)]
pub struct NeumannOptions {
    /// Step `α`; `None` for `1/λ̂` with `λ̂ = ‖Av‖` after 30 power iterations (counted).
    pub alpha: Option<f64>,
    /// Number of terms `k` of the series.
    pub terms: usize,
    /// Stop early when every column's relative residual is below `tol`; with `Some`, not
    /// reaching it within `terms` is a [`LinalgError::NoConvergence`] error. With `None`, all
    /// `terms` are summed (the truncated series as an approximate inverse).
    pub tol: Option<f64>,
}

impl Default for NeumannOptions {
    fn default() -> Self {
        Self { alpha: None, terms: 100, tol: None }
    }
}

/// `‖A v‖` after `iters` power iterations from a seeded random unit `v` (a lower bound of
/// `‖A‖₂` that approaches it).
fn power_norm_estimate<T: Float, O: LinearOperator<T> + ?Sized>(op: &O, iters: usize) -> Result<f64, LinalgError> {
    let n = op.ncols();
    let mut rng = Rng::new(0x6e65_756d);
    let mut v = Mat::<T>::from_fn(n, 1, |_, _| T::of(rng.normal()));
    let mut est = 0.0;
    for _ in 0..iters {
        let nv = col_norm(v.as_ref(), 0);
        if nv == 0.0 {
            return Ok(0.0);
        }
        let inv = T::of(1.0 / nv);
        for i in 0..n {
            v[(i, 0)] = inv * v[(i, 0)];
        }
        let mut w = Mat::<T>::zeros(n, 1);
        op.apply(w.as_mut(), v.as_ref())?;
        est = col_norm(w.as_ref(), 0);
        v = w;
    }
    Ok(est)
}

/// The truncated Neumann series `A⁻¹b ≈ α Σ_{i<k} (I − αA)ⁱ b`, i.e. Richardson iteration
/// `x ← x + α(b − Ax)` from `x = 0`, whose residual is `rᵢ = (I − αA)ⁱ b`. It converges when
/// the spectrum of `αA` lies in `(0, 2)` (symmetric positive definite `A`, `α < 2/λ_max`); then
/// `‖rᵢ‖` cannot grow, so a residual that grows (by more than round-off) is reported as
/// [`LinalgError::Diverged`] naming the column and term — e.g. when `α‖A‖ > 2` or `A` is
/// indefinite. One matvec per term and column.
pub fn neumann<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    rhs: MatRef<'_, T>,
    opts: &NeumannOptions,
) -> Result<(Mat<T>, SolveInfo), LinalgError> {
    let n = check_square(op, "neumann")?;
    check_rows(rhs, n, "neumann")?;
    let a = CountingOp::new(op);
    let alpha = match opts.alpha {
        Some(al) => al,
        None => {
            let lmax = power_norm_estimate(&a, 30)?;
            if lmax == 0.0 {
                return Err(LinalgError::Singular(format!("neumann on {}: the operator is 0", op.describe())));
            }
            1.0 / lmax
        }
    };
    let k = rhs.ncols();
    let ta = T::of(alpha);
    let mut x = Mat::<T>::zeros(n, k);
    let mut r = rhs.to_owned();
    let bnorm: Vec<f64> = (0..k).map(|j| col_norm(rhs, j)).collect();
    let mut rnorm = bnorm.clone();
    let mut active: Vec<bool> = bnorm.iter().map(|&b| b > 0.0).collect();
    let mut iters = 0;
    let eps = T::epsilon().as_f64();
    for term in 0..opts.terms {
        if let Some(tol) = opts.tol {
            for j in 0..k {
                if active[j] && rnorm[j] <= tol * bnorm[j] {
                    active[j] = false;
                }
            }
        }
        let act: Vec<usize> = (0..k).filter(|&j| active[j]).collect();
        if act.is_empty() {
            break;
        }
        iters = term + 1;
        let ra = Mat::<T>::from_fn(n, act.len(), |i, c| r[(i, act[c])]);
        let mut ar = Mat::<T>::zeros(n, act.len());
        a.apply(ar.as_mut(), ra.as_ref())?;
        for (c, &j) in act.iter().enumerate() {
            for i in 0..n {
                x[(i, j)] += ta * ra[(i, c)];
                r[(i, j)] -= ta * ar[(i, c)];
            }
            let new = col_norm(r.as_ref(), j);
            let slack = 1e-8 * rnorm[j] + 100.0 * eps * bnorm[j];
            if new > rnorm[j] + slack || new.is_nan() {
                return Err(LinalgError::Diverged(format!(
                    "neumann on {}: the residual of column {j} grew from {:.3e} to {:.3e} at term {} \
                     (α = {alpha:.3e}; the series needs the spectrum of αA in (0, 2))",
                    op.describe(),
                    rnorm[j],
                    new,
                    term + 1
                )));
            }
            rnorm[j] = new;
        }
    }
    let res: Vec<f64> = (0..k).map(|j| if bnorm[j] > 0.0 { rnorm[j] / bnorm[j] } else { 0.0 }).collect();
    if let Some(tol) = opts.tol {
        let left: Vec<usize> = (0..k).filter(|&j| res[j] > tol).collect();
        if !left.is_empty() {
            return Err(LinalgError::NoConvergence(format!(
                "neumann on {}: columns {left:?} above relative residual {tol:.1e} after {} terms",
                op.describe(),
                opts.terms
            )));
        }
    }
    Ok((x, SolveInfo { iterations: iters, matvecs: a.count(), rel_residuals: res }))
}
