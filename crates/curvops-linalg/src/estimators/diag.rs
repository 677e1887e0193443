//! Diagonal estimators.

use super::trace::exchangeable_setup;
use super::{for_probe_blocks, DiagEstimate, EstimatorOptions};
use crate::counting::CountingOp;
use crate::util::{check_square, col, mul};
use crate::{LinalgError, LinearOperator};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use faer::Mat;

fn mean_se_rows(samples: &Mat<f64>) -> (Vec<f64>, Option<Vec<f64>>) {
    let (n, s) = (samples.nrows(), samples.ncols());
    let mut mean = vec![0.0; n];
    for c in 0..s {
        for (m, x) in mean.iter_mut().zip(col(samples, c)) {
            *m += x / s as f64;
        }
    }
    if s < 2 {
        return (mean, None);
    }
    let mut var = vec![0.0; n];
    for c in 0..s {
        for ((v, x), m) in var.iter_mut().zip(col(samples, c)).zip(&mean) {
            *v += (x - m) * (x - m) / (s - 1) as f64;
        }
    }
    (mean, Some(var.into_iter().map(|v| (v / s as f64).sqrt()).collect()))
}

/// Hutchinson's diagonal estimator `diag A ≈ (1/S) Σᵢ ωᵢ ⊙ Aωᵢ` (unbiased when
/// `E[ωωᵀ] = I`; with Rademacher probes its variance is `Σ_{k≠j} A_jk² / S` per entry).
pub fn diag_hutchinson<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    samples: usize,
    opts: &EstimatorOptions,
) -> Result<DiagEstimate<T>, LinalgError> {
    let n = check_square(op, "diagonal estimation")?;
    if samples == 0 {
        return Err(LinalgError::Dimension("diagonal estimation: at least one probe".into()));
    }
    let a = CountingOp::new(op);
    let mut rng = Rng::new(opts.seed);
    let mut terms = Mat::<f64>::zeros(n, samples);
    for_probe_blocks(&a, samples, &mut rng, opts, |om, y, start| {
        for c in 0..om.ncols() {
            let (o, yc) = (col(om, c), col(y, c));
            let t = crate::util::col_mut(&mut terms, start + c);
            for i in 0..n {
                t[i] = o[i].as_f64() * yc[i].as_f64();
            }
        }
    })?;
    let (mean, se) = mean_se_rows(&terms);
    Ok(DiagEstimate { values: mean.into_iter().map(T::of).collect(), std_err: se, matvecs: a.count() })
}

/// XDiag with a budget of `m ≥ 4` matvecs (`s = ⌊m/2⌋` probes): the exchangeable diagonal
/// estimator of Epperly, Tropp & Webber (2024). For each probe `i`, with `Qᵢ = orth(AΩ₋ᵢ)`,
///
/// `dᵢ = diag(QᵢQᵢᵀA) + ωᵢ ⊙ (I − QᵢQᵢᵀ)Aωᵢ`,
///
/// averaged over `i`. With `Y = AΩ = QR`, `Z = AᵀQ`, `sᵢ = R⁻ᵀeᵢ/‖R⁻ᵀeᵢ‖`:
/// `diag(QᵢQᵢᵀA) = rowsum(Q ⊙ Z) − (Qsᵢ) ⊙ (Zsᵢ)` and
/// `(I − QᵢQᵢᵀ)Aωᵢ = yᵢ − QReᵢ + (Qsᵢ)(sᵢᵀReᵢ)`. Needs `Aᵀ` (free for symmetric operators).
/// Standard errors: entry-wise sample standard deviation of the `dᵢ` over `√s`.
pub fn diag_xdiag<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    matvecs: usize,
    opts: &EstimatorOptions,
) -> Result<DiagEstimate<T>, LinalgError> {
    let n = check_square(op, "diagonal estimation")?;
    if matvecs < 4 {
        return Err(LinalgError::Dimension("XDiag needs at least 4 matvecs".into()));
    }
    if !op.structure().symmetric && !op.has_transpose() {
        return Err(LinalgError::unsupported("XDiag (needs the transpose)", op.describe()));
    }
    let a = CountingOp::new(op);
    let s = (matvecs / 2).min(n);
    let ex = exchangeable_setup(&a, s, opts, true)?;
    let k = ex.q.ncols();
    let sm = Mat::<T>::from_fn(k, s, |i, j| T::of(ex.s[(i, j)]));
    let rt = Mat::<T>::from_fn(k, s, |i, j| T::of(ex.r[(i, j)]));
    let qs = mul(ex.q.as_ref(), sm.as_ref());
    let zs = mul(ex.z.as_ref(), sm.as_ref());
    let qr = mul(ex.q.as_ref(), rt.as_ref());
    // sᵢᵀ R eᵢ
    let sr: Vec<f64> = (0..s).map(|i| (0..k).map(|p| ex.s[(p, i)] * ex.r[(p, i)]).sum()).collect();
    let mut base = vec![0.0f64; n];
    for c in 0..k {
        for ((b, q), z) in base.iter_mut().zip(col(&ex.q, c)).zip(col(&ex.z, c)) {
            *b += q.as_f64() * z.as_f64();
        }
    }
    let mut terms = Mat::<f64>::zeros(n, s);
    for (i, &sri) in sr.iter().enumerate() {
        let (qs, zs, qr, y, om) = (col(&qs, i), col(&zs, i), col(&qr, i), col(&ex.y, i), col(&ex.omega, i));
        let t = crate::util::col_mut(&mut terms, i);
        for j in 0..n {
            let (qsj, zsj) = (qs[j].as_f64(), zs[j].as_f64());
            let resid = y[j].as_f64() - qr[j].as_f64() + qsj * sri;
            t[j] = base[j] - qsj * zsj + om[j].as_f64() * resid;
        }
    }
    let (mean, se) = mean_se_rows(&terms);
    Ok(DiagEstimate { values: mean.into_iter().map(T::of).collect(), std_err: se, matvecs: a.count() })
}

/// The exact diagonal: the operator's structured [`LinearOperator::diagonal`] when it has one
/// (no matvecs), otherwise `Aᵢᵢ = eᵢᵀAeᵢ` from unit-vector blocks of `block_size` columns
/// (`n` matvecs).
pub fn diag_exact<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    block_size: usize,
) -> Result<DiagEstimate<T>, LinalgError> {
    let n = check_square(op, "exact diagonal")?;
    match op.diagonal() {
        Ok(values) => return Ok(DiagEstimate { values, std_err: None, matvecs: 0 }),
        Err(LinalgError::Unsupported { .. }) => {}
        Err(e) => return Err(e),
    }
    let bs = block_size.max(1);
    let mut values = vec![T::zero(); n];
    let mut start = 0;
    let mut e = Mat::<T>::zeros(n, bs.min(n));
    let mut y = Mat::<T>::zeros(n, bs.min(n));
    while start < n {
        let b = bs.min(n - start);
        e.fill(T::zero());
        for j in 0..b {
            e[(start + j, j)] = T::one();
        }
        op.apply(y.as_mut().subcols_mut(0, b), e.as_ref().subcols(0, b))?;
        for j in 0..b {
            values[start + j] = y[(start + j, j)];
        }
        start += b;
    }
    Ok(DiagEstimate { values, std_err: None, matvecs: n })
}
