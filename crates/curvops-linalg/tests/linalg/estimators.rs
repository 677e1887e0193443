//! Randomized estimators: unbiasedness (4 standard errors, fixed seeds) and the variance
//! ordering XTrace < Hutch++ < Hutchinson, XDiag < Hutchinson diagonal.

use crate::common::*;
use curvops_linalg::estimators::*;
use curvops_linalg::*;
use curvops_tensor::rng::Rng;
use faer::{Mat, MatMut, MatRef};

/// A dense matrix seen only through `apply` (like the engine's curvature operators).
struct Plain(Mat<f64>, Structure);

impl LinearOperator<f64> for Plain {
    fn nrows(&self) -> usize {
        self.0.nrows()
    }
    fn ncols(&self) -> usize {
        self.0.ncols()
    }
    fn structure(&self) -> Structure {
        self.1
    }
    fn apply(&self, out: MatMut<'_, f64>, rhs: MatRef<'_, f64>) -> Result<(), LinalgError> {
        faer::linalg::matmul::matmul(out, faer::Accum::Replace, self.0.as_ref(), rhs, 1.0, faer::Par::Seq);
        Ok(())
    }
    fn has_transpose(&self) -> bool {
        true
    }
    fn apply_transpose(&self, out: MatMut<'_, f64>, rhs: MatRef<'_, f64>) -> Result<(), LinalgError> {
        faer::linalg::matmul::matmul(out, faer::Accum::Replace, self.0.transpose(), rhs, 1.0, faer::Par::Seq);
        Ok(())
    }
}

fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    (m, xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0))
}

/// Asserts |mean − truth| ≤ 4 standard errors of the mean.
fn assert_unbiased(name: &str, xs: &[f64], truth: f64) {
    let (m, v) = mean_var(xs);
    let se = (v / xs.len() as f64).sqrt();
    let z = (m - truth) / se;
    eprintln!("[unbiased] {name}: mean {m:.6e} truth {truth:.6e} se {se:.2e} z {z:+.2}");
    assert!(z.abs() <= 4.0, "{name}: biased? mean {m} truth {truth} se {se} (z = {z})");
}

/// Diagonal estimates (reps × n): per-entry z-scores of the mean; their mean square ≈ 1.
fn assert_diag_unbiased(name: &str, reps: &[Vec<f64>], truth: &[f64]) -> f64 {
    let n = truth.len();
    let r = reps.len() as f64;
    let mut z2 = 0.0;
    let mut zmax: f64 = 0.0;
    let mut total_var = 0.0;
    for j in 0..n {
        let col: Vec<f64> = reps.iter().map(|d| d[j]).collect();
        let (m, v) = mean_var(&col);
        total_var += v;
        let z = (m - truth[j]) / (v / r).sqrt().max(1e-300);
        z2 += z * z;
        zmax = zmax.max(z.abs());
    }
    let mz2 = z2 / n as f64;
    eprintln!("[unbiased] {name}: mean z² {mz2:.3} (n = {n}), max |z| {zmax:.2}, total variance {total_var:.3e}");
    assert!((mz2 - 1.0).abs() <= 4.0 * (2.0 / n as f64).sqrt() + 0.1, "{name}: mean z² = {mz2}");
    assert!(zmax <= 5.5, "{name}: max |z| = {zmax}");
    total_var
}

#[test]
fn variance_ordering_and_unbiasedness_on_inverse_square_spectrum() {
    let mut rng = Rng::new(21);
    let n = 500;
    let eig: Vec<f64> = (1..=n).map(|i| 1.0 / (i as f64 * i as f64)).collect();
    let a = with_eigs(&mut rng, &eig);
    let truth: f64 = eig.iter().sum();
    let dtrue: Vec<f64> = (0..n).map(|i| a[(i, i)]).collect();
    let op = Plain(a, Structure::PSD);
    let (reps, mv) = (300, 60);
    let opts = |seed: u64| EstimatorOptions { seed, ..Default::default() };
    let mut h = Vec::new();
    let mut hpp = Vec::new();
    let mut xt = Vec::new();
    let mut dh = Vec::new();
    let mut xd = Vec::new();
    timed("estimators 300 reps × 5 × 60 matvecs on 500×500", || {
        for r in 0..reps as u64 {
            let e = trace_hutchinson(&op, mv, &opts(r)).unwrap();
            assert_eq!(e.matvecs, mv);
            h.push(e.value);
            let e = trace_hutchpp(&op, mv, &opts(r + 10_000)).unwrap();
            assert_eq!(e.matvecs, mv);
            hpp.push(e.value);
            let e = trace_xtrace(&op, mv, &opts(r + 20_000)).unwrap();
            assert_eq!(e.matvecs, mv);
            xt.push(e.value);
            let d = diag_hutchinson(&op, mv, &opts(r + 30_000)).unwrap();
            assert_eq!(d.matvecs, mv);
            dh.push(d.values);
            let d = diag_xdiag(&op, mv, &opts(r + 40_000)).unwrap();
            assert_eq!(d.matvecs, mv);
            xd.push(d.values);
        }
    });
    assert_unbiased("hutchinson", &h, truth);
    assert_unbiased("hutch++", &hpp, truth);
    assert_unbiased("xtrace", &xt, truth);
    let (vh, vpp, vx) = (mean_var(&h).1, mean_var(&hpp).1, mean_var(&xt).1);
    eprintln!("[variance] trace (60 matvecs, 300 reps): xtrace {vx:.3e} < hutch++ {vpp:.3e} < hutchinson {vh:.3e}");
    assert!(vx < vpp && vpp < vh, "variance ordering: xtrace {vx} hutch++ {vpp} hutchinson {vh}");
    let vdh = assert_diag_unbiased("diag hutchinson", &dh, &dtrue);
    let vxd = assert_diag_unbiased("xdiag", &xd, &dtrue);
    eprintln!("[variance] diagonal (sum of entry variances): xdiag {vxd:.3e} < hutchinson {vdh:.3e}");
    assert!(vxd < vdh);
}

#[test]
fn unbiased_on_general_matrices_and_probes() {
    let mut rng = Rng::new(22);
    let n = 40;
    let g = randn(&mut rng, n, n);
    let truth: f64 = (0..n).map(|i| g[(i, i)]).sum();
    let dtrue: Vec<f64> = (0..n).map(|i| g[(i, i)]).collect();
    let op = Plain(g.clone(), Structure::GENERAL);
    for probe in [Probe::Rademacher, Probe::Gaussian] {
        let o = |seed: u64| EstimatorOptions { probe, seed, block_size: 7 };
        let (mut h, mut hp, mut x, mut xd) = (vec![], vec![], vec![], vec![]);
        for r in 0..400u64 {
            h.push(trace_hutchinson(&op, 12, &o(r)).unwrap().value);
            hp.push(trace_hutchpp(&op, 12, &o(r + 1000)).unwrap().value);
            x.push(trace_xtrace(&op, 12, &o(r + 2000)).unwrap().value);
            xd.push(diag_xdiag(&op, 12, &o(r + 3000)).unwrap().values);
        }
        assert_unbiased(&format!("hutchinson {probe:?} (general)"), &h, truth);
        assert_unbiased(&format!("hutch++ {probe:?} (general)"), &hp, truth);
        assert_unbiased(&format!("xtrace {probe:?} (general)"), &x, truth);
        assert_diag_unbiased(&format!("xdiag {probe:?} (general)"), &xd, &dtrue);
    }
    // the reported standard error matches the spread across repetitions
    let e = trace_hutchinson(&op, 400, &EstimatorOptions::default()).unwrap();
    let spread = (0..200u64)
        .map(|r| trace_hutchinson(&op, 400, &EstimatorOptions { seed: r + 5, ..Default::default() }).unwrap().value)
        .collect::<Vec<_>>();
    let sd = mean_var(&spread).1.sqrt();
    let se = e.std_err.unwrap();
    eprintln!("[se] hutchinson reported se {se:.3e} vs spread {sd:.3e}");
    assert!(se > 0.7 * sd && se < 1.4 * sd);
    // probes do not depend on the block size
    let a = trace_hutchinson(&op, 30, &EstimatorOptions { block_size: 1, ..Default::default() }).unwrap();
    let b = trace_hutchinson(&op, 30, &EstimatorOptions { block_size: 64, ..Default::default() }).unwrap();
    assert!((a.value - b.value).abs() < 1e-10 * a.value.abs().max(1.0));
}

#[test]
fn frobenius_and_exact() {
    let mut rng = Rng::new(23);
    // Frobenius of a rectangular operator (e.g. a Jacobian)
    let j = randn(&mut rng, 30, 70);
    let truth = fro(j.as_ref()).powi(2);
    let op = Plain(j.clone(), Structure::GENERAL);
    let xs: Vec<f64> = (0..300u64)
        .map(|r| {
            frobenius_sq(&op, 8, &EstimatorOptions { seed: r, probe: Probe::Gaussian, block_size: 3 }).unwrap().value
        })
        .collect();
    assert_unbiased("frobenius (30×70)", &xs, truth);
    let xs: Vec<f64> = (0..300u64)
        .map(|r| frobenius_sq(&op, 8, &EstimatorOptions { seed: r, ..Default::default() }).unwrap().value)
        .collect();
    assert_unbiased("frobenius rademacher (30×70)", &xs, truth);
    // exact trace and diagonal by unit-vector blocks (operator without structure)
    let a = rand_sym_indef(&mut rng, 37);
    let plain = Plain(a.clone(), Structure::SYMMETRIC);
    let d = diag_exact(&plain, 8).unwrap();
    assert_eq!(d.matvecs, 37);
    let want: Vec<f64> = (0..37).map(|i| a[(i, i)]).collect();
    assert!(vec_rel_err(&d.values, &want) < 1e-14);
    let t = trace_exact(&plain, 5).unwrap();
    assert!((t.value - want.iter().sum::<f64>()).abs() < 1e-12);
    // with structure: no matvecs
    let dense = DenseOp::with_structure(a.clone(), Structure::SYMMETRIC);
    let t2 = trace_exact(&dense, 5).unwrap();
    assert_eq!(t2.matvecs, 0);
    assert!((t2.value - t.value).abs() < 1e-12);
    // low rank: xtrace with more probes than the rank is exact
    let u = randn(&mut rng, 50, 3);
    let lr = LowRankOp::new(u, vec![1.0, 2.0, 3.0]).unwrap();
    let tr = lr.trace().unwrap();
    let e = trace_xtrace(&lr, 20, &EstimatorOptions::default()).unwrap();
    assert!((e.value - tr).abs() < 1e-8 * tr, "{} vs {tr}", e.value);
    let dd = diag_xdiag(&lr, 20, &EstimatorOptions::default()).unwrap();
    assert!(vec_rel_err(&dd.values, &lr.diagonal().unwrap()) < 1e-8);
    // f32
    let af = Mat::<f32>::from_fn(37, 37, |i, j| a[(i, j)] as f32);
    let opf = DenseOp::with_structure(af, Structure::SYMMETRIC);
    let e = trace_xtrace(&opf, 40, &EstimatorOptions::default()).unwrap();
    let se = e.std_err.unwrap();
    assert!((e.value - t.value).abs() < 4.0 * se + 1e-3 * fro(a.as_ref()), "{} vs {} (se {se})", e.value, t.value);
    let d = diag_hutchinson(&opf, 10, &EstimatorOptions::default()).unwrap();
    assert_eq!(d.values.len(), 37);
}
