//! Helpers shared by the command-line tests: running the binary, reading its `.npy` output,
//! and dense reference algebra.
#![allow(dead_code)]

use faer::Mat;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A reference problem directory (`testdata/reference/NAME`).
pub fn reference(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference").join(name)
}

/// Runs `curvops ARGS`: (exit status, standard output, standard error).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_curvops")).args(args).output().expect("run curvops");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Runs `curvops ARGS`, asserts success and returns its standard output.
pub fn ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "curvops {args:?} failed: {err}");
    out
}

/// Runs `curvops ARGS --json`-style commands and parses the output.
pub fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = ok(args);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Reads a `.npy` file as f64: (shape, values).
pub fn npy(path: &Path) -> (Vec<usize>, Vec<f64>) {
    curvops_nn::io::read_npy::<f64>(path).unwrap()
}

/// `‖a − b‖ / ‖b‖`.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    n / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

/// `m⁻¹ b` by Cholesky.
pub fn chol_solve(m: &Mat<f64>, b: &[f64]) -> Vec<f64> {
    let l = m.llt(faer::Side::Lower).expect("SPD");
    let mut x = Mat::<f64>::from_fn(b.len(), 1, |i, _| b[i]);
    faer::linalg::solvers::SolveCore::solve_in_place_with_conj(&l, faer::Conj::No, x.as_mut());
    (0..b.len()).map(|i| x[(i, 0)]).collect()
}

/// `m + λI`.
pub fn damped(m: &Mat<f64>, lam: f64) -> Mat<f64> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] + if i == j { lam } else { 0.0 })
}

/// `log det m` by Cholesky.
pub fn logdet_spd(m: &Mat<f64>) -> f64 {
    let l = m.llt(faer::Side::Lower).expect("SPD");
    (0..m.nrows()).map(|i| 2.0 * l.L()[(i, i)].ln()).sum()
}
