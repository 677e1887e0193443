//! The directionally damped Newton step `s = −Σ_k γ̄_k/(λ̄_k + δ_k) e_k`.

use super::{Directional, Eigenpairs, VivitError};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;

/// How the damping `δ_k` of each direction is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Damping {
    /// The same `δ ≥ 0` for every direction.
    Constant(f64),
    /// ViViT's bootstrap rule: for each direction and each `δ` of `grid`, `resamples` bootstrap
    /// resamples of the per-sample `γ_nk`, `λ_nk` give the 1-d gain `−γ̂τ − ½λ̂τ²` of the step
    /// `τ = −γ̃/(λ̃ + δ)` (`γ̃`, `λ̃` from an independent resample); the `quantile` of the gain over
    /// resamples is the score; the `δ` with the largest non-negative score is taken, and no
    /// step is made along `e_k` when every score is negative.
    Bootstrap {
        /// Seed of the resamples.
        seed: u64,
        /// Resamples `B`.
        resamples: usize,
        /// Quantile of the gain (0.05).
        quantile: f64,
        /// Candidate dampings.
        grid: Vec<f64>,
    },
}

impl Damping {
    /// The rule of ViViT's experiments: `δ ∈ logspace(−3, 2, 100)`, `B = 100`, 5 % quantile.
    pub fn bootstrap(seed: u64) -> Self {
        let grid = (0..100).map(|i| 10f64.powf(-3.0 + 5.0 * i as f64 / 99.0)).collect();
        Self::Bootstrap { seed, resamples: 100, quantile: 0.05, grid }
    }
}

/// A damped Newton step.
#[derive(Clone, Debug)]
pub struct NewtonStep<T> {
    /// `s` (`[D_S]`).
    pub step: Vec<T>,
    /// `δ_k` per direction (`None`: no step along `e_k`).
    pub damping: Vec<Option<f64>>,
    /// `γ̄_k = c·N·mean_n γ_nk` (`= e_kᵀ∇L` with all samples).
    pub gamma: Vec<f64>,
    /// The coefficient of `e_k` in `s`.
    pub coefficients: Vec<f64>,
}

/// The `q`-quantile with linear interpolation (numpy's default) of `v` (sorted in place).
pub(crate) fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let f = pos - lo as f64;
    v[lo] + f * (v[hi] - v[lo])
}

/// Means of resampled columns: `out[b][k] = mean_{i ∈ idx_b} x[i, k]`.
fn resample_means(x: &[f64], k: usize, idx: &[Vec<usize>]) -> Vec<Vec<f64>> {
    idx.iter()
        .map(|ib| {
            let mut m = vec![0.0; k];
            for &i in ib {
                for (j, v) in m.iter_mut().enumerate() {
                    *v += x[i * k + j];
                }
            }
            m.iter().map(|v| v / ib.len() as f64).collect()
        })
        .collect()
}

/// The damped Newton step along the eigenvectors of `eig` from the per-sample directional
/// derivatives `dd` (`n_total` samples in the data set, reduction factor `c`):
/// `γ̄_k = c·n_total·mean_{n ∈ grad samples} γ_nk`, `λ̄_k = λ_k`, the bootstrap scaling the
/// resampled means the same way (`λ̂ = c·n_total·mean λ_nk`). When the gradient and curvature
/// samples are the same set they are resampled jointly.
pub fn newton_step<T: Float>(
    eig: &Eigenpairs<T>,
    dd: &Directional<T>,
    n_total: usize,
    c: f64,
    damping: &Damping,
) -> Result<NewtonStep<T>, VivitError> {
    let k = eig.k();
    if dd.k != k {
        return Err(VivitError::Invalid(format!("newton step: {k} eigenpairs but {} directions", dd.k)));
    }
    let (ng, nc) = (dd.grad_samples.len(), dd.curv_samples.len());
    if ng == 0 {
        return Err(VivitError::Invalid("newton step: no gradient samples".into()));
    }
    let scale = c * n_total as f64;
    let gam: Vec<f64> = dd.gamma.iter().map(|v| v.as_f64()).collect();
    let lam: Vec<f64> = dd.lambda.iter().map(|v| v.as_f64()).collect();
    let gbar: Vec<f64> = (0..k).map(|j| scale * (0..ng).map(|i| gam[i * k + j]).sum::<f64>() / ng as f64).collect();
    let lbar: Vec<f64> = eig.values.iter().map(|v| v.as_f64()).collect();
    let deltas: Vec<Option<f64>> = match damping {
        Damping::Constant(d) => {
            if !(d.is_finite() && *d >= 0.0) {
                return Err(VivitError::Invalid(format!("the Newton step's damping must be ≥ 0, got {d}")));
            }
            vec![Some(*d); k]
        }
        Damping::Bootstrap { seed, resamples, quantile: q, grid } => {
            if *resamples == 0 || grid.is_empty() || !(0.0..=1.0).contains(q) {
                return Err(VivitError::Invalid("bootstrap damping: empty grid, no resamples or bad quantile".into()));
            }
            if nc == 0 {
                return Err(VivitError::Invalid("newton step: no curvature samples for the bootstrap".into()));
            }
            let joint = dd.grad_samples == dd.curv_samples;
            let mut rng = Rng::new(*seed ^ 0xb007_57a9_d4a3_1c6b);
            let mut draw = |n: usize| -> Vec<Vec<usize>> {
                (0..*resamples).map(|_| (0..n).map(|_| rng.below(n as u64) as usize).collect()).collect()
            };
            // resample 1: the gain's γ̂, λ̂; resample 2 (independent): the step's γ̃, λ̃
            let g1 = draw(ng);
            let c1 = if joint { g1.clone() } else { draw(nc) };
            let g2 = draw(ng);
            let c2 = if joint { g2.clone() } else { draw(nc) };
            let (mg1, mc1, mg2, mc2) = (
                resample_means(&gam, k, &g1),
                resample_means(&lam, k, &c1),
                resample_means(&gam, k, &g2),
                resample_means(&lam, k, &c2),
            );
            let mut gains = vec![0.0; *resamples];
            (0..k)
                .map(|j| {
                    let mut best: Option<(f64, f64)> = None;
                    for &d in grid {
                        for b in 0..*resamples {
                            let (gh, lh) = (scale * mg1[b][j], scale * mc1[b][j]);
                            let (gt, lt) = (scale * mg2[b][j], scale * mc2[b][j]);
                            let tau = -gt / (lt + d);
                            gains[b] = -gh * tau - 0.5 * lh * tau * tau;
                        }
                        let s = quantile(&mut gains, *q);
                        if s >= 0.0 && best.is_none_or(|(bs, _)| s > bs) {
                            best = Some((s, d));
                        }
                    }
                    best.map(|b| b.1)
                })
                .collect()
        }
    };
    let d = eig.dim;
    let mut step = vec![0.0f64; d];
    let mut coefficients = vec![0.0; k];
    for j in 0..k {
        if let Some(delta) = deltas[j] {
            let den = lbar[j] + delta;
            if den <= 0.0 {
                return Err(VivitError::Invalid(format!("newton step: λ_{j} + δ = {den:.3e} is not positive")));
            }
            let a = -gbar[j] / den;
            coefficients[j] = a;
            for (s, v) in step.iter_mut().zip(eig.vector(j)) {
                *s += a * v.as_f64();
            }
        }
    }
    Ok(NewtonStep { step: step.into_iter().map(T::of).collect(), damping: deltas, gamma: gbar, coefficients })
}
