//! Predictive distributions of a Laplace posterior.
//!
//! * Linearized (GLM): `f(x) ~ N(f(x; θ*), Σ_f(x))` with `Σ_f(x) = J(x) P⁻¹ J(x)ᵀ` (`C × C` per
//!   input). The `C` Jacobian rows of each input are per-sample backward passes with the unit
//!   cotangents; `P⁻¹` is applied to them with the posterior's structured solve (for the full
//!   structure, `Σ_f = (L⁻¹Jᵀ)ᵀ(L⁻¹Jᵀ)`), so no `D × D` covariance is formed.
//! * Links for classification: probit `softmax(f_μ / √(1 + π/8 · diag Σ_f))` (sigmoid per
//!   output for binary likelihoods), or Monte-Carlo `1/S Σ_s softmax(f_s)` with
//!   `f_s = f_μ + V diag(√λ) z_s` from the eigendecomposition of `Σ_f` and keyed normals
//!   `z = (seed, input index, draw, output)`.
//! * Regression: mean `f_μ`, variance `diag Σ_f + σ²`.
//! * Sampled network: `θ_s ~ N(θ*, P⁻¹)` ([`super::Posterior::sample`]), predictions averaged
//!   over the networks `f(x; θ_s)`.

use super::fit::LaplaceFit;
use super::posterior::Posterior;
use super::Likelihood;
use curvops_nn::{Network, Tape};
use curvops_tensor::gemm::matmul;
use curvops_tensor::rng::keyed_normal;
use curvops_tensor::{threads, Float};
use faer::{Accum, Mat, MatRef};

/// How to turn a Gaussian over logits into class probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// The probit approximation.
    Probit,
    /// Monte-Carlo over the logits.
    Mc {
        /// Draws per input.
        samples: usize,
        /// Seed of the keyed normals.
        seed: u64,
    },
}

/// The linearized predictive on a set of inputs: means `[n, C]` and covariances `[n, C, C]`.
#[derive(Clone, Debug, PartialEq)]
pub struct GlmOutput {
    /// Inputs.
    pub n: usize,
    /// Outputs (all positions: `T·V` for sequence outputs `[T, V]`).
    pub c: usize,
    /// Classes per softmax: `C`, or `V` for sequence cross-entropy (one softmax per position).
    pub classes: usize,
    /// `f(x; θ*)`, `[n, C]`.
    pub f_mu: Vec<f64>,
    /// `J P⁻¹ Jᵀ`, `[n, C, C]`.
    pub f_var: Vec<f64>,
}

/// The Jacobian rows of a batch's outputs with respect to the posterior's coordinates, as the
/// columns of a `D × (n·C)` matrix (column `s·C + c` is `∇_θ f_c(x_s)`).
pub(crate) fn jacobian_rows<T: Float>(fit: &LaplaceFit<T>, net: &Network<T>, tape: &Tape<T>) -> Mat<T> {
    let (n, c, ds) = (tape.n, net.out_size(), fit.active.dim);
    let mut eye = vec![T::zero(); n * c * c];
    for s in 0..n {
        for j in 0..c {
            eye[(s * c + j) * c + j] = T::one();
        }
    }
    let mut rows = vec![T::zero(); n * c * ds];
    net.vjp_per_sample(&fit.theta, tape, eye, c, &fit.active, &mut rows);
    match &fit.selection {
        // row-major [n·C, D_S] is column-major [D_S, n·C]
        None => MatRef::from_column_major_slice(&rows, ds, n * c).to_owned(),
        Some(sel) => Mat::from_fn(sel.len(), n * c, |i, j| rows[j * ds + sel[i]]),
    }
}

/// `Σ_f[s] = J_s P⁻¹ J_sᵀ` for the Jacobian rows of `n` inputs (`D × n·C`): `[n, C, C]`.
pub fn functional_variance<T: Float>(post: &Posterior<T>, rows: MatRef<'_, T>, n: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * c * c];
    let (left, right) = match post.whiten(rows) {
        Some(y) => (y.clone(), y),
        None => (rows.to_owned(), post.solve(rows)),
    };
    let mut block = Mat::<T>::zeros(c, c);
    for s in 0..n {
        let l = left.as_ref().subcols(s * c, c);
        let r = right.as_ref().subcols(s * c, c);
        matmul(block.as_mut(), Accum::Replace, l.transpose(), r, T::one(), threads::par());
        for i in 0..c {
            for j in 0..c {
                out[(s * c + i) * c + j] = 0.5 * (block[(i, j)].as_f64() + block[(j, i)].as_f64());
            }
        }
    }
    out
}

/// Inputs per batch so that a batch's Jacobian rows take about 256 MiB.
fn glm_batch<T: Float>(d: usize, c: usize, n: usize) -> usize {
    ((256usize << 20) / (2 * c * d * T::BYTES).max(1)).clamp(1, n.max(1))
}

impl<T: Float> Posterior<'_, T> {
    /// The linearized predictive `N(f(x; θ*), J P⁻¹ Jᵀ)` on `n` inputs `x` (`[n, I]`).
    pub fn glm(&self, net: &Network<T>, x: &[T], n: usize) -> GlmOutput {
        let fit = self.fit();
        let (c, isz) = (net.out_size(), net.in_size());
        let bs = glm_batch::<T>(fit.dim(), c, n);
        let mut f_mu = Vec::with_capacity(n * c);
        let mut f_var = Vec::with_capacity(n * c * c);
        for start in (0..n).step_by(bs) {
            let m = bs.min(n - start);
            let tape = net.forward(&fit.theta, &x[start * isz..(start + m) * isz], m);
            f_mu.extend(tape.output().iter().map(|v| v.as_f64()));
            let rows = jacobian_rows(fit, net, &tape);
            f_var.extend(functional_variance(self, rows.as_ref(), m, c));
        }
        GlmOutput { n, c, classes: classes_of(net), f_mu, f_var }
    }

    /// Class probabilities (`[n, C]`; `[n, T, V]` for sequence outputs, a softmax per position)
    /// of the linearized predictive with `link`; for binary likelihoods the per-output
    /// probabilities of 1.
    pub fn predict_probs(&self, net: &Network<T>, x: &[T], n: usize, link: Link) -> Vec<f64> {
        let glm = self.glm(net, x, n);
        let lik = self.fit().likelihood;
        match link {
            Link::Probit => probit_probs(&glm, lik),
            Link::Mc { samples, seed } => mc_probs(&glm, lik, samples, seed),
        }
    }

    /// Regression: predictive mean `[n, C]` and variance `diag Σ_f + σ²` `[n, C]`.
    pub fn predict_regression(&self, net: &Network<T>, x: &[T], n: usize) -> (Vec<f64>, Vec<f64>) {
        let glm = self.glm(net, x, n);
        let c = glm.c;
        let s2 = self.sigma() * self.sigma();
        let var = (0..n * c).map(|i| glm.f_var[((i / c) * c + i % c) * c + i % c] + s2).collect();
        (glm.f_mu, var)
    }

    /// The sampled-network predictive with `samples` draws `θ_s ~ N(θ*, P⁻¹)`: for
    /// classification the mean of the softmax (sigmoid for binary) outputs and zeros; for
    /// regression the mean of `f` and its variance over the draws plus `σ²`.
    pub fn predict_sampled(
        &self,
        net: &Network<T>,
        x: &[T],
        n: usize,
        samples: usize,
        seed: u64,
    ) -> (Vec<f64>, Vec<f64>) {
        let fit = self.fit();
        let c = net.out_size();
        let coords = fit.coords(net);
        let draws = self.sample(samples, seed);
        let mut mean = vec![0.0; n * c];
        let mut sq = vec![0.0; n * c];
        let mut theta = fit.theta.clone();
        for s in 0..samples {
            for (i, &ci) in coords.iter().enumerate() {
                theta[ci] = draws[(i, s)];
            }
            let f = net.predict(&theta, x, n);
            let out: Vec<f64> = match fit.likelihood {
                Likelihood::Classification => {
                    softmax_rows(&f.iter().map(|v| v.as_f64()).collect::<Vec<_>>(), classes_of(net))
                }
                Likelihood::Binary => f.iter().map(|v| sigmoid(v.as_f64())).collect(),
                Likelihood::Regression => f.iter().map(|v| v.as_f64()).collect(),
            };
            for ((m, q), o) in mean.iter_mut().zip(sq.iter_mut()).zip(&out) {
                *m += o / samples as f64;
                *q += o * o / samples as f64;
            }
        }
        let var = match fit.likelihood {
            Likelihood::Regression => {
                let s2 = self.sigma() * self.sigma();
                mean.iter().zip(&sq).map(|(m, q)| (q - m * m).max(0.0) + s2).collect()
            }
            _ => vec![0.0; n * c],
        };
        (mean, var)
    }
}

/// Classes per softmax of a network's outputs: `C`, or `V` for sequence cross-entropy on
/// `[T, V]` outputs (probabilities `[n, T, V]` are then `[n·T, V]` rows).
pub fn classes_of<T: Float>(net: &Network<T>) -> usize {
    net.out_size() / net.loss.positions.max(1)
}

/// Row-wise softmax of `[n, C]`.
pub fn softmax_rows(f: &[f64], c: usize) -> Vec<f64> {
    let mut p = vec![0.0; f.len()];
    for (row, out) in f.chunks_exact(c).zip(p.chunks_exact_mut(c)) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut z = 0.0;
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (v - m).exp();
            z += *o;
        }
        for o in out.iter_mut() {
            *o /= z;
        }
    }
    p
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The MAP predictive: softmax (classification; one per position for sequence outputs),
/// sigmoid (binary) or the outputs (regression).
pub fn map_predict<T: Float>(net: &Network<T>, theta: &[T], x: &[T], n: usize, lik: Likelihood) -> Vec<f64> {
    let f: Vec<f64> = net.predict(theta, x, n).iter().map(|v| v.as_f64()).collect();
    match lik {
        Likelihood::Classification => softmax_rows(&f, classes_of(net)),
        Likelihood::Binary => f.iter().map(|&v| sigmoid(v)).collect(),
        Likelihood::Regression => f,
    }
}

/// The probit link: `softmax(κ ∘ f_μ)` with `κ_c = (1 + π/8 Σ_f[c, c])^{-½}` (sigmoid per
/// output for binary likelihoods).
pub fn probit_probs(glm: &GlmOutput, lik: Likelihood) -> Vec<f64> {
    let c = glm.c;
    let scaled: Vec<f64> = (0..glm.n * c)
        .map(|i| {
            let (s, j) = (i / c, i % c);
            glm.f_mu[i] / (1.0 + std::f64::consts::PI / 8.0 * glm.f_var[(s * c + j) * c + j]).sqrt()
        })
        .collect();
    match lik {
        Likelihood::Binary => scaled.iter().map(|&v| sigmoid(v)).collect(),
        _ => softmax_rows(&scaled, glm.classes),
    }
}

/// Monte-Carlo link: the mean over `samples` draws `f ~ N(f_μ, Σ_f)` of softmax(f) (sigmoid
/// for binary), keyed by `(seed, input, draw, output)`.
pub fn mc_probs(glm: &GlmOutput, lik: Likelihood, samples: usize, seed: u64) -> Vec<f64> {
    let c = glm.c;
    let mut out = vec![0.0; glm.n * c];
    for s in 0..glm.n {
        let cov = Mat::<f64>::from_fn(c, c, |i, j| glm.f_var[(s * c + i) * c + j]);
        let e = curvops_linalg::Eigh::from_dense(cov.as_ref()).expect("eigendecomposition of a C x C covariance");
        let sq: Vec<f64> = e.values.iter().map(|&v| v.max(0.0).sqrt()).collect();
        let mut f = vec![0.0; c];
        for draw in 0..samples {
            let z: Vec<f64> = (0..c).map(|j| keyed_normal(seed, s as u64, draw as u64, j as u64)).collect();
            for (i, fi) in f.iter_mut().enumerate() {
                *fi = glm.f_mu[s * c + i] + (0..c).map(|k| e.vectors[(i, k)] * sq[k] * z[k]).sum::<f64>();
            }
            let p = match lik {
                Likelihood::Binary => f.iter().map(|&v| sigmoid(v)).collect(),
                _ => softmax_rows(&f, glm.classes),
            };
            for (o, pv) in out[s * c..(s + 1) * c].iter_mut().zip(&p) {
                *o += pv / samples as f64;
            }
        }
    }
    out
}
