//! Dense kernels of the KFAC module: symmetric rank-k updates (Gram matrices) and small
//! helpers on row-major slices, all through faer.

use curvops_tensor::gemm::{matmul as mm, tri_matmul};
use curvops_tensor::gemm::{view, view_mut};
use curvops_tensor::{threads, Float, Trans};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, Mat, MatRef};

/// Below this dimension a Gram matrix is computed in full (faster than the triangular kernel).
const TRIANGULAR_MIN: usize = 128;

/// `dst += α·op(X)ᵀ op(X)` on the lower triangle (diagonal included) of the `d × d` matrix `dst`,
/// where `op(X)` is `rows × d` (`Trans::N`: `X` stored row-major `[rows, d]` with row stride
/// `ld`; `Trans::T`: `X` stored `[d, rows]`). The strict upper triangle is not touched: call
/// [`symmetrize_lower`] once all updates are in.
pub fn gram_lower_acc<T: Float>(dst: &mut Mat<T>, x: &[T], rows: usize, d: usize, ld: usize, t: Trans, alpha: T) {
    if rows == 0 || d == 0 {
        return;
    }
    let xv = view(x, rows, d, ld, t); // rows × d
    if d < TRIANGULAR_MIN {
        mm(dst.as_mut(), Accum::Add, xv.transpose(), xv, alpha, threads::par());
        return;
    }
    tri_matmul(
        dst.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Add,
        xv.transpose(),
        BlockStructure::Rectangular,
        xv,
        BlockStructure::Rectangular,
        alpha,
        threads::par(),
    );
}

/// Copies the lower triangle of a square matrix onto the upper one.
pub fn symmetrize_lower<T: Float>(m: &mut Mat<T>) {
    // in 32 × 32 tiles, so that the strided reads stay in cache
    const TILE: usize = 32;
    let n = m.nrows();
    assert_eq!(m.ncols(), n, "symmetrize_lower: a square matrix");
    let cs = m.col_stride() as usize;
    let p = m.as_ptr_mut();
    for jb in (0..n).step_by(TILE) {
        for ib in (0..=jb).step_by(TILE) {
            for j in jb..(jb + TILE).min(n) {
                for i in ib..(ib + TILE).min(j) {
                    // SAFETY: i < j < n, and the matrix is n × n with unit row stride and column
                    // stride `cs`, so both offsets are inside its allocation and distinct
                    unsafe { *p.add(i + j * cs) = *p.add(j + i * cs) };
                }
            }
        }
    }
}

/// `C ← op(A)·op(B)` (β = 0) or `C += …` (β = 1) on row-major slices (see `curvops_tensor::gemm`).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    lda: usize,
    ta: Trans,
    b: &[T],
    ldb: usize,
    tb: Trans,
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    curvops_tensor::gemm(m, n, k, T::one(), a, lda, ta, b, ldb, tb, beta, c, ldc);
}

/// A symmetric Kronecker factor: dense `M`, or a low-rank factor `U` (`[r, n]`) with `M = UᵀU`.
#[derive(Clone, Copy, Debug)]
pub enum Factor<'a, T: Float> {
    /// The `n × n` matrix.
    Dense(MatRef<'a, T>),
    /// `U` with `M = UᵀU`.
    Rows(MatRef<'a, T>),
}

/// `dst ← L·src` for a row-major `[m, n]` `src` and a symmetric factor `L` (`m × m`).
fn apply_left<T: Float>(l: Factor<'_, T>, src: &[T], dst: &mut [T], m: usize, n: usize) {
    let par = threads::par();
    let sv = view(src, m, n, n, Trans::N);
    match l {
        Factor::Dense(l) => mm(view_mut(dst, m, n, n), Accum::Replace, l, sv, T::one(), par),
        Factor::Rows(v) => {
            let k = v.nrows();
            let mut t = vec![T::zero(); k * n];
            mm(view_mut(&mut t, k, n, n), Accum::Replace, v, sv, T::one(), par);
            mm(view_mut(dst, m, n, n), Accum::Replace, v.transpose(), view(&t, k, n, n, Trans::N), T::one(), par);
        }
    }
}

/// `Y ← L·X·R` for row-major `X`, `Y` (`[m, n]`) and symmetric factors `L` (`m × m`), `R`
/// (`n × n`; `Y ← L·X` without it). A low-rank `R = UᵀU` (`U`: `[r, n]`) is applied as
/// `((X Uᵀ) … ) U` with `L` acting on the `[m, r]` intermediate (`O(m·r·(2n + m))` instead of
/// `O(m·n·(n + m))`); a low-rank `L = VᵀV` as `Vᵀ(V ·)`.
pub fn left_right<T: Float>(l: Factor<'_, T>, r: Option<Factor<'_, T>>, x: &[T], y: &mut [T], tmp: &mut Vec<T>) {
    let m = match l {
        Factor::Dense(d) => d.nrows(),
        Factor::Rows(u) => u.ncols(),
    };
    let n = x.len() / m.max(1);
    let par = threads::par();
    let xv = view(x, m, n, n, Trans::N);
    match r {
        None => apply_left(l, x, y, m, n),
        Some(Factor::Dense(r)) => {
            tmp.resize(m * n, T::zero());
            mm(view_mut(tmp, m, n, n), Accum::Replace, xv, r, T::one(), par);
            apply_left(l, tmp, y, m, n);
        }
        Some(Factor::Rows(u)) => {
            let k = u.nrows();
            let mut t = vec![T::zero(); m * k];
            mm(view_mut(&mut t, m, k, k), Accum::Replace, xv, u.transpose(), T::one(), par);
            tmp.resize(m * k, T::zero());
            apply_left(l, &t, tmp, m, k);
            mm(view_mut(y, m, n, n), Accum::Replace, view(tmp, m, k, k, Trans::N), u, T::one(), par);
        }
    }
}

/// `Y ← Q_L (f ⊙ (Q_Lᵀ X Q_R)) Q_Rᵀ` for row-major `X`, `Y` (`[m, n]`), `Q_L` `m × m`,
/// `Q_R` `n × n` (identity when `None`) and `f` (`[m, n]` row-major).
pub fn eigen_apply<T: Float>(
    ql: MatRef<'_, T>,
    qr: Option<MatRef<'_, T>>,
    f: &[T],
    x: &[T],
    y: &mut [T],
    tmp: &mut Vec<T>,
) {
    let m = ql.nrows();
    let n = x.len() / m.max(1);
    let par = threads::par();
    tmp.resize(m * n, T::zero());
    // tmp = Q_Lᵀ X
    mm(view_mut(tmp, m, n, n), Accum::Replace, ql.transpose(), view(x, m, n, n, Trans::N), T::one(), par);
    match qr {
        Some(qr) => {
            // y = tmp Q_R, scaled; tmp = y Q_Rᵀ; y = Q_L tmp
            mm(view_mut(y, m, n, n), Accum::Replace, view(tmp, m, n, n, Trans::N), qr, T::one(), par);
            for (v, s) in y.iter_mut().zip(f) {
                *v *= *s;
            }
            mm(view_mut(tmp, m, n, n), Accum::Replace, view(y, m, n, n, Trans::N), qr.transpose(), T::one(), par);
        }
        None => {
            for (v, s) in tmp.iter_mut().zip(f) {
                *v *= *s;
            }
        }
    }
    mm(view_mut(y, m, n, n), Accum::Replace, ql, view(tmp, m, n, n, Trans::N), T::one(), par);
}

/// A faer matrix from a row-major slice.
pub fn mat_from_rows<T: Float>(v: &[T], rows: usize, cols: usize) -> Mat<T> {
    Mat::from_fn(rows, cols, |i, j| v[i * cols + j])
}

/// The row-major entries of a faer matrix.
pub fn mat_to_rows<T: Float>(m: MatRef<'_, T>) -> Vec<T> {
    let (r, c) = (m.nrows(), m.ncols());
    let mut v = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            v.push(m[(i, j)]);
        }
    }
    v
}

/// `Σᵢⱼ Mᵢⱼ²`, accumulated in f64.
pub fn sq_norm<T: Float>(m: MatRef<'_, T>) -> f64 {
    let mut s = 0.0;
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            let v = m[(i, j)].as_f64();
            s += v * v;
        }
    }
    s
}

/// `tr M`, accumulated in f64.
pub fn trace_of<T: Float>(m: MatRef<'_, T>) -> f64 {
    (0..m.nrows()).map(|i| m[(i, i)].as_f64()).sum()
}

/// `Σᵢⱼ Xᵢⱼ Yᵢⱼ = tr(XᵀY)`, accumulated in f64.
pub fn inner<T: Float>(x: MatRef<'_, T>, y: MatRef<'_, T>) -> f64 {
    let mut s = 0.0;
    for j in 0..x.ncols() {
        for i in 0..x.nrows() {
            s += x[(i, j)].as_f64() * y[(i, j)].as_f64();
        }
    }
    s
}
