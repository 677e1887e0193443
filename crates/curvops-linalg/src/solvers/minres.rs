//! MINRES for symmetric (possibly indefinite) systems.

use super::SolveInfo;
use crate::counting::CountingOp;
use crate::util::{check_rows, check_square, check_symmetric, col_norm};
use crate::{LinalgError, LinearOperator};
use curvops_tensor::Float;
use faer::{Mat, MatRef};

/// Options of [`minres`].
#[derive(Clone, Debug)]
pub struct MinresOptions {
    /// Relative residual tolerance `‖b − Ax‖ ≤ tol·‖b‖` (MINRES's recurrence for the residual
    /// norm, exact in exact arithmetic).
    pub tol: f64,
    /// Maximum iterations (default `max(2n, 100)`).
    pub max_iters: Option<usize>,
}

impl Default for MinresOptions {
    fn default() -> Self {
        Self { tol: 1e-10, max_iters: None }
    }
}

/// Per-column scalar state of MINRES.
#[derive(Clone, Copy)]
struct Col {
    beta: f64,   // βⱼ (couples vⱼ to vⱼ₋₁)
    phibar: f64, // rotated right-hand side = residual norm (up to sign)
    c1: f64,     // rotation Gⱼ₋₁
    s1: f64,
    c2: f64, // rotation Gⱼ₋₂
    s2: f64,
    bnorm: f64,
    active: bool,
}

/// MINRES (Paige & Saunders 1975) for `A X = B` with symmetric `A` (indefinite allowed):
/// `xⱼ` minimizes `‖b − Ax‖` over the Krylov space `Kⱼ(A, b)`. Lanczos builds
/// `A Vⱼ = Vⱼ₊₁ T̃ⱼ`; Givens rotations `Gⱼ` triangularize `T̃ⱼ` one column at a time, the
/// search directions `wⱼ = (vⱼ − δⱼwⱼ₋₁ − εⱼwⱼ₋₂)/ρⱼ` update `x += cⱼφ̄ⱼ wⱼ` and the residual
/// norm is `|φ̄ⱼ₊₁| = |sⱼ φ̄ⱼ|`. Each column has its own recurrence; the operator is applied to
/// all active columns at once. Starts from `X = 0`, no preconditioner.
pub fn minres<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    rhs: MatRef<'_, T>,
    opts: &MinresOptions,
) -> Result<(Mat<T>, SolveInfo), LinalgError> {
    let n = check_square(op, "minres")?;
    check_symmetric(op)?;
    check_rows(rhs, n, "minres")?;
    let a = CountingOp::new(op);
    let k = rhs.ncols();
    let max_iters = opts.max_iters.unwrap_or((2 * n).max(100));
    let eps = T::epsilon().as_f64();
    let mut x = Mat::<T>::zeros(n, k);
    let mut v = Mat::<T>::zeros(n, k);
    let mut v_prev = Mat::<T>::zeros(n, k);
    let mut w1 = Mat::<T>::zeros(n, k); // wⱼ₋₁
    let mut w2 = Mat::<T>::zeros(n, k); // wⱼ₋₂
    let mut st: Vec<Col> = (0..k)
        .map(|j| {
            let b = col_norm(rhs, j);
            Col { beta: 0.0, phibar: b, c1: 1.0, s1: 0.0, c2: 1.0, s2: 0.0, bnorm: b, active: b > 0.0 }
        })
        .collect();
    for (j, s) in st.iter().enumerate() {
        if s.active {
            let inv = T::of(1.0 / s.bnorm);
            for i in 0..n {
                v[(i, j)] = inv * rhs[(i, j)];
            }
        }
    }
    let mut iters = 0;
    for it in 0..max_iters {
        let act: Vec<usize> = (0..k).filter(|&j| st[j].active).collect();
        if act.is_empty() {
            break;
        }
        iters = it + 1;
        let va = Mat::<T>::from_fn(n, act.len(), |i, c| v[(i, act[c])]);
        let mut p = Mat::<T>::zeros(n, act.len());
        a.apply(p.as_mut(), va.as_ref())?;
        for (c, &j) in act.iter().enumerate() {
            let s = &mut st[j];
            let p0 = col_norm(p.as_ref(), c);
            let alpha: f64 = (0..n).map(|i| va[(i, c)].as_f64() * p[(i, c)].as_f64()).sum();
            let (ta, tb) = (T::of(alpha), T::of(s.beta));
            for i in 0..n {
                p[(i, c)] = p[(i, c)] - ta * v[(i, j)] - tb * v_prev[(i, j)];
            }
            let mut beta_next = col_norm(p.as_ref(), c);
            if beta_next <= 100.0 * eps * p0.max(alpha.abs()) {
                beta_next = 0.0; // invariant subspace: the solution is in the Krylov space
            }
            let eps_j = s.s2 * s.beta;
            let dbar = s.c2 * s.beta;
            let delta = s.c1 * dbar + s.s1 * alpha;
            let gbar = -s.s1 * dbar + s.c1 * alpha;
            let rho = gbar.hypot(beta_next);
            if rho == 0.0 {
                return Err(LinalgError::Singular(format!(
                    "minres on {}: column {j} breaks down at iteration {it} (singular, inconsistent system)",
                    op.describe()
                )));
            }
            let (c_new, s_new) = (gbar / rho, beta_next / rho);
            let t = c_new * s.phibar;
            s.phibar *= -s_new;
            let (tr, td, te) = (T::of(1.0 / rho), T::of(delta), T::of(eps_j));
            let tt = T::of(t);
            for i in 0..n {
                let wi = tr * (v[(i, j)] - td * w1[(i, j)] - te * w2[(i, j)]);
                x[(i, j)] += tt * wi;
                w2[(i, j)] = w1[(i, j)];
                w1[(i, j)] = wi;
            }
            s.c2 = s.c1;
            s.s2 = s.s1;
            s.c1 = c_new;
            s.s1 = s_new;
            s.beta = beta_next;
            let inv = if beta_next > 0.0 { T::of(1.0 / beta_next) } else { T::zero() };
            for i in 0..n {
                v_prev[(i, j)] = v[(i, j)];
                v[(i, j)] = inv * p[(i, c)];
            }
            if s.phibar.abs() <= opts.tol * s.bnorm || beta_next == 0.0 {
                s.active = false;
            }
        }
    }
    let res: Vec<f64> = st.iter().map(|s| if s.bnorm > 0.0 { s.phibar.abs() / s.bnorm } else { 0.0 }).collect();
    let left: Vec<usize> = (0..k).filter(|&j| st[j].active).collect();
    if !left.is_empty() {
        return Err(LinalgError::NoConvergence(format!(
            "minres on {}: columns {left:?} above relative residual {:.1e} after {max_iters} iterations",
            op.describe(),
            opts.tol
        )));
    }
    Ok((x, SolveInfo { iterations: iters, matvecs: a.count(), rel_residuals: res }))
}
