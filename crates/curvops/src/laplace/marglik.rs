//! Choosing the prior precision (and the noise `σ` for regression).
//!
//! # Marginal likelihood
//! With `h = 1/(σ²T)` and the eigenvalues `λ_gi` of `H` in prior group `g` (dimension `D_g`,
//! `‖θ*_g‖² = m_g`), the log marginal likelihood is
//!
//! `M(τ, h) = −h·L + [regression: (NC/2) log h + const] − ½ Σ_g (Σ_i log(hλ_gi + τ_g) − D_g log τ_g + τ_g m_g)`.
//!
//! * `∂M/∂τ_g = −½ φ_g(τ_g)` with `φ_g(τ) = m_g − Σ_i hλ_gi / (τ(hλ_gi + τ))`, which increases
//!   monotonically in `τ` (each term's derivative is `hλ(2τ + hλ)/(τ(hλ+τ))² ≥ 0`) from `−∞`
//!   to `m_g`: the optimal `τ_g` is its unique root, found by bisection on `log τ` to machine
//!   precision.
//! * `∂M/∂h = −L + NC/(2h) − ½ Σ_gi λ_gi/(hλ_gi + τ_g)`, positive for `h → 0` and tending to
//!   `−L` for `h → ∞`: a root by bisection on `log h`.
//!
//! When the eigenvalues separate by group (diag and KFAC with a layerwise prior; every
//! structure with a scalar prior) coordinate ascent over these exact one-dimensional maxima
//! converges to the joint optimum (for a scalar prior and classification it is a single root).
//! Otherwise (full or low rank with a layerwise prior) MacKay's fixed point is iterated:
//! `γ_g = D_g − τ_g tr_g(P⁻¹)`, `τ_g ← γ_g / m_g`, `h ← (NC − Σγ)/(2L)`, whose fixed points
//! are exactly the stationary points of `M`.
//!
//! laplace-torch instead runs 100 Adam steps (learning rate 0.1) on `log τ` from `τ = 1`, which
//! stops close to (within about 1 % of) the optimum computed here.
//!
//! # Grid search
//! [`gridsearch`] picks the `τ` of a grid (default laplace-torch's `logspace(-4, 4, 100)`) that
//! minimizes the validation negative log-likelihood of the linearized predictive (probit for
//! classification, Gaussian with variance `diag Σ_f + σ²` for regression).

use super::fit::{HessianApprox, LaplaceFit};
use super::posterior::{log_likelihood, Posterior};
use super::predictive::{jacobian_rows, probit_probs, GlmOutput};
use super::{LaplaceError, Likelihood, PriorPrecision};
use curvops_nn::{Dataset, Network, Targets};
use curvops_tensor::gemm::matmul;
use curvops_tensor::{threads, Float};
use faer::{Accum, Mat};

/// The structure of the prior precision to optimize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriorStructure {
    /// One `τ`.
    Scalar,
    /// One `τ` per parameter tensor.
    Layerwise,
}

/// Options of [`optimize_marglik`].
#[derive(Clone, Debug)]
pub struct MarglikOptions {
    /// Scalar or layerwise `τ`.
    pub prior_structure: PriorStructure,
    /// Also optimize `σ` (regression only).
    pub optimize_sigma: bool,
    /// `σ` when it is not optimized, and the start value when it is.
    pub sigma: f64,
    /// Temperature `T`.
    pub temperature: f64,
    /// Relative tolerance on the parameters between sweeps.
    pub tol: f64,
    /// Maximal sweeps (coordinate ascent or fixed-point iterations).
    pub max_iter: usize,
}

impl Default for MarglikOptions {
    fn default() -> Self {
        Self {
            prior_structure: PriorStructure::Scalar,
            optimize_sigma: false,
            sigma: 1.0,
            temperature: 1.0,
            tol: 1e-12,
            max_iter: 10_000,
        }
    }
}

/// The optimum found by [`optimize_marglik`].
#[derive(Clone, Debug)]
pub struct MarglikResult {
    /// The prior precision.
    pub prior: PriorPrecision,
    /// The noise `σ`.
    pub sigma: f64,
    /// The log marginal likelihood there.
    pub log_marginal_likelihood: f64,
    /// Sweeps taken.
    pub iterations: usize,
    /// `"spectral"` (exact one-dimensional roots) or `"fixed-point"` (MacKay).
    pub method: &'static str,
}

/// Bisection on `[lo, hi]` (in log space) for the root of an increasing function.
fn bisect_increasing(f: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if f(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

const LOG_MIN: f64 = -60.0;
const LOG_MAX: f64 = 60.0;

/// The `τ` maximizing the group's term for fixed `h` (for an indefinite `H`, among the `τ`
/// that keep `P` positive definite: `τ > −h·λ_min`).
fn optimal_tau(lams: &[f64], h: f64, m: f64) -> f64 {
    let phi = |u: f64| {
        let t = u.exp();
        m - lams.iter().map(|&l| h * l / (t * (h * l + t))).sum::<f64>()
    };
    let neg = lams.iter().fold(0.0f64, |a, &l| a.max(-h * l));
    let lo = if neg > 0.0 { (neg * (1.0 + 1e-12)).ln().max(LOG_MIN) } else { LOG_MIN };
    bisect_increasing(phi, lo, LOG_MAX.max(lo + 1.0)).exp()
}

/// The `h` maximizing `M` for fixed `τ` (regression).
fn optimal_h(spec: &[Vec<f64>], taus: &[f64], nc: f64, loss: f64) -> f64 {
    // ψ(h) = NC/(2h) − ½ Σ λ/(hλ+τ) − L decreases through its root; bisect on −ψ
    let neg_psi = |v: f64| {
        let h = v.exp();
        let tr: f64 = spec.iter().zip(taus).map(|(ls, &t)| ls.iter().map(|&l| l / (h * l + t)).sum::<f64>()).sum();
        -(nc / (2.0 * h) - 0.5 * tr - loss)
    };
    // an indefinite H bounds h: h·λ + τ > 0
    let hi = spec
        .iter()
        .zip(taus)
        .flat_map(|(ls, &t)| ls.iter().filter(|&&l| l < 0.0).map(move |&l| t / -l))
        .fold(f64::INFINITY, f64::min);
    let hi = if hi.is_finite() { (hi * (1.0 - 1e-12)).ln().min(LOG_MAX) } else { LOG_MAX };
    bisect_increasing(neg_psi, LOG_MIN.min(hi - 1.0), hi).exp()
}

/// `M(τ, h)` from the group spectra.
fn spectral_marglik<T: Float>(fit: &LaplaceFit<T>, spec: &[Vec<f64>], sq: &[f64], taus: &[f64], h: f64, t: f64) -> f64 {
    let sigma = (1.0 / (h * t)).sqrt();
    let mut acc = 0.0;
    for ((ls, &tau), &m) in spec.iter().zip(taus).zip(sq) {
        acc += ls.iter().map(|&l| (h * l + tau).ln()).sum::<f64>() - ls.len() as f64 * tau.ln() + tau * m;
    }
    log_likelihood(fit, sigma, t) - 0.5 * acc
}

/// Gradient and Hessian of `M` in `(log τ_1, …, log τ_G, log h)` from the group spectra
/// (`a_i = hλ_i`, `w_i = 1/(a_i + τ)`):
/// `∂M/∂u_g = −½(τ Σw − D_g + τ m_g)`, `∂M/∂v = −hL + NC/2 − ½ Σ a w`,
/// `∂²M/∂u_g² = −½(τ Σw − τ² Σw² + τ m_g)`, `∂²M/∂u_g∂v = ½ τ Σ a w²`,
/// `∂²M/∂v² = −hL − ½ Σ a τ w²`.
fn spectral_derivatives(
    spec: &[Vec<f64>],
    sq: &[f64],
    taus: &[f64],
    h: f64,
    nc: f64,
    loss: f64,
) -> (Vec<f64>, Vec<f64>) {
    let k = spec.len() + 1;
    let mut g = vec![0.0; k];
    let mut hess = vec![0.0; k * k];
    let mut dv = -h * loss + 0.5 * nc;
    let mut dvv = -h * loss;
    for (gi, ((ls, &t), &m)) in spec.iter().zip(taus).zip(sq).enumerate() {
        let (mut sw, mut sw2, mut saw, mut saw2, mut satw2) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &l in ls {
            let a = h * l;
            let w = 1.0 / (a + t);
            sw += w;
            sw2 += w * w;
            saw += a * w;
            saw2 += a * w * w;
            satw2 += a * t * w * w;
        }
        g[gi] = -0.5 * (t * sw - ls.len() as f64 + t * m);
        hess[gi * k + gi] = -0.5 * (t * sw - t * t * sw2 + t * m);
        hess[gi * k + k - 1] = 0.5 * t * saw2;
        hess[(k - 1) * k + gi] = 0.5 * t * saw2;
        dv -= 0.5 * saw;
        dvv -= 0.5 * satw2;
    }
    g[k - 1] = dv;
    hess[k * k - 1] = dvv;
    (g, hess)
}

/// Maximizes the Laplace log marginal likelihood over the prior precision (and `σ`), see the
/// module docs.
pub fn optimize_marglik<T: Float>(fit: &LaplaceFit<T>, opts: &MarglikOptions) -> Result<MarglikResult, LaplaceError> {
    if opts.optimize_sigma && fit.likelihood != Likelihood::Regression {
        return Err(LaplaceError("sigma can be optimized for regression only".into()));
    }
    let t = opts.temperature;
    let single = opts.prior_structure == PriorStructure::Scalar;
    let sizes: Vec<usize> = if single { vec![fit.dim()] } else { fit.group_sizes() };
    let sq: Vec<f64> = if single {
        vec![fit.mean.iter().map(|v| v.as_f64().powi(2)).sum()]
    } else {
        fit.groups
            .iter()
            .map(|g| fit.mean[g.offset..g.offset + g.len].iter().map(|v| v.as_f64().powi(2)).sum())
            .collect()
    };
    let nc = (fit.n_data * fit.n_outputs) as f64;
    let mut h = 1.0 / (opts.sigma * opts.sigma * t);
    let mut taus = vec![1.0; sizes.len()];
    let to_prior = |taus: &[f64]| {
        if single {
            PriorPrecision::Scalar(taus[0])
        } else {
            PriorPrecision::Layerwise(taus.to_vec())
        }
    };
    if let Some(spec) = fit.spectrum(single)? {
        // exact one-dimensional maxima in τ (and h), then Newton on (log τ, log h) jointly
        let mut it = 0;
        for (tau, (ls, &m)) in taus.iter_mut().zip(spec.iter().zip(&sq)) {
            *tau = optimal_tau(ls, h, m);
        }
        if opts.optimize_sigma {
            for _ in 0..3 {
                h = optimal_h(&spec, &taus, nc, fit.loss);
                for (tau, (ls, &m)) in taus.iter_mut().zip(spec.iter().zip(&sq)) {
                    *tau = optimal_tau(ls, h, m);
                }
            }
            let m_of = |taus: &[f64], h: f64| spectral_marglik(fit, &spec, &sq, taus, h, t);
            while it < opts.max_iter.min(200) {
                it += 1;
                let (g, hess) = spectral_derivatives(&spec, &sq, &taus, h, nc, fit.loss);
                let gnorm = g.iter().map(|x| x.abs()).fold(0.0, f64::max);
                if gnorm <= 1e-10 * (1.0 + m_of(&taus, h).abs()) {
                    break;
                }
                // Newton direction on the concave quadratic model (gradient ascent if not concave)
                let k = g.len();
                let neg = Mat::<f64>::from_fn(k, k, |i, j| -hess[i * k + j]);
                let dir: Vec<f64> = match neg.llt(faer::Side::Lower) {
                    Ok(l) => {
                        let mut x = Mat::<f64>::from_fn(k, 1, |i, _| g[i]);
                        faer::linalg::solvers::SolveCore::solve_in_place_with_conj(&l, faer::Conj::No, x.as_mut());
                        (0..k).map(|i| x[(i, 0)]).collect()
                    }
                    Err(_) => g.clone(),
                };
                let m0 = m_of(&taus, h);
                let mut step = 1.0;
                let mut moved = false;
                for _ in 0..60 {
                    let nt: Vec<f64> = taus.iter().zip(&dir).map(|(tau, d)| tau * (step * d).exp()).collect();
                    let nh = h * (step * dir[k - 1]).exp();
                    let m1 = m_of(&nt, nh);
                    if m1.is_finite() && m1 >= m0 {
                        let tiny = dir.iter().all(|d| (step * d).abs() < 1e-14);
                        if tiny {
                            break;
                        }
                        taus = nt;
                        h = nh;
                        moved = true;
                        break;
                    }
                    step *= 0.5;
                }
                if !moved {
                    break;
                }
            }
        }
        let lml = spectral_marglik(fit, &spec, &sq, &taus, h, t);
        return Ok(MarglikResult {
            prior: to_prior(&taus),
            sigma: (1.0 / (h * t)).sqrt(),
            log_marginal_likelihood: lml,
            iterations: it,
            method: "spectral",
        });
    }
    // Full or low rank with a layerwise prior: quasi-Newton (BFGS) on (log τ_g[, log h]) with
    // the exact gradient from diag(P⁻¹), started at the scalar optimum.
    let start = optimize_marglik(fit, &MarglikOptions { prior_structure: PriorStructure::Scalar, ..opts.clone() })?;
    let PriorPrecision::Scalar(tau0) = start.prior else { unreachable!("scalar start") };
    let k = sizes.len() + usize::from(opts.optimize_sigma);
    let mut x: Vec<f64> = vec![tau0.ln(); sizes.len()];
    if opts.optimize_sigma {
        x.push((1.0 / (start.sigma * start.sigma * t)).ln());
    }
    let h_fixed = h;
    // −M and −∇M at x
    let eval = |x: &[f64], grad: bool| -> Result<(f64, Vec<f64>), LaplaceError> {
        let taus: Vec<f64> = x[..sizes.len()].iter().map(|u| u.exp()).collect();
        let h = if opts.optimize_sigma { x[sizes.len()].exp() } else { h_fixed };
        let post = Posterior::new(fit, to_prior(&taus), (1.0 / (h * t)).sqrt(), t)?;
        let m = post.log_marginal_likelihood();
        if !grad {
            return Ok((-m, Vec::new()));
        }
        let cd = post.covariance_diagonal();
        let mut g = vec![0.0; k];
        let mut gamma_total = 0.0;
        for (i, grp) in fit.groups.iter().enumerate() {
            let tr: f64 = cd[grp.offset..grp.offset + grp.len].iter().sum();
            let tau = taus[i];
            gamma_total += grp.len as f64 - tau * tr;
            let mg: f64 = fit.mean[grp.offset..grp.offset + grp.len].iter().map(|v| v.as_f64().powi(2)).sum();
            g[i] = 0.5 * (tau * tr - grp.len as f64 + tau * mg);
        }
        if opts.optimize_sigma {
            // ∂M/∂log h = −hL + NC/2 − ½ γ with γ = h tr(P⁻¹H) = D − Σ_i τ_i (P⁻¹)_ii
            g[k - 1] = -(-h * fit.loss + 0.5 * nc - 0.5 * gamma_total);
        }
        Ok((-m, g))
    };
    let (mut f, mut g) = eval(&x, true)?;
    let mut hinv = Mat::<f64>::identity(k, k);
    let mut it = 0;
    while it < opts.max_iter.min(200) {
        it += 1;
        let gmax = g.iter().map(|v| v.abs()).fold(0.0, f64::max);
        if gmax <= 1e-9 * (1.0 + f.abs()) {
            break;
        }
        let mut d: Vec<f64> = (0..k).map(|i| -(0..k).map(|j| hinv[(i, j)] * g[j]).sum::<f64>()).collect();
        let mut slope: f64 = d.iter().zip(&g).map(|(a, b)| a * b).sum();
        if slope >= 0.0 {
            hinv = Mat::identity(k, k);
            d = g.iter().map(|v| -v).collect();
            slope = -g.iter().map(|v| v * v).sum::<f64>();
        }
        // backtracking (Armijo), steps in log space at most 5
        let dmax = d.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let mut step = if dmax > 5.0 { 5.0 / dmax } else { 1.0 };
        let mut accepted = None;
        for _ in 0..50 {
            let xn: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + step * b).collect();
            if let Ok((fn_, _)) = eval(&xn, false) {
                if fn_.is_finite() && fn_ <= f + 1e-4 * step * slope {
                    accepted = Some(xn);
                    break;
                }
            }
            step *= 0.5;
        }
        let Some(xn) = accepted else { break };
        let (fn_, gn) = eval(&xn, true)?;
        let sv: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = gn.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy: f64 = sv.iter().zip(&yv).map(|(a, b)| a * b).sum();
        if sy > 1e-12 {
            // H⁺ = (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ
            let rho = 1.0 / sy;
            let hy: Vec<f64> = (0..k).map(|i| (0..k).map(|j| hinv[(i, j)] * yv[j]).sum()).collect();
            let yhy: f64 = yv.iter().zip(&hy).map(|(a, b)| a * b).sum();
            hinv = Mat::from_fn(k, k, |i, j| {
                hinv[(i, j)] - rho * (hy[i] * sv[j] + sv[i] * hy[j]) + (rho * rho * yhy + rho) * sv[i] * sv[j]
            });
        }
        let small = sv.iter().map(|v| v.abs()).fold(0.0, f64::max) < 1e-13;
        x = xn;
        f = fn_;
        g = gn;
        if small {
            break;
        }
    }
    let taus: Vec<f64> = x[..sizes.len()].iter().map(|u| u.exp()).collect();
    if opts.optimize_sigma {
        h = x[sizes.len()].exp();
    }
    Ok(MarglikResult {
        prior: to_prior(&taus),
        sigma: (1.0 / (h * t)).sqrt(),
        log_marginal_likelihood: -f,
        iterations: it,
        method: "quasi-newton",
    })
}

/// `n` log-spaced values from `10^lo` to `10^hi` (`torch.logspace`).
pub fn logspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![10f64.powf(lo)];
    }
    (0..n).map(|i| 10f64.powf(lo + (hi - lo) * i as f64 / (n - 1) as f64)).collect()
}

/// Validation NLL of the linearized predictive for each scalar `τ` of `grid`; returns the best
/// `τ` (the first minimum) and the `(τ, nll)` pairs. Classification uses the probit link;
/// regression the Gaussian predictive `N(f_μ, diag Σ_f + σ²)`.
pub fn gridsearch<T: Float>(
    fit: &LaplaceFit<T>,
    net: &Network<T>,
    val: &Dataset<T>,
    grid: &[f64],
    sigma: f64,
    temperature: f64,
) -> Result<(f64, Vec<(f64, f64)>), LaplaceError> {
    if grid.is_empty() {
        return Err(LaplaceError("the grid is empty".into()));
    }
    let c = net.out_size();
    let d = fit.dim();
    let h = 1.0 / (sigma * sigma * temperature);
    // batches of validation points whose Jacobian rows fit in about 512 MiB
    let per = ((512usize << 20) / (c * d * T::BYTES).max(1)).clamp(1, val.n.max(1));
    let walk = crate::walk::DataWalk::new(val, per);
    let batches = walk.batches();
    // Full H with a scalar prior: P⁻¹ = Q diag(1/(hλ+τ)) Qᵀ, so project the rows once.
    let full = matches!(fit.h, HessianApprox::Full(_));
    let eig = if full { Some(fit.full_eigh()?) } else { None };
    // per batch: (f_mu, rows) — rows projected on Q for the full structure
    let mut cached: Vec<(Vec<f64>, Mat<T>)> = Vec::with_capacity(batches.len());
    for b in &batches {
        let tape = net.forward(&fit.theta, b.x, b.n);
        let f_mu: Vec<f64> = tape.output().iter().map(|v| v.as_f64()).collect();
        let rows = jacobian_rows(fit, net, &tape);
        let rows = match eig {
            Some((_, q)) => {
                let mut z = Mat::<T>::zeros(d, rows.ncols());
                matmul(z.as_mut(), Accum::Replace, q.transpose(), rows.as_ref(), T::one(), threads::par());
                z
            }
            None => rows,
        };
        cached.push((f_mu, rows));
    }
    let mut results = Vec::with_capacity(grid.len());
    for &tau in grid {
        let post =
            if full { None } else { Some(Posterior::new(fit, PriorPrecision::Scalar(tau), sigma, temperature)?) };
        let mut nll = 0.0;
        for (b, (f_mu, rows)) in batches.iter().zip(&cached) {
            let f_var = match (&post, eig) {
                (Some(p), _) => super::predictive::functional_variance(p, rows.as_ref(), b.n, c),
                (None, Some((lam, _))) => {
                    let w: Vec<f64> = lam.iter().map(|&l| 1.0 / (h * l + tau)).collect();
                    let mut fv = vec![0.0; b.n * c * c];
                    for s in 0..b.n {
                        for i in 0..c {
                            for j in 0..=i {
                                let (ci, cj) = (rows.col(s * c + i), rows.col(s * c + j));
                                let v: f64 = (0..d).map(|r| ci[r].as_f64() * cj[r].as_f64() * w[r]).sum();
                                fv[(s * c + i) * c + j] = v;
                                fv[(s * c + j) * c + i] = v;
                            }
                        }
                    }
                    fv
                }
                _ => unreachable!(),
            };
            let classes = super::predictive::classes_of(net);
            let glm = GlmOutput { n: b.n, c, classes, f_mu: f_mu.clone(), f_var };
            nll += batch_nll(fit.likelihood, &glm, &b.y, sigma);
        }
        let nll = nll / val.n as f64;
        results.push((tau, if nll.is_finite() { nll } else { f64::INFINITY }));
    }
    let best = results.iter().fold(results[0], |b, &r| if r.1 < b.1 { r } else { b });
    Ok((best.0, results))
}

/// Summed NLL of a batch under the linearized predictive.
fn batch_nll<T: Float>(lik: Likelihood, glm: &GlmOutput, y: &curvops_nn::TargetsRef<T>, sigma: f64) -> f64 {
    let (n, c) = (glm.n, glm.c);
    match (lik, y) {
        (Likelihood::Classification, curvops_nn::TargetsRef::Classes(cls)) => {
            // one label per softmax (per position for sequence outputs)
            let p = probit_probs(glm, lik);
            let v = glm.classes;
            cls.iter().enumerate().map(|(s, &k)| -p[s * v + k].max(1e-300).ln()).sum()
        }
        (Likelihood::Classification, curvops_nn::TargetsRef::Dense(t)) => {
            let p = probit_probs(glm, lik);
            (0..n * c).map(|i| -t[i].as_f64() * p[i].max(1e-300).ln()).sum()
        }
        (Likelihood::Binary, curvops_nn::TargetsRef::Dense(t)) => {
            let p = probit_probs(glm, lik);
            (0..n * c)
                .map(|i| {
                    let (ti, pi) = (t[i].as_f64(), p[i].clamp(1e-300, 1.0 - 1e-16));
                    -(ti * pi.ln() + (1.0 - ti) * (1.0 - pi).ln())
                })
                .sum()
        }
        (Likelihood::Regression, curvops_nn::TargetsRef::Dense(t)) => (0..n * c)
            .map(|i| {
                let (s, j) = (i / c, i % c);
                let var = glm.f_var[(s * c + j) * c + j] + sigma * sigma;
                let r = t[i].as_f64() - glm.f_mu[i];
                0.5 * ((2.0 * std::f64::consts::PI * var).ln() + r * r / var)
            })
            .sum(),
        _ => f64::NAN,
    }
}

/// The targets of a data set as a borrowed reference (whole set).
pub fn targets_ref<T: Float>(d: &Dataset<T>) -> curvops_nn::TargetsRef<'_, T> {
    match &d.y {
        Targets::Classes(v) => curvops_nn::TargetsRef::Classes(v),
        Targets::Dense(v) => curvops_nn::TargetsRef::Dense(v),
    }
}
