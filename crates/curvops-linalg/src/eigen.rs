//! Extreme eigenpairs of symmetric operators.
//!
//! [`eigsh`] is a thick-restart Lanczos method (Wu & Simon 2000; the symmetric case of
//! Stewart's Krylov–Schur) with full reorthogonalization (classical Gram–Schmidt, a second pass
//! where the DGKS test asks for it):
//!
//! 1. expand an orthonormal basis `V = [v₀ … v_{m−1}]` of a Krylov space by `w = A vⱼ`,
//!    orthogonalized against all previous vectors, keeping the projections `H = Vᵀ A V`;
//! 2. Rayleigh–Ritz: eigenpairs `(θᵢ, sᵢ)` of `H` give Ritz pairs `(θᵢ, V sᵢ)` whose residual
//!    is `‖A V sᵢ − θᵢ V sᵢ‖ = |β_m · sᵢ[m−1]|` (`β_m` the norm of the last new vector);
//! 3. a wanted pair is converged when `‖Au − θu‖ ≤ tol·|θ|` (SPEC.md §5), or when the residual
//!    is at round-off level `100·ε·‖H‖` (which covers eigenvalues that are exactly 0);
//! 4. otherwise restart, keeping the `p` best Ritz vectors and the residual vector, so that
//!    `A V_p = V_p diag(θ) + v_p bᵀ`, and expand again.
//!
//! faer 0.24's Krylov–Schur (`faer::matrix_free::eigen::partial_self_adjoint_eigen`) is not
//! used: it selects the largest *magnitude* eigenvalues only and converges on an *absolute*
//! residual, while `curvops eigs` needs largest / smallest algebraic eigenvalues with the
//! relative criterion above.
//!
//! [`power_iteration`] (block power / subspace iteration with Rayleigh–Ritz) is the baseline:
//! largest-magnitude eigenpairs, one block application of `k` columns per iteration.

use crate::counting::CountingOp;
use crate::decomp::{thin_qr, Eigh};
use crate::util::{check_square, check_symmetric, mul, norm, orthogonalize};
use crate::{LinalgError, LinearOperator};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use faer::Mat;

/// Which end of the spectrum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Which {
    /// The `k` algebraically largest (scipy's `LA`).
    #[default]
    Largest,
    /// The `k` algebraically smallest (scipy's `SA`).
    Smallest,
    /// The `k` largest in absolute value (scipy's `LM`).
    Magnitude,
}

/// Options of [`eigsh`].
#[derive(Clone, Debug)]
pub struct EigshOptions {
    /// Relative tolerance `τ`: converged when `‖Au − λu‖ ≤ τ·|λ|` for every returned pair.
    /// (In f32, values below ~1e-5 may not be reachable.)
    pub tol: f64,
    /// Krylov subspace dimension `m` (default `max(2k + 1, 20)`, at most `n`).
    pub max_dim: Option<usize>,
    /// Maximum number of restarts.
    pub max_restarts: usize,
    /// Seed of the random start vector.
    pub seed: u64,
}

impl Default for EigshOptions {
    fn default() -> Self {
        Self { tol: 1e-8, max_dim: None, max_restarts: 1000, seed: 0 }
    }
}

/// Eigenpairs found by [`eigsh`] or [`power_iteration`].
#[derive(Clone, Debug)]
pub struct EigshResult<T: Float> {
    /// Eigenvalues, sorted descending (descending by `|λ|` for [`Which::Magnitude`]).
    pub values: Vec<T>,
    /// Unit eigenvectors, `n × k` (column `i` belongs to `values[i]`; defined up to sign).
    pub vectors: Mat<T>,
    /// Residual norms `‖Auᵢ − λᵢuᵢ‖` as estimated by the method (Lanczos: `|β sᵢ[m−1]|`).
    pub residuals: Vec<f64>,
    /// Operator applications (columns applied).
    pub matvecs: usize,
    /// Restarts (Lanczos) or iterations (power iteration).
    pub iterations: usize,
}

fn order(theta: &[f64], which: Which) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..theta.len()).collect();
    let key = |i: usize| match which {
        Which::Largest => theta[i],
        Which::Smallest => -theta[i],
        Which::Magnitude => theta[i].abs(),
    };
    idx.sort_by(|&a, &b| key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal));
    idx
}

/// Output order of the SPEC: descending, by `|λ|` for magnitude.
fn output_order(theta: &[f64], which: Which) -> Vec<usize> {
    order(theta, if which == Which::Magnitude { Which::Magnitude } else { Which::Largest })
}

/// The `k` extreme eigenpairs of a symmetric operator (thick-restart Lanczos with full
/// reorthogonalization; see the module docs). Errors: not square, not tagged symmetric
/// ([`LinalgError::Structure`]), `k` out of range, or no convergence within `max_restarts`.
pub fn eigsh<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    k: usize,
    which: Which,
    opts: &EigshOptions,
) -> Result<EigshResult<T>, LinalgError> {
    let n = check_square(op, "eigsh")?;
    check_symmetric(op)?;
    if k == 0 || k > n {
        return Err(LinalgError::Dimension(format!("eigsh: k = {k} for an operator of size {n}")));
    }
    let a = CountingOp::new(op);
    let m = opts.max_dim.unwrap_or((2 * k + 1).max(20)).clamp(k.min(n), n).max(k + 1).min(n);
    let eps = T::epsilon().as_f64();
    let mut rng = Rng::new(opts.seed);

    // Basis n × (m + 1), projections H (m + 1) × m in f64.
    let mut v = Mat::<T>::zeros(n, m + 1);
    let mut h = Mat::<f64>::zeros(m + 1, m);
    let mut w = Mat::<T>::zeros(n, 1);
    for i in 0..n {
        w[(i, 0)] = T::of(rng.normal());
    }
    let nw = norm(&w);
    for i in 0..n {
        v[(i, 0)] = T::of(w[(i, 0)].as_f64() / nw);
    }
    let mut p = 0usize; // vectors kept from the previous cycle
    let mut scale = 0.0f64; // running estimate of ‖A‖ (largest ‖A vⱼ‖), for the breakdown test
    let mut restarts = 0usize;
    loop {
        // Expansion j = p … m−1.
        for j in p..m {
            a.apply(w.as_mut(), v.as_ref().subcols(j, 1))?;
            let wn0 = norm(&w);
            let coeffs = orthogonalize(&v, j + 1, &mut w);
            for (i, c) in coeffs.iter().enumerate() {
                h[(i, j)] = *c;
            }
            let beta = norm(&w);
            scale = scale.max(wn0);
            if j + 1 == n {
                // The basis spans the whole space: the residual is round-off.
                h[(j + 1, j)] = 0.0;
                continue;
            }
            if beta <= 1e3 * eps * scale.max(f64::MIN_POSITIVE) {
                // Invariant subspace: continue with a random direction orthogonal to V.
                for i in 0..n {
                    w[(i, 0)] = T::of(rng.normal());
                }
                orthogonalize(&v, j + 1, &mut w);
                let nr = norm(&w);
                for i in 0..n {
                    v[(i, j + 1)] = T::of(w[(i, 0)].as_f64() / nr);
                }
                h[(j + 1, j)] = 0.0;
            } else {
                for (o, x) in v.col_as_slice_mut(j + 1).iter_mut().zip(w.col_as_slice(0)) {
                    *o = T::of(x.as_f64() / beta);
                }
                h[(j + 1, j)] = beta;
            }
        }
        // Rayleigh–Ritz on the symmetric part of H.
        let hs = Mat::<f64>::from_fn(m, m, |i, j| 0.5 * (h[(i, j)] + h[(j, i)]));
        let e = Eigh::from_dense(hs.as_ref())?;
        let theta = &e.values;
        let s = &e.vectors;
        let hnorm = theta.iter().fold(0.0f64, |acc, x| acc.max(x.abs()));
        let res: Vec<f64> = (0..m).map(|i| (0..m).map(|c| h[(m, c)] * s[(c, i)]).sum::<f64>().abs()).collect();
        let ord = order(theta, which);
        let converged = |i: usize| res[i] <= opts.tol * theta[i].abs() || res[i] <= 100.0 * eps * hnorm;
        let all = ord[..k].iter().all(|&i| converged(i));
        if all || restarts >= opts.max_restarts {
            if !all {
                let worst =
                    ord[..k].iter().map(|&i| res[i] / theta[i].abs().max(f64::MIN_POSITIVE)).fold(0.0f64, f64::max);
                return Err(LinalgError::NoConvergence(format!(
                    "eigsh on {}: {} of {k} eigenpairs converged after {restarts} restarts ({} matvecs); \
                     worst relative residual {worst:.3e} > tol {:.1e}",
                    op.describe(),
                    ord[..k].iter().filter(|&&i| converged(i)).count(),
                    a.count(),
                    opts.tol
                )));
            }
            let sel: Vec<usize> = ord[..k].to_vec();
            let vals: Vec<f64> = sel.iter().map(|&i| theta[i]).collect();
            let out_ord = output_order(&vals, which);
            let sel: Vec<usize> = out_ord.iter().map(|&o| sel[o]).collect();
            let smat = Mat::<T>::from_fn(m, k, |r, c| T::of(s[(r, sel[c])]));
            let vectors = mul(v.as_ref().subcols(0, m), smat.as_ref());
            return Ok(EigshResult {
                values: sel.iter().map(|&i| T::of(theta[i])).collect(),
                vectors,
                residuals: sel.iter().map(|&i| res[i]).collect(),
                matvecs: a.count(),
                iterations: restarts,
            });
        }
        // Thick restart: keep the p best Ritz vectors and the residual vector.
        let keep = (k + (m - k) / 2).clamp(k, m - 1);
        let sel: Vec<usize> = ord[..keep].to_vec();
        let smat = Mat::<T>::from_fn(m, keep, |r, c| T::of(s[(r, sel[c])]));
        let y = mul(v.as_ref().subcols(0, m), smat.as_ref());
        let resid_vec = v.as_ref().col(m).to_owned();
        let b: Vec<f64> = sel.iter().map(|&i| (0..m).map(|c| h[(m, c)] * s[(c, i)]).sum::<f64>()).collect();
        v.as_mut().subcols_mut(0, keep).copy_from(&y);
        v.as_mut().col_mut(keep).copy_from(&resid_vec);
        h.fill(0.0);
        for (i, &ix) in sel.iter().enumerate() {
            h[(i, i)] = theta[ix];
            h[(keep, i)] = b[i];
        }
        p = keep;
        restarts += 1;
    }
}

/// Options of [`power_iteration`].
#[derive(Clone, Debug)]
pub struct PowerOptions {
    /// Relative tolerance: converged when `‖Au − λu‖ ≤ tol·|λ|` for every pair.
    pub tol: f64,
    /// Maximum number of iterations (block applications).
    pub max_iters: usize,
    /// Seed of the random start block.
    pub seed: u64,
}

impl Default for PowerOptions {
    fn default() -> Self {
        Self { tol: 1e-8, max_iters: 10_000, seed: 0 }
    }
}

/// The `k` largest-magnitude eigenpairs by block power (subspace) iteration with
/// Rayleigh–Ritz: `Y = A X`, `(θ, S) = eig(Xᵀ Y)`, residuals `‖Y S − X S θ‖`, then
/// `X ← orth(Y S)`. Converges linearly with rate `|λ_{k+1}| / |λ_k|`: a baseline for
/// [`eigsh`]. Needs a symmetric operator.
pub fn power_iteration<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    k: usize,
    opts: &PowerOptions,
) -> Result<EigshResult<T>, LinalgError> {
    let n = check_square(op, "power iteration")?;
    check_symmetric(op)?;
    if k == 0 || k > n {
        return Err(LinalgError::Dimension(format!("power iteration: k = {k} for an operator of size {n}")));
    }
    let a = CountingOp::new(op);
    let mut rng = Rng::new(opts.seed);
    let x0 = Mat::<T>::from_fn(n, k, |_, _| T::of(rng.normal()));
    let (mut x, _) = thin_qr(x0.as_ref());
    let mut y = Mat::<T>::zeros(n, k);
    for it in 0..opts.max_iters {
        a.apply(y.as_mut(), x.as_ref())?;
        let hk = mul(x.transpose(), y.as_ref());
        let hs = Mat::<f64>::from_fn(k, k, |i, j| 0.5 * (hk[(i, j)].as_f64() + hk[(j, i)].as_f64()));
        let e = Eigh::from_dense(hs.as_ref())?;
        let ord = order(&e.values, Which::Magnitude);
        let smat = Mat::<T>::from_fn(k, k, |r, c| T::of(e.vectors[(r, ord[c])]));
        let theta: Vec<f64> = ord.iter().map(|&i| e.values[i]).collect();
        let u = mul(x.as_ref(), smat.as_ref());
        let au = mul(y.as_ref(), smat.as_ref());
        let res: Vec<f64> = (0..k)
            .map(|c| (0..n).map(|i| (au[(i, c)].as_f64() - theta[c] * u[(i, c)].as_f64()).powi(2)).sum::<f64>().sqrt())
            .collect();
        let eps = T::epsilon().as_f64();
        let big = theta.iter().fold(0.0f64, |acc, t| acc.max(t.abs()));
        if (0..k).all(|c| res[c] <= opts.tol * theta[c].abs() || res[c] <= 100.0 * eps * big) {
            return Ok(EigshResult {
                values: theta.iter().map(|&t| T::of(t)).collect(),
                vectors: u,
                residuals: res,
                matvecs: a.count(),
                iterations: it + 1,
            });
        }
        x = thin_qr(au.as_ref()).0;
    }
    Err(LinalgError::NoConvergence(format!(
        "power iteration on {}: not converged after {} iterations ({} matvecs)",
        op.describe(),
        opts.max_iters,
        a.count()
    )))
}
