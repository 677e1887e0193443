//! The Monte-Carlo and subsampled ViViT factors are unbiased: over repetitions with fixed
//! seeds, the means of `tr(VᵀV)` (from the Gram path) and of quadratic forms `‖Vᵀu‖²` equal
//! `tr G` and `uᵀ G u` of the dense GGN to within 4 standard errors of the mean.

use crate::common::{Reference, EXTRA, PROBLEMS};
use curvops::vivit::{FactorKind, Vivit, VivitOptions};
use curvops::ActiveSet;

const REPS: usize = 300;

/// `(tr G̃, ‖Vᵀu_j‖² for each u_j)` of one factor.
fn sample(v: &Vivit<'_, f64>, us: &[Vec<f64>]) -> Vec<f64> {
    let m = v.columns();
    let gram = v.gram();
    let mut out = vec![(0..m).map(|a| gram[a * m + a]).sum::<f64>()];
    let rows = v.factor_rows();
    let d = v.active().dim;
    for u in us {
        out.push((0..m).map(|a| (0..d).map(|i| rows[a * d + i] * u[i]).sum::<f64>().powi(2)).sum());
    }
    out
}

fn check(label: &str, make: &dyn Fn(u64) -> VivitOptions) {
    let mut failures = Vec::new();
    let mut worst: f64 = 0.0;
    for (name, extra) in PROBLEMS.iter().map(|n| (*n, false)).chain(EXTRA.iter().map(|n| (*n, true))) {
        let (p, r) = if extra { Reference::load_extra(name) } else { Reference::load(name) };
        let (_, g) = r.array("ggn");
        let d = p.net.num_params();
        let mut rng = curvops_tensor::rng::Rng::new(99);
        let us: Vec<Vec<f64>> = (0..3)
            .map(|_| {
                let mut u = vec![0.0; d];
                rng.fill_normal(&mut u);
                u
            })
            .collect();
        let mut truth = vec![(0..d).map(|i| g[i * d + i]).sum::<f64>()];
        for u in &us {
            truth.push((0..d).map(|i| u[i] * (0..d).map(|j| g[i * d + j] * u[j]).sum::<f64>()).sum());
        }
        let mut sum = vec![0.0; truth.len()];
        let mut sq = vec![0.0; truth.len()];
        for seed in 0..REPS as u64 {
            let o = VivitOptions { batch_size: r.batch_size(), ..make(seed) };
            let v = Vivit::new(&p, ActiveSet::all(&p.net.layout), o).unwrap();
            for (j, x) in sample(&v, &us).into_iter().enumerate() {
                sum[j] += x;
                sq[j] += x * x;
            }
        }
        for j in 0..truth.len() {
            let mean = sum[j] / REPS as f64;
            let var = (sq[j] / REPS as f64 - mean * mean).max(0.0) * REPS as f64 / (REPS - 1) as f64;
            let se = (var / REPS as f64).sqrt();
            let z = (mean - truth[j]).abs() / (se + 1e-12 * truth[j].abs());
            worst = worst.max(z);
            assert!(se > 1e-9 * truth[j].abs(), "{label} {name} quantity {j}: no variance — the test would be vacuous");
            if z > 4.0 {
                failures.push(format!(
                    "{name} quantity {j}: mean {mean:.6e} truth {:.6e} ({z:.2} standard errors)",
                    truth[j]
                ));
            }
        }
    }
    println!("{label}: largest deviation {worst:.2} standard errors");
    assert!(failures.is_empty(), "{label}: biased?\n  {}", failures.join("\n  "));
}

#[test]
fn monte_carlo_factor_is_unbiased() {
    check("mc 1", &|seed| VivitOptions { factor: FactorKind::MonteCarlo { samples: 1, seed }, ..Default::default() });
}

#[test]
fn subsampled_factor_is_unbiased() {
    check("subsample N' = N/2", &|seed| VivitOptions { subsample: Some((3, seed)), ..Default::default() });
}

#[test]
fn monte_carlo_subsampled_factor_is_unbiased() {
    check("mc 2 + subsample 2", &|seed| VivitOptions {
        factor: FactorKind::MonteCarlo { samples: 2, seed: seed + 1000 },
        subsample: Some((2, seed)),
        ..Default::default()
    });
}
