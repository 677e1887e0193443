//! Small crate-private helpers: column norms and dots, applying into fresh matrices, checks.

use crate::{LinalgError, LinearOperator};
use curvops_tensor::gemm::matmul;
use curvops_tensor::{threads, Float};
use faer::{Accum, Mat, MatRef};

/// `a · b` into a new matrix (faer GEMM).
pub(crate) fn mul<T: Float>(a: MatRef<'_, T>, b: MatRef<'_, T>) -> Mat<T> {
    let mut out = Mat::<T>::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, T::one(), threads::par());
    out
}

/// Dot product of columns `j` of `a` and `b`, accumulated in f64.
pub(crate) fn col_dot<T: Float>(a: MatRef<'_, T>, b: MatRef<'_, T>, j: usize) -> f64 {
    let (ca, cb) = (a.col(j), b.col(j));
    let mut s = 0.0f64;
    for i in 0..ca.nrows() {
        s += ca[i].as_f64() * cb[i].as_f64();
    }
    s
}

/// Euclidean norm of column `j` (f64 accumulation).
pub(crate) fn col_norm<T: Float>(a: MatRef<'_, T>, j: usize) -> f64 {
    col_dot(a, a, j).sqrt()
}

/// Checks that `op` is square; names the operation on failure.
pub(crate) fn check_square<T: Float, O: LinearOperator<T> + ?Sized>(op: &O, what: &str) -> Result<usize, LinalgError> {
    if op.nrows() != op.ncols() {
        return Err(LinalgError::Dimension(format!(
            "{what} needs a square operator, {} is {}x{}",
            op.describe(),
            op.nrows(),
            op.ncols()
        )));
    }
    Ok(op.nrows())
}

/// Checks the symmetric tag.
pub(crate) fn check_symmetric<T: Float, O: LinearOperator<T> + ?Sized>(op: &O) -> Result<(), LinalgError> {
    if !op.structure().symmetric {
        return Err(LinalgError::Structure { needed: "symmetric", structure: op.structure() });
    }
    Ok(())
}

/// Checks `rhs` has `n` rows for an operation on `op`.
pub(crate) fn check_rows<T: Float>(rhs: MatRef<'_, T>, n: usize, what: &str) -> Result<(), LinalgError> {
    if rhs.nrows() != n {
        return Err(LinalgError::Dimension(format!("{what}: right-hand side has {} rows, expected {n}", rhs.nrows())));
    }
    Ok(())
}

/// Column `j` of a (column-major, contiguous) matrix as a slice.
pub(crate) fn col<T: Float>(m: &Mat<T>, j: usize) -> &[T] {
    m.col(j).try_as_col_major().expect("contiguous column").as_slice()
}

/// Column `j` as a mutable slice.
pub(crate) fn col_mut<T: Float>(m: &mut Mat<T>, j: usize) -> &mut [T] {
    m.col_mut(j).try_as_col_major_mut().expect("contiguous column").as_slice_mut()
}

/// `Σᵢ aᵢbᵢ` accumulated in f64.
pub(crate) fn dot<T: Float>(a: &[T], b: &[T]) -> f64 {
    // eight partial sums in a fixed order: vectorizable, and the same result on every run
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i].as_f64() * y[i].as_f64();
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x.as_f64() * y.as_f64()).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// A matrix filled column by column from a probe generator (so the probes do not depend on
/// how they are blocked).
pub(crate) fn fill_probes<T: Float>(
    rng: &mut curvops_tensor::rng::Rng,
    n: usize,
    k: usize,
    probe: crate::estimators::Probe,
) -> Mat<T> {
    let mut m = Mat::<T>::zeros(n, k);
    for j in 0..k {
        let c = col_mut(&mut m, j);
        match probe {
            crate::estimators::Probe::Rademacher => rng.fill_rademacher(c),
            crate::estimators::Probe::Gaussian => rng.fill_normal(c),
        }
    }
    m
}

/// Mean and standard error of the mean of samples (`None` with fewer than 2 samples).
pub(crate) fn mean_se(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, None);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, None);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
    (mean, Some((var / n as f64).sqrt()))
}

/// Orthogonalizes the single column of `w` against `v[:, ..cols]` (classical Gram–Schmidt, a
/// second pass where the DGKS test asks for it); returns the accumulated projection
/// coefficients (length `cols`, f64).
pub(crate) fn orthogonalize<T: Float>(v: &Mat<T>, cols: usize, w: &mut Mat<T>) -> Vec<f64> {
    let mut h = vec![0.0f64; cols];
    if cols == 0 {
        return h;
    }
    let vb = v.as_ref().subcols(0, cols);
    // classical Gram–Schmidt with the DGKS test: a second pass only when the first removed
    // more than half of w's squared norm (‖w'‖ < ‖w‖/√2), where cancellation can leave w' far
    // from orthogonal (Daniel, Gragg, Kaufman & Stewart 1976)
    let mut before = norm(w);
    for _ in 0..2 {
        let c = mul(vb.transpose(), w.as_ref());
        matmul(w.as_mut(), Accum::Add, vb, c.as_ref(), -T::one(), threads::par());
        for (i, hi) in h.iter_mut().enumerate() {
            *hi += c[(i, 0)].as_f64();
        }
        let after = norm(w);
        if after >= std::f64::consts::FRAC_1_SQRT_2 * before {
            break;
        }
        before = after;
    }
    h
}

/// Euclidean norm of the single column of `w` (f64 accumulation).
pub(crate) fn norm<T: Float>(w: &Mat<T>) -> f64 {
    w.col_as_slice(0).iter().map(|x| x.as_f64() * x.as_f64()).sum::<f64>().sqrt()
}
