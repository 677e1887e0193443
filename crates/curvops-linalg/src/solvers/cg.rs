//! Block (preconditioned) conjugate gradients.

use super::SolveInfo;
use crate::counting::CountingOp;
use crate::util::{check_rows, check_square, check_symmetric, col_dot, col_norm};
use crate::{LinalgError, LinearOperator};
use curvops_tensor::Float;
use faer::{Mat, MatRef};

/// Options of [`cg`].
#[derive(Clone, Debug)]
pub struct CgOptions {
    /// Relative residual tolerance: column `j` stops when `‖bⱼ − Axⱼ‖ ≤ tol·‖bⱼ‖`.
    pub tol: f64,
    /// Maximum iterations (default `max(2n, 100)`).
    pub max_iters: Option<usize>,
}

impl Default for CgOptions {
    fn default() -> Self {
        Self { tol: 1e-10, max_iters: None }
    }
}

/// Preconditioned conjugate gradients for `A X = B` with a block of right-hand sides: each
/// column runs its own recurrence (`α = rᵀz / pᵀAp`, `x += αp`, `r −= αAp`, `z = Mr`,
/// `β = r₊ᵀz₊ / rᵀz`, `p = z + βp`), but the operator (and the preconditioner `M ≈ A⁻¹`,
/// symmetric positive definite) is applied to all active columns at once.
///
/// Starts from `X = 0`. Errors: [`LinalgError::NotPositiveDefiniteAt`] naming the column and
/// iteration when `pᵀAp ≤ 0` (or `rᵀMr ≤ 0` for the preconditioner); a
/// [`LinalgError::Structure`] error when `A` is not tagged symmetric;
/// [`LinalgError::NoConvergence`] after `max_iters`.
pub fn cg<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    rhs: MatRef<'_, T>,
    precond: Option<&dyn LinearOperator<T>>,
    opts: &CgOptions,
) -> Result<(Mat<T>, SolveInfo), LinalgError> {
    let n = check_square(op, "cg")?;
    check_symmetric(op)?;
    check_rows(rhs, n, "cg")?;
    if let Some(m) = precond {
        if (m.nrows(), m.ncols()) != (n, n) {
            return Err(LinalgError::Dimension(format!(
                "cg: preconditioner is {}x{}, expected {n}x{n}",
                m.nrows(),
                m.ncols()
            )));
        }
    }
    let a = CountingOp::new(op);
    let k = rhs.ncols();
    let max_iters = opts.max_iters.unwrap_or((2 * n).max(100));
    let mut x = Mat::<T>::zeros(n, k);
    let mut r = rhs.to_owned();
    let bnorm: Vec<f64> = (0..k).map(|j| col_norm(r.as_ref(), j)).collect();
    let mut res: Vec<f64> = bnorm.iter().map(|&b| if b > 0.0 { 1.0 } else { 0.0 }).collect();
    let mut active: Vec<bool> = bnorm.iter().map(|&b| b > 0.0).collect();
    let apply_m = |cols: &[usize], r: &Mat<T>| -> Result<Mat<T>, LinalgError> {
        let rb = Mat::<T>::from_fn(n, cols.len(), |i, c| r[(i, cols[c])]);
        match precond {
            Some(m) => {
                let mut z = Mat::<T>::zeros(n, cols.len());
                m.apply(z.as_mut(), rb.as_ref())?;
                Ok(z)
            }
            None => Ok(rb),
        }
    };
    let describe = || format!("cg on {}", op.describe());
    let act0: Vec<usize> = (0..k).filter(|&j| active[j]).collect();
    let z0 = apply_m(&act0, &r)?;
    let mut p = Mat::<T>::zeros(n, k);
    let mut rho = vec![0.0f64; k];
    for (c, &j) in act0.iter().enumerate() {
        p.as_mut().col_mut(j).copy_from(z0.col(c));
        rho[j] = col_dot(r.as_ref(), p.as_ref(), j);
        if precond.is_some() && rho[j] <= 0.0 {
            return Err(LinalgError::NotPositiveDefiniteAt {
                operator: format!("preconditioner of {}", describe()),
                column: j,
                iteration: Some(0),
                quantity: "rᵀMr",
                value: rho[j],
            });
        }
    }
    let mut iters = 0;
    for it in 0..max_iters {
        let act: Vec<usize> = (0..k).filter(|&j| active[j]).collect();
        if act.is_empty() {
            break;
        }
        iters = it + 1;
        let pa = Mat::<T>::from_fn(n, act.len(), |i, c| p[(i, act[c])]);
        let mut ap = Mat::<T>::zeros(n, act.len());
        a.apply(ap.as_mut(), pa.as_ref())?;
        for (c, &j) in act.iter().enumerate() {
            let pap = col_dot(pa.as_ref(), ap.as_ref(), c);
            if pap.is_nan() || pap <= 0.0 {
                return Err(LinalgError::NotPositiveDefiniteAt {
                    operator: describe(),
                    column: j,
                    iteration: Some(it),
                    quantity: "pᵀAp",
                    value: pap,
                });
            }
            let alpha = T::of(rho[j] / pap);
            for i in 0..n {
                x[(i, j)] += alpha * pa[(i, c)];
                r[(i, j)] -= alpha * ap[(i, c)];
            }
            res[j] = col_norm(r.as_ref(), j) / bnorm[j];
            if res[j] <= opts.tol {
                active[j] = false;
            }
        }
        let act: Vec<usize> = (0..k).filter(|&j| active[j]).collect();
        if act.is_empty() {
            break;
        }
        let z = apply_m(&act, &r)?;
        for (c, &j) in act.iter().enumerate() {
            let rz: f64 = (0..n).map(|i| r[(i, j)].as_f64() * z[(i, c)].as_f64()).sum();
            if precond.is_some() && rz <= 0.0 {
                return Err(LinalgError::NotPositiveDefiniteAt {
                    operator: format!("preconditioner of {}", describe()),
                    column: j,
                    iteration: Some(it),
                    quantity: "rᵀMr",
                    value: rz,
                });
            }
            let beta = T::of(rz / rho[j]);
            rho[j] = rz;
            for i in 0..n {
                p[(i, j)] = z[(i, c)] + beta * p[(i, j)];
            }
        }
    }
    let left: Vec<usize> = (0..k).filter(|&j| active[j]).collect();
    if !left.is_empty() {
        let worst = left.iter().map(|&j| res[j]).fold(0.0f64, f64::max);
        return Err(LinalgError::NoConvergence(format!(
            "{}: columns {left:?} above relative residual {:.1e} after {max_iters} iterations (worst {worst:.3e})",
            describe(),
            opts.tol
        )));
    }
    Ok((x, SolveInfo { iterations: iters, matvecs: a.count(), rel_residuals: res }))
}
