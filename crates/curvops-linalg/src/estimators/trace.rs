//! Trace estimators.

use super::{apply_blocked, for_probe_blocks, Estimate, EstimatorOptions};
use crate::counting::CountingOp;
use crate::decomp::thin_qr;
use crate::util::{check_square, col, dot, fill_probes, mean_se, mul};
use crate::{LinalgError, LinearOperator};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use faer::Mat;

/// Hutchinson's estimator `tr A ≈ (1/S) Σᵢ ωᵢᵀ A ωᵢ` with `S` probes (`E[ωωᵀ] = I`).
/// Standard error: sample standard deviation of `ωᵢᵀAωᵢ` over `√S`.
pub fn trace_hutchinson<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    samples: usize,
    opts: &EstimatorOptions,
) -> Result<Estimate, LinalgError> {
    check_square(op, "trace estimation")?;
    if samples == 0 {
        return Err(LinalgError::Dimension("trace estimation: at least one probe".into()));
    }
    let a = CountingOp::new(op);
    let mut rng = Rng::new(opts.seed);
    let mut terms = Vec::with_capacity(samples);
    for_probe_blocks(&a, samples, &mut rng, opts, |om, y, _| {
        for c in 0..om.ncols() {
            terms.push(dot(col(om, c), col(y, c)));
        }
    })?;
    let (value, std_err) = mean_se(&terms);
    Ok(Estimate { value, std_err, matvecs: a.count() })
}

/// Hutch++ with a budget of `m ≥ 3` matvecs: a sketch `Q = orth(A S)` from `s = ⌊m/3⌋` probes,
/// the exact `tr(QᵀAQ)` (`s` matvecs), and Hutchinson with the remaining `g = m − 2s` probes
/// on the deflated `(I − QQᵀ) A (I − QQᵀ)`:
///
/// `tr A ≈ tr(QᵀAQ) + (1/g) Σᵢ ωᵢᵀ(I − QQᵀ) A (I − QQᵀ)ωᵢ`.
///
/// Standard error: that of the Hutchinson part.
pub fn trace_hutchpp<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    matvecs: usize,
    opts: &EstimatorOptions,
) -> Result<Estimate, LinalgError> {
    let n = check_square(op, "trace estimation")?;
    if matvecs < 3 {
        return Err(LinalgError::Dimension("Hutch++ needs at least 3 matvecs".into()));
    }
    let a = CountingOp::new(op);
    let s = (matvecs / 3).min(n);
    let g = matvecs - 2 * s;
    let mut rng = Rng::new(opts.seed);
    let sk = fill_probes::<T>(&mut rng, n, s, opts.probe);
    let y = apply_blocked(&a, &sk, opts.block_size)?;
    let (q, _) = thin_qr(y.as_ref());
    let aq = apply_blocked(&a, &q, opts.block_size)?;
    let exact: f64 = (0..q.ncols()).map(|c| dot(col(&q, c), col(&aq, c))).sum();
    let mut gm = fill_probes::<T>(&mut rng, n, g, opts.probe);
    let qtg = mul(q.transpose(), gm.as_ref());
    gm -= mul(q.as_ref(), qtg.as_ref());
    let ag = apply_blocked(&a, &gm, opts.block_size)?;
    let terms: Vec<f64> = (0..g).map(|c| dot(col(&gm, c), col(&ag, c))).collect();
    let (rest, std_err) = mean_se(&terms);
    Ok(Estimate { value: exact + rest, std_err, matvecs: a.count() })
}

/// Small dense f64 copy.
fn to_f64<T: Float>(m: &Mat<T>) -> Mat<f64> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)].as_f64())
}

/// The shared XTrace/XDiag setup: probes `Ω` (`n × s`), `Y = AΩ`, `Y = QR`, `Z = AQ` (or
/// `AᵀQ`), and the normalized columns `sᵢ = R⁻ᵀeᵢ/‖R⁻ᵀeᵢ‖` spanning the complement of
/// `range(Y₋ᵢ)` within `range(Q)`. When `R` is numerically singular (rank of `A` below `s`),
/// `S = 0`: then `range(Q) ⊇ range(A)` and the deflated estimator without leave-one-out is
/// exact for symmetric `A`.
pub(crate) struct Exchangeable<T: Float> {
    pub omega: Mat<T>,
    pub y: Mat<T>,
    pub q: Mat<T>,
    pub r: Mat<f64>,
    pub z: Mat<T>,
    pub s: Mat<f64>,
}

pub(crate) fn exchangeable_setup<T: Float, O: LinearOperator<T> + ?Sized>(
    a: &O,
    s: usize,
    opts: &EstimatorOptions,
    transpose_for_z: bool,
) -> Result<Exchangeable<T>, LinalgError> {
    let n = a.nrows();
    let mut rng = Rng::new(opts.seed);
    let omega = fill_probes::<T>(&mut rng, n, s, opts.probe);
    let y = apply_blocked(a, &omega, opts.block_size)?;
    let (q, r) = thin_qr(y.as_ref());
    let z = if transpose_for_z && !a.structure().symmetric {
        let mut z = Mat::<T>::zeros(n, q.ncols());
        a.apply_transpose(z.as_mut(), q.as_ref())?;
        z
    } else {
        apply_blocked(a, &q, opts.block_size)?
    };
    let r = to_f64(&r);
    let k = r.nrows();
    let maxd = (0..k).map(|i| r[(i, i)].abs()).fold(0.0f64, f64::max);
    let singular = k < s || (0..k).any(|i| r[(i, i)].abs() <= (s as f64) * T::epsilon().as_f64() * maxd);
    let sm = if singular {
        Mat::<f64>::zeros(k, s)
    } else {
        // R⁻ᵀ by forward substitution on Rᵀ X = I; then normalize columns.
        let mut x = Mat::<f64>::zeros(s, s);
        for c in 0..s {
            for i in 0..s {
                let mut v = if i == c { 1.0 } else { 0.0 };
                for p in 0..i {
                    v -= r[(p, i)] * x[(p, c)];
                }
                x[(i, c)] = v / r[(i, i)];
            }
        }
        for c in 0..s {
            let nr: f64 = (0..s).map(|i| x[(i, c)].powi(2)).sum::<f64>().sqrt();
            for i in 0..s {
                x[(i, c)] /= nr;
            }
        }
        x
    };
    Ok(Exchangeable { omega, y, q, r, z, s: sm })
}

/// XTrace with a budget of `m ≥ 2` matvecs (`s = ⌊m/2⌋` probes). For each probe `i`, the
/// sketch of the *other* probes, `Qᵢ = orth(A Ω₋ᵢ)`, gives the Hutch++-type estimate
///
/// `tᵢ = tr(QᵢᵀAQᵢ) + ωᵢᵀ(I − QᵢQᵢᵀ) A (I − QᵢQᵢᵀ)ωᵢ`,
///
/// and the estimate is the mean of the exchangeable `tᵢ`. With `Y = AΩ = QR`, `Z = AQ`,
/// `H = QᵀZ`, `W = QᵀΩ`, `T = ZᵀΩ` and `sᵢ = R⁻ᵀeᵢ/‖R⁻ᵀeᵢ‖` (so `QᵢQᵢᵀ = QQᵀ − QsᵢsᵢᵀQᵀ`),
/// `gᵢ = Weᵢ − (sᵢᵀWeᵢ)sᵢ`:
///
/// `tᵢ = tr H − sᵢᵀHsᵢ + ωᵢᵀyᵢ − (Teᵢ)ᵀgᵢ − gᵢᵀ(Reᵢ) + gᵢᵀHgᵢ`,
///
/// all from `2s` matvecs. Unbiased for any `A` (each `ωᵢ` is independent of `Qᵢ`). Standard
/// error: sample standard deviation of the `tᵢ` over `√s` (the paper's error estimate).
pub fn trace_xtrace<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    matvecs: usize,
    opts: &EstimatorOptions,
) -> Result<Estimate, LinalgError> {
    let n = check_square(op, "trace estimation")?;
    if matvecs < 4 {
        return Err(LinalgError::Dimension("XTrace needs at least 4 matvecs".into()));
    }
    let a = CountingOp::new(op);
    let s = (matvecs / 2).min(n);
    let ex = exchangeable_setup(&a, s, opts, false)?;
    let k = ex.q.ncols();
    let h = to_f64(&mul(ex.q.transpose(), ex.z.as_ref()));
    let w = to_f64(&mul(ex.q.transpose(), ex.omega.as_ref()));
    let t = to_f64(&mul(ex.z.transpose(), ex.omega.as_ref()));
    let tr_h: f64 = (0..k).map(|i| h[(i, i)]).sum();
    let mut terms = Vec::with_capacity(s);
    for i in 0..s {
        let si: Vec<f64> = (0..k).map(|p| ex.s[(p, i)]).collect();
        let wi: Vec<f64> = (0..k).map(|p| w[(p, i)]).collect();
        let c: f64 = si.iter().zip(&wi).map(|(a, b)| a * b).sum();
        let g: Vec<f64> = (0..k).map(|p| wi[p] - c * si[p]).collect();
        let quad = |u: &[f64], v: &[f64]| -> f64 {
            (0..k).map(|p| u[p] * (0..k).map(|q| h[(p, q)] * v[q]).sum::<f64>()).sum()
        };
        let oy = dot(col(&ex.omega, i), col(&ex.y, i));
        let tg: f64 = (0..k).map(|p| t[(p, i)] * g[p]).sum();
        let gr: f64 = (0..k).map(|p| g[p] * ex.r[(p, i)]).sum();
        terms.push(tr_h - quad(&si, &si) + oy - tg - gr + quad(&g, &g));
    }
    let (value, std_err) = mean_se(&terms);
    Ok(Estimate { value, std_err, matvecs: a.count() })
}

/// The exact trace: the operator's structured [`LinearOperator::trace`] when it has one (no
/// matvecs), otherwise `Σᵢ eᵢᵀAeᵢ` from unit-vector blocks of `block_size` columns (`n`
/// matvecs).
pub fn trace_exact<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    block_size: usize,
) -> Result<Estimate, LinalgError> {
    let d = super::diag_exact(op, block_size)?;
    Ok(Estimate { value: d.values.iter().map(|x| x.as_f64()).sum(), std_err: None, matvecs: d.matvecs })
}
