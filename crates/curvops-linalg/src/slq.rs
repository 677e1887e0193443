//! Spectral densities by stochastic Lanczos quadrature (SLQ; Ghorbani, Krishnan & Xiao 2019,
//! Papyan 2020).
//!
//! For a symmetric `n × n` operator `A = Σᵢ λᵢ qᵢqᵢᵀ`, the spectral density is
//! `φ(t) = (1/n) Σᵢ δ(t − λᵢ)`. For a random unit vector `v` (a normalized Rademacher or
//! Gaussian probe), `vᵀ f(A) v = Σᵢ (qᵢᵀv)² f(λᵢ)` has expectation `(1/n) Σᵢ f(λᵢ)`, and `m`
//! Lanczos steps from `v` give the Gauss quadrature of that sum: the eigenvalues `θⱼ`
//! (nodes) of the `m × m` tridiagonal matrix `T` and the squared first components `τⱼ` of its
//! eigenvectors (weights, `Σⱼ τⱼ = 1`). Averaging over `L` starts and smoothing each node
//! with a Gaussian of width `σ`,
//!
//! `φ_σ(t) = (1/L) Σₗ Σⱼ τⱼˡ · exp(−(t − θⱼˡ)² / 2σ²) / (σ√(2π))`.
//!
//! The density integrates to 1 and its mean `(1/L) Σₗ Σⱼ τⱼˡ θⱼˡ = (1/L) Σₗ vₗᵀ A vₗ` is an
//! unbiased estimate of `tr(A)/n`. The spectrum's boundaries are estimated by the extreme
//! Ritz values (the extreme nodes converge first in Lanczos). The density of `log|λ|` uses the
//! nodes `log|θⱼ|` with the same weights.
//!
//! All starts run together: each Lanczos step applies the operator once to a block of `L`
//! columns. Full reorthogonalization (default) keeps each start's basis (`n × m` per start).

use crate::counting::CountingOp;
use crate::decomp::Eigh;
use crate::estimators::Probe;
use crate::util::{check_square, check_symmetric, fill_probes, mean_se, norm, orthogonalize};
use crate::{LinalgError, LinearOperator};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use faer::Mat;
use std::io::Write;

/// Options of [`lanczos_quadrature`].
#[derive(Clone, Debug)]
pub struct SlqOptions {
    /// Number of random starts `L`.
    pub starts: usize,
    /// Lanczos steps `m` per start (capped at `n`).
    pub steps: usize,
    /// Probe distribution of the (normalized) start vectors.
    pub probe: Probe,
    /// Seed of the start vectors.
    pub seed: u64,
    /// Full reorthogonalization of each start's Lanczos basis.
    pub reorthogonalize: bool,
}

impl Default for SlqOptions {
    fn default() -> Self {
        Self { starts: 10, steps: 80, probe: Probe::Rademacher, seed: 0, reorthogonalize: true }
    }
}

/// Gauss quadrature nodes and weights of each start.
#[derive(Clone, Debug)]
pub struct Quadrature {
    /// Nodes `θⱼˡ` (Ritz values) of each start.
    pub nodes: Vec<Vec<f64>>,
    /// Weights `τⱼˡ` (summing to 1 per start).
    pub weights: Vec<Vec<f64>>,
    /// The operator's dimension `n`.
    pub dim: usize,
    /// Operator applications (columns).
    pub matvecs: usize,
}

/// Options of the smoothed density.
#[derive(Clone, Debug)]
pub struct DensityOptions {
    /// Number of grid points.
    pub grid_points: usize,
    /// Gaussian width `σ` (absolute); `None` for `sigma_rel` times the estimated range.
    pub sigma: Option<f64>,
    /// Default width relative to the range `λ_max − λ_min` of the nodes.
    pub sigma_rel: f64,
    /// The grid extends `pad_sigmas·σ` beyond the estimated boundaries.
    pub pad_sigmas: f64,
    /// For the density of `log|λ|`: nodes with `|θ| < log_floor_rel · max|θ|` are clamped there.
    pub log_floor_rel: f64,
}

impl Default for DensityOptions {
    fn default() -> Self {
        Self { grid_points: 1000, sigma: None, sigma_rel: 0.01, pad_sigmas: 5.0, log_floor_rel: 1e-12 }
    }
}

/// A density on a grid.
#[derive(Clone, Debug)]
pub struct SpectralDensity {
    /// Grid points (of `λ`, or of `log|λ|` when `log`).
    pub grid: Vec<f64>,
    /// Density values on the grid.
    pub density: Vec<f64>,
    /// Gaussian width used.
    pub sigma: f64,
    /// Estimated lower boundary of the spectrum (smallest node; in log space when `log`).
    pub lower: f64,
    /// Estimated upper boundary (largest node).
    pub upper: f64,
    /// Whether this is the density of `log|λ|`.
    pub log: bool,
}

impl SpectralDensity {
    /// The `(grid point, density)` pairs (e.g. for `curvops_plot::Series`).
    pub fn pairs(&self) -> Vec<(f64, f64)> {
        self.grid.iter().copied().zip(self.density.iter().copied()).collect()
    }
    /// `∫ φ` by the trapezoid rule on the grid (≈ 1).
    pub fn integral(&self) -> f64 {
        trapezoid(&self.grid, &self.density)
    }
    /// `∫ t φ(t) dt` by the trapezoid rule (≈ `tr(A)/n`, or the mean of `log|λ|`).
    pub fn mean(&self) -> f64 {
        let f: Vec<f64> = self.grid.iter().zip(&self.density).map(|(x, d)| x * d).collect();
        trapezoid(&self.grid, &f)
    }
    /// The grid points of the local maxima whose density exceeds `min_rel` times the maximum.
    pub fn peaks(&self, min_rel: f64) -> Vec<f64> {
        let max = self.density.iter().fold(0.0f64, |a, &b| a.max(b));
        let d = &self.density;
        (1..d.len().saturating_sub(1))
            .filter(|&i| d[i] >= d[i - 1] && d[i] > d[i + 1] && d[i] >= min_rel * max)
            .map(|i| self.grid[i])
            .collect()
    }
    /// Writes `lambda,density` (or `log_abs_lambda,density`) CSV lines with a header.
    pub fn write_csv<W: Write>(&self, mut w: W) -> std::io::Result<()> {
        writeln!(w, "{},density", if self.log { "log_abs_lambda" } else { "lambda" })?;
        for (x, d) in self.grid.iter().zip(&self.density) {
            writeln!(w, "{x:.10e},{d:.10e}")?;
        }
        Ok(())
    }
    /// [`Self::write_csv`] to a file.
    pub fn save_csv(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        let f = std::fs::File::create(path)?;
        self.write_csv(std::io::BufWriter::new(f))
    }
}

fn trapezoid(x: &[f64], y: &[f64]) -> f64 {
    x.windows(2).zip(y.windows(2)).map(|(xs, ys)| 0.5 * (xs[1] - xs[0]) * (ys[0] + ys[1])).sum()
}

/// Runs `L` Lanczos processes of `m` steps from random unit starts (one block application per
/// step) and returns their quadrature nodes and weights. Needs a symmetric operator.
pub fn lanczos_quadrature<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    opts: &SlqOptions,
) -> Result<Quadrature, LinalgError> {
    let n = check_square(op, "spectral density")?;
    check_symmetric(op)?;
    if opts.starts == 0 || opts.steps == 0 || n == 0 {
        return Err(LinalgError::Dimension("spectral density: starts, steps and the size must be positive".into()));
    }
    let a = CountingOp::new(op);
    let l = opts.starts;
    let m = opts.steps.min(n);
    let eps = T::epsilon().as_f64();
    let mut rng = Rng::new(opts.seed);
    let probes = fill_probes::<T>(&mut rng, n, l, opts.probe);
    // Per start: basis (columns 0..=j), alphas, betas, active flag.
    let keep = if opts.reorthogonalize { m + 1 } else { 2 };
    let mut bases: Vec<Mat<T>> = (0..l).map(|_| Mat::<T>::zeros(n, keep)).collect();
    let mut alphas: Vec<Vec<f64>> = vec![Vec::new(); l];
    let mut betas: Vec<Vec<f64>> = vec![Vec::new(); l];
    let mut active: Vec<bool> = vec![true; l];
    // running estimate of ‖A‖ per start, for the breakdown test
    let mut scale: Vec<f64> = vec![0.0; l];
    for (s, basis) in bases.iter_mut().enumerate() {
        let nr: f64 = (0..n).map(|i| probes[(i, s)].as_f64().powi(2)).sum::<f64>().sqrt();
        for i in 0..n {
            basis[(i, 0)] = T::of(probes[(i, s)].as_f64() / nr);
        }
    }
    let slot = |j: usize| if opts.reorthogonalize { j } else { j % 2 };
    for j in 0..m {
        let act: Vec<usize> = (0..l).filter(|&s| active[s]).collect();
        if act.is_empty() {
            break;
        }
        let q = Mat::<T>::from_fn(n, act.len(), |i, c| bases[act[c]][(i, slot(j))]);
        let mut w = Mat::<T>::zeros(n, act.len());
        a.apply(w.as_mut(), q.as_ref())?;
        for (c, &s) in act.iter().enumerate() {
            let basis = &mut bases[s];
            let mut wc = w.as_ref().subcols(c, 1).to_owned();
            let w0 = norm(&wc);
            let alpha: f64 = (0..n).map(|i| basis[(i, slot(j))].as_f64() * wc[(i, 0)].as_f64()).sum();
            let beta_prev = if j > 0 { betas[s][j - 1] } else { 0.0 };
            for i in 0..n {
                let mut x = wc[(i, 0)] - T::of(alpha) * basis[(i, slot(j))];
                if j > 0 {
                    x -= T::of(beta_prev) * basis[(i, slot(j - 1))];
                }
                wc[(i, 0)] = x;
            }
            if opts.reorthogonalize {
                orthogonalize(basis, j + 1, &mut wc);
            }
            alphas[s].push(alpha);
            let beta = norm(&wc);
            scale[s] = scale[s].max(w0).max(alpha.abs());
            if j + 1 == m || beta <= 1e3 * eps * scale[s].max(f64::MIN_POSITIVE) {
                // Done, or an invariant subspace: the quadrature is exact for this start.
                active[s] = false;
                continue;
            }
            betas[s].push(beta);
            let inv = T::of(1.0 / beta);
            for i in 0..n {
                basis[(i, slot(j + 1))] = inv * wc[(i, 0)];
            }
        }
    }
    let mut nodes = Vec::with_capacity(l);
    let mut weights = Vec::with_capacity(l);
    for s in 0..l {
        let k = alphas[s].len();
        let t = Mat::<f64>::from_fn(k, k, |i, j| {
            if i == j {
                alphas[s][i]
            } else if i == j + 1 {
                betas[s][j]
            } else if j == i + 1 {
                betas[s][i]
            } else {
                0.0
            }
        });
        let e = Eigh::from_dense(t.as_ref())?;
        weights.push((0..k).map(|j| e.vectors[(0, j)].powi(2)).collect());
        nodes.push(e.values);
    }
    Ok(Quadrature { nodes, weights, dim: n, matvecs: a.count() })
}

impl Quadrature {
    /// The estimate of `tr(A)/n` (`(1/L) Σₗ Σⱼ τⱼˡ θⱼˡ`) and its standard error across starts.
    pub fn mean(&self) -> (f64, Option<f64>) {
        self.mean_of(|x| x)
    }
    /// The estimate of `(1/n) tr f(A)` and its standard error across starts.
    pub fn mean_of(&self, f: impl Fn(f64) -> f64) -> (f64, Option<f64>) {
        let per: Vec<f64> =
            self.nodes.iter().zip(&self.weights).map(|(t, w)| t.iter().zip(w).map(|(&x, &y)| y * f(x)).sum()).collect();
        mean_se(&per)
    }
    /// Smallest and largest node: the estimated boundaries of the spectrum.
    pub fn bounds(&self) -> (f64, f64) {
        let all = self.nodes.iter().flatten();
        let lo = all.clone().fold(f64::INFINITY, |a, &b| a.min(b));
        let hi = all.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        (lo, hi)
    }
    /// The Gaussian-smoothed density of the eigenvalues.
    pub fn density(&self, opts: &DensityOptions) -> SpectralDensity {
        smooth(&self.nodes, &self.weights, opts, false)
    }
    /// The Gaussian-smoothed density of `log|λ|` (nodes `log|θ|`, clamped at
    /// `log_floor_rel · max|θ|`).
    pub fn log_density(&self, opts: &DensityOptions) -> SpectralDensity {
        let big = self.nodes.iter().flatten().fold(0.0f64, |a, &b| a.max(b.abs()));
        let floor = (opts.log_floor_rel * big).max(f64::MIN_POSITIVE);
        let nodes: Vec<Vec<f64>> =
            self.nodes.iter().map(|t| t.iter().map(|x| x.abs().max(floor).ln()).collect()).collect();
        smooth(&nodes, &self.weights, opts, true)
    }
}

fn smooth(nodes: &[Vec<f64>], weights: &[Vec<f64>], opts: &DensityOptions, log: bool) -> SpectralDensity {
    let all = nodes.iter().flatten();
    let lo = all.clone().fold(f64::INFINITY, |a, &b| a.min(b));
    let hi = all.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let range = hi - lo;
    let width = if range > 0.0 { range } else { hi.abs().max(1.0) };
    let sigma = opts.sigma.unwrap_or(opts.sigma_rel * width);
    let (g0, g1) = (lo - opts.pad_sigmas * sigma, hi + opts.pad_sigmas * sigma);
    let np = opts.grid_points.max(2);
    let grid: Vec<f64> = (0..np).map(|i| g0 + (g1 - g0) * i as f64 / (np - 1) as f64).collect();
    let l = nodes.len() as f64;
    let c = 1.0 / (sigma * (2.0 * std::f64::consts::PI).sqrt() * l);
    let mut density = vec![0.0; np];
    for (t, w) in nodes.iter().zip(weights) {
        for (&x, &wt) in t.iter().zip(w) {
            for (d, &g) in density.iter_mut().zip(&grid) {
                let z = (g - x) / sigma;
                if z.abs() < 40.0 {
                    *d += c * wt * (-0.5 * z * z).exp();
                }
            }
        }
    }
    SpectralDensity { grid, density, sigma, lower: lo, upper: hi, log }
}

/// Convenience: [`lanczos_quadrature`] followed by [`Quadrature::density`].
pub fn slq<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    opts: &SlqOptions,
    density: &DensityOptions,
) -> Result<(SpectralDensity, Quadrature), LinalgError> {
    let q = lanczos_quadrature(op, opts)?;
    Ok((q.density(density), q))
}
