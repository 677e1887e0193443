//! GEMM on row-major slices, computed by faer.

use crate::{threads, Float};
use faer::{Accum, MatMut, MatRef};

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// `op(A) = A`.
    N,
    /// `op(A) = Aᵀ`.
    T,
}

/// Row-major view of `op(A)` with `rows × cols` entries; `ld` is the row stride of the stored
/// matrix (the stored matrix is `rows × cols` for `Trans::N`, `cols × rows` for `Trans::T`).
#[inline]
pub fn view<T: Float>(a: &[T], rows: usize, cols: usize, ld: usize, t: Trans) -> MatRef<'_, T> {
    match t {
        Trans::N => MatRef::from_row_major_slice_with_stride(a, rows, cols, ld),
        Trans::T => MatRef::from_row_major_slice_with_stride(a, cols, rows, ld).transpose(),
    }
}

/// Mutable row-major view of an `rows × cols` matrix with row stride `ld`.
///
/// Built as the transpose of a column-major view: faer 0.24.4's
/// `MatMut::from_row_major_slice_with_stride_mut` swaps the two strides (the test
/// `row_major_strided_destination` below guards this).
#[inline]
pub fn view_mut<T: Float>(c: &mut [T], rows: usize, cols: usize, ld: usize) -> MatMut<'_, T> {
    MatMut::from_column_major_slice_with_stride_mut(c, cols, rows, ld).transpose_mut()
}

/// `C ← β·C + α·op(A)·op(B)` with `C` an `m × n` row-major matrix (row stride `ldc`),
/// `op(A)` `m × k` and `op(B)` `k × n` (row strides `lda`, `ldb` of the stored matrices).
///
/// `beta` must be 0 (C is overwritten, its old values are not read) or 1 (accumulate).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
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
    debug_assert!(beta == T::zero() || beta == T::one());
    if m == 0 || n == 0 {
        return;
    }
    let accum = if beta == T::zero() { Accum::Replace } else { Accum::Add };
    if k == 0 {
        if accum == Accum::Replace {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(T::zero());
            }
        }
        return;
    }
    let av = view(a, m, k, lda.max(1), ta);
    let bv = view(b, k, n, ldb.max(1), tb);
    let cv = view_mut(c, m, n, ldc.max(1));
    matmul(cv, accum, av, bv, alpha, threads::par());
}

/// Clears the upper halves of the vector registers (`vzeroupper`) after a faer GEMM.
///
/// faer's x86 GEMM kernels (private-gemm-x86, hand-written AVX-512/AVX2 assembly) return with
/// the upper register state dirty. Every SSE-encoded instruction after that (the code compiled
/// for the baseline target, libm) then pays a false dependency on the upper halves — on the
/// AVX-512 benchmark machine this made a scalar `expf` loop after a GEMM about 10× slower.
#[inline]
pub fn clear_upper_state() {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU has AVX (checked); `vzeroupper` only zeroes bits 128 and up of the
        // vector registers, which no live Rust value occupies between calls.
        unsafe { std::arch::asm!("vzeroupper", options(nomem, nostack, preserves_flags)) };
    }
}

/// `C ← op(A)·op(B)` into a fresh contiguous `m × n` row-major vector.
///
/// The output is not zero-initialized first: faer's GEMM with `Accum::Replace` writes every
/// entry without reading it (its documented contract), which saves a pass over the output.
#[allow(clippy::too_many_arguments)]
pub fn gemm_new<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    lda: usize,
    ta: Trans,
    b: &[T],
    ldb: usize,
    tb: Trans,
) -> Vec<T> {
    if m == 0 || n == 0 || k == 0 {
        return vec![T::zero(); m * n];
    }
    let mut c: Vec<T> = Vec::with_capacity(m * n);
    let av = view(a, m, k, lda.max(1), ta);
    let bv = view(b, k, n, ldb.max(1), tb);
    // SAFETY: the view covers exactly the `m·n` allocated elements (row-major, row stride n);
    // `Accum::Replace` writes all of them and reads none, after which they are initialized.
    unsafe {
        let cv = MatMut::from_raw_parts_mut(c.as_mut_ptr(), m, n, n as isize, 1);
        matmul(cv, Accum::Replace, av, bv, T::one(), threads::par());
        c.set_len(m * n);
    }
    c
}

/// faer's `matmul` (`dst ← β·dst + α·lhs·rhs`) followed by [`clear_upper_state`]: use this
/// instead of calling faer directly, so that the code after it runs at full speed.
pub fn matmul<T, LhsT, RhsT, M, N, K>(
    dst: impl faer::mat::AsMatMut<T = T, Rows = M, Cols = N>,
    beta: Accum,
    lhs: impl faer::mat::AsMatRef<T = LhsT, Rows = M, Cols = K>,
    rhs: impl faer::mat::AsMatRef<T = RhsT, Rows = K, Cols = N>,
    alpha: T,
    par: faer::Par,
) where
    T: faer::traits::ComplexField,
    LhsT: faer::traits::Conjugate<Canonical = T>,
    RhsT: faer::traits::Conjugate<Canonical = T>,
    M: faer::Shape,
    N: faer::Shape,
    K: faer::Shape,
{
    faer::linalg::matmul::matmul(dst, beta, lhs, rhs, alpha, par);
    clear_upper_state();
}

/// faer's triangular `matmul` (block structures of `dst`, `lhs`, `rhs`) followed by
/// [`clear_upper_state`].
#[allow(clippy::too_many_arguments)]
pub fn tri_matmul<T, LhsT, RhsT, M, N, K>(
    dst: impl faer::mat::AsMatMut<T = T, Rows = M, Cols = N>,
    dst_structure: faer::linalg::matmul::triangular::BlockStructure,
    beta: Accum,
    lhs: impl faer::mat::AsMatRef<T = LhsT, Rows = M, Cols = K>,
    lhs_structure: faer::linalg::matmul::triangular::BlockStructure,
    rhs: impl faer::mat::AsMatRef<T = RhsT, Rows = K, Cols = N>,
    rhs_structure: faer::linalg::matmul::triangular::BlockStructure,
    alpha: T,
    par: faer::Par,
) where
    T: faer::traits::ComplexField,
    LhsT: faer::traits::Conjugate<Canonical = T>,
    RhsT: faer::traits::Conjugate<Canonical = T>,
    M: faer::Shape,
    N: faer::Shape,
    K: faer::Shape,
{
    faer::linalg::matmul::triangular::matmul(
        dst,
        dst_structure,
        beta,
        lhs,
        lhs_structure,
        rhs,
        rhs_structure,
        alpha,
        par,
    );
    clear_upper_state();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f64], ta: Trans, b: &[f64], tb: Trans) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    let av = if ta == Trans::N { a[i * k + l] } else { a[l * m + i] };
                    let bv = if tb == Trans::N { b[l * n + j] } else { b[j * k + l] };
                    c[i * n + j] += av * bv;
                }
            }
        }
        c
    }

    #[test]
    fn all_transposes() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.91).cos()).collect();
        for ta in [Trans::N, Trans::T] {
            for tb in [Trans::N, Trans::T] {
                let lda = if ta == Trans::N { k } else { m };
                let ldb = if tb == Trans::N { n } else { k };
                let c = gemm_new(m, n, k, &a, lda, ta, &b, ldb, tb);
                let r = naive(m, n, k, &a, ta, &b, tb);
                for (x, y) in c.iter().zip(&r) {
                    assert!((x - y).abs() < 1e-12);
                }
                // accumulate with alpha
                let mut c2 = c.clone();
                gemm(m, n, k, 2.0, &a, lda, ta, &b, ldb, tb, 1.0, &mut c2, n);
                for (x, y) in c2.iter().zip(&r) {
                    assert!((x - 3.0 * y).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn row_major_strided_destination() {
        // C is a 2x3 block inside a 2x5 row-major buffer
        let a = [1.0, 2.0, 3.0, 4.0]; // 2x2
        let b = [1.0, 0.0, 2.0, 0.0, 1.0, 3.0]; // 2x3
        let mut c = [-1.0f64; 10];
        gemm(2, 3, 2, 1.0, &a, 2, Trans::N, &b, 3, Trans::N, 0.0, &mut c, 5);
        assert_eq!(c, [1.0, 2.0, 8.0, -1.0, -1.0, 3.0, 4.0, 18.0, -1.0, -1.0]);
    }

    #[test]
    fn empty_inner_dimension_zeroes_or_keeps() {
        let mut c = vec![1.0f64; 4];
        gemm(2, 2, 0, 1.0, &[], 0, Trans::N, &[], 2, Trans::N, 1.0, &mut c, 2);
        assert_eq!(c, vec![1.0; 4]);
        gemm(2, 2, 0, 1.0, &[], 0, Trans::N, &[], 2, Trans::N, 0.0, &mut c, 2);
        assert_eq!(c, vec![0.0; 4]);
    }
}
