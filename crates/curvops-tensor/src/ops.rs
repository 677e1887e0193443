//! Small vector kernels used everywhere.

use crate::Float;

/// `y ← y + α·x`.
#[inline]
pub fn axpy<T: Float>(alpha: T, x: &[T], y: &mut [T]) {
    debug_assert_eq!(x.len(), y.len());
    crate::simd::with_simd(
        #[inline(always)]
        || {
            for (yi, xi) in y.iter_mut().zip(x) {
                *yi += alpha * *xi;
            }
        },
    )
}

/// `⟨x, y⟩`.
#[inline]
pub fn dot<T: Float>(x: &[T], y: &[T]) -> T {
    debug_assert_eq!(x.len(), y.len());
    crate::simd::with_simd(
        #[inline(always)]
        || dot_kernel(x, y),
    )
}

#[inline(always)]
fn dot_kernel<T: Float>(x: &[T], y: &[T]) -> T {
    // four partial sums: vectorizes and keeps the order fixed (deterministic)
    let mut acc = [T::zero(); 4];
    let chunks = x.len() / 4;
    for c in 0..chunks {
        for l in 0..4 {
            acc[l] += x[4 * c + l] * y[4 * c + l];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in 4 * chunks..x.len() {
        s += x[i] * y[i];
    }
    s
}

/// `x ← α·x`.
#[inline]
pub fn scale<T: Float>(alpha: T, x: &mut [T]) {
    crate::simd::with_simd(
        #[inline(always)]
        || {
            for xi in x {
                *xi *= alpha;
            }
        },
    )
}

/// Euclidean norm, accumulated in f64.
pub fn norm2<T: Float>(x: &[T]) -> f64 {
    x.iter().map(|v| v.as_f64() * v.as_f64()).sum::<f64>().sqrt()
}

/// Permutes a row-major `[a, b, c]` array to `[b, a, c]`.
pub fn swap01<T: Float>(x: &[T], a: usize, b: usize, c: usize) -> Vec<T> {
    debug_assert_eq!(x.len(), a * b * c);
    let mut y = vec![T::zero(); x.len()];
    for i in 0..a {
        for j in 0..b {
            y[(j * a + i) * c..(j * a + i + 1) * c].copy_from_slice(&x[(i * b + j) * c..(i * b + j + 1) * c]);
        }
    }
    y
}

/// Sums a row-major `[rows, cols]` array over its rows into `out` (`out += Σ_r x[r, :]`).
pub fn sum_rows_into<T: Float>(x: &[T], rows: usize, cols: usize, alpha: T, out: &mut [T]) {
    debug_assert_eq!(x.len(), rows * cols);
    crate::simd::with_simd(
        #[inline(always)]
        || {
            for row in x.chunks_exact(cols.max(1)).take(rows) {
                for (o, v) in out.iter_mut().zip(row) {
                    *o += alpha * *v;
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let mut y = [1.0; 5];
        axpy(2.0, &x, &mut y);
        assert_eq!(y, [3.0, 5.0, 7.0, 9.0, 11.0]);
        assert_eq!(dot(&x, &x), 55.0);
        let p = swap01(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 2, 3, 1);
        assert_eq!(p, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let mut s = [0.0; 2];
        sum_rows_into(&[1.0, 2.0, 3.0, 4.0], 2, 2, 1.0, &mut s);
        assert_eq!(s, [4.0, 6.0]);
    }
}
