//! Laplace approximations against dense formulas (f64, small nets): for every structure the
//! log marginal likelihood, the posterior covariance, `S Sᵀ = P⁻¹` of the sampling factor, the
//! covariance diagonal and the linearized predictive variance equal what dense linear algebra
//! gives for `P = h·H + diag(τ)` to 1e-8; the curvature equals the dense GGN / EF / Hessian of
//! the summed loss (exactly, or its diagonal, or its KFAC blocks); the marginal-likelihood
//! optimum is a stationary point; saving and loading round-trips.

use crate::common;

use crate::common::Reference;
use curvops::dense::{dense_curvature, dense_jacobian};
use curvops::laplace::marglik::{optimize_marglik, MarglikOptions, PriorStructure};
use curvops::laplace::{
    self, io as lio, HessianApprox, HessianStructure, KronBlock, LaplaceFit, LaplaceOptions, Likelihood, Posterior,
    PriorPrecision,
};
use curvops::{ActiveSet, Curvature, CurvatureOperator, Problem};
use curvops_nn::{Dataset, Targets, TargetsRef};
use faer::Mat;

fn rel(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let mut num = 0.0;
    let mut den = 0.0;
    for i in 0..a.nrows() {
        for j in 0..a.ncols() {
            num += (a[(i, j)] - b[(i, j)]).powi(2);
            den += b[(i, j)].powi(2);
        }
    }
    (num / den.max(1e-300)).sqrt()
}

fn relv(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

fn targets(d: &Dataset<f64>) -> TargetsRef<'_, f64> {
    match &d.y {
        Targets::Classes(v) => TargetsRef::Classes(v),
        Targets::Dense(v) => TargetsRef::Dense(v),
    }
}

/// The dense curvature of `s Σ_n ℓ_n` over `active`, computed from per-sample Jacobians and
/// loss Hessians (GGN), per-sample gradients (EF) or the engine's dense Hessian.
fn dense_h(p: &Problem<f64>, active: &ActiveSet, kind: Curvature) -> Mat<f64> {
    let net = &p.net;
    let (n, c, d) = (p.data.n, net.out_size(), active.dim);
    let s = Likelihood::of(net.loss.kind).scale();
    if kind == Curvature::Hessian {
        let op = CurvatureOperator::new(p, Curvature::Hessian, active.clone(), 0);
        let m = dense_curvature(&op, &|_, _| {});
        let k = s / op.reduction_factor();
        return Mat::from_fn(d, d, |i, j| k * 0.5 * (m[i * d + j] + m[j * d + i]));
    }
    let jac = dense_jacobian(p, active, 0); // [N·C, D]
    let f = net.predict(&p.theta, &p.data.x, n);
    let y = targets(&p.data);
    let mut h = Mat::<f64>::zeros(d, d);
    match kind {
        Curvature::Ggn => {
            let lh = net.loss.hess_dense(&f, y, n, c);
            for s_ in 0..n {
                let j = Mat::<f64>::from_fn(c, d, |r, q| jac[(s_ * c + r) * d + q]);
                let l = Mat::<f64>::from_fn(c, c, |a, b| lh[(s_ * c + a) * c + b]);
                h += j.transpose() * &l * &j;
            }
        }
        Curvature::Ef => {
            let g = net.loss.grad(&f, y, n, c);
            for s_ in 0..n {
                let j = Mat::<f64>::from_fn(c, d, |r, q| jac[(s_ * c + r) * d + q]);
                let gv = Mat::<f64>::from_fn(c, 1, |r, _| g[s_ * c + r]);
                let pg = j.transpose() * &gv;
                h += &pg * pg.transpose();
            }
        }
        _ => unreachable!(),
    }
    Mat::from_fn(d, d, |i, j| s * h[(i, j)])
}

/// The dense `H` of a fit's structure.
pub(crate) fn structured_h(fit: &LaplaceFit<f64>) -> Mat<f64> {
    let d = fit.dim();
    match &fit.h {
        HessianApprox::Full(h) => h.clone(),
        HessianApprox::Diag(v) => Mat::from_fn(d, d, |i, j| if i == j { v[i] } else { 0.0 }),
        HessianApprox::LowRank { u, lambda } => {
            let l = Mat::from_fn(lambda.len(), lambda.len(), |i, j| if i == j { lambda[i] } else { 0.0 });
            u * &l * u.transpose()
        }
        HessianApprox::Kron(blocks) => {
            let mut m = Mat::<f64>::zeros(d, d);
            for (g, b) in fit.groups.iter().zip(blocks) {
                match b {
                    KronBlock::Kron { b, a } => {
                        let (o, i) = (b.nrows(), a.nrows());
                        for r in 0..o * i {
                            for q in 0..o * i {
                                m[(g.offset + r, g.offset + q)] = b[(r / i, q / i)] * a[(r % i, q % i)];
                            }
                        }
                    }
                    KronBlock::Dense(b) => {
                        for r in 0..b.nrows() {
                            for q in 0..b.nrows() {
                                m[(g.offset + r, g.offset + q)] = b[(r, q)];
                            }
                        }
                    }
                    KronBlock::Eigen { qb, qa, values } => {
                        // (Q_B ⊗ Q_A) diag(E) (Q_B ⊗ Q_A)ᵀ, column (i, j) of the basis q_B,i ⊗ q_A,j
                        let (o, i) = (qb.nrows(), qa.nrows());
                        let q = Mat::<f64>::from_fn(o * i, o * i, |r, c| qb[(r / i, c / i)] * qa[(r % i, c % i)]);
                        let e = Mat::<f64>::from_fn(o * i, o * i, |r, c| if r == c { values[r] } else { 0.0 });
                        let blk = &q * &e * q.transpose();
                        for r in 0..o * i {
                            for c in 0..o * i {
                                m[(g.offset + r, g.offset + c)] = blk[(r, c)];
                            }
                        }
                    }
                }
            }
            m
        }
    }
}

fn logdet_spd(m: &Mat<f64>) -> f64 {
    let l = m.llt(faer::Side::Lower).expect("SPD");
    2.0 * (0..m.nrows()).map(|i| l.L()[(i, i)].ln()).sum::<f64>()
}

fn inverse(m: &Mat<f64>) -> Mat<f64> {
    let l = m.llt(faer::Side::Lower).expect("SPD");
    let mut x = Mat::<f64>::identity(m.nrows(), m.nrows());
    faer::linalg::solvers::SolveCore::solve_in_place_with_conj(&l, faer::Conj::No, x.as_mut());
    x
}

/// Checks a posterior against the dense formulas for `P = h·H_struct + diag(τ)`; returns the
/// dense `P`.
pub(crate) fn check_posterior(post: &Posterior<f64>, test: &Problem<f64>, what: &str) -> Mat<f64> {
    let fit = post.fit();
    let d = fit.dim();
    let hs = structured_h(fit);
    let tau = post.prior_diagonal();
    let h = post.h_factor();
    let p = Mat::from_fn(d, d, |i, j| h * hs[(i, j)] + if i == j { tau[i] } else { 0.0 });
    let cov = inverse(&p);
    // log marginal likelihood
    let mean: Vec<f64> = fit.mean.clone();
    let scatter: f64 = mean.iter().zip(tau).map(|(m, t)| t * m * m).sum();
    let logdet_prior: f64 = tau.iter().map(|t| t.ln()).sum();
    let lml = post.log_likelihood() - 0.5 * (logdet_spd(&p) - logdet_prior + scatter);
    let got = post.log_marginal_likelihood();
    assert!((got - lml).abs() <= 1e-8 * lml.abs().max(1.0), "{what}: log marglik {got} vs dense {lml}");
    // covariance, precision, sampling factor, diagonal
    let eye = Mat::<f64>::identity(d, d);
    let sol = post.solve(eye.as_ref());
    assert!(rel(&sol, &cov) < 1e-8, "{what}: covariance rel err {}", rel(&sol, &cov));
    let pa = post.apply_precision(eye.as_ref());
    assert!(rel(&pa, &p) < 1e-10, "{what}: precision rel err {}", rel(&pa, &p));
    let s = post.apply_inv_sqrt(eye.as_ref());
    let sst = &s * s.transpose();
    assert!(rel(&sst, &cov) < 1e-8, "{what}: S Sᵀ rel err {}", rel(&sst, &cov));
    let cd = post.covariance_diagonal();
    let dd: Vec<f64> = (0..d).map(|i| cov[(i, i)]).collect();
    assert!(relv(&cd, &dd) < 1e-8, "{what}: covariance diagonal rel err {}", relv(&cd, &dd));
    // linearized predictive variance on the test inputs: J P⁻¹ Jᵀ
    let net = &test.net;
    let c = net.out_size();
    let jac = dense_jacobian(test, &fit.active, 0);
    let ds = fit.active.dim;
    let coords: Vec<usize> = fit.selection.clone().unwrap_or_else(|| (0..ds).collect());
    let glm = post.glm(net, &test.data.x, test.data.n);
    let mut want = Vec::with_capacity(test.data.n * c * c);
    for s_ in 0..test.data.n {
        let j = Mat::<f64>::from_fn(c, d, |r, q| jac[(s_ * c + r) * ds + coords[q]]);
        let v = &j * &cov * j.transpose();
        for a in 0..c {
            for b in 0..c {
                want.push(v[(a, b)]);
            }
        }
    }
    assert!(relv(&glm.f_var, &want) < 1e-8, "{what}: functional variance rel err {}", relv(&glm.f_var, &want));
    p
}

fn opts(structure: HessianStructure, curvature: Curvature) -> LaplaceOptions {
    LaplaceOptions { structure, curvature, batch_size: 7, ..Default::default() }
}

const NAMES: [&str; 4] = ["mlp_tanh_mse", "mlp_relu_ce_batches", "mlp_sigmoid_bce_sum", "cnn_relu_maxpool_ce"];

/// The problem and the same network on test inputs (5 samples, inputs perturbed).
fn load(name: &str) -> (Problem<f64>, Problem<f64>) {
    let (p, _) = Reference::load(name);
    let (mut t, _) = Reference::load(name);
    let idx: Vec<usize> = (0..t.data.n.min(5)).collect();
    t.data = t.data.select(&idx);
    for (i, v) in t.data.x.iter_mut().enumerate() {
        *v += 0.1 * ((i as f64) * 0.7).sin();
    }
    (p, t)
}

#[test]
fn full_and_diag_equal_dense_curvature() {
    for name in NAMES {
        let (p, test) = load(name);
        let all = ActiveSet::all(&p.net.layout);
        for kind in [Curvature::Ggn, Curvature::Ef, Curvature::Hessian] {
            let h = dense_h(&p, &all, kind);
            let fit = laplace::fit(&p, all.clone(), None, &opts(HessianStructure::Full, kind), &|_, _| {}).unwrap();
            let HessianApprox::Full(hf) = &fit.h else { panic!() };
            assert!(rel(hf, &h) < 1e-10, "{name} {kind:?}: full H rel err {}", rel(hf, &h));
            // the Hessian may be indefinite: a large enough prior
            let tau = if kind == Curvature::Hessian { 1e3 } else { 0.7 };
            let post = Posterior::new(&fit, PriorPrecision::Scalar(tau), 1.0, 1.0).unwrap();
            check_posterior(&post, &test, &format!("{name} full {kind:?}"));
            if kind == Curvature::Hessian {
                continue;
            }
            let fit = laplace::fit(&p, all.clone(), None, &opts(HessianStructure::Diag, kind), &|_, _| {}).unwrap();
            let HessianApprox::Diag(dv) = &fit.h else { panic!() };
            let want: Vec<f64> = (0..all.dim).map(|i| h[(i, i)]).collect();
            assert!(relv(dv, &want) < 1e-10, "{name} {kind:?}: diag rel err {}", relv(dv, &want));
            let groups = fit.groups.len();
            let lw = PriorPrecision::Layerwise((0..groups).map(|g| 0.3 + g as f64).collect());
            let post = Posterior::new(&fit, lw, 1.0, 1.0).unwrap();
            check_posterior(&post, &test, &format!("{name} diag {kind:?}"));
        }
    }
}

#[test]
fn regression_noise_and_layerwise_prior() {
    let (p, test) = load("mlp_tanh_mse");
    let all = ActiveSet::all(&p.net.layout);
    let fit = laplace::fit(&p, all, None, &opts(HessianStructure::Full, Curvature::Ggn), &|_, _| {}).unwrap();
    assert_eq!(fit.likelihood, Likelihood::Regression);
    let groups = fit.groups.len();
    let lw = PriorPrecision::Layerwise((0..groups).map(|g| 0.5 + g as f64).collect());
    let post = Posterior::new(&fit, lw, 0.37, 1.3).unwrap();
    check_posterior(&post, &test, "regression full, σ = 0.37, T = 1.3");
    // the log-likelihood is the Gaussian one: −½σ⁻² Σ‖r‖²/T − NC log(σ√2π)
    let f = p.net.predict(&p.theta, &p.data.x, p.data.n);
    let Targets::Dense(y) = &p.data.y else { panic!() };
    let ss: f64 = f.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum();
    let nc = (p.data.n * p.net.out_size()) as f64;
    let want = -0.5 * ss / (0.37f64.powi(2) * 1.3) - nc * (0.37 * (2.0 * std::f64::consts::PI).sqrt()).ln();
    assert!((post.log_likelihood() - want).abs() < 1e-10 * want.abs());
}

#[test]
fn kfac_blocks_equal_exact_blocks_and_dense_algebra() {
    for name in NAMES {
        let (p, test) = load(name);
        let all = ActiveSet::all(&p.net.layout);
        let h = dense_h(&p, &all, Curvature::Ggn);
        let fit =
            laplace::fit(&p, all.clone(), None, &opts(HessianStructure::Kron, Curvature::Ggn), &|_, _| {}).unwrap();
        let HessianApprox::Kron(blocks) = &fit.h else { panic!() };
        // bias blocks of linear layers are exact GGN blocks (a convolution's bias block sums
        // outer products over positions, KFAC-expand)
        for (g, b) in fit.groups.iter().zip(blocks) {
            let layer: usize = g.name.split('.').next().unwrap().parse().unwrap();
            if p.net.layers[layer].kind() != "linear" {
                continue;
            }
            if let KronBlock::Dense(m) = b {
                let want = Mat::from_fn(g.len, g.len, |i, j| h[(g.offset + i, g.offset + j)]);
                assert!(rel(m, &want) < 1e-10, "{name} {}: bias block rel err {}", g.name, rel(m, &want));
            }
        }
        for tau in [0.1, 1.0, 10.0] {
            let post = Posterior::new(&fit, PriorPrecision::Scalar(tau), 1.0, 1.0).unwrap();
            let pd = check_posterior(&post, &test, &format!("{name} kfac τ={tau}"));
            // log-det and solve against dense for the isotropic prior
            assert!((post.logdet() - logdet_spd(&pd)).abs() < 1e-9 * logdet_spd(&pd).abs().max(1.0));
        }
        let groups = fit.groups.len();
        let lw = PriorPrecision::Layerwise((0..groups).map(|g| 0.2 * (g + 1) as f64).collect());
        let post = Posterior::new(&fit, lw, 1.0, 1.0).unwrap();
        check_posterior(&post, &test, &format!("{name} kfac layerwise"));
    }
}

#[test]
fn kfac_last_layer_factors() {
    let (p, _) = Reference::load("mlp_relu_ce_batches");
    let net = &p.net;
    let last = net.layers.iter().rposition(|l| l.num_params() > 0).unwrap();
    let active = ActiveSet::from_names(&net.layout, &[last.to_string()]).unwrap();
    let fit = laplace::fit(&p, active, None, &opts(HessianStructure::Kron, Curvature::Ggn), &|_, _| {}).unwrap();
    let HessianApprox::Kron(blocks) = &fit.h else { panic!() };
    let KronBlock::Kron { b, a } = &blocks[0] else { panic!("weight block first") };
    let (n, c) = (p.data.n, net.out_size());
    let tape = net.forward(&p.theta, &p.data.x, n);
    let phi = &tape.acts[last];
    let k = phi.len() / n;
    let lh = net.loss.hess_dense(tape.output(), targets(&p.data), n, c);
    let want_b = Mat::from_fn(c, c, |i, j| (0..n).map(|s| lh[(s * c + i) * c + j]).sum::<f64>());
    let want_a = Mat::from_fn(k, k, |i, j| (0..n).map(|s| phi[s * k + i] * phi[s * k + j]).sum::<f64>() / n as f64);
    assert!(rel(b, &want_b) < 1e-12 && rel(a, &want_a) < 1e-12);
}

#[test]
fn low_rank_and_subnetworks() {
    let (p, test) = load("mlp_relu_ce_batches");
    let all = ActiveSet::all(&p.net.layout);
    let h = dense_h(&p, &all, Curvature::Ggn);
    let ev = curvops_linalg::Eigh::from_dense(h.as_ref()).unwrap();
    let k = 6;
    let o = LaplaceOptions { lanczos_tol: 1e-12, ..opts(HessianStructure::LowRank { rank: k }, Curvature::Ggn) };
    let fit = laplace::fit(&p, all.clone(), None, &o, &|_, _| {}).unwrap();
    let HessianApprox::LowRank { lambda, .. } = &fit.h else { panic!() };
    for (i, (l, e)) in lambda.iter().zip(&ev.values).take(k).enumerate() {
        assert!((l - e).abs() < 1e-8 * ev.values[0], "eigenvalue {i}");
    }
    let post = Posterior::new(&fit, PriorPrecision::Scalar(0.9), 1.0, 1.0).unwrap();
    check_posterior(&post, &test, "lowrank scalar");
    let lw = PriorPrecision::Layerwise((0..fit.groups.len()).map(|g| 0.4 + g as f64).collect());
    let post = Posterior::new(&fit, lw, 1.0, 1.0).unwrap();
    check_posterior(&post, &test, "lowrank layerwise");
    // last layer via --params, and a subnetwork by indices
    let last = p.net.layers.iter().rposition(|l| l.num_params() > 0).unwrap();
    let act = ActiveSet::from_names(&p.net.layout, &[last.to_string()]).unwrap();
    let fit = laplace::fit(&p, act.clone(), None, &opts(HessianStructure::Full, Curvature::Ggn), &|_, _| {}).unwrap();
    let hl = dense_h(&p, &act, Curvature::Ggn);
    let HessianApprox::Full(hf) = &fit.h else { panic!() };
    assert!(rel(hf, &hl) < 1e-10);
    check_posterior(&Posterior::new(&fit, PriorPrecision::Scalar(2.0), 1.0, 1.0).unwrap(), &test, "last layer");
    let sel: Vec<usize> = (0..all.dim).filter(|i| i % 3 == 1).collect();
    for st in [HessianStructure::Full, HessianStructure::Diag] {
        let fit = laplace::fit(&p, all.clone(), Some(sel.clone()), &opts(st, Curvature::Ggn), &|_, _| {}).unwrap();
        let hs = structured_h(&fit);
        for (a, &i) in sel.iter().enumerate() {
            for (b, &j) in sel.iter().enumerate() {
                let want = if st == HessianStructure::Full || a == b { h[(i, j)] } else { 0.0 };
                assert!((hs[(a, b)] - want).abs() < 1e-10 * h[(0, 0)].abs().max(1.0));
            }
        }
        let groups = fit.groups.len();
        let lw = PriorPrecision::Layerwise((0..groups).map(|g| 1.0 + g as f64).collect());
        check_posterior(&Posterior::new(&fit, lw, 1.0, 1.0).unwrap(), &test, "subnetwork");
    }
}

/// `M(τ)` at `τ·e^{±ε}`: the optimum is a stationary point and a maximum.
fn assert_stationary(fit: &LaplaceFit<f64>, prior: &PriorPrecision, sigma: f64, what: &str) {
    let lml = |pr: PriorPrecision, s: f64| Posterior::new(fit, pr, s, 1.0).unwrap().log_marginal_likelihood();
    let m0 = lml(prior.clone(), sigma);
    let eps = 1e-4;
    let vals = match prior {
        PriorPrecision::Scalar(t) => vec![*t],
        PriorPrecision::Layerwise(v) => v.clone(),
        PriorPrecision::Diagonal(_) => unreachable!(),
    };
    let mk = |v: Vec<f64>| {
        if vals.len() == 1 && matches!(prior, PriorPrecision::Scalar(_)) {
            PriorPrecision::Scalar(v[0])
        } else {
            PriorPrecision::Layerwise(v)
        }
    };
    for g in 0..vals.len() {
        let mut up = vals.clone();
        up[g] *= f64::exp(eps);
        let mut dn = vals.clone();
        dn[g] *= f64::exp(-eps);
        let (a, b) = (lml(mk(up), sigma), lml(mk(dn), sigma));
        let grad = (a - b) / (2.0 * eps);
        assert!(grad.abs() < 1e-5 * m0.abs().max(1.0), "{what}: ∂M/∂log τ_{g} = {grad}");
        assert!(a <= m0 + 1e-9 * m0.abs() && b <= m0 + 1e-9 * m0.abs(), "{what}: not a maximum");
    }
    if fit.likelihood == Likelihood::Regression {
        let (a, b) = (lml(prior.clone(), sigma * f64::exp(eps)), lml(prior.clone(), sigma * f64::exp(-eps)));
        let grad = (a - b) / (2.0 * eps);
        assert!(grad.abs() < 1e-5 * m0.abs().max(1.0), "{what}: ∂M/∂log σ = {grad}");
    }
}

#[test]
fn marglik_optimum_is_stationary() {
    for name in ["mlp_relu_ce_batches", "mlp_tanh_mse"] {
        let (p, _) = Reference::load(name);
        let all = ActiveSet::all(&p.net.layout);
        let regression = p.net.loss.kind == curvops_nn::LossKind::Mse;
        for st in [
            HessianStructure::Full,
            HessianStructure::Diag,
            HessianStructure::Kron,
            HessianStructure::LowRank { rank: 5 },
        ] {
            let fit = laplace::fit(&p, all.clone(), None, &opts(st, Curvature::Ggn), &|_, _| {}).unwrap();
            for ps in [PriorStructure::Scalar, PriorStructure::Layerwise] {
                let mo = MarglikOptions { prior_structure: ps, optimize_sigma: regression, ..Default::default() };
                let r = optimize_marglik(&fit, &mo).unwrap();
                let what = format!("{name} {} {ps:?} ({})", st.name(), r.method);
                let post = Posterior::new(&fit, r.prior.clone(), r.sigma, 1.0).unwrap();
                assert!(
                    (post.log_marginal_likelihood() - r.log_marginal_likelihood).abs()
                        < 1e-9 * r.log_marginal_likelihood.abs(),
                    "{what}: reported value"
                );
                assert_stationary(&fit, &r.prior, r.sigma, &what);
            }
        }
    }
}

#[test]
fn save_and_load_round_trip() {
    let (p, test) = load("cnn_relu_maxpool_ce");
    let all = ActiveSet::all(&p.net.layout);
    let dir = std::env::temp_dir().join(format!("curvops-laplace-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for st in
        [HessianStructure::Full, HessianStructure::Diag, HessianStructure::Kron, HessianStructure::LowRank { rank: 4 }]
    {
        let fit = laplace::fit(&p, all.clone(), None, &opts(st, Curvature::Ggn), &|_, _| {}).unwrap();
        let prior = PriorPrecision::Layerwise((0..fit.groups.len()).map(|g| 1.0 + g as f64).collect());
        let post = Posterior::new(&fit, prior.clone(), 1.0, 1.0).unwrap();
        let path = dir.join(format!("{}.safetensors", st.name()));
        lio::save(&path, &p.net, &fit, &prior, 1.0, 1.0, post.log_marginal_likelihood()).unwrap();
        let saved = lio::load::<f64>(&path, &p.net).unwrap();
        assert_eq!(saved.prior, prior);
        let post2 = Posterior::new(&saved.fit, saved.prior.clone(), saved.sigma, saved.temperature).unwrap();
        assert_eq!(post.log_marginal_likelihood(), post2.log_marginal_likelihood());
        let (a, b) = (post.glm(&test.net, &test.data.x, test.data.n), post2.glm(&test.net, &test.data.x, test.data.n));
        assert_eq!(a, b, "{}", st.name());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A graph reference problem and the same network on 5 of its inputs (perturbed when they are
/// floats; token ids are kept).
fn load_graph(name: &str) -> (Problem<f64>, Problem<f64>, Reference) {
    let (p, r) = Reference::load_graph(name);
    let (mut t, _) = Reference::load_graph(name);
    let idx: Vec<usize> = (0..t.data.n.min(5)).collect();
    t.data = t.data.select(&idx);
    if !t.net.input_int {
        for (i, v) in t.data.x.iter_mut().enumerate() {
            *v += 0.1 * ((i as f64) * 0.7).sin();
        }
    }
    (p, t, r)
}

/// The graph references (residual block with batch norm, LayerNorm MLP, tiny GPT with a tied
/// embedding and sequence outputs): every structure over all parameters and over the last
/// layer (the tied `wte.weight` for the GPT) equals its dense formulas — curvature, log
/// marginal likelihood, covariance, predictive variance — and the log-likelihood is the sum
/// over all outputs (all tokens) of the reference loss.
#[test]
fn graph_references_all_structures() {
    for name in common::GRAPH_PROBLEMS {
        let (p, test, r) = load_graph(name);
        let all = ActiveSet::all(&p.net.layout);
        let last = laplace::last_layer(&p.net).unwrap();
        if name == "tiny_gpt_ce" {
            let names: Vec<&str> = last.names(&p.net.layout).iter().map(|(e, _)| e.name.as_str()).collect();
            assert_eq!(names, ["wte.weight"], "the tied output layer's tensor");
        }
        // log-likelihood: −Σ over all outputs (tokens) of the loss
        let (_, loss) = r.array("loss");
        let n_out = (p.data.n * p.net.out_size()) as f64;
        let n_terms = match p.net.loss.kind {
            curvops_nn::LossKind::CrossEntropy => (p.data.n * p.net.loss.positions) as f64,
            _ => n_out,
        };
        let want_ll = match p.net.loss.kind {
            curvops_nn::LossKind::Mse => -0.5 * loss[0] * n_terms - n_out * (2.0 * std::f64::consts::PI).sqrt().ln(),
            _ => -loss[0] * n_terms,
        };
        for (set, sname) in [(&all, "all"), (&last, "last-layer")] {
            let h = dense_h(&p, set, Curvature::Ggn);
            for st in [
                HessianStructure::Full,
                HessianStructure::Diag,
                HessianStructure::Kron,
                HessianStructure::LowRank { rank: 5 },
            ] {
                let what = format!("{name} {sname} {}", st.name());
                let o = LaplaceOptions { lanczos_tol: 1e-12, ..opts(st, Curvature::Ggn) };
                let fit = laplace::fit(&p, set.clone(), None, &o, &|_, _| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
                match &fit.h {
                    HessianApprox::Full(hf) => assert!(rel(hf, &h) < 1e-10, "{what}: H rel err {}", rel(hf, &h)),
                    HessianApprox::Diag(dv) => {
                        let want: Vec<f64> = (0..set.dim).map(|i| h[(i, i)]).collect();
                        assert!(relv(dv, &want) < 1e-10, "{what}: diag rel err {}", relv(dv, &want));
                    }
                    HessianApprox::LowRank { lambda, .. } => {
                        let ev = curvops_linalg::Eigh::from_dense(h.as_ref()).unwrap();
                        for (l, e) in lambda.iter().zip(&ev.values) {
                            assert!((l - e).abs() < 1e-8 * ev.values[0], "{what}: eigenvalue {l} vs {e}");
                        }
                    }
                    HessianApprox::Kron(blocks) => assert_eq!(blocks.len(), fit.groups.len(), "{what}"),
                }
                let post = Posterior::new(&fit, PriorPrecision::Scalar(0.7), 1.0, 1.0).unwrap();
                let ll = post.log_likelihood();
                assert!((ll - want_ll).abs() < 1e-10 * want_ll.abs(), "{what}: log-likelihood {ll} vs {want_ll}");
                check_posterior(&post, &test, &format!("{what} τ=0.7"));
                let lw = PriorPrecision::Layerwise((0..fit.groups.len()).map(|g| 0.3 + 0.5 * g as f64).collect());
                check_posterior(&Posterior::new(&fit, lw, 1.0, 1.0).unwrap(), &test, &format!("{what} layerwise"));
            }
        }
    }
}
