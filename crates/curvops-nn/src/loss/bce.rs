//! Binary cross-entropy with logits, `ℓ_n = Σ_c max(f,0) − f y + log(1 + e^{−|f|})`:
//! gradient `σ(f) − y`, Hessian `diag σ(f)(1 − σ(f))`, factor `diag √(σ(1 − σ))`.

use crate::layers::activation::sigmoid;
use curvops_tensor::rng::keyed_uniform;
use curvops_tensor::Float;

pub(super) fn values<T: Float>(f: &[T], y: &[T], n: usize, c: usize) -> Vec<T> {
    (0..n)
        .map(|s| {
            f[s * c..(s + 1) * c]
                .iter()
                .zip(&y[s * c..(s + 1) * c])
                .map(|(&x, &t)| x.max(T::zero()) - x * t + (-x.abs()).exp().ln_1p())
                .sum()
        })
        .collect()
}

pub(super) fn grad<T: Float>(f: &[T], y: &[T], _n: usize, _c: usize) -> Vec<T> {
    f.iter().zip(y).map(|(&x, &t)| sigmoid(x) - t).collect()
}

fn curvature<T: Float>(x: T) -> T {
    let s = sigmoid(x);
    s * (T::one() - s)
}

pub(super) fn hess_vp<T: Float>(f: &[T], v: &[T], n: usize, c: usize, k: usize) -> Vec<T> {
    let h: Vec<T> = f.iter().map(|&x| curvature(x)).collect();
    crate::layers::mul_broadcast_k(&h, v, n, k, c)
}

pub(super) fn factor<T: Float>(f: &[T], n: usize, c: usize) -> Vec<T> {
    let mut s = vec![T::zero(); n * c * c];
    for i in 0..n {
        for j in 0..c {
            s[(i * c + j) * c + j] = curvature(f[i * c + j]).sqrt();
        }
    }
    s
}

/// `ŷ_c ~ Bernoulli(σ(f_c))`, `g = σ(f) − ŷ`.
pub(super) fn sampled_grads<T: Float>(f: &[T], n: usize, c: usize, seed: u64, start: usize, m: usize) -> Vec<T> {
    let mut g = vec![T::zero(); n * m * c];
    for s in 0..n {
        for d in 0..m {
            for j in 0..c {
                let p = sigmoid(f[s * c + j]);
                let u = keyed_uniform(seed, (start + s) as u64, d as u64, j as u64);
                let yhat = if u < p.as_f64() { T::one() } else { T::zero() };
                g[(s * m + d) * c + j] = p - yhat;
            }
        }
    }
    g
}
