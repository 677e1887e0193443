//! Squared error `ℓ_n = Σ_c (f_c − y_c)²`: gradient `2(f − y)`, Hessian `2I`, factor `√2 I`.

use curvops_tensor::rng::keyed_normal;
use curvops_tensor::Float;

pub(super) fn values<T: Float>(f: &[T], y: &[T], n: usize, c: usize) -> Vec<T> {
    (0..n)
        .map(|s| f[s * c..(s + 1) * c].iter().zip(&y[s * c..(s + 1) * c]).map(|(a, b)| (*a - *b) * (*a - *b)).sum())
        .collect()
}

pub(super) fn grad<T: Float>(f: &[T], y: &[T], _n: usize, _c: usize) -> Vec<T> {
    f.iter().zip(y).map(|(a, b)| T::of(2.0) * (*a - *b)).collect()
}

pub(super) fn factor<T: Float>(n: usize, c: usize) -> Vec<T> {
    let mut s = vec![T::zero(); n * c * c];
    let r2 = T::of(2f64.sqrt());
    for i in 0..n {
        for j in 0..c {
            s[(i * c + j) * c + j] = r2;
        }
    }
    s
}

/// `ŷ = f + ε`, `ε ~ N(0, ½ I)` ⇒ `g = 2(f − ŷ) = −√2 z`, `z ~ N(0, I)`.
pub(super) fn sampled_grads<T: Float>(n: usize, c: usize, seed: u64, start: usize, m: usize) -> Vec<T> {
    let mut g = vec![T::zero(); n * m * c];
    for s in 0..n {
        for d in 0..m {
            for j in 0..c {
                let z = keyed_normal(seed, (start + s) as u64, d as u64, j as u64);
                g[(s * m + d) * c + j] = T::of(-(2f64.sqrt()) * z);
            }
        }
    }
    g
}
