//! Solvers vs dense solves.

use crate::common::*;
use curvops_linalg::solvers::*;
use curvops_linalg::*;
use curvops_tensor::rng::Rng;
use faer::{Mat, MatMut, MatRef};

/// A matrix with no transpose (to check LSMR's error).
struct NoTranspose(Mat<f64>);
impl LinearOperator<f64> for NoTranspose {
    fn nrows(&self) -> usize {
        self.0.nrows()
    }
    fn ncols(&self) -> usize {
        self.0.ncols()
    }
    fn apply(&self, mut out: MatMut<'_, f64>, rhs: MatRef<'_, f64>) -> Result<(), LinalgError> {
        out.copy_from(&self.0 * rhs);
        Ok(())
    }
}

/// A symmetric positive-definite matrix whose `apply` fails from the `fail_at`-th call on (like
/// an operator whose inner solve or data batch fails), with a transpose.
struct FailingOp {
    a: Mat<f64>,
    fail_at: usize,
    calls: std::sync::atomic::AtomicUsize,
}
impl LinearOperator<f64> for FailingOp {
    fn nrows(&self) -> usize {
        self.a.nrows()
    }
    fn ncols(&self) -> usize {
        self.a.ncols()
    }
    fn structure(&self) -> Structure {
        Structure::PSD
    }
    fn describe(&self) -> String {
        "failing op".into()
    }
    fn apply(&self, mut out: MatMut<'_, f64>, rhs: MatRef<'_, f64>) -> Result<(), LinalgError> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= self.fail_at {
            return Err(LinalgError::inner(self.describe(), "data batch 3 could not be read"));
        }
        out.copy_from(&self.a * rhs);
        Ok(())
    }
}

#[test]
fn apply_errors_propagate_from_solvers() {
    let mut rng = Rng::new(47);
    let n = 20;
    let a = rand_spd(&mut rng, n);
    let b = randn(&mut rng, n, 2);
    let failing = |fail_at| FailingOp { a: a.clone(), fail_at, calls: Default::default() };
    let is_ours = |e: &LinalgError| {
        matches!(e, LinalgError::Inner { operator, source } if operator == "failing op"
            && source.to_string() == "data batch 3 could not be read")
    };
    // CG: the error of the 3rd application comes back as it is, not a NaN solution or a
    // "not positive definite" report
    let err = cg(&failing(2), b.as_ref(), None, &CgOptions::default()).unwrap_err();
    eprintln!("[apply error] cg: {err}");
    assert!(is_ours(&err), "{err}");
    assert!(std::error::Error::source(&err).is_some());
    // likewise for the preconditioner, MINRES, Neumann, LSMR (through faer) and the inverse
    let good = DenseOp::with_structure(a.clone(), Structure::PSD);
    let pre = failing(0);
    let err = cg(&good, b.as_ref(), Some(&pre), &CgOptions::default()).unwrap_err();
    assert!(is_ours(&err), "{err}");
    assert!(is_ours(&minres(&failing(2), b.as_ref(), &MinresOptions::default()).unwrap_err()));
    assert!(is_ours(&neumann(&failing(5), b.as_ref(), &NeumannOptions::default()).unwrap_err()));
    assert!(is_ours(&lsmr(&failing(2), b.as_ref(), &LsmrOptions::default()).unwrap_err()));
    let inv = InverseOp::new(failing(1), SolveMethod::Cg(CgOptions::default())).unwrap();
    let mut y = Mat::<f64>::zeros(n, 1);
    match inv.apply(y.as_mut(), b.as_ref().subcols(0, 1)).unwrap_err() {
        LinalgError::Inner { operator, source } => {
            assert!(operator.starts_with("inverse of failing op"), "{operator}");
            assert!(source.get().downcast_ref::<LinalgError>().is_some_and(is_ours), "{source}");
        }
        e => panic!("expected an inner error, got {e}"),
    }
}

#[test]
fn cg_vs_dense_and_preconditioned() {
    let mut rng = Rng::new(41);
    let n = 120;
    let e: Vec<f64> = (0..n).map(|i| 0.05 + 10.0 * (i as f64 / n as f64).powi(2)).collect();
    let mut a = with_eigs(&mut rng, &e);
    // a strong diagonal to make Jacobi preconditioning matter
    for i in 0..n {
        a[(i, i)] += 20.0 * (i % 7) as f64;
    }
    let op = DenseOp::with_structure(a.clone(), Structure::PSD);
    let mut b = randn(&mut rng, n, 3);
    for i in 0..n {
        b[(i, 1)] = 0.0; // a zero column is solved by x = 0
    }
    let want = lu_solve(a.as_ref(), b.as_ref());
    let opts = CgOptions { tol: 1e-12, ..Default::default() };
    let (x, info) = timed("cg", || cg(&op, b.as_ref(), None, &opts)).unwrap();
    let err = rel_err(x.as_ref(), want.as_ref());
    let jac = DiagonalOp::new((0..n).map(|i| 1.0 / a[(i, i)]).collect());
    let (xp, infop) = cg(&op, b.as_ref(), Some(&jac), &opts).unwrap();
    let errp = rel_err(xp.as_ref(), want.as_ref());
    eprintln!(
        "[cg] n={n}: rel err {err:.2e} ({} iterations, {} matvecs); Jacobi: rel err {errp:.2e} ({} iterations, {} matvecs)",
        info.iterations, info.matvecs, infop.iterations, infop.matvecs
    );
    assert!(err <= 1e-8 && errp <= 1e-8);
    assert!(infop.iterations < info.iterations);
    assert!(info.matvecs <= 2 * info.iterations, "zero column must not be applied");
    assert!(info.rel_residuals.iter().all(|&r| r <= 1e-12));
    // f32 smoke
    let af = Mat::<f32>::from_fn(n, n, |i, j| a[(i, j)] as f32);
    let bf = Mat::<f32>::from_fn(n, 1, |i, _| b[(i, 0)] as f32);
    let (xf, _) = cg(
        &DenseOp::with_structure(af, Structure::PSD),
        bf.as_ref(),
        None,
        &CgOptions { tol: 1e-5, ..Default::default() },
    )
    .unwrap();
    let xf = Mat::from_fn(n, 1, |i, _| xf[(i, 0)] as f64);
    assert!(rel_err(xf.as_ref(), want.as_ref().subcols(0, 1)) < 1e-3);
}

#[test]
fn cg_not_positive_definite_names_column_and_iteration() {
    let mut rng = Rng::new(42);
    // eigenvalues with a negative sum: pᵀAp < 0 already for p = b = Q·1 (column 2)
    let e: Vec<f64> = vec![1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -8.0];
    let q = rand_orth(&mut rng, 8);
    let qd = Mat::from_fn(8, 8, |i, j| q[(i, j)] * e[j]);
    let a = symmetrize((&qd * q.transpose()).as_ref());
    // columns 0 and 1 live in the positive eigenspace: CG is fine there
    let b = Mat::from_fn(8, 3, |i, j| match j {
        0 => q[(i, 0)] + q[(i, 1)],
        1 => q[(i, 2)] - 0.5 * q[(i, 3)],
        _ => (0..8).map(|c| q[(i, c)]).sum(),
    });
    let op = DenseOp::with_structure(a.clone(), Structure::SYMMETRIC);
    let err = cg(&op, b.as_ref(), None, &CgOptions::default()).unwrap_err();
    eprintln!("[cg] not PD: {err}");
    match err {
        LinalgError::NotPositiveDefiniteAt { column, iteration, value, .. } => {
            assert_eq!(column, 2);
            assert_eq!(iteration, Some(0));
            assert!(value <= 0.0);
        }
        e => panic!("unexpected {e}"),
    }
    // a later iteration: one negative eigenvalue hidden behind positive ones
    let e: Vec<f64> = vec![10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, -30.0];
    let qd = Mat::from_fn(8, 8, |i, j| q[(i, j)] * e[j]);
    let a = symmetrize((&qd * q.transpose()).as_ref());
    let b = Mat::from_fn(8, 1, |i, _| (0..7).map(|c| q[(i, c)]).sum::<f64>() + 0.3 * q[(i, 7)]);
    let err =
        cg(&DenseOp::with_structure(a, Structure::SYMMETRIC), b.as_ref(), None, &CgOptions::default()).unwrap_err();
    eprintln!("[cg] not PD (later): {err}");
    assert!(
        matches!(err, LinalgError::NotPositiveDefiniteAt { column: 0, iteration: Some(it), .. } if it >= 1),
        "{err}"
    );
    // an operator that is not tagged symmetric
    assert!(matches!(
        cg(&DenseOp::new(a_spd(&mut rng)), b.as_ref(), None, &CgOptions::default()),
        Err(LinalgError::Structure { .. })
    ));
}

fn a_spd(rng: &mut Rng) -> Mat<f64> {
    rand_spd(rng, 8)
}

#[test]
fn minres_lsmr_neumann_vs_dense() {
    let mut rng = Rng::new(43);
    let n = 100;
    let a = rand_sym_indef(&mut rng, n);
    let b = randn(&mut rng, n, 2);
    let want = lu_solve(a.as_ref(), b.as_ref());
    let op = DenseOp::with_structure(a.clone(), Structure::SYMMETRIC);
    let (x, info) =
        timed("minres", || minres(&op, b.as_ref(), &MinresOptions { tol: 1e-12, ..Default::default() })).unwrap();
    let e = rel_err(x.as_ref(), want.as_ref());
    eprintln!(
        "[minres] indefinite n={n}: rel err {e:.2e}, {} iterations, residuals {:?}",
        info.iterations, info.rel_residuals
    );
    assert!(e <= 1e-8);
    // the reported residual is the true one
    let r = &b - &a * &x;
    for j in 0..2 {
        let tr = fro(r.as_ref().subcols(j, 1)) / fro(b.as_ref().subcols(j, 1));
        assert!((tr - info.rel_residuals[j]).abs() < 1e-10, "{tr} vs {}", info.rel_residuals[j]);
    }
    assert!(minres(&DenseOp::new(a.clone()), b.as_ref(), &MinresOptions::default()).is_err());

    // LSMR: square general, and least squares
    let g = rand_general(&mut rng, n);
    let want = lu_solve(g.as_ref(), b.as_ref());
    let (x, info) = timed("lsmr", || lsmr(&DenseOp::new(g.clone()), b.as_ref(), &LsmrOptions::default())).unwrap();
    let e = rel_err(x.as_ref(), want.as_ref());
    eprintln!("[lsmr] square n={n}: rel err {e:.2e}, {} iterations, {} matvecs", info.iterations, info.matvecs);
    assert!(e <= 1e-8);
    let tall = randn(&mut rng, 150, 40);
    let bt = randn(&mut rng, 150, 1);
    let normal = tall.transpose() * &tall;
    let want = lu_solve(normal.as_ref(), (tall.transpose() * &bt).as_ref());
    let (x, _) = lsmr(&DenseOp::new(tall.clone()), bt.as_ref(), &LsmrOptions::default()).unwrap();
    let e = rel_err(x.as_ref(), want.as_ref());
    eprintln!("[lsmr] least squares 150×40: rel err {e:.2e}");
    assert!(e <= 1e-8);
    assert!(matches!(
        lsmr(&NoTranspose(g.clone()), b.as_ref(), &LsmrOptions::default()),
        Err(LinalgError::Unsupported { .. })
    ));

    // Neumann: SPD with spectrum in [0.5, 2]
    let e: Vec<f64> = (0..60).map(|i| 0.5 + 1.5 * i as f64 / 59.0).collect();
    let s = with_eigs(&mut rng, &e);
    let bs = randn(&mut rng, 60, 2);
    let want = lu_solve(s.as_ref(), bs.as_ref());
    let sop = DenseOp::with_structure(s.clone(), Structure::PSD);
    let (x, info) =
        neumann(&sop, bs.as_ref(), &NeumannOptions { alpha: Some(0.8), terms: 200, tol: Some(1e-12) }).unwrap();
    let err = rel_err(x.as_ref(), want.as_ref());
    eprintln!("[neumann] α = 0.8: rel err {err:.2e}, {} terms", info.iterations);
    assert!(err <= 1e-8);
    let (x, info) = neumann(&sop, bs.as_ref(), &NeumannOptions { alpha: None, terms: 400, tol: Some(1e-12) }).unwrap();
    assert!(rel_err(x.as_ref(), want.as_ref()) <= 1e-8);
    eprintln!("[neumann] α from power iteration: {} terms, {} matvecs", info.iterations, info.matvecs);
    // the truncated series itself: α Σ_{i<k} (I − αA)ⁱ b
    let (x, _) = neumann(&sop, bs.as_ref(), &NeumannOptions { alpha: Some(0.5), terms: 3, tol: None }).unwrap();
    let m = Mat::<f64>::identity(60, 60) - Mat::from_fn(60, 60, |i, j| 0.5 * s[(i, j)]);
    let series = Mat::from_fn(60, 2, |i, j| 0.5 * (&bs + &m * &bs + &m * &m * &bs)[(i, j)]);
    assert!(rel_err(x.as_ref(), series.as_ref()) < 1e-12);
    // divergence when α‖A‖ > 2 (‖A‖ = 2, α = 1.2)
    let err =
        neumann(&sop, bs.as_ref(), &NeumannOptions { alpha: Some(1.2), terms: 500, tol: Some(1e-10) }).unwrap_err();
    eprintln!("[neumann] α‖A‖ = 2.4: {err}");
    assert!(matches!(err, LinalgError::Diverged(_)));
}

#[test]
fn inverse_operators_and_damped_solves() {
    let mut rng = Rng::new(44);
    let n = 30;
    let a = rand_spd(&mut rng, n);
    let lam = 0.3;
    let ad = shifted(a.as_ref(), lam);
    let inv_dense = lu_solve(ad.as_ref(), Mat::<f64>::identity(n, n).as_ref());
    let op = DenseOp::with_structure(a.clone(), Structure::PSD);
    for method in [
        SolveMethod::Exact,
        SolveMethod::Auto,
        SolveMethod::Cg(CgOptions { tol: 1e-13, ..Default::default() }),
        SolveMethod::Minres(MinresOptions { tol: 1e-13, ..Default::default() }),
        SolveMethod::Lsmr(LsmrOptions { tol: 1e-14, ..Default::default() }),
        SolveMethod::Neumann(NeumannOptions { alpha: None, terms: 5000, tol: Some(1e-13) }),
    ] {
        let inv = InverseOp::new(DampedOp::new(&op, lam).unwrap(), method.clone()).unwrap();
        assert_eq!(inv.structure(), Structure::PSD);
        let got = inv.to_dense().unwrap();
        let e = rel_err(got.as_ref(), inv_dense.as_ref());
        eprintln!("[inverse] {}: rel err {e:.2e}, {} matvecs", inv.describe(), inv.matvecs());
        assert!(e < 1e-8, "{method:?}: {e}");
    }
    let inv = InverseOp::new(DampedOp::new(&op, lam).unwrap(), SolveMethod::Exact).unwrap();
    let ld = inv.logdet().unwrap();
    assert!((ld + lu_logdet(ad.as_ref())).abs() < 1e-10);
    let ev = inv.eigh().unwrap().all_values();
    let want = sym_eigs(inv_dense.as_ref());
    assert!(vec_rel_err(&ev, &want) < 1e-10);
    let mut back = Mat::<f64>::zeros(n, 1);
    inv.solve(back.as_mut(), Mat::<f64>::ones(n, 1).as_ref()).unwrap();
    assert!(rel_err(back.as_ref(), (&ad * Mat::<f64>::ones(n, 1)).as_ref()) < 1e-12);
    // a failing solve: an error naming the inverse, with CG's error as its source (no NaN)
    let ind = DenseOp::with_structure(rand_sym_indef(&mut rng, n), Structure::SYMMETRIC);
    let inv = InverseOp::new(&ind, SolveMethod::Cg(CgOptions::default())).unwrap();
    match inv.apply_vec(&vec![1.0; n]).unwrap_err() {
        LinalgError::Inner { operator, source } => {
            assert_eq!(operator, inv.describe());
            let inner = source.get().downcast_ref::<LinalgError>();
            assert!(matches!(inner, Some(LinalgError::NotPositiveDefiniteAt { .. })), "{source}");
        }
        e => panic!("expected an inner error, got {e}"),
    }

    // damped_solve: exact on Kronecker + λI, CG on a plain PSD operator, MINRES on indefinite
    let (a1, b1) = (rand_spd(&mut rng, 5), rand_spd(&mut rng, 6));
    let k = KronOp::new(
        DenseOp::with_structure(a1.clone(), Structure::PSD),
        DenseOp::with_structure(b1.clone(), Structure::PSD),
    );
    let kd = kron_dense(a1.as_ref(), b1.as_ref());
    let g = randn(&mut rng, 30, 1);
    let want = lu_solve(shifted(kd.as_ref(), 0.1).as_ref(), g.as_ref());
    let (x, info) = damped_solve(&k, 0.1, g.as_ref(), &SolveMethod::Auto).unwrap();
    assert_eq!(info.matvecs, 0, "exact path");
    assert!(rel_err(x.as_ref(), want.as_ref()) < 1e-10);
    let plain =
        SumOp::new(DenseOp::with_structure(kd.clone(), Structure::PSD), DiagonalOp::new(vec![0.0; 30])).unwrap();
    let (x, info) = damped_solve(&plain, 0.1, g.as_ref(), &SolveMethod::Auto).unwrap();
    assert!(info.matvecs > 0, "iterative path");
    assert!(rel_err(x.as_ref(), want.as_ref()) < 1e-8);
    let s = rand_sym_indef(&mut rng, 30);
    let plain =
        SumOp::new(DenseOp::with_structure(s.clone(), Structure::SYMMETRIC), DiagonalOp::new(vec![0.0; 30])).unwrap();
    let (x, _) = damped_solve(&plain, 0.1, g.as_ref(), &SolveMethod::Auto).unwrap();
    let want = lu_solve(shifted(s.as_ref(), 0.1).as_ref(), g.as_ref());
    assert!(rel_err(x.as_ref(), want.as_ref()) < 1e-8);
    // Neumann on an indefinite matrix diverges (s has eigenvalues down to −3)
    let err = damped_solve(&plain, 0.1, g.as_ref(), &SolveMethod::Neumann(NeumannOptions::default())).unwrap_err();
    assert!(matches!(err, LinalgError::Diverged(_)), "{err}");
}
