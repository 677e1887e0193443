//! The directionally damped Newton step: constant damping, the bootstrap rule on constructed
//! per-sample derivatives (where the right choice is known), determinism and the top-k
//! (Lanczos) spectrum against the full one.

use crate::common::Reference;
use curvops::vivit::{newton_step, Damping, Directional, Eigenpairs, Grouping, Spectrum, Vivit, VivitOptions};
use curvops::ActiveSet;

/// Two directions `e_0 = (1, 0, 0)`, `e_1 = (0, 1, 0)` with `λ = (2, 1)` and `N = 10`
/// samples (`c = 1/N`): along `e_0` every sample has `γ = 1`, `λ = 2`; along `e_1` the
/// gradients cancel (`γ_n = ±1`) with `λ_n = 1`.
fn synthetic() -> (Eigenpairs<f64>, Directional<f64>) {
    let eig = Eigenpairs {
        values: vec![2.0, 1.0],
        vectors: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        group: vec![0, 0],
        nonzero: vec![2.0, 1.0],
        complete: true,
        dim: 3,
        warnings: vec![],
    };
    let n = 10;
    let mut gamma = Vec::new();
    let mut lambda = Vec::new();
    for s in 0..n {
        gamma.extend([1.0, if s % 2 == 0 { 1.0 } else { -1.0 }]);
        lambda.extend([2.0, 1.0]);
    }
    let all: Vec<usize> = (0..n).collect();
    (eig, Directional { grad_samples: all.clone(), curv_samples: all, gamma, lambda, k: 2 })
}

#[test]
fn constant_damping_step() {
    let (eig, dd) = synthetic();
    let s = newton_step(&eig, &dd, 10, 0.1, &Damping::Constant(0.5)).unwrap();
    // γ̄_0 = c·Σγ = 1, γ̄_1 = 0
    assert!((s.gamma[0] - 1.0).abs() < 1e-15 && s.gamma[1].abs() < 1e-15);
    assert!((s.step[0] + 1.0 / 2.5).abs() < 1e-15);
    assert_eq!(s.step[1], 0.0);
    assert_eq!(s.step[2], 0.0);
    assert!(newton_step(&eig, &dd, 10, 0.1, &Damping::Constant(-1.0)).is_err());
}

#[test]
fn bootstrap_picks_smallest_damping_without_noise_and_no_step_without_signal() {
    let (eig, dd) = synthetic();
    let s = newton_step(&eig, &dd, 10, 0.1, &Damping::bootstrap(3)).unwrap();
    // no noise along e_0: the gain γ²/(λ+δ) − ½λγ²/(λ+δ)² decreases in δ, so δ = 10⁻³
    assert_eq!(s.damping[0], Some(1e-3));
    assert!((s.coefficients[0] + 1.0 / (2.0 + 1e-3)).abs() < 1e-14);
    // pure noise along e_1: the 5 % quantile of the gain is negative for every δ
    assert_eq!(s.damping[1], None);
    assert_eq!(s.coefficients[1], 0.0);
    assert_eq!(s.step[1], 0.0);
    // deterministic for a seed
    let again = newton_step(&eig, &dd, 10, 0.1, &Damping::bootstrap(3)).unwrap();
    assert_eq!(s.step, again.step);
}

#[test]
fn bootstrap_on_reference_problems_is_seeded_and_on_the_grid() {
    let grid: Vec<f64> = (0..100).map(|i| 10f64.powf(-3.0 + 5.0 * i as f64 / 99.0)).collect();
    for name in ["mlp_relu_ce_batches", "cnn_relu_maxpool_ce", "mlp_tanh_mse"] {
        let (p, r) = Reference::load(name);
        let o = VivitOptions { batch_size: r.batch_size(), ..Default::default() };
        let v = Vivit::new(&p, ActiveSet::all(&p.net.layout), o).unwrap();
        let eig = v.eigen(5).unwrap();
        let all: Vec<usize> = (0..p.data.n).collect();
        let dd = v.directional(&eig, &all, &all);
        let a = newton_step(&eig, &dd, p.data.n, v.reduction_factor(), &Damping::bootstrap(1)).unwrap();
        let b = newton_step(&eig, &dd, p.data.n, v.reduction_factor(), &Damping::bootstrap(1)).unwrap();
        assert_eq!(a.step, b.step, "{name}");
        for (k, d) in a.damping.iter().enumerate() {
            match d {
                Some(d) => {
                    assert!(grid.iter().any(|g| (g - d).abs() <= 1e-12 * g), "{name}: δ = {d} not on the grid");
                    let want = -a.gamma[k] / (eig.values[k] + d);
                    assert!((a.coefficients[k] - want).abs() <= 1e-12 * want.abs().max(1e-300), "{name}");
                }
                None => assert_eq!(a.coefficients[k], 0.0),
            }
        }
        // the gradient along e_k: γ̄_k = e_kᵀ ∇L
        let (_, grad) = r.array("grad");
        for k in 0..eig.k() {
            let want: f64 = eig.vector(k).iter().zip(&grad).map(|(x, y)| x * y).sum();
            assert!((a.gamma[k] - want).abs() <= 1e-10 * grad.iter().map(|x| x.abs()).sum::<f64>(), "{name}");
        }
    }
}

#[test]
fn top_k_spectrum_matches_full() {
    for name in ["mlp_tanh_mse", "cnn_batchnorm_softlabel_ce", "mlp_relu_ce_batches"] {
        let (p, r) = Reference::load(name);
        for grouping in [Grouping::Full, Grouping::Layer] {
            let mk = |spectrum| VivitOptions { batch_size: r.batch_size(), grouping, spectrum, ..Default::default() };
            let full = Vivit::new(&p, ActiveSet::all(&p.net.layout), mk(Spectrum::All)).unwrap().eigen(3).unwrap();
            let top = Vivit::new(&p, ActiveSet::all(&p.net.layout), mk(Spectrum::Top)).unwrap().eigen(3).unwrap();
            assert!(full.complete && !top.complete);
            let lmax = full.values[0];
            for k in 0..3 {
                assert!((full.values[k] - top.values[k]).abs() <= 1e-10 * lmax, "{name} {grouping:?} λ_{k}");
                // eigenvectors (eigenvalues may be multiple, e.g. MSE's last layer): the residual
                // against the dense block-diagonal GGN
                let (_, g) = r.array("ggn");
                let d = p.net.num_params();
                let grp = &v_groups(&p, grouping)[top.group[k]];
                let u = top.vector(k);
                let mut r2 = 0.0;
                for &i in grp {
                    let gi: f64 = grp.iter().map(|&j| g[i * d + j] * u[j]).sum();
                    r2 += (gi - top.values[k] * u[i]).powi(2);
                }
                assert!(r2.sqrt() <= 1e-8 * lmax, "{name} {grouping:?} e_{k}: residual {:.3e}", r2.sqrt() / lmax);
            }
        }
    }
}

/// Coordinates of each group.
fn v_groups(p: &curvops::Problem<f64>, grouping: Grouping) -> Vec<Vec<usize>> {
    let v = Vivit::new(p, ActiveSet::all(&p.net.layout), VivitOptions { grouping, ..Default::default() }).unwrap();
    v.groups()
        .iter()
        .map(|g| {
            g.entries
                .iter()
                .flat_map(|&i| {
                    let e = &p.net.layout.entries[i];
                    e.offset..e.offset + e.len
                })
                .collect()
        })
        .collect()
}
