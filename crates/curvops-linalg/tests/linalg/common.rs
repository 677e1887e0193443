//! Random matrices and dense references for the tests.

use curvops_tensor::rng::Rng;
use faer::linalg::solvers::Solve;
use faer::{Mat, MatRef, Side};

pub fn randn(rng: &mut Rng, m: usize, n: usize) -> Mat<f64> {
    Mat::from_fn(m, n, |_, _| rng.normal())
}

pub fn rand_orth(rng: &mut Rng, n: usize) -> Mat<f64> {
    randn(rng, n, n).qr().compute_Q()
}

/// `Q diag(eigs) Qᵀ` with a random orthogonal `Q`.
pub fn with_eigs(rng: &mut Rng, eigs: &[f64]) -> Mat<f64> {
    let n = eigs.len();
    let q = rand_orth(rng, n);
    let qd = Mat::from_fn(n, n, |i, j| q[(i, j)] * eigs[j]);
    let m = &qd * q.transpose();
    symmetrize(m.as_ref())
}

pub fn symmetrize(m: MatRef<'_, f64>) -> Mat<f64> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| 0.5 * (m[(i, j)] + m[(j, i)]))
}

/// SPD with eigenvalues in [0.5, 3].
pub fn rand_spd(rng: &mut Rng, n: usize) -> Mat<f64> {
    let e: Vec<f64> = (0..n).map(|_| 0.5 + 2.5 * rng.uniform()).collect();
    with_eigs(rng, &e)
}

/// Symmetric indefinite with eigenvalues of magnitude in [0.5, 3], random signs.
pub fn rand_sym_indef(rng: &mut Rng, n: usize) -> Mat<f64> {
    let e: Vec<f64> = (0..n).map(|i| (0.5 + 2.5 * rng.uniform()) * if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
    with_eigs(rng, &e)
}

/// A well-conditioned general square matrix.
pub fn rand_general(rng: &mut Rng, n: usize) -> Mat<f64> {
    let mut g = randn(rng, n, n);
    for i in 0..n {
        g[(i, i)] += 2.0 * (n as f64).sqrt();
    }
    g
}

pub fn kron_dense(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let (m2, n2) = (b.nrows(), b.ncols());
    Mat::from_fn(a.nrows() * m2, a.ncols() * n2, |r, c| a[(r / m2, c / n2)] * b[(r % m2, c % n2)])
}

pub fn fro(m: MatRef<'_, f64>) -> f64 {
    let mut s = 0.0;
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            s += m[(i, j)] * m[(i, j)];
        }
    }
    s.sqrt()
}

/// ‖a − b‖_F / ‖b‖_F (absolute when b = 0).
pub fn rel_err(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()), "shape");
    let d = a - b;
    fro(d.as_ref()) / fro(b).max(1e-300)
}

pub fn vec_rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let n: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    d / n.max(1e-300)
}

/// Eigenvalues of a symmetric matrix, descending.
pub fn sym_eigs(m: MatRef<'_, f64>) -> Vec<f64> {
    let mut v = m.self_adjoint_eigenvalues(Side::Lower).unwrap();
    v.reverse();
    v
}

/// log|det m| and a solve through faer's LU.
pub fn lu_logdet(m: MatRef<'_, f64>) -> f64 {
    let lu = m.partial_piv_lu();
    (0..m.nrows()).map(|i| lu.U()[(i, i)].abs().ln()).sum()
}

pub fn lu_solve(m: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut x = b.to_owned();
    m.partial_piv_lu().solve_in_place(x.as_mut());
    x
}

pub fn shifted(m: MatRef<'_, f64>, s: f64) -> Mat<f64> {
    let mut a = m.to_owned();
    for i in 0..a.nrows() {
        a[(i, i)] += s;
    }
    a
}

pub fn timed<R>(name: &str, f: impl FnOnce() -> R) -> R {
    let t = std::time::Instant::now();
    let r = f();
    eprintln!("[time] {name}: {:.3} s", t.elapsed().as_secs_f64());
    r
}
