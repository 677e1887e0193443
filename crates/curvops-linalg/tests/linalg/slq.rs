//! Stochastic Lanczos quadrature.

use crate::common::*;
use curvops_linalg::slq::*;
use curvops_linalg::*;
use curvops_tensor::rng::Rng;
use faer::Mat;

#[test]
fn clustered_spectrum_peaks_mass_and_mean() {
    let mut rng = Rng::new(31);
    let n = 300;
    let eig: Vec<f64> = (0..n).map(|i| [1.0, 5.0, 10.0][i % 3] + 0.02 * (rng.uniform() - 0.5)).collect();
    let a = with_eigs(&mut rng, &eig);
    let op = DenseOp::with_structure(a, Structure::PSD);
    let opts = SlqOptions { starts: 10, steps: 40, seed: 3, ..Default::default() };
    let (d, q) = timed("slq clustered", || slq(&op, &opts, &DensityOptions::default())).unwrap();
    assert_eq!(q.matvecs, 10 * 40);
    let integral = d.integral();
    let (qmean, se) = q.mean();
    let se = se.unwrap();
    let truth = eig.iter().sum::<f64>() / n as f64;
    let peaks = d.peaks(0.2);
    eprintln!(
        "[slq] clustered: ∫φ = {integral:.6}, density mean {:.5} quadrature mean {qmean:.5} ± {se:.2e}, tr/n {truth:.5}, \
         bounds [{:.4}, {:.4}], σ = {:.3}, peaks {peaks:?}",
        d.mean(),
        d.lower,
        d.upper,
        d.sigma
    );
    assert!((integral - 1.0).abs() < 1e-4, "integral {integral}");
    assert!((d.mean() - qmean).abs() < 1e-4 * truth, "grid mean vs quadrature mean");
    assert!((d.mean() - truth).abs() <= 4.0 * se + 1e-4 * truth, "mean {} vs tr/n {truth} (se {se})", d.mean());
    assert_eq!(peaks.len(), 3, "{peaks:?}");
    for (p, c) in peaks.iter().zip([1.0, 5.0, 10.0]) {
        assert!((p - c).abs() < 2.0 * d.sigma, "peak {p} vs cluster {c}");
    }
    // boundaries: the extreme Ritz values converge to the extreme eigenvalues
    let (lo, hi) = (eig.iter().cloned().fold(f64::INFINITY, f64::min), eig.iter().cloned().fold(0.0, f64::max));
    assert!((d.lower - lo).abs() < 1e-4 && (d.upper - hi).abs() < 1e-4, "[{}, {}] vs [{lo}, {hi}]", d.lower, d.upper);
    // the density of log|λ|
    let ld = q.log_density(&DensityOptions::default());
    assert!((ld.integral() - 1.0).abs() < 1e-4);
    let lpeaks = ld.peaks(0.2);
    assert_eq!(lpeaks.len(), 3, "{lpeaks:?}");
    for (p, c) in lpeaks.iter().zip([1.0f64, 5.0, 10.0]) {
        assert!((p - c.ln()).abs() < 2.0 * ld.sigma, "log peak {p} vs {}", c.ln());
    }
    let ltruth = eig.iter().map(|x| x.ln()).sum::<f64>() / n as f64;
    let (lq, lse) = q.mean_of(|x| x.abs().ln());
    assert!((lq - ltruth).abs() <= 4.0 * lse.unwrap() + 1e-6, "log mean {lq} vs {ltruth}");
    assert!((ld.mean() - lq).abs() < 1e-4);
    // CSV
    let mut buf = Vec::new();
    d.write_csv(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "lambda,density");
    assert_eq!(lines.len(), 1 + d.grid.len());
    assert_eq!(d.pairs().len(), d.grid.len());
    let (x, y) = lines[1].split_once(',').unwrap();
    assert!((x.parse::<f64>().unwrap() - d.grid[0]).abs() < 1e-9 * d.grid[0].abs().max(1.0));
    assert!(y.parse::<f64>().unwrap() >= 0.0);
}

#[test]
fn decaying_spectrum_unbiased_mean() {
    let mut rng = Rng::new(32);
    let n = 400;
    let eig: Vec<f64> = (1..=n).map(|i| 1.0 / (i as f64).powf(1.5)).collect();
    let a = with_eigs(&mut rng, &eig);
    let op = DenseOp::with_structure(a, Structure::PSD);
    let truth = eig.iter().sum::<f64>() / n as f64;
    let mut zs = Vec::new();
    for (seed, probe) in [(1, estimators::Probe::Rademacher), (2, estimators::Probe::Gaussian)] {
        for reorth in [true, false] {
            let opts = SlqOptions { starts: 50, steps: 15, seed, probe, reorthogonalize: reorth };
            let (d, q) = slq(&op, &opts, &DensityOptions { grid_points: 4000, ..Default::default() }).unwrap();
            let (m, se) = q.mean();
            let z = (m - truth) / se.unwrap();
            zs.push(z);
            eprintln!("[slq] i^-1.5 spectrum {probe:?} reorth={reorth}: ∫φ = {:.6}, mean {m:.5e} tr/n {truth:.5e} z = {z:+.2}", d.integral());
            assert!((d.integral() - 1.0).abs() < 1e-3);
            assert!(z.abs() <= 4.0);
            assert!((d.mean() - m).abs() <= 0.05 * se.unwrap() + 1e-3 * d.sigma);
        }
    }
}

#[test]
fn low_rank_breakdown_and_errors() {
    let mut rng = Rng::new(33);
    let u = randn(&mut rng, 100, 3);
    let lr = LowRankOp::new(u, vec![3.0, 2.0, 1.0]).unwrap();
    let q = lanczos_quadrature(&lr, &SlqOptions { starts: 30, steps: 50, ..Default::default() }).unwrap();
    // the Krylov space of a rank-3 operator has dimension ≤ 4: Lanczos stops early
    assert!(q.nodes.iter().all(|t| t.len() <= 4), "{:?}", q.nodes.iter().map(|t| t.len()).collect::<Vec<_>>());
    assert!(q.matvecs <= 30 * 4);
    let d = q.density(&DensityOptions::default());
    assert!((d.integral() - 1.0).abs() < 1e-4);
    let (m, se) = q.mean();
    let truth = lr.trace().unwrap() / 100.0;
    assert!((m - truth).abs() <= 4.0 * se.unwrap(), "{m} vs {truth} (se {se:?})");
    // needs a symmetric operator
    let g = randn(&mut rng, 10, 10);
    let err = lanczos_quadrature(&DenseOp::new(g), &SlqOptions::default()).unwrap_err();
    assert!(matches!(err, LinalgError::Structure { .. }));
    // f32
    let af = Mat::<f32>::from_fn(50, 50, |i, j| if i == j { 1.0 + i as f32 / 10.0 } else { 0.0 });
    let q = lanczos_quadrature(
        &DenseOp::with_structure(af, Structure::PSD),
        &SlqOptions { starts: 3, steps: 20, ..Default::default() },
    )
    .unwrap();
    let d = q.density(&DensityOptions::default());
    assert!((d.integral() - 1.0).abs() < 1e-3);
    assert!((d.lower - 1.0).abs() < 1e-3 && (d.upper - 5.9).abs() < 1e-3);
}
