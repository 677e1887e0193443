//! The posterior `N(θ*, P⁻¹)` at a chosen prior precision and noise: `P = h·H + diag(τ)`,
//! `h = 1/(σ²T)`, factored once in the way its structure allows.
//!
//! | structure | factorization | `log det P` | `P⁻¹ x` | `P^{-1/2}`-type factor `S` (`S Sᵀ = P⁻¹`) |
//! |---|---|---|---|---|
//! | full | Cholesky `P = L Lᵀ` | `2 Σ log L_ii` | two triangular solves | `L⁻ᵀ` |
//! | diag | — | `Σ log P_ii` | `x / P_ii` | `P_ii^{-1/2}` |
//! | KFAC | per block `(Q_B ⊗ Q_A)(hΛ_B ⊗ Λ_A + τ)(Q_B ⊗ Q_A)ᵀ` | `Σ log(h λ_B,i λ_A,j + τ)` | eigenbasis | eigenbasis, `(·)^{-1/2}` |
//! | low rank | Woodbury: `P = D^{½}(I + W Wᵀ)D^{½}`, `W = D^{-½} U (hΛ)^{½}` | `Σ log τ_i + log det(I + WᵀW)` | `D^{-½}(I − W (I + WᵀW)⁻¹ Wᵀ)D^{-½}` | `D^{-½}(I + WWᵀ)^{-½}` |
//!
//! None of these forms a `D × D` matrix except the full structure, whose `H` already is one.

use super::fit::{HessianApprox, LaplaceFit};
use super::{LaplaceError, Likelihood, PriorPrecision};
use curvops_linalg::{LinalgError, LinearOperator, Structure};
use curvops_tensor::gemm::matmul;
use curvops_tensor::rng::keyed_normal;
use curvops_tensor::{threads, Float};
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{Accum, Mat, MatMut, MatRef, Side};

enum Factor<T: Float> {
    /// Lower Cholesky factor of `P`.
    Chol(Mat<T>),
    /// The diagonal of `P`.
    Diag(Vec<f64>),
    /// Per-group `τ` (the block eigendecompositions live in the fit).
    Kron(Vec<f64>),
    /// Low rank + diagonal.
    Woodbury(Woodbury<T>),
}

struct Woodbury<T: Float> {
    /// `τ_i`.
    d: Vec<f64>,
    /// `W = D^{-½} U (hΛ)^{½}`, `D × k`.
    w: Mat<T>,
    /// Lower Cholesky factor of `M = I + WᵀW`.
    ml: Mat<T>,
    /// Orthonormal `V` with `W Wᵀ = V diag(μ) Vᵀ` (`μ > 0`) and `c_j = (1 + μ_j)^{-½} − 1`.
    v: Mat<T>,
    c: Vec<f64>,
}

/// The Laplace posterior at a prior precision `τ`, noise `σ` and temperature `T`.
pub struct Posterior<'a, T: Float> {
    fit: &'a LaplaceFit<T>,
    prior: PriorPrecision,
    sigma: f64,
    temperature: f64,
    h: f64,
    tau: Vec<f64>,
    factor: Factor<T>,
}

fn chol<T: Float>(m: &Mat<T>, what: &str) -> Result<Mat<T>, LaplaceError> {
    match m.llt(Side::Lower) {
        Ok(l) => Ok(l.L().to_owned()),
        Err(_) => Err(LaplaceError(format!(
            "{what} is not positive definite (an indefinite curvature such as the Hessian needs a larger prior precision)"
        ))),
    }
}

impl<'a, T: Float> Posterior<'a, T> {
    /// Factors `P = h·H + diag(τ)` with `h = 1/(σ²·temperature)`. `σ` must be 1 for
    /// classification (as in laplace-torch).
    pub fn new(
        fit: &'a LaplaceFit<T>,
        prior: PriorPrecision,
        sigma: f64,
        temperature: f64,
    ) -> Result<Self, LaplaceError> {
        prior.validate().map_err(LaplaceError)?;
        if !(sigma.is_finite() && sigma > 0.0 && temperature.is_finite() && temperature > 0.0) {
            return Err(LaplaceError("sigma and the temperature must be positive".into()));
        }
        if sigma != 1.0 && fit.likelihood != Likelihood::Regression {
            return Err(LaplaceError("the noise sigma applies to regression only".into()));
        }
        let d = fit.dim();
        match &prior {
            PriorPrecision::Layerwise(v) if v.len() != fit.groups.len() => {
                return Err(LaplaceError(format!(
                    "a layerwise prior needs {} values (one per parameter tensor), got {}",
                    fit.groups.len(),
                    v.len()
                )))
            }
            PriorPrecision::Diagonal(v) if v.len() != d => {
                return Err(LaplaceError(format!("a diagonal prior needs {d} values, got {}", v.len())))
            }
            _ => {}
        }
        let h = 1.0 / (sigma * sigma * temperature);
        let tau = prior.expand(&fit.group_sizes());
        let factor = match &fit.h {
            HessianApprox::Full(hm) => {
                let mut p = Mat::<T>::from_fn(d, d, |i, j| T::of(h) * hm[(i, j)]);
                for i in 0..d {
                    p[(i, i)] += T::of(tau[i]);
                }
                Factor::Chol(chol(&p, "the posterior precision")?)
            }
            HessianApprox::Diag(dv) => {
                let p: Vec<f64> = dv.iter().zip(&tau).map(|(x, t)| h * x.as_f64() + t).collect();
                if let Some(i) = p.iter().position(|v| *v <= 0.0) {
                    return Err(LaplaceError(format!("the posterior precision is not positive at coordinate {i}")));
                }
                Factor::Diag(p)
            }
            HessianApprox::Kron(_) => {
                let per = prior.per_group(fit.groups.len()).ok_or_else(|| {
                    LaplaceError("the KFAC structure takes a scalar or layerwise prior precision".into())
                })?;
                fit.kron_eigs()?;
                Factor::Kron(per)
            }
            HessianApprox::LowRank { u, lambda } => {
                let k = lambda.len();
                let w = Mat::<T>::from_fn(d, k, |i, j| {
                    T::of((h * lambda[j].as_f64()).max(0.0).sqrt() / tau[i].sqrt()) * u[(i, j)]
                });
                let mut m = Mat::<T>::identity(k, k);
                matmul(m.as_mut(), Accum::Add, w.transpose(), w.as_ref(), T::one(), threads::par());
                let ml = chol(&m, "I + WᵀW")?;
                // W Wᵀ = V diag(μ) Vᵀ from WᵀW = R diag(μ) Rᵀ: V = W R diag(μ^{-½})
                let wtw = Mat::<T>::from_fn(k, k, |i, j| m[(i, j)] - if i == j { T::one() } else { T::zero() });
                let e = curvops_linalg::Eigh::from_dense(wtw.as_ref()).map_err(|e| LaplaceError(e.to_string()))?;
                let mut r = e.vectors;
                let tol = e.values.first().map_or(0.0, |v| v.as_f64()) * 1e-13;
                let keep: Vec<usize> = (0..k).filter(|&j| e.values[j].as_f64() > tol).collect();
                let mut c = Vec::new();
                for &j in &keep {
                    let mu = e.values[j].as_f64();
                    c.push(1.0 / (1.0 + mu).sqrt() - 1.0);
                    let sc = T::of(1.0 / mu.sqrt());
                    for i in 0..k {
                        r[(i, j)] = sc * r[(i, j)];
                    }
                }
                let rk = Mat::<T>::from_fn(k, keep.len(), |i, j| r[(i, keep[j])]);
                let mut v = Mat::<T>::zeros(d, keep.len());
                matmul(v.as_mut(), Accum::Replace, w.as_ref(), rk.as_ref(), T::one(), threads::par());
                Factor::Woodbury(Woodbury { d: tau.clone(), w, ml, v, c })
            }
        };
        Ok(Self { fit, prior, sigma, temperature, h, tau, factor })
    }

    /// The fit.
    pub fn fit(&self) -> &'a LaplaceFit<T> {
        self.fit
    }
    /// The prior precision.
    pub fn prior(&self) -> &PriorPrecision {
        &self.prior
    }
    /// The per-coordinate prior precisions `τ_i`.
    pub fn prior_diagonal(&self) -> &[f64] {
        &self.tau
    }
    /// The noise `σ`.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }
    /// The temperature.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }
    /// `h = 1/(σ²T)`.
    pub fn h_factor(&self) -> f64 {
        self.h
    }
    /// Number of parameters `D`.
    pub fn dim(&self) -> usize {
        self.fit.dim()
    }
    /// The posterior mean `θ*`.
    pub fn mean(&self) -> &[T] {
        &self.fit.mean
    }

    /// Applies `φ(P)` blockwise for the KFAC structure.
    fn kron_fn(&self, taus: &[f64], phi: &dyn Fn(f64) -> f64, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) {
        let eigs = self.fit.kron_eigs().expect("KFAC eigendecompositions");
        for ((g, e), &tau) in self.fit.groups.iter().zip(eigs).zip(taus) {
            debug_assert_eq!(g.len, e.len());
            e.apply_fn(self.h, tau, phi, out.as_mut().subrows_mut(g.offset, g.len), rhs.subrows(g.offset, g.len));
        }
    }

    /// `log det P`.
    pub fn logdet(&self) -> f64 {
        match &self.factor {
            Factor::Chol(l) => 2.0 * (0..l.nrows()).map(|i| l[(i, i)].as_f64().ln()).sum::<f64>(),
            Factor::Diag(p) => p.iter().map(|v| v.ln()).sum(),
            Factor::Kron(taus) => {
                let eigs = self.fit.kron_eigs().expect("KFAC eigendecompositions");
                eigs.iter()
                    .zip(taus)
                    .map(|(e, &t)| e.eigenvalues().iter().map(|&l| (self.h * l + t).ln()).sum::<f64>())
                    .sum()
            }
            Factor::Woodbury(wb) => {
                wb.d.iter().map(|v| v.ln()).sum::<f64>()
                    + 2.0 * (0..wb.ml.nrows()).map(|i| wb.ml[(i, i)].as_f64().ln()).sum::<f64>()
            }
        }
    }

    /// `P X` for a block of vectors (`D × K`).
    pub fn apply_precision(&self, rhs: MatRef<'_, T>) -> Mat<T> {
        let (d, k) = (self.dim(), rhs.ncols());
        let mut out = Mat::<T>::zeros(d, k);
        match (&self.fit.h, &self.factor) {
            (HessianApprox::Kron(_), Factor::Kron(taus)) => self.kron_fn(taus, &|x| x, out.as_mut(), rhs),
            (HessianApprox::Full(hm), _) => {
                matmul(out.as_mut(), Accum::Replace, hm.as_ref(), rhs, T::of(self.h), threads::par());
                self.add_prior(&mut out, rhs);
            }
            (HessianApprox::Diag(dv), _) => {
                for j in 0..k {
                    for i in 0..d {
                        out[(i, j)] = T::of(self.h) * dv[i] * rhs[(i, j)];
                    }
                }
                self.add_prior(&mut out, rhs);
            }
            (HessianApprox::LowRank { u, lambda }, _) => {
                let mut c = Mat::<T>::zeros(lambda.len(), k);
                matmul(c.as_mut(), Accum::Replace, u.transpose(), rhs, T::one(), threads::par());
                for (i, &l) in lambda.iter().enumerate() {
                    for j in 0..k {
                        c[(i, j)] = T::of(self.h) * l * c[(i, j)];
                    }
                }
                matmul(out.as_mut(), Accum::Replace, u.as_ref(), c.as_ref(), T::one(), threads::par());
                self.add_prior(&mut out, rhs);
            }
            (HessianApprox::Kron(_), _) => unreachable!("KFAC has a KFAC factor"),
        }
        out
    }

    fn add_prior(&self, out: &mut Mat<T>, rhs: MatRef<'_, T>) {
        for j in 0..rhs.ncols() {
            for (i, &t) in self.tau.iter().enumerate() {
                out[(i, j)] += T::of(t) * rhs[(i, j)];
            }
        }
    }

    /// `P⁻¹ X`: the posterior covariance applied to a block of vectors (`D × K`).
    pub fn solve(&self, rhs: MatRef<'_, T>) -> Mat<T> {
        let par = threads::par();
        let (d, k) = (self.dim(), rhs.ncols());
        match &self.factor {
            Factor::Chol(l) => {
                let mut x = rhs.to_owned();
                solve_lower_triangular_in_place(l.as_ref(), x.as_mut(), par);
                solve_upper_triangular_in_place(l.transpose(), x.as_mut(), par);
                x
            }
            Factor::Diag(p) => Mat::from_fn(d, k, |i, j| T::of(1.0 / p[i]) * rhs[(i, j)]),
            Factor::Kron(taus) => {
                let mut out = Mat::<T>::zeros(d, k);
                self.kron_fn(taus, &|x| 1.0 / x, out.as_mut(), rhs);
                out
            }
            Factor::Woodbury(wb) => {
                let dis: Vec<T> = wb.d.iter().map(|v| T::of(1.0 / v.sqrt())).collect();
                let mut y = Mat::<T>::from_fn(d, k, |i, j| dis[i] * rhs[(i, j)]);
                let mut t = Mat::<T>::zeros(wb.w.ncols(), k);
                matmul(t.as_mut(), Accum::Replace, wb.w.transpose(), y.as_ref(), T::one(), par);
                solve_lower_triangular_in_place(wb.ml.as_ref(), t.as_mut(), par);
                solve_upper_triangular_in_place(wb.ml.transpose(), t.as_mut(), par);
                matmul(y.as_mut(), Accum::Add, wb.w.as_ref(), t.as_ref(), -T::one(), par);
                Mat::from_fn(d, k, |i, j| dis[i] * y[(i, j)])
            }
        }
    }

    /// `L⁻¹ X` for the Cholesky factor of a full posterior (so that `Xᵀ P⁻¹ X = (L⁻¹X)ᵀ(L⁻¹X)`).
    pub(crate) fn whiten(&self, rhs: MatRef<'_, T>) -> Option<Mat<T>> {
        match &self.factor {
            Factor::Chol(l) => {
                let mut x = rhs.to_owned();
                solve_lower_triangular_in_place(l.as_ref(), x.as_mut(), threads::par());
                Some(x)
            }
            _ => None,
        }
    }

    /// `S Z` for a factor `S` with `S Sᵀ = P⁻¹` (see the module table): maps standard normal
    /// draws to draws from `N(0, P⁻¹)`.
    pub fn apply_inv_sqrt(&self, z: MatRef<'_, T>) -> Mat<T> {
        let par = threads::par();
        let (d, k) = (self.dim(), z.ncols());
        match &self.factor {
            Factor::Chol(l) => {
                let mut x = z.to_owned();
                solve_upper_triangular_in_place(l.transpose(), x.as_mut(), par);
                x
            }
            Factor::Diag(p) => Mat::from_fn(d, k, |i, j| T::of(1.0 / p[i].sqrt()) * z[(i, j)]),
            Factor::Kron(taus) => {
                let mut out = Mat::<T>::zeros(d, k);
                self.kron_fn(taus, &|x| 1.0 / x.sqrt(), out.as_mut(), z);
                out
            }
            Factor::Woodbury(wb) => {
                let mut c = Mat::<T>::zeros(wb.v.ncols(), k);
                matmul(c.as_mut(), Accum::Replace, wb.v.transpose(), z, T::one(), par);
                for (i, &ci) in wb.c.iter().enumerate() {
                    for j in 0..k {
                        c[(i, j)] = T::of(ci) * c[(i, j)];
                    }
                }
                let mut y = z.to_owned();
                matmul(y.as_mut(), Accum::Add, wb.v.as_ref(), c.as_ref(), T::one(), par);
                Mat::from_fn(d, k, |i, j| T::of(1.0 / wb.d[i].sqrt()) * y[(i, j)])
            }
        }
    }

    /// The diagonal of the posterior covariance `P⁻¹`.
    pub fn covariance_diagonal(&self) -> Vec<f64> {
        let par = threads::par();
        let d = self.dim();
        match &self.factor {
            Factor::Chol(l) => {
                let mut li = Mat::<T>::identity(d, d);
                solve_lower_triangular_in_place(l.as_ref(), li.as_mut(), par);
                (0..d).map(|i| (i..d).map(|r| li[(r, i)].as_f64().powi(2)).sum()).collect()
            }
            Factor::Diag(p) => p.iter().map(|v| 1.0 / v).collect(),
            Factor::Kron(taus) => {
                let eigs = self.fit.kron_eigs().expect("KFAC eigendecompositions");
                eigs.iter().zip(taus).flat_map(|(e, &t)| e.diag_fn(self.h, t, &|x| 1.0 / x)).collect()
            }
            Factor::Woodbury(wb) => {
                let mut zt = wb.w.transpose().to_owned();
                solve_lower_triangular_in_place(wb.ml.as_ref(), zt.as_mut(), par);
                (0..d)
                    .map(|i| {
                        let s: f64 = (0..zt.nrows()).map(|r| zt[(r, i)].as_f64().powi(2)).sum();
                        (1.0 - s) / wb.d[i]
                    })
                    .collect()
            }
        }
    }

    /// `n` draws `θ ~ N(θ*, P⁻¹)` as the columns of a `D × n` matrix; draw `j` uses the keyed
    /// normals `(seed, j, i)` for coordinate `i`.
    pub fn sample(&self, n: usize, seed: u64) -> Mat<T> {
        let d = self.dim();
        let z = Mat::<T>::from_fn(d, n, |i, j| T::of(keyed_normal(seed, j as u64, i as u64, 0)));
        let mut s = self.apply_inv_sqrt(z.as_ref());
        for j in 0..n {
            for i in 0..d {
                s[(i, j)] += self.fit.mean[i];
            }
        }
        s
    }

    /// `log det diag(τ) = Σ_i log τ_i`.
    pub fn log_det_prior(&self) -> f64 {
        self.tau.iter().map(|t| t.ln()).sum()
    }

    /// The scatter `Σ_i τ_i θ*_i²` (prior mean 0).
    pub fn scatter(&self) -> f64 {
        self.tau.iter().zip(&self.fit.mean).map(|(t, m)| t * m.as_f64().powi(2)).sum()
    }

    /// The log-likelihood at `θ*`: `−h Σ_n sℓ_n`, minus `N·C·log(σ√(2π))` for regression.
    pub fn log_likelihood(&self) -> f64 {
        log_likelihood(self.fit, self.sigma, self.temperature)
    }

    /// The Laplace log marginal likelihood
    /// `log p(D|θ*) − ½ (log det P − log det diag(τ) + Σ τ_i θ*_i²)`.
    pub fn log_marginal_likelihood(&self) -> f64 {
        self.log_likelihood() - 0.5 * (self.logdet() - self.log_det_prior() + self.scatter())
    }

    /// The posterior precision as a linear operator (exact `logdet`, `solve`).
    pub fn precision_op(&self) -> PosteriorPrecisionOp<'_, 'a, T> {
        PosteriorPrecisionOp(self)
    }

    /// The posterior covariance `P⁻¹` as a linear operator (exact `logdet`, `solve`,
    /// `diagonal`).
    pub fn covariance_op(&self) -> PosteriorCovarianceOp<'_, 'a, T> {
        PosteriorCovarianceOp(self)
    }
}

/// `log p(D | θ*)` for a fit at noise `σ` and temperature `T`.
pub(crate) fn log_likelihood<T: Float>(fit: &LaplaceFit<T>, sigma: f64, temperature: f64) -> f64 {
    let h = 1.0 / (sigma * sigma * temperature);
    let ll = -h * fit.loss;
    match fit.likelihood {
        Likelihood::Regression => {
            ll - (fit.n_data * fit.n_outputs) as f64 * (sigma * (2.0 * std::f64::consts::PI).sqrt()).ln()
        }
        _ => ll,
    }
}

/// The posterior precision `P` as a [`LinearOperator`].
pub struct PosteriorPrecisionOp<'p, 'a, T: Float>(&'p Posterior<'a, T>);
/// The posterior covariance `P⁻¹` as a [`LinearOperator`].
pub struct PosteriorCovarianceOp<'p, 'a, T: Float>(&'p Posterior<'a, T>);

fn copy_into<T: Float>(src: &Mat<T>, mut out: MatMut<'_, T>) {
    out.copy_from(src.as_ref());
}

impl<T: Float> LinearOperator<T> for PosteriorPrecisionOp<'_, '_, T> {
    fn nrows(&self) -> usize {
        self.0.dim()
    }
    fn ncols(&self) -> usize {
        self.0.dim()
    }
    fn structure(&self) -> Structure {
        Structure::PSD
    }
    fn describe(&self) -> String {
        format!("Laplace posterior precision ({}, D={})", self.0.fit.structure.name(), self.0.dim())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        copy_into(&self.0.apply_precision(rhs), out);
        Ok(())
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        if shift != T::zero() {
            return Err(LinalgError::unsupported("logdet of P + λI", self.describe()));
        }
        Ok(T::of(self.0.logdet()))
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        if shift != T::zero() {
            return Err(LinalgError::unsupported("solve with P + λI", self.describe()));
        }
        copy_into(&self.0.solve(rhs), out);
        Ok(())
    }
}

impl<T: Float> LinearOperator<T> for PosteriorCovarianceOp<'_, '_, T> {
    fn nrows(&self) -> usize {
        self.0.dim()
    }
    fn ncols(&self) -> usize {
        self.0.dim()
    }
    fn structure(&self) -> Structure {
        Structure::PSD
    }
    fn describe(&self) -> String {
        format!("Laplace posterior covariance ({}, D={})", self.0.fit.structure.name(), self.0.dim())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        copy_into(&self.0.solve(rhs), out);
        Ok(())
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        Ok(self.0.covariance_diagonal().into_iter().map(T::of).collect())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        Ok(T::of(self.0.covariance_diagonal().iter().sum()))
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        if shift != T::zero() {
            return Err(LinalgError::unsupported("logdet of Σ + λI", self.describe()));
        }
        Ok(T::of(-self.0.logdet()))
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        if shift != T::zero() {
            return Err(LinalgError::unsupported("solve with Σ + λI", self.describe()));
        }
        copy_into(&self.0.apply_precision(rhs), out);
        Ok(())
    }
}
