//! Cross-entropy on logits. With `p = softmax(f)` and `w = Σ_c y_c` (`w = 1` for a class index):
//! `ℓ_n = w·logsumexp(f) − Σ_c y_c f_c`, gradient `w p − y`, Hessian `w (diag p − p pᵀ)`,
//! factor `S = √w (diag √p − p √pᵀ)` (column `r` is `√(w p_r) (e_r − p)`).

use crate::data::TargetsRef;
use curvops_tensor::rng::keyed_uniform;
use curvops_tensor::{ops, vmath, Float};

/// Appends the softmax of the row `f` to `p` and returns its log-sum-exp: `e^{f − m} / z`
/// with `m = max f`, `lse = m + ln z` (the exponentials through the vectorized
/// [`vmath::exp_inplace`]; nothing is written twice).
fn push_softmax_row<T: Float>(f: &[T], p: &mut Vec<T>) -> T {
    let m = f.iter().copied().fold(T::neg_infinity(), T::max);
    let start = p.len();
    p.extend(f.iter().map(|&fi| fi - m));
    let row = &mut p[start..];
    vmath::exp_inplace(row);
    let z = ops::sum(row);
    for pi in row.iter_mut() {
        *pi /= z;
    }
    m + z.ln()
}

/// `(p [n, C], lse [n])`.
pub(crate) fn softmax<T: Float>(f: &[T], n: usize, c: usize) -> (Vec<T>, Vec<T>) {
    let mut p = Vec::with_capacity(n * c);
    let lse = (0..n).map(|s| push_softmax_row(&f[s * c..(s + 1) * c], &mut p)).collect();
    (p, lse)
}

/// `w_n = Σ_c y_c` (1 for class indices).
fn weights<T: Float>(y: TargetsRef<T>, n: usize, c: usize) -> Vec<T> {
    match y {
        TargetsRef::Classes(_) => vec![T::one(); n],
        TargetsRef::Dense(v) => (0..n).map(|s| v[s * c..(s + 1) * c].iter().copied().sum()).collect(),
    }
}

/// `ℓ_n` from the log-sum-exps.
fn values_from_lse<T: Float>(f: &[T], lse: &[T], y: TargetsRef<T>, n: usize, c: usize) -> Vec<T> {
    match y {
        TargetsRef::Classes(cls) => (0..n).map(|s| lse[s] - f[s * c + cls[s]]).collect(),
        TargetsRef::Dense(v) => (0..n)
            .map(|s| {
                let row = &v[s * c..(s + 1) * c];
                row.iter().zip(&f[s * c..(s + 1) * c]).map(|(&t, &fi)| t * (lse[s] - fi)).sum()
            })
            .collect(),
    }
}

/// The gradient `w p − y`, in place of the softmax `p`.
fn grad_from_softmax<T: Float>(p: &mut [T], y: TargetsRef<T>, n: usize, c: usize) {
    match y {
        TargetsRef::Classes(cls) => {
            for s in 0..n {
                p[s * c + cls[s]] -= T::one();
            }
        }
        TargetsRef::Dense(v) => {
            let w = weights(y, n, c);
            for s in 0..n {
                for j in 0..c {
                    p[s * c + j] = w[s] * p[s * c + j] - v[s * c + j];
                }
            }
        }
    }
}

pub(super) fn values<T: Float>(f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> Vec<T> {
    let (_, lse) = softmax(f, n, c);
    values_from_lse(f, &lse, y, n, c)
}

pub(super) fn grad<T: Float>(f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> Vec<T> {
    let (mut p, _) = softmax(f, n, c);
    grad_from_softmax(&mut p, y, n, c);
    p
}

/// [`values`] and [`grad`] from one softmax pass.
pub(super) fn values_and_grad<T: Float>(f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> (Vec<T>, Vec<T>) {
    let (mut p, lse) = softmax(f, n, c);
    let vals = values_from_lse(f, &lse, y, n, c);
    grad_from_softmax(&mut p, y, n, c);
    (vals, p)
}

pub(super) fn hess_vp<T: Float>(f: &[T], y: TargetsRef<T>, v: &[T], n: usize, c: usize, k: usize) -> Vec<T> {
    let (p, _) = softmax(f, n, c);
    let w = weights(y, n, c);
    let mut out = vec![T::zero(); n * k * c];
    for s in 0..n {
        let ps = &p[s * c..(s + 1) * c];
        for kk in 0..k {
            let o = (s * k + kk) * c;
            let vv = &v[o..o + c];
            let pv: T = ps.iter().zip(vv).map(|(a, b)| *a * *b).sum();
            for j in 0..c {
                out[o + j] = w[s] * ps[j] * (vv[j] - pv);
            }
        }
    }
    out
}

pub(super) fn factor<T: Float>(f: &[T], y: TargetsRef<T>, n: usize, c: usize) -> Vec<T> {
    let (p, _) = softmax(f, n, c);
    let w = weights(y, n, c);
    let mut s_out = vec![T::zero(); n * c * c];
    for s in 0..n {
        let ps = &p[s * c..(s + 1) * c];
        for r in 0..c {
            let a = (w[s] * ps[r]).sqrt();
            let col = &mut s_out[(s * c + r) * c..(s * c + r + 1) * c];
            for j in 0..c {
                col[j] = -a * ps[j];
            }
            col[r] += a;
        }
    }
    s_out
}

/// `ŷ ~ Categorical(p)` by inverting the CDF at a keyed uniform; `g = p − e_ŷ`.
pub(super) fn sampled_grads<T: Float>(f: &[T], n: usize, c: usize, seed: u64, start: usize, m: usize) -> Vec<T> {
    let (p, _) = softmax(f, n, c);
    let mut g = vec![T::zero(); n * m * c];
    for s in 0..n {
        let ps = &p[s * c..(s + 1) * c];
        for d in 0..m {
            let u = keyed_uniform(seed, (start + s) as u64, d as u64, 0);
            let mut acc = 0.0;
            let mut cls = c - 1;
            for (j, pj) in ps.iter().enumerate() {
                acc += pj.as_f64();
                if u < acc {
                    cls = j;
                    break;
                }
            }
            let row = &mut g[(s * m + d) * c..(s * m + d + 1) * c];
            row.copy_from_slice(ps);
            row[cls] -= T::one();
        }
    }
    g
}
