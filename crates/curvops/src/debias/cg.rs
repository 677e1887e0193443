//! Conjugate gradients on a batch's quadratic, and the debiased steps.
//!
//! **Biased CG** minimizes `q₁ = q_{B₁}` from `d₀ = 0`: with `A₁ = s C_{B₁} + δI`, residual
//! `r₀ = −g₁`, direction `p₀ = r₀`, and per iteration `α = rᵀr / pᵀA₁p`, `d ← d + αp`,
//! `r ← r − αA₁p`, `p ← r + (r₊ᵀr₊ / rᵀr) p`. It stops after `K` iterations, at a relative
//! residual `tol`, or before a direction of non-positive curvature `pᵀA₁p ≤ 0` (a Hessian).
//!
//! **Debiased steps** keep the directions `P_K = [p₀ … p_{K−1}]` and measure slope and curvature
//! on an independent batch `B₂` (`A₂ = s C_{B₂} + δI`, `g₂`), one curvature product per
//! direction (all `K` in one block application):
//!
//! * variant A — exact line search on `q₂` along each direction in turn: from `y₀ = 0`,
//!   `y_{k+1} = y_k + α'_k p_k`, `α'_k = −(g₂ + A₂y_k)ᵀp_k / p_kᵀA₂p_k` (0 where
//!   `p_kᵀA₂p_k ≤ 0`);
//! * variant B — the minimizer of `q₂` over the span of the first `k` directions:
//!   `(P_kᵀA₂P_k) a = −P_kᵀg₂`, `y_k = P_k a` (solved in the eigenbasis of the `k × k` matrix
//!   with columns normalized, discarding eigenvalues `≤ 10⁻¹²·λ_max`).
//!
//! A debiased step of `K` directions thus costs `2K` curvature products (`K` on `B₁`, `K` on
//! `B₂`) against `K` for the biased one.

use super::quadratic::Quadratic;
use super::DebiasError;
use curvops_linalg::Eigh;
use curvops_tensor::Float;
use faer::Mat;

/// Which debiased step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Exact line search on `B₂` along each direction.
    A,
    /// Subspace solve on `B₂` over all directions.
    B,
}

impl Variant {
    /// `a` or `b`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }
}

/// A biased CG run on `q₁`: its directions and iterates.
#[derive(Clone, Debug)]
pub struct CgRun<T: Float> {
    /// Directions `p₀ … p_{K−1}` (`D × K`).
    pub directions: Mat<T>,
    /// Iterates `d₀ = 0, d₁ … d_K` (`D × (K+1)`).
    pub iterates: Mat<T>,
    /// Relative residuals `‖r_k‖/‖g₁‖`, `k = 0 … K`.
    pub residuals: Vec<f64>,
    /// Whether CG stopped at a direction of non-positive curvature.
    pub negative_curvature: bool,
    /// `d_Kᵀ A₁ d_K` of the last iterate (`= −g₁ᵀd_K − d_Kᵀr_K`).
    pub curvature_last: f64,
}

impl<T: Float> CgRun<T> {
    /// Directions `K`.
    pub fn len(&self) -> usize {
        self.directions.ncols()
    }

    /// Whether there is no direction (a zero gradient).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn dot<T: Float>(a: &Mat<T>, i: usize, b: &Mat<T>, j: usize) -> f64 {
    (0..a.nrows()).map(|r| a[(r, i)].as_f64() * b[(r, j)].as_f64()).sum()
}

/// Biased CG on `q` for at most `iters` iterations (see the module docs).
pub fn cg_run<T: Float>(q: &Quadratic<'_, T>, iters: usize, tol: f64) -> Result<CgRun<T>, DebiasError> {
    let d = q.dim();
    let mut r = Mat::<T>::from_fn(d, 1, |i, _| -q.grad[i]);
    let gnorm = dot(&r, 0, &r, 0).sqrt();
    let mut x = Mat::<T>::zeros(d, 1);
    let mut p = r.clone();
    let mut dirs: Vec<Mat<T>> = Vec::new();
    let mut its: Vec<Mat<T>> = vec![x.clone()];
    let mut residuals = vec![if gnorm > 0.0 { 1.0 } else { 0.0 }];
    let mut negative_curvature = false;
    let mut rr = gnorm * gnorm;
    for _ in 0..iters {
        if gnorm == 0.0 || rr.sqrt() <= tol * gnorm {
            break;
        }
        let ap = q.curvature_times(p.as_ref())?;
        let pap = dot(&p, 0, &ap, 0);
        if pap <= 0.0 || !pap.is_finite() {
            negative_curvature = true;
            break;
        }
        let alpha = rr / pap;
        for i in 0..d {
            x[(i, 0)] += T::of(alpha) * p[(i, 0)];
            r[(i, 0)] -= T::of(alpha) * ap[(i, 0)];
        }
        dirs.push(p.clone());
        its.push(x.clone());
        let rr_new = dot(&r, 0, &r, 0);
        residuals.push(rr_new.sqrt() / gnorm);
        let beta = rr_new / rr;
        rr = rr_new;
        for i in 0..d {
            p[(i, 0)] = r[(i, 0)] + T::of(beta) * p[(i, 0)];
        }
    }
    let k = dirs.len();
    let curvature_last = (0..d).map(|i| -x[(i, 0)].as_f64() * (q.grad[i].as_f64() + r[(i, 0)].as_f64())).sum();
    Ok(CgRun {
        directions: Mat::from_fn(d, k, |i, j| dirs[j][(i, 0)]),
        iterates: Mat::from_fn(d, k + 1, |i, j| its[j][(i, 0)]),
        residuals,
        negative_curvature,
        curvature_last,
    })
}

/// The debiased iterates `y₀ = 0, y₁ … y_K` (`D × (K+1)`) of `variant` for the directions of
/// `run`, measured on `q2` (one block application of `K` curvature products).
pub fn debiased_iterates<T: Float>(
    q2: &Quadratic<'_, T>,
    run: &CgRun<T>,
    variant: Variant,
) -> Result<Mat<T>, DebiasError> {
    Ok(debiased_iterates_with_curvature(q2, run, variant)?.0)
}

/// [`debiased_iterates`] and the curvature `y_Kᵀ A₂ y_K` of the last iterate (from the same
/// products).
pub fn debiased_iterates_with_curvature<T: Float>(
    q2: &Quadratic<'_, T>,
    run: &CgRun<T>,
    variant: Variant,
) -> Result<(Mat<T>, f64), DebiasError> {
    let (d, k) = (q2.dim(), run.len());
    let mut out = Mat::<T>::zeros(d, k + 1);
    if k == 0 {
        return Ok((out, 0.0));
    }
    let p = &run.directions;
    let ap = q2.curvature_times(p.as_ref())?;
    let g = Mat::<T>::from_fn(d, 1, |i, _| q2.grad[i]);
    // coefficients of the last iterate in the directions: y_K = P c
    let mut last = vec![0.0; k];
    match variant {
        Variant::A => {
            // s = g₂ + A₂ y, updated with the products
            let mut s: Vec<f64> = q2.grad.iter().map(|v| v.as_f64()).collect();
            for j in 0..k {
                let pap = dot(p, j, &ap, j);
                let slope: f64 = (0..d).map(|i| s[i] * p[(i, j)].as_f64()).sum();
                let alpha = if pap > 0.0 && pap.is_finite() { -slope / pap } else { 0.0 };
                last[j] = alpha;
                for i in 0..d {
                    out[(i, j + 1)] = out[(i, j)] + T::of(alpha) * p[(i, j)];
                    s[i] += alpha * ap[(i, j)].as_f64();
                }
            }
        }
        Variant::B => {
            let norms: Vec<f64> = (0..k).map(|j| dot(p, j, p, j).sqrt()).collect();
            let m =
                Mat::<f64>::from_fn(k, k, |a, b| 0.5 * (dot(p, a, &ap, b) + dot(p, b, &ap, a)) / (norms[a] * norms[b]));
            let rhs: Vec<f64> = (0..k).map(|a| -dot(p, a, &g, 0) / norms[a]).collect();
            for kk in 1..=k {
                let e = Eigh::from_dense(m.as_ref().submatrix(0, 0, kk, kk))?;
                let lmax = e.values.iter().fold(0.0f64, |a, &v| a.max(v.abs()));
                let mut coef = vec![0.0; kk];
                for (c, &lam) in e.values.iter().enumerate() {
                    // the minimizer exists along eigen-directions of positive curvature only
                    if lam > 1e-12 * lmax {
                        let w: f64 = (0..kk).map(|a| e.vectors[(a, c)] * rhs[a]).sum::<f64>() / lam;
                        for a in 0..kk {
                            coef[a] += w * e.vectors[(a, c)];
                        }
                    }
                }
                for i in 0..d {
                    let v: f64 = (0..kk).map(|a| coef[a] / norms[a] * p[(i, a)].as_f64()).sum();
                    out[(i, kk)] = T::of(v);
                }
                if kk == k {
                    last = (0..k).map(|a| coef[a] / norms[a]).collect();
                }
            }
        }
    }
    // y_Kᵀ A₂ y_K = Σ_i y_i (Σ_j c_j (A₂p_j)_i)
    let curv = (0..d).map(|i| out[(i, k)].as_f64() * (0..k).map(|j| last[j] * ap[(i, j)].as_f64()).sum::<f64>()).sum();
    Ok((out, curv))
}

/// A (debiased) Newton-CG step and the model it was measured on.
#[derive(Clone, Debug)]
pub struct Step<T: Float> {
    /// The step `d` (approximately `−(A)⁻¹g`).
    pub step: Vec<T>,
    /// The CG run on `q₁` that gave the directions.
    pub run: CgRun<T>,
    /// `gᵀd` on the batch that measured the step (`B₁` biased, `B₂` debiased).
    pub slope: f64,
    /// `dᵀAd` (damped) on that batch.
    pub curvature: f64,
    /// Curvature products spent (columns): `K` biased, `2K` debiased.
    pub products: usize,
}

impl<T: Float> Step<T> {
    /// The model change `q(ηd) − q(0) = η gᵀd + ½ η² dᵀAd`.
    pub fn model_change(&self, eta: f64) -> f64 {
        eta * self.slope + 0.5 * eta * eta * self.curvature
    }
}

/// The step minimizing `q₁` by at most `iters` CG iterations (`variant = None`), or the
/// debiased step of `variant` with `q₁`'s directions measured on `q2`.
pub fn debiased_solve<T: Float>(
    q1: &Quadratic<'_, T>,
    q2: Option<&Quadratic<'_, T>>,
    variant: Option<Variant>,
    iters: usize,
    tol: f64,
) -> Result<Step<T>, DebiasError> {
    let run = cg_run(q1, iters, tol)?;
    let k = run.len();
    let d = q1.dim();
    let dotg = |g: &[T], x: &[T]| g.iter().zip(x).map(|(a, b)| a.as_f64() * b.as_f64()).sum::<f64>();
    match (variant, q2) {
        (None, _) => {
            let step: Vec<T> = (0..d).map(|i| run.iterates[(i, k)]).collect();
            let slope = dotg(&q1.grad, &step);
            let curvature = run.curvature_last;
            Ok(Step { step, slope, curvature, products: k, run })
        }
        (Some(v), Some(q2)) => {
            let (y, curvature) = debiased_iterates_with_curvature(q2, &run, v)?;
            let step: Vec<T> = (0..d).map(|i| y[(i, k)]).collect();
            let slope = dotg(&q2.grad, &step);
            Ok(Step { step, slope, curvature, products: 2 * k, run })
        }
        (Some(_), None) => Err(DebiasError::Invalid("a debiased step needs an independent batch".into())),
    }
}

/// Quadratics along the iterates of one biased CG run and its two debiased variants.
#[derive(Clone, Debug)]
pub struct CgTrace {
    /// Iterations `k = 0 … K`.
    pub k: Vec<usize>,
    /// `q₁` along biased CG (decreases monotonically).
    pub biased_on_b1: Vec<f64>,
    /// `q₂` (the independent batch) along biased CG.
    pub biased_on_b2: Vec<f64>,
    /// Full-data `q` along biased CG.
    pub biased_full: Vec<f64>,
    /// Full-data `q` along variant A's iterates.
    pub debiased_a_full: Vec<f64>,
    /// Full-data `q` along variant B's iterates.
    pub debiased_b_full: Vec<f64>,
    /// Whether CG stopped at non-positive curvature.
    pub negative_curvature: bool,
}

/// CG on `q1` for `iters` iterations with `q1`, `q2` and the full-data `full` evaluated along
/// its iterates, and `full` along both debiased variants (measured on `q2`). All points are
/// evaluated in one block application per quadratic.
pub fn cg_trace<T: Float>(
    q1: &Quadratic<'_, T>,
    q2: &Quadratic<'_, T>,
    full: &Quadratic<'_, T>,
    iters: usize,
    tol: f64,
) -> Result<CgTrace, DebiasError> {
    let run = cg_run(q1, iters, tol)?;
    let ya = debiased_iterates(q2, &run, Variant::A)?;
    let yb = debiased_iterates(q2, &run, Variant::B)?;
    let k1 = run.len() + 1;
    let d = q1.dim();
    let all = Mat::<T>::from_fn(d, 3 * k1, |i, j| match j / k1 {
        0 => run.iterates[(i, j)],
        1 => ya[(i, j - k1)],
        _ => yb[(i, j - 2 * k1)],
    });
    let fv = full.values(all.as_ref())?;
    let iters_only = run.iterates.as_ref();
    Ok(CgTrace {
        k: (0..k1).collect(),
        biased_on_b1: q1.values(iters_only)?,
        biased_on_b2: q2.values(iters_only)?,
        biased_full: fv[..k1].to_vec(),
        debiased_a_full: fv[k1..2 * k1].to_vec(),
        debiased_b_full: fv[2 * k1..].to_vec(),
        negative_curvature: run.negative_curvature,
    })
}
