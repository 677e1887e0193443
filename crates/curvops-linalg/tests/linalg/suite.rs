//! One generic suite run on every structured operator against its dense matrix.

use crate::common::*;
use curvops_linalg::*;
use curvops_tensor::rng::Rng;
use faer::Mat;

/// Which exact operations an operator must offer (others may still be offered; whatever is
/// offered is checked).
#[derive(Clone, Copy, Debug, Default)]
struct Offers {
    trace: bool,
    diagonal: bool,
    logdet: bool,
    solve: bool,
    shifted: bool,
    eigh: bool,
}

const NONE: Offers = Offers { trace: false, diagonal: false, logdet: false, solve: false, shifted: false, eigh: false };
const TD: Offers = Offers { trace: true, diagonal: true, ..NONE };
const ALL: Offers = Offers { trace: true, diagonal: true, logdet: true, solve: true, shifted: true, eigh: true };

const TOL: f64 = 1e-10;

fn require<V>(what: &str, name: &str, offered: bool, r: &Result<V, LinalgError>, op: &dyn LinearOperator<f64>) {
    match r {
        Ok(_) => {}
        Err(LinalgError::Unsupported { operator, .. }) => {
            assert!(!offered, "{name}: {what} should be offered, got {:?}", r.as_ref().err());
            // the operator at fault: this one or a part of it
            assert!(
                op.describe().contains(operator.as_str()),
                "{name}: Unsupported must name the operator: {operator}"
            );
        }
        Err(LinalgError::Dimension(_)) if op.nrows() != op.ncols() => assert!(!offered),
        Err(e) => panic!("{name}: {what}: unexpected error {e}"),
    }
}

/// The shared suite: `op` against its dense matrix `r`.
fn check(name: &str, op: &dyn LinearOperator<f64>, r: &Mat<f64>, offers: Offers, rng: &mut Rng) {
    let (m, n) = (r.nrows(), r.ncols());
    assert_eq!((op.nrows(), op.ncols()), (m, n), "{name}: shape");
    let scale = fro(r.as_ref()).max(1e-300);

    // apply on a random block
    let x = randn(rng, n, 3);
    let mut y = Mat::<f64>::zeros(m, 3);
    op.apply(y.as_mut(), x.as_ref()).unwrap();
    let e = rel_err(y.as_ref(), (r * &x).as_ref());
    assert!(e < TOL, "{name}: apply rel err {e:e}");
    let e = rel_err(op.to_dense().unwrap().as_ref(), r.as_ref());
    assert!(e < TOL, "{name}: to_dense rel err {e:e}");
    let v = op.apply_vec(&x.col(0).iter().copied().collect::<Vec<_>>()).unwrap();
    let e = vec_rel_err(&v, &y.col(0).iter().copied().collect::<Vec<_>>());
    assert!(e < TOL, "{name}: apply_vec rel err {e:e}");

    // adjoint identity ⟨u, A v⟩ = ⟨Aᵀ u, v⟩ and the transpose against rᵀ
    if op.has_transpose() {
        let u = randn(rng, m, 2);
        let mut at = Mat::<f64>::zeros(n, 2);
        op.apply_transpose(at.as_mut(), u.as_ref()).unwrap();
        let e = rel_err(at.as_ref(), (r.transpose() * &u).as_ref());
        assert!(e < TOL, "{name}: apply_transpose rel err {e:e}");
        let mut av = Mat::<f64>::zeros(m, 2);
        op.apply(av.as_mut(), x.as_ref().subcols(0, 2)).unwrap();
        for j in 0..2 {
            let lhs: f64 = (0..m).map(|i| u[(i, j)] * av[(i, j)]).sum();
            let rhs: f64 = (0..n).map(|i| at[(i, j)] * x[(i, j)]).sum();
            assert!((lhs - rhs).abs() <= TOL * scale * 10.0, "{name}: adjoint identity {lhs} vs {rhs}");
        }
    } else {
        let mut at = Mat::<f64>::zeros(n, 1);
        assert!(op.apply_transpose(at.as_mut(), Mat::<f64>::zeros(m, 1).as_ref()).is_err());
    }

    // structure tags
    let s = op.structure();
    if s.psd {
        assert!(s.symmetric, "{name}: psd implies symmetric");
    }
    if s.symmetric {
        assert_eq!(m, n, "{name}: symmetric but not square");
        let e = rel_err(r.transpose().to_owned().as_ref(), r.as_ref());
        assert!(e < 1e-12, "{name}: tagged symmetric, asymmetry {e:e}");
    }
    let eigs = if m == n && s.symmetric { Some(sym_eigs(r.as_ref())) } else { None };
    if s.psd {
        let min = *eigs.as_ref().unwrap().last().unwrap();
        assert!(min >= -1e-10 * scale, "{name}: tagged PSD, min eigenvalue {min:e}");
    }

    // exact operations
    let tr = op.trace();
    require("trace", name, offers.trace, &tr, op);
    if let Ok(t) = tr {
        let want: f64 = (0..n).map(|i| r[(i, i)]).sum();
        assert!((t - want).abs() <= TOL * scale.max(want.abs()), "{name}: trace {t} vs {want}");
    }
    let d = op.diagonal();
    require("diagonal", name, offers.diagonal, &d, op);
    if let Ok(d) = d {
        let want: Vec<f64> = (0..n).map(|i| r[(i, i)]).collect();
        assert!(vec_rel_err(&d, &want) < TOL, "{name}: diagonal");
    }
    let ld = op.logdet();
    if !matches!(ld, Err(LinalgError::Singular(_))) {
        require("logdet", name, offers.logdet, &ld, op);
    }
    if let Ok(l) = ld {
        let want = lu_logdet(r.as_ref());
        assert!((l - want).abs() <= TOL * want.abs().max(n as f64), "{name}: logdet {l} vs {want}");
    }
    let b = randn(rng, m, 2);
    let mut xs = Mat::<f64>::zeros(n, 2);
    let sv = op.solve(xs.as_mut(), b.as_ref());
    if !matches!(sv, Err(LinalgError::Singular(_))) {
        require("solve", name, offers.solve, &sv, op);
    }
    if sv.is_ok() {
        let want = lu_solve(r.as_ref(), b.as_ref());
        let e = rel_err(xs.as_ref(), want.as_ref());
        assert!(e < 1e-9, "{name}: solve rel err {e:e}");
    }
    // shifted (damping): a positive shift for PSD operators, an arbitrary one otherwise
    if m == n {
        let sh = if s.psd { 0.3 } else { 0.37 };
        let rs = shifted(r.as_ref(), sh);
        let ld = op.logdet_shifted(sh);
        require("logdet_shifted", name, offers.shifted, &ld, op);
        if let Ok(l) = ld {
            let want = lu_logdet(rs.as_ref());
            assert!((l - want).abs() <= TOL * want.abs().max(n as f64), "{name}: logdet_shifted {l} vs {want}");
        }
        let sv = op.solve_shifted(sh, xs.as_mut(), b.as_ref());
        require("solve_shifted", name, offers.shifted, &sv, op);
        if sv.is_ok() {
            let want = lu_solve(rs.as_ref(), b.as_ref());
            let e = rel_err(xs.as_ref(), want.as_ref());
            assert!(e < 1e-9, "{name}: solve_shifted rel err {e:e}");
        }
    }
    let eh = op.eigh();
    if !matches!(eh, Err(LinalgError::Structure { .. })) {
        require("eigh", name, offers.eigh, &eh, op);
    } else {
        assert!(!s.symmetric && !offers.eigh, "{name}: eigh refused a symmetric operator");
    }
    if let Ok(e) = eh {
        let want = eigs.expect("eigh offered for a non-symmetric operator");
        let got = e.all_values();
        let big = want.iter().fold(0.0f64, |a, &b| a.max(b.abs())).max(1e-300);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= TOL * big, "{name}: eigenvalue {g} vs {w}");
        }
        let er = rel_err(e.to_dense().as_ref(), r.as_ref());
        assert!(er < TOL, "{name}: eigh reconstruction {er:e}");
        let vtv = e.vectors.transpose() * &e.vectors;
        let er = rel_err(vtv.as_ref(), Mat::<f64>::identity(e.rank(), e.rank()).as_ref());
        assert!(er < TOL, "{name}: eigenvectors not orthonormal {er:e}");
    }
}

fn sizes(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + rng.below((hi - lo + 1) as u64) as usize
}

#[test]
fn dense_operators() {
    let mut rng = Rng::new(1);
    for _ in 0..3 {
        let (m, n) = (sizes(&mut rng, 3, 9), sizes(&mut rng, 3, 9));
        let g = randn(&mut rng, m, n);
        let offers = if m == n { ALL } else { NONE };
        let offers = Offers { eigh: false, ..offers };
        check("dense general", &DenseOp::new(g.clone()), &g, offers, &mut rng);
        let n = sizes(&mut rng, 2, 12);
        let g = rand_general(&mut rng, n);
        check("dense square", &DenseOp::new(g.clone()), &g, Offers { eigh: false, ..ALL }, &mut rng);
        let a = rand_spd(&mut rng, n);
        check("dense spd", &DenseOp::with_structure(a.clone(), Structure::PSD), &a, ALL, &mut rng);
        let a = rand_sym_indef(&mut rng, n);
        check("dense sym", &DenseOp::with_structure(a.clone(), Structure::SYMMETRIC), &a, ALL, &mut rng);
    }
}

#[test]
fn identity_diagonal_lowrank() {
    let mut rng = Rng::new(2);
    for _ in 0..3 {
        let n = sizes(&mut rng, 1, 10);
        check("identity", &IdentityOp::new(n), &Mat::identity(n, n), ALL, &mut rng);
        let d: Vec<f64> = (0..n).map(|_| 0.2 + rng.uniform()).collect();
        let dm = Mat::from_fn(n, n, |i, j| if i == j { d[i] } else { 0.0 });
        check("diagonal psd", &DiagonalOp::new(d), &dm, ALL, &mut rng);
        let d: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let dm = Mat::from_fn(n, n, |i, j| if i == j { d[i] } else { 0.0 });
        check("diagonal signed", &DiagonalOp::new(d), &dm, ALL, &mut rng);

        let n = sizes(&mut rng, 4, 12);
        let r = sizes(&mut rng, 1, n - 1);
        let u = randn(&mut rng, n, r);
        for signed in [false, true] {
            let l: Vec<f64> =
                (0..r).map(|i| (0.5 + rng.uniform()) * if signed && i % 2 == 1 { -1.0 } else { 1.0 }).collect();
            let op = LowRankOp::new(u.clone(), l.clone()).unwrap();
            let ul = Mat::from_fn(n, r, |i, j| u[(i, j)] * l[j]);
            let dense = symmetrize((&ul * u.transpose()).as_ref());
            // rank r < n: logdet/solve are singular, the shifted ones exact
            check("low rank", &op, &dense, Offers { logdet: false, solve: false, ..ALL }, &mut rng);
            assert!(matches!(op.logdet(), Err(LinalgError::Singular(_))));
            let damped = DampedOp::new(&op, 0.5).unwrap();
            check("low rank + λI", &damped, &shifted(dense.as_ref(), 0.5), ALL, &mut rng);
        }
        // full rank with repeated columns (rank-deficient U, r > n)
        let u = randn(&mut rng, n, n + 2);
        let l: Vec<f64> = (0..n + 2).map(|_| 0.1 + rng.uniform()).collect();
        let ul = Mat::from_fn(n, n + 2, |i, j| u[(i, j)] * l[j]);
        let dense = symmetrize((&ul * u.transpose()).as_ref());
        check("low rank r > n", &LowRankOp::new(u, l).unwrap(), &dense, ALL, &mut rng);
    }
}

#[test]
fn sum_scale_compose_transpose_damp() {
    let mut rng = Rng::new(3);
    for _ in 0..3 {
        let n = sizes(&mut rng, 2, 10);
        let (a, b) = (rand_spd(&mut rng, n), rand_sym_indef(&mut rng, n));
        let (oa, ob) = (
            DenseOp::with_structure(a.clone(), Structure::PSD),
            DenseOp::with_structure(b.clone(), Structure::SYMMETRIC),
        );
        let sum = SumOp::new(&oa, &ob).unwrap();
        assert_eq!(sum.structure(), Structure::SYMMETRIC);
        check("sum", &sum, &(&a + &b), TD, &mut rng);
        let d: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
        let dm = Mat::from_fn(n, n, |i, j| if i == j { d[i] } else { 0.0 });
        let sum2 = SumOp::new(&oa, DiagonalOp::new(d)).unwrap();
        assert_eq!(sum2.structure(), Structure::PSD);
        check("sum psd", &sum2, &(&a + &dm), TD, &mut rng);

        for c in [2.5, -0.7] {
            let sc = ScaledOp::new(&oa, c);
            assert_eq!(sc.structure().psd, c > 0.0);
            let want = Mat::from_fn(n, n, |i, j| c * a[(i, j)]);
            check("scaled", &sc, &want, ALL, &mut rng);
        }
        let sc0 = ScaledOp::new(&oa, 0.0);
        check("scaled by 0", &sc0, &Mat::zeros(n, n), Offers { logdet: false, solve: false, ..ALL }, &mut rng);

        let (m, k) = (sizes(&mut rng, 2, 8), sizes(&mut rng, 2, 8));
        let (g1, g2) = (randn(&mut rng, m, k), randn(&mut rng, k, n));
        let comp = ComposeOp::new(DenseOp::new(g1.clone()), DenseOp::new(g2.clone())).unwrap();
        check("compose rect", &comp, &(&g1 * &g2), NONE, &mut rng);
        let (s1, s2) = (rand_general(&mut rng, n), rand_general(&mut rng, n));
        let comp = ComposeOp::new(DenseOp::new(s1.clone()), DenseOp::new(s2.clone())).unwrap();
        check("compose square", &comp, &(&s1 * &s2), Offers { logdet: true, solve: true, ..NONE }, &mut rng);
        let gram = ComposeOp::new(TransposeOp::new(DenseOp::new(g2.clone())).unwrap(), DenseOp::new(g2.clone()))
            .unwrap()
            .with_structure(Structure::PSD);
        check("gram (declared psd)", &gram, &symmetrize((g2.transpose() * &g2).as_ref()), NONE, &mut rng);

        let t = TransposeOp::new(DenseOp::new(g1.clone())).unwrap();
        check("transpose rect", &t, &g1.transpose().to_owned(), NONE, &mut rng);
        let t = TransposeOp::new(DenseOp::new(s1.clone())).unwrap();
        check(
            "transpose square",
            &t,
            &s1.transpose().to_owned(),
            Offers { trace: true, diagonal: true, logdet: true, ..NONE },
            &mut rng,
        );
        let t = TransposeOp::new(&oa).unwrap();
        check("transpose sym", &t, &a, ALL, &mut rng);

        let dmp = DampedOp::new(&ob, 0.25).unwrap();
        check("damped sym", &dmp, &shifted(b.as_ref(), 0.25), ALL, &mut rng);
        let dmp = DampedOp::new(DenseOp::new(s1.clone()), -0.5).unwrap();
        check("damped general", &dmp, &shifted(s1.as_ref(), -0.5), Offers { eigh: false, ..ALL }, &mut rng);
    }
}

#[test]
fn block_diagonal() {
    let mut rng = Rng::new(4);
    for _ in 0..3 {
        // mixed PSD blocks: dense, diagonal, low rank + λI, and a low-rank + diagonal sum
        let (n1, n2, n3, n4) =
            (sizes(&mut rng, 1, 5), sizes(&mut rng, 1, 5), sizes(&mut rng, 3, 6), sizes(&mut rng, 2, 5));
        let a = rand_spd(&mut rng, n1);
        let d: Vec<f64> = (0..n2).map(|_| 0.3 + rng.uniform()).collect();
        let u = randn(&mut rng, n3, 2);
        let lr = LowRankOp::new(u.clone(), vec![1.5, 0.5]).unwrap();
        let lrd = (&Mat::from_fn(n3, 2, |i, j| u[(i, j)] * [1.5, 0.5][j]) * u.transpose()).to_owned();
        let u4 = randn(&mut rng, n4, 1);
        let d4: Vec<f64> = (0..n4).map(|_| 0.3 + rng.uniform()).collect();
        let lr4 = LowRankOp::new(u4.clone(), vec![2.0]).unwrap();
        let blocks: Vec<Box<dyn LinearOperator<f64>>> = vec![
            Box::new(DenseOp::with_structure(a.clone(), Structure::PSD)),
            Box::new(DiagonalOp::new(d.clone())),
            Box::new(DampedOp::new(lr.clone(), 0.4).unwrap()),
        ];
        let op = BlockDiagOp::new(blocks);
        let n = n1 + n2 + n3;
        let mut want = Mat::<f64>::zeros(n, n);
        want.as_mut().submatrix_mut(0, 0, n1, n1).copy_from(&a);
        for i in 0..n2 {
            want[(n1 + i, n1 + i)] = d[i];
        }
        want.as_mut()
            .submatrix_mut(n1 + n2, n1 + n2, n3, n3)
            .copy_from(shifted(symmetrize(lrd.as_ref()).as_ref(), 0.4));
        assert_eq!(op.structure(), Structure::PSD);
        check("blockdiag mixed", &op, &want, ALL, &mut rng);

        // block diagonal of (low rank + diagonal): trace and diagonal only
        let sum = SumOp::new(lr4.clone(), DiagonalOp::new(d4.clone())).unwrap();
        let op2 = BlockDiagOp::new(vec![sum.boxed(), Box::new(lr.clone())]);
        let mut want2 = Mat::<f64>::zeros(n4 + n3, n4 + n3);
        let l4 = symmetrize((&Mat::from_fn(n4, 1, |i, _| 2.0 * u4[(i, 0)]) * u4.transpose()).as_ref());
        let l4 = Mat::from_fn(n4, n4, |i, j| l4[(i, j)] + if i == j { d4[i] } else { 0.0 });
        want2.as_mut().submatrix_mut(0, 0, n4, n4).copy_from(&l4);
        want2.as_mut().submatrix_mut(n4, n4, n3, n3).copy_from(symmetrize(lrd.as_ref()));
        check("blockdiag of lowrank+diag", &op2, &want2, TD, &mut rng);

        // two low-rank blocks (partial eigendecompositions with a common complement) + λI
        let lr_b = LowRankOp::new(randn(&mut rng, 4, 1), vec![0.7]).unwrap();
        let op3 = BlockDiagOp::new(vec![lr.clone(), lr_b.clone()]);
        let w3 = {
            let (d1, d2) = (lr.to_dense().unwrap(), lr_b.to_dense().unwrap());
            let mut w = Mat::<f64>::zeros(n3 + 4, n3 + 4);
            w.as_mut().submatrix_mut(0, 0, n3, n3).copy_from(symmetrize(d1.as_ref()));
            w.as_mut().submatrix_mut(n3, n3, 4, 4).copy_from(symmetrize(d2.as_ref()));
            w
        };
        check("blockdiag low rank", &op3, &w3, Offers { logdet: false, solve: false, ..ALL }, &mut rng);
        check("blockdiag low rank + λI", &DampedOp::new(&op3, 0.2).unwrap(), &shifted(w3.as_ref(), 0.2), ALL, &mut rng);
        // identity (complement 1) next to low rank (complement 0): completed
        let op4 = BlockDiagOp::new(vec![IdentityOp::new(3).boxed(), lr_b.clone().boxed()]);
        let mut w4 = Mat::<f64>::zeros(7, 7);
        w4.as_mut().submatrix_mut(0, 0, 3, 3).copy_from(Mat::<f64>::identity(3, 3));
        w4.as_mut().submatrix_mut(3, 3, 4, 4).copy_from(symmetrize(lr_b.to_dense().unwrap().as_ref()));
        check("blockdiag identity + low rank", &op4, &w4, Offers { logdet: false, solve: false, ..ALL }, &mut rng);

        // rectangular blocks
        let (g1, g2) = (randn(&mut rng, 2, 3), randn(&mut rng, 4, 1));
        let op5 = BlockDiagOp::new(vec![DenseOp::new(g1.clone()), DenseOp::new(g2.clone())]);
        let mut w5 = Mat::<f64>::zeros(6, 4);
        w5.as_mut().submatrix_mut(0, 0, 2, 3).copy_from(&g1);
        w5.as_mut().submatrix_mut(2, 3, 4, 1).copy_from(&g2);
        check("blockdiag rectangular", &op5, &w5, NONE, &mut rng);
    }
}

#[test]
fn kronecker() {
    let mut rng = Rng::new(5);
    for _ in 0..3 {
        let (n1, n2) = (sizes(&mut rng, 1, 6), sizes(&mut rng, 1, 6));
        let (a, b) = (rand_spd(&mut rng, n1), rand_spd(&mut rng, n2));
        let k = KronOp::new(
            DenseOp::with_structure(a.clone(), Structure::PSD),
            DenseOp::with_structure(b.clone(), Structure::PSD),
        );
        let kd = kron_dense(a.as_ref(), b.as_ref());
        assert_eq!(k.structure(), Structure::PSD);
        check("kron spd", &k, &kd, ALL, &mut rng);
        check("kron + λI", &DampedOp::new(&k, 0.1).unwrap(), &shifted(kd.as_ref(), 0.1), ALL, &mut rng);
        check(
            "2·(kron + λI)",
            &ScaledOp::new(DampedOp::new(&k, 0.1).unwrap(), 2.0),
            &Mat::from_fn(n1 * n2, n1 * n2, |i, j| 2.0 * shifted(kd.as_ref(), 0.1)[(i, j)]),
            ALL,
            &mut rng,
        );

        // the row-major vec convention: (A ⊗ B) vec(X) = vec(A X Bᵀ)
        let x = randn(&mut rng, n1, n2);
        let xv: Vec<f64> = (0..n1 * n2).map(|i| x[(i / n2, i % n2)]).collect();
        let y = k.apply_vec(&xv).unwrap();
        let axb = &a * &x * b.transpose();
        for i in 0..n1 * n2 {
            assert!((y[i] - axb[(i / n2, i % n2)]).abs() < 1e-12 * fro(axb.as_ref()));
        }

        // indefinite symmetric factors, shifted
        let (s1, s2) = (rand_sym_indef(&mut rng, n1), rand_sym_indef(&mut rng, n2));
        let k2 = KronOp::new(
            DenseOp::with_structure(s1.clone(), Structure::SYMMETRIC),
            DenseOp::with_structure(s2.clone(), Structure::SYMMETRIC),
        );
        check("kron sym", &k2, &kron_dense(s1.as_ref(), s2.as_ref()), ALL, &mut rng);

        // rectangular general factors
        let (m1, m2) = (sizes(&mut rng, 1, 5), sizes(&mut rng, 1, 5));
        let (g1, g2) = (randn(&mut rng, m1, n1), randn(&mut rng, m2, n2));
        let k3 = KronOp::new(DenseOp::new(g1.clone()), DenseOp::new(g2.clone()));
        let offers = if m1 == n1 && m2 == n2 { Offers { trace: true, diagonal: true, ..NONE } } else { NONE };
        let _ = offers;
        check("kron rect", &k3, &kron_dense(g1.as_ref(), g2.as_ref()), NONE, &mut rng);
        let t = TransposeOp::new(&k3).unwrap();
        check("(kron rect)ᵀ", &t, &kron_dense(g1.as_ref(), g2.as_ref()).transpose().to_owned(), NONE, &mut rng);
        // general square factors: exact unshifted solve/logdet from the factors' LU
        let (q1, q2) = (rand_general(&mut rng, n1), rand_general(&mut rng, n2));
        let k4 = KronOp::new(DenseOp::new(q1.clone()), DenseOp::new(q2.clone()));
        check(
            "kron general square",
            &k4,
            &kron_dense(q1.as_ref(), q2.as_ref()),
            Offers { trace: true, diagonal: true, logdet: true, solve: true, ..NONE },
            &mut rng,
        );

        // structured factors: diagonal ⊗ (low rank + λI), and (kron) ⊗ identity
        let d: Vec<f64> = (0..n1).map(|_| 0.5 + rng.uniform()).collect();
        let u = randn(&mut rng, n2, 1);
        let f2 = DampedOp::new(LowRankOp::new(u.clone(), vec![1.0]).unwrap(), 0.3).unwrap();
        let k5 = KronOp::new(DiagonalOp::new(d.clone()), &f2);
        let dm = Mat::from_fn(n1, n1, |i, j| if i == j { d[i] } else { 0.0 });
        let kd5 = kron_dense(dm.as_ref(), symmetrize(f2.to_dense().unwrap().as_ref()).as_ref());
        check("diag ⊗ (low rank + λI)", &k5, &kd5, ALL, &mut rng);
        check(
            "(diag ⊗ (low rank + λI)) + λI",
            &DampedOp::new(&k5, 0.05).unwrap(),
            &shifted(kd5.as_ref(), 0.05),
            ALL,
            &mut rng,
        );
        let k6 = KronOp::new(&k, IdentityOp::new(2));
        check("kron ⊗ identity", &k6, &kron_dense(kd.as_ref(), Mat::<f64>::identity(2, 2).as_ref()), ALL, &mut rng);
    }
}

#[test]
fn submatrices_and_restrictions() {
    let mut rng = Rng::new(6);
    for _ in 0..3 {
        let n = sizes(&mut rng, 4, 12);
        let (a, b) = (rand_spd(&mut rng, n), rand_spd(&mut rng, n));
        let sum = SumOp::new(
            DenseOp::with_structure(a.clone(), Structure::PSD),
            DenseOp::with_structure(b.clone(), Structure::PSD),
        )
        .unwrap();
        let s = &a + &b;
        // principal, with a repeated index and arbitrary order
        let mut idx = rng.permutation(n);
        idx.truncate(n / 2 + 1);
        idx.push(idx[0]);
        let sub = SubmatrixOp::principal(&sum, idx.clone()).unwrap();
        let want = Mat::from_fn(idx.len(), idx.len(), |i, j| s[(idx[i], idx[j])]);
        assert_eq!(sub.structure(), Structure::PSD);
        check("principal submatrix of a sum", &sub, &want, TD, &mut rng);
        let sub_distinct = SubmatrixOp::principal(&sum, idx[..idx.len() - 1].to_vec()).unwrap();
        let dn = DenseOp::from_operator(&sub_distinct).unwrap();
        let want_d = Mat::from_fn(idx.len() - 1, idx.len() - 1, |i, j| s[(idx[i], idx[j])]);
        check("dense of a submatrix", &dn, &want_d, ALL, &mut rng);
        // with the repeated index the dense submatrix is singular: Cholesky says so
        let dn = DenseOp::from_operator(&sub).unwrap();
        let mut xx = Mat::<f64>::zeros(idx.len(), 1);
        let err = dn.solve(xx.as_mut(), Mat::<f64>::ones(idx.len(), 1).as_ref()).unwrap_err();
        assert!(matches!(err, LinalgError::Singular(_) | LinalgError::NotPositiveDefiniteAt { .. }), "{err}");
        // arbitrary rows / cols
        let rows: Vec<usize> = (0..3).map(|_| rng.below(n as u64) as usize).collect();
        let cols: Vec<usize> = (0..5).map(|_| rng.below(n as u64) as usize).collect();
        let sub = SubmatrixOp::new(&sum, rows.clone(), cols.clone()).unwrap();
        let want = Mat::from_fn(3, 5, |i, j| s[(rows[i], cols[j])]);
        check("submatrix of a sum", &sub, &want, NONE, &mut rng);
        let g = randn(&mut rng, n, n + 2);
        let sub = SubmatrixOp::new(DenseOp::new(g.clone()), rows.clone(), cols.clone()).unwrap();
        check("submatrix of a rectangular", &sub, &Mat::from_fn(3, 5, |i, j| g[(rows[i], cols[j])]), NONE, &mut rng);
        assert!(SubmatrixOp::new(DenseOp::new(g.clone()), vec![n], vec![0]).is_err());

        // block restriction: one application for all blocks
        let sizes_v = [n / 3, n - n / 3 - 1, 1];
        let counted = CountingOp::new(&sum);
        let br = BlockRestrictOp::new(&counted, &sizes_v).unwrap();
        let mut want = Mat::<f64>::zeros(n, n);
        let mut o = 0;
        for &sz in &sizes_v {
            for i in o..o + sz {
                for j in o..o + sz {
                    want[(i, j)] = s[(i, j)];
                }
            }
            o += sz;
        }
        let mut y = Mat::<f64>::zeros(n, 2);
        br.apply(y.as_mut(), randn(&mut rng, n, 2).as_ref()).unwrap();
        assert_eq!(counted.count(), 2 * 3, "one block of K·L columns");
        check("block restriction", &br, &want, TD, &mut rng);
        let bd = br.to_dense_blocks::<f64>().unwrap();
        check("block restriction, dense blocks", &bd, &want, ALL, &mut rng);
    }
}

#[test]
fn unsupported_and_not_pd_messages() {
    let mut rng = Rng::new(7);
    let a = rand_spd(&mut rng, 4);
    let sum = SumOp::new(DenseOp::new(a.clone()), DenseOp::new(a.clone())).unwrap();
    let err = sum.logdet().unwrap_err();
    assert_eq!(err.to_string(), "logdet is not available for (dense 4x4) + (dense 4x4)");
    let err = sum.solve_shifted(0.1, Mat::zeros(4, 1).as_mut(), Mat::zeros(4, 1).as_ref()).unwrap_err();
    assert!(err.to_string().contains("solve with A + λI is not available for (dense 4x4) + (dense 4x4)"), "{err}");
    // eigh of a non-symmetric dense operator is a structure error
    assert!(matches!(DenseOp::new(a.clone()).eigh(), Err(LinalgError::Structure { needed: "symmetric", .. })));
    // Cholesky on a PSD-tagged matrix that is not positive definite names the column
    let mut bad = a.clone();
    bad[(2, 2)] = -5.0;
    let op = DenseOp::with_structure(bad, Structure::PSD);
    let mut x = Mat::<f64>::zeros(4, 1);
    let err = op.solve(x.as_mut(), Mat::<f64>::ones(4, 1).as_ref()).unwrap_err();
    match &err {
        LinalgError::NotPositiveDefiniteAt { column, iteration: None, .. } => assert!(*column <= 2),
        e => panic!("unexpected {e}"),
    }
    assert!(err.to_string().contains("not positive definite at column"), "{err}");
    eprintln!("example message: {err}");
    // positive diagonal, indefinite: the reported pivot is the Schur complement 1 − 2² = −3
    let m = Mat::from_fn(3, 3, |i, j| {
        if i == j {
            1.0
        } else if i + j == 1 {
            2.0
        } else {
            0.0
        }
    });
    let err = DenseOp::with_structure(m, Structure::PSD).logdet().unwrap_err();
    assert_eq!(err.to_string(), "dense 3x3 is not positive definite at column 1: Cholesky pivot = -3.000000e0 <= 0");
    // dimension errors
    assert!(SumOp::new(DenseOp::new(Mat::<f64>::zeros(2, 3)), DenseOp::new(Mat::<f64>::zeros(3, 2))).is_err());
    assert!(DampedOp::new(DenseOp::new(Mat::<f64>::zeros(2, 3)), 1.0).is_err());
    assert!(ComposeOp::new(DenseOp::new(Mat::<f64>::zeros(2, 3)), DenseOp::new(Mat::<f64>::zeros(2, 3))).is_err());
}

#[test]
fn f32_smoke() {
    let mut rng = Rng::new(8);
    let (n1, n2) = (4, 3);
    let (a, b) = (rand_spd(&mut rng, n1), rand_spd(&mut rng, n2));
    let af = Mat::<f32>::from_fn(n1, n1, |i, j| a[(i, j)] as f32);
    let bf = Mat::<f32>::from_fn(n2, n2, |i, j| b[(i, j)] as f32);
    let k = KronOp::new(DenseOp::with_structure(af, Structure::PSD), DenseOp::with_structure(bf, Structure::PSD));
    let kd = kron_dense(a.as_ref(), b.as_ref());
    let damped = DampedOp::new(&k, 0.1f32).unwrap();
    let rhs = Mat::<f32>::from_fn(n1 * n2, 2, |i, j| (i + j) as f32 * 0.1 - 0.3);
    let mut x = Mat::<f32>::zeros(n1 * n2, 2);
    damped.solve(x.as_mut(), rhs.as_ref()).unwrap();
    let want =
        lu_solve(shifted(kd.as_ref(), 0.1).as_ref(), Mat::from_fn(n1 * n2, 2, |i, j| rhs[(i, j)] as f64).as_ref());
    let got = Mat::from_fn(n1 * n2, 2, |i, j| x[(i, j)] as f64);
    assert!(rel_err(got.as_ref(), want.as_ref()) < 1e-4);
    let ld = damped.logdet().unwrap() as f64;
    let want = lu_logdet(shifted(kd.as_ref(), 0.1).as_ref());
    assert!((ld - want).abs() < 1e-4 * want.abs().max(1.0));
    let u = Mat::<f32>::from_fn(6, 2, |i, j| ((i * 3 + j * 7) % 5) as f32 - 2.0);
    let lr = LowRankOp::new(u.clone(), vec![1.0f32, 0.5]).unwrap();
    let t = lr.trace().unwrap();
    let d: f32 = lr.diagonal().unwrap().iter().sum();
    assert!((t - d).abs() < 1e-4 * t.abs());
    let e = DampedOp::new(&lr, 0.2f32).unwrap().eigh().unwrap();
    assert_eq!(e.all_values().len(), 6);
    assert!((e.all_values()[5] - 0.2).abs() < 1e-5);
    let y = DampedOp::new(&lr, 0.2f32).unwrap().apply_vec(&[1.0; 6]).unwrap();
    let mut back = Mat::<f32>::zeros(6, 1);
    DampedOp::new(&lr, 0.2f32).unwrap().solve(back.as_mut(), faer::MatRef::from_column_major_slice(&y, 6, 1)).unwrap();
    for i in 0..6 {
        assert!((back[(i, 0)] - 1.0).abs() < 1e-4);
    }
}
