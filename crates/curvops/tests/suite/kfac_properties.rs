//! KFAC / EKFAC properties beyond the curvlinops references (`kfac_reference.rs`):
//!
//! * the classical oracles: on `deep_linear_mse` type-2 KFAC equals the GGN's per-parameter
//!   diagonal blocks (weight and bias separately); for linear layers on a single data point
//!   too;
//! * KFAC with Monte-Carlo labels converges to type-2 KFAC (tolerance from the standard error);
//! * `inverse` equals the dense inverse of the damped matrix in each damping mode;
//! * trace, log-determinant, determinant, Frobenius norm, diagonal, eigendecomposition and
//!   shifted solves equal those of the dense matrix;
//! * save → load round trips are exact; unsupported parameters are errors that name them;
//! * results do not depend on the batch size; f32 agrees with f64.

use crate::common;
use crate::diag_nets;

use crate::common::{rel, sub_block, Reference, GRAPH_PROBLEMS};
use curvops::dense::{dense_curvature, dense_of};
use curvops::kfac::io::{load_factors, save_ekfac, save_kfac, LoadedFactors};
use curvops::kfac::{fit_ekfac, DampingMode, Ekfac, FisherType, Kfac, KfacApprox, KfacError, KfacFactors, KfacOptions};
use curvops::{ActiveSet, Curvature, CurvatureOperator, LinearOperator, Problem, Structure};
use curvops_linalg::DenseOp;
use curvops_nn::data::{Dataset, Targets};
use curvops_nn::loss::{Loss, LossKind, Reduction};
use curvops_nn::spec::BnBuffers;
use curvops_nn::NnError;
use curvops_tensor::rng::Rng;
use faer::Mat;
use std::path::PathBuf;

const TOL: f64 = 1e-10;

/// An operator with its name, Frobenius norm and determinant.
type NamedOp = (&'static str, Box<dyn LinearOperator<f64>>, f64, f64);

fn opts(fisher: FisherType, approx: KfacApprox, joint_bias: bool) -> KfacOptions {
    KfacOptions { fisher, approx, joint_bias, batch_size: 0 }
}

fn type2() -> KfacOptions {
    opts(FisherType::Type2, KfacApprox::Expand, false)
}

fn kfac_problem(name: &str) -> Problem<f64> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/kfac");
    Reference::load_from(&dir, name).0
}

/// The `[rows × cols]` sub-block of a row-major `d × d` matrix.
fn block(m: &[f64], d: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> Vec<f64> {
    rows.flat_map(|i| cols.clone().map(move |j| m[i * d + j])).collect()
}

fn to_mat(m: &[f64], d: usize) -> Mat<f64> {
    Mat::from_fn(d, d, |i, j| m[i * d + j])
}

/// The GGN's diagonal blocks of the parameter tensors equal KFAC's on a deep linear network
/// with MSE (weight and bias separately), batched and unbatched.
#[test]
fn deep_linear_mse_kfac_equals_ggn_blocks() {
    let (p, r) = Reference::load("deep_linear_mse");
    let all = ActiveSet::all(&p.net.layout);
    let d = all.dim;
    let (_, ggn) = r.array("ggn");
    for bs in [0, r.batch_size()] {
        let k = Kfac::fit(&p, &all, &KfacOptions { batch_size: bs, ..type2() }).unwrap();
        let kd = dense_of(&k).unwrap();
        for e in &p.net.layout.entries {
            let rg = e.offset..e.offset + e.len;
            let err = rel(&block(&kd, d, rg.clone(), rg.clone()), &block(&ggn, d, rg.clone(), rg));
            assert!(err < TOL, "{} bs={bs}: KFAC block vs GGN block {err:.3e}", e.name);
        }
    }
}

/// For one data point, a linear layer's GGN blocks are exactly `B ⊗ A` (weight) and `B`
/// (bias), whatever the network and loss.
#[test]
fn single_datum_linear_layers_equal_ggn_blocks() {
    for name in ["mlp_tanh_mse", "mlp_relu_ce_batches", "mlp_sigmoid_bce_sum", "cnn_relu_maxpool_ce"] {
        for i in [0, 2] {
            let (p0, _) = Reference::load(name);
            let p = Problem { data: p0.data.select(&[i]), net: p0.net, theta: p0.theta };
            let all = ActiveSet::all(&p.net.layout);
            let d = all.dim;
            let ggn = dense_curvature(&CurvatureOperator::new(&p, Curvature::Ggn, all.clone(), 0), &|_, _| {});
            let kd = dense_of(&Kfac::fit(&p, &all, &type2()).unwrap()).unwrap();
            for e in &p.net.layout.entries {
                if p.net.layers[e.layer].kind() != "linear" {
                    continue;
                }
                let rg = e.offset..e.offset + e.len;
                let err = rel(&block(&kd, d, rg.clone(), rg.clone()), &block(&ggn, d, rg.clone(), rg));
                assert!(err < TOL, "{name} sample {i} {}: {err:.3e}", e.name);
            }
        }
    }
}

/// KFAC with `M = 1` sampled labels and independent seeds: the mean of `KFAC_mc v` converges
/// to `KFAC_type2 v` (both factors are linear in the gradient statistics, so the estimate is
/// unbiased), within the standard error; a fit with many samples is within 4 standard errors.
#[test]
fn mc_kfac_converges_to_type2() {
    for (kind, reduction) in [
        (LossKind::CrossEntropy, Reduction::Mean),
        (LossKind::Mse, Reduction::Sum),
        (LossKind::BceWithLogits, Reduction::Mean),
    ] {
        let spec = diag_nets::kfac_cnn_spec(Loss { kind, reduction, positions: 1 });
        let p = diag_nets::random_problem::<f64>(&spec, 5, 41, false);
        let all = ActiveSet::all(&p.net.layout);
        let d = all.dim;
        let v: Vec<f64> = (0..d).map(|i| ((i * 7) as f64).sin()).collect();
        let exact = Kfac::fit(&p, &all, &type2()).unwrap().apply_vec(&v).unwrap();
        let s = 1500;
        let mut sum = vec![0.0; d];
        let mut sum2 = vec![0.0; d];
        for seed in 0..s {
            let o = opts(FisherType::Mc { samples: 1, seed }, KfacApprox::Expand, false);
            let f = Kfac::fit(&p, &all, &o).unwrap().apply_vec(&v).unwrap();
            for i in 0..d {
                sum[i] += f[i];
                sum2[i] += f[i] * f[i];
            }
        }
        let mut sd = vec![0.0; d];
        let mut z2 = 0.0;
        let mut used = 0;
        for i in 0..d {
            let mean = sum[i] / s as f64;
            sd[i] = ((sum2[i] / s as f64 - mean * mean) * s as f64 / (s - 1) as f64).max(0.0).sqrt();
            let se = sd[i] / (s as f64).sqrt();
            if se > 1e-12 {
                let z = (mean - exact[i]) / se;
                assert!(z.abs() < 5.0, "{kind:?}: coordinate {i}: z = {z}");
                z2 += z * z;
                used += 1;
            }
        }
        assert!(z2 / (used as f64) < 2.0, "{kind:?}: mean z² = {}", z2 / used as f64);
        let m = 3000;
        let o = opts(FisherType::Mc { samples: m, seed: 12345 }, KfacApprox::Expand, false);
        let fm = Kfac::fit(&p, &all, &o).unwrap().apply_vec(&v).unwrap();
        for i in 0..d {
            let tol = 4.0 * sd[i] / (m as f64).sqrt() + 1e-12;
            assert!((fm[i] - exact[i]).abs() < tol, "{kind:?}: M={m} coordinate {i}: {} vs {}", fm[i], exact[i]);
        }
        // keyed draws: the fit does not depend on the batch size
        let o = opts(FisherType::Mc { samples: 3, seed: 9 }, KfacApprox::Expand, false);
        let a = dense_of(&Kfac::fit(&p, &all, &o).unwrap()).unwrap();
        let b = dense_of(&Kfac::fit(&p, &all, &KfacOptions { batch_size: 2, ..o }).unwrap()).unwrap();
        assert!(rel(&a, &b) < 1e-13, "{kind:?}: MC KFAC depends on the batch size");
    }
}

/// The dense block-diagonal matrix of factors, with `A → A + δ_A I`, `B → B + δ_B I` per layer
/// (`damp(layer) = (δ_A, δ_B)`; a dense block gets `+ δ_B I`, a tied block `Σ_u L_u ⊗ R_u +
/// tied_damp · I`), assembled entry by entry in the parameter layout.
fn dense_from_factors(f: &KfacFactors<f64>, damp: impl Fn(usize) -> (f64, f64), tied_damp: f64) -> Vec<f64> {
    let d = f.dim;
    let mut m = vec![0.0; d * d];
    for (li, l) in f.layers.iter().enumerate() {
        let (da, db) = damp(li);
        let b = |i: usize, j: usize| l.b[(i, j)] + if i == j { db } else { 0.0 };
        let a = |i: usize, j: usize| l.a.as_ref().unwrap()[(i, j)] + if i == j { da } else { 0.0 };
        // (index, column of the slot matrix) of every entry of a slot
        let mut slots: Vec<Vec<(usize, usize, Option<usize>)>> = Vec::new();
        let w = l.weight.as_ref().map(|p| p.offset);
        let bi = l.bias.as_ref().map(|p| p.offset);
        let weight_entries = |w: usize| -> Vec<(usize, usize, Option<usize>)> {
            (0..l.out)
                .flat_map(|o| {
                    (0..l.inp).map(move |c| {
                        let idx = if l.transposed { w + c * l.out + o } else { w + o * l.inp + c };
                        (idx, o, Some(c))
                    })
                })
                .collect()
        };
        if l.joint {
            let mut v = weight_entries(w.unwrap());
            v.extend((0..l.out).map(|o| (bi.unwrap() + o, o, Some(l.inp))));
            slots.push(v);
        } else {
            if let Some(w) = w {
                slots.push(weight_entries(w));
            }
            if let Some(bi) = bi {
                slots.push((0..l.out).map(|o| (bi + o, o, None)).collect());
            }
        }
        for s in slots {
            for &(i, oi, ci) in &s {
                for &(j, oj, cj) in &s {
                    let av = match (ci, cj) {
                        (Some(ci), Some(cj)) => a(ci, cj),
                        _ => 1.0,
                    };
                    m[i * d + j] = b(oi, oj) * av;
                }
            }
        }
    }
    for t in &f.tied {
        let (rows, cols, off) = (t.rows, t.cols, t.param.offset);
        for u in &t.uses {
            let (l, r) = u.left_right();
            for i in 0..rows {
                for k in 0..rows {
                    for j in 0..cols {
                        for jj in 0..cols {
                            let rv = r.map_or(1.0, |r| r[(j, jj)]);
                            m[(off + i * cols + j) * d + off + k * cols + jj] += l[(i, k)] * rv;
                        }
                    }
                }
            }
        }
        for i in 0..rows * cols {
            m[(off + i) * d + off + i] += tied_damp;
        }
    }
    m
}

fn dense_inverse(m: &[f64], d: usize) -> Vec<f64> {
    let op = DenseOp::with_structure(to_mat(m, d), Structure::PSD);
    let mut x = Mat::<f64>::zeros(d, d);
    op.solve(x.as_mut(), Mat::<f64>::identity(d, d).as_ref()).unwrap();
    (0..d * d).map(|i| x[(i / d, i % d)]).collect()
}

fn trace_mat(m: &Mat<f64>) -> f64 {
    (0..m.nrows()).map(|i| m[(i, i)]).sum()
}

/// `inverse(δ, mode)` is the dense inverse of the damped matrix: same δ on each factor,
/// π-damping (Martens & Grosse), exact damping of the Kronecker eigenvalues; EKFAC: exact.
#[test]
fn inverse_matches_dense_inverse_of_damped_matrix() {
    let delta: f64 = 0.05;
    let problems: Vec<(String, Problem<f64>)> = vec![
        ("cnn_stride_dil_groups_ce".into(), Reference::load_extra("cnn_stride_dil_groups_ce").0),
        ("mlp_tanh_mse".into(), Reference::load("mlp_tanh_mse").0),
        ("cnn_fullrank_reduce".into(), kfac_problem("cnn_fullrank_reduce")),
    ];
    for (name, p) in &problems {
        let all = ActiveSet::all(&p.net.layout);
        let d = all.dim;
        for joint in [false, true] {
            for approx in [KfacApprox::Expand, KfacApprox::Reduce] {
                let o = opts(FisherType::Type2, approx, joint);
                let k = Kfac::fit(p, &all, &o).unwrap();
                let f = k.factors();
                let kd = dense_of(&k).unwrap();
                assert!(rel(&dense_from_factors(f, |_| (0.0, 0.0), 0.0), &kd) < 1e-14, "{name}: assembly");
                let pi_damp = |li: usize| {
                    let l = &f.layers[li];
                    match &l.a {
                        Some(a) => {
                            let ma = trace_mat(a) / a.nrows() as f64;
                            let mb = trace_mat(&l.b) / l.b.nrows() as f64;
                            let pi = (ma / mb).sqrt();
                            ((delta.sqrt() * pi).max(1e-8), (delta.sqrt() / pi).max(1e-8))
                        }
                        None => (delta, delta),
                    }
                };
                let cases: [(DampingMode, Vec<f64>); 3] = [
                    (DampingMode::Same, dense_inverse(&dense_from_factors(f, |_| (delta, delta), delta), d)),
                    (DampingMode::Pi, dense_inverse(&dense_from_factors(f, pi_damp, delta), d)),
                    (DampingMode::Exact, {
                        let mut m = kd.clone();
                        for i in 0..d {
                            m[i * d + i] += delta;
                        }
                        dense_inverse(&m, d)
                    }),
                ];
                for (mode, want) in cases {
                    let inv = dense_of(&k.inverse(delta, mode).unwrap()).unwrap();
                    let e = rel(&inv, &want);
                    assert!(e < TOL, "{name} joint={joint} {approx:?} {mode:?}: {e:.3e}");
                    // log det of the damped matrix: −log det of its inverse
                    let ld = DenseOp::with_structure(to_mat(&want, d), Structure::PSD).logdet().unwrap();
                    let got = k.logdet_damped(delta, mode).unwrap();
                    assert!((got + ld).abs() <= 1e-10 * ld.abs().max(1.0), "{name} {mode:?}: logdet {got} vs {}", -ld);
                }
                // EKFAC: exact damping only
                let ek = fit_ekfac(p, &all, &o).unwrap();
                let mut m = dense_of(&ek).unwrap();
                for i in 0..d {
                    m[i * d + i] += delta;
                }
                let e = rel(&dense_of(&ek.inverse(delta, DampingMode::Exact).unwrap()).unwrap(), &dense_inverse(&m, d));
                assert!(e < TOL, "{name} joint={joint} {approx:?} EKFAC inverse: {e:.3e}");
                assert!(ek.inverse(delta, DampingMode::Pi).is_err(), "EKFAC π-damping must be an error");
            }
        }
    }
}

/// Trace, diagonal, Frobenius norm, shifted log-determinants and solves, determinant (where
/// nonsingular; returns whether it was checked) and the eigendecomposition of `op` against its
/// dense matrix.
fn check_exact_ops(tag: &str, op: &dyn LinearOperator<f64>, fro: f64, det: f64) -> bool {
    let d = op.nrows();
    let m = dense_of(op).unwrap();
    let mm = to_mat(&m, d);
    let dense = DenseOp::with_structure(mm.clone(), Structure::PSD);
    let tr: f64 = (0..d).map(|i| m[i * d + i]).sum();
    assert!((op.trace().unwrap() - tr).abs() <= 1e-12 * tr.abs(), "{tag}: trace");
    assert!(rel(&op.diagonal().unwrap(), &(0..d).map(|i| m[i * d + i]).collect::<Vec<_>>()) < 1e-13, "{tag}: diag");
    let f2: f64 = m.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((fro - f2).abs() <= 1e-12 * f2, "{tag}: frobenius {fro} vs {f2}");
    for shift in [0.1, 1.0] {
        let want = dense.logdet_shifted(shift).unwrap();
        let got = op.logdet_shifted(shift).unwrap();
        assert!((got - want).abs() <= 1e-10 * want.abs().max(1.0), "{tag}: logdet +{shift}: {got} vs {want}");
        let b = Mat::<f64>::from_fn(d, 2, |i, j| ((i * 3 + j) as f64).cos());
        let mut x = Mat::<f64>::zeros(d, 2);
        op.solve_shifted(shift, x.as_mut(), b.as_ref()).unwrap();
        let mut r = Mat::<f64>::zeros(d, 2);
        dense.apply(r.as_mut(), x.as_ref()).unwrap();
        let res: f64 = (0..d)
            .flat_map(|i| (0..2).map(move |j| (i, j)))
            .map(|(i, j)| (r[(i, j)] + shift * x[(i, j)] - b[(i, j)]).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(res < 1e-10, "{tag}: solve +{shift}: residual {res}");
    }
    // determinant where the matrix is nonsingular
    let evals = mm.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
    let mut det_checked = false;
    if evals[0] > 1e-6 * evals[d - 1] {
        let want = dense.logdet().unwrap().exp();
        assert!((det - want).abs() <= 1e-9 * want, "{tag}: det {det} vs {want}");
        det_checked = true;
    }
    // eigendecomposition: V Λ Vᵀ = M, VᵀV = I, eigenvalues as the dense ones
    let eig = op.eigh().unwrap();
    assert!(eig.is_complete());
    let rec = eig.to_dense();
    let recv: Vec<f64> = (0..d * d).map(|i| rec[(i / d, i % d)]).collect();
    assert!(rel(&recv, &m) < 1e-12, "{tag}: V Λ Vᵀ");
    let mut sorted = evals.clone();
    sorted.reverse();
    assert!(rel(&eig.values, &sorted) < 1e-12, "{tag}: eigenvalues");
    let vtv = eig.vectors.transpose() * &eig.vectors;
    let id: Vec<f64> = (0..d * d).map(|i| vtv[(i / d, i % d)]).collect();
    let eye: Vec<f64> = (0..d * d).map(|i| if i / d == i % d { 1.0 } else { 0.0 }).collect();
    assert!(rel(&id, &eye) < 1e-12, "{tag}: orthonormal eigenvectors");
    det_checked
}

/// Exact trace, log-determinant (with and without shift), determinant, Frobenius norm,
/// diagonal, eigendecomposition and shifted solves agree with the dense matrix.
#[test]
fn exact_operations_match_dense() {
    let problems: Vec<(&str, Problem<f64>)> = vec![
        ("cnn_stride_dil_groups_ce", Reference::load_extra("cnn_stride_dil_groups_ce").0),
        ("mlp_relu_ce_batches", Reference::load("mlp_relu_ce_batches").0),
        ("cnn_fullrank_reduce", kfac_problem("cnn_fullrank_reduce")),
    ];
    let mut det_checks = 0;
    for (name, p) in &problems {
        let all = ActiveSet::all(&p.net.layout);
        for (o, tag) in [
            (type2(), "type-2"),
            (opts(FisherType::Empirical, KfacApprox::Reduce, true), "empirical reduce joint"),
            (opts(FisherType::ForwardOnly, KfacApprox::Expand, false), "forward-only"),
        ] {
            let k = Kfac::fit(p, &all, &o).unwrap();
            let ops: Vec<NamedOp> = {
                let (fro, det) = (k.frobenius_norm(), k.det().unwrap());
                let mut v: Vec<NamedOp> = vec![("kfac", Box::new(k), fro, det)];
                if o.fisher != FisherType::ForwardOnly {
                    let e = fit_ekfac(p, &all, &o).unwrap();
                    let (fro, det) = (e.frobenius_norm(), e.det());
                    v.push(("ekfac", Box::new(e), fro, det));
                }
                v
            };
            for (which, op, fro, det) in ops {
                det_checks += usize::from(check_exact_ops(&format!("{name} {tag} {which}"), op.as_ref(), fro, det));
            }
        }
    }
    assert!(det_checks >= 1, "determinant checked on {det_checks} nonsingular operators only");
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("curvops-kfac-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Saving and loading reproduces the operator exactly (f64 and f32), and checks the
/// parameters the file was fitted for.
#[test]
fn save_load_round_trip_is_exact() {
    let (p, _) = Reference::load_extra("cnn_stride_dil_groups_ce");
    let names = vec!["0.weight".to_string(), "0.bias".to_string(), "4.weight".to_string()];
    for active in [ActiveSet::all(&p.net.layout), ActiveSet::from_names(&p.net.layout, &names).unwrap()] {
        for joint in [false, true] {
            let o = opts(FisherType::Mc { samples: 2, seed: 3 }, KfacApprox::Reduce, joint);
            let k = Kfac::fit(&p, &active, &o).unwrap();
            let path = tmp(&format!("k{joint}{}.safetensors", active.dim));
            save_kfac(&path, &k).unwrap();
            match load_factors::<f64>(&path, &p, &active).unwrap() {
                LoadedFactors::Kfac(l) => {
                    assert!(dense_of(&l).unwrap() == dense_of(&k).unwrap(), "KFAC round trip not exact");
                    assert_eq!(l.factors().options, KfacOptions { batch_size: 0, ..o });
                }
                LoadedFactors::Ekfac(_) => panic!("loaded EKFAC from a KFAC file"),
            }
            let e = fit_ekfac(&p, &active, &o).unwrap();
            let path = tmp(&format!("e{joint}{}.safetensors", active.dim));
            save_ekfac(&path, &e).unwrap();
            match load_factors::<f64>(&path, &p, &active).unwrap() {
                LoadedFactors::Ekfac(l) => {
                    assert!(dense_of(&l).unwrap() == dense_of(&e).unwrap(), "EKFAC round trip not exact")
                }
                LoadedFactors::Kfac(_) => panic!("loaded KFAC from an EKFAC file"),
            }
        }
    }
    // f32: saved in f32, loaded exactly
    let p32: Problem<f32> = {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/extra/cnn_stride_dil_groups_ce");
        curvops_nn::io::load_problem(
            &dir.join("model.json"),
            &dir.join("weights.safetensors"),
            &dir.join("data.safetensors"),
        )
        .unwrap()
    };
    let all = ActiveSet::all(&p32.net.layout);
    let k = Kfac::fit(&p32, &all, &type2()).unwrap();
    let path = tmp("k32.safetensors");
    save_kfac(&path, &k).unwrap();
    let LoadedFactors::Kfac(l) = load_factors::<f32>(&path, &p32, &all).unwrap() else { panic!("kind") };
    assert!(dense_of(&l).unwrap() == dense_of(&k).unwrap(), "f32 round trip not exact");
    // a file fitted for other parameters is refused, naming both sets
    let sub = ActiveSet::from_names(&p.net.layout, &["4.weight".to_string()]).unwrap();
    let err = load_factors::<f64>(&tmp(&format!("kfalse{}.safetensors", p.net.layout.total)), &p, &sub).unwrap_err();
    assert!(err.to_string().contains("4.weight"), "{err}");
}

/// Batch-norm parameters (outside linear maps) get their exact GGN block; with
/// `forward-only` (no backward pass) they are an error naming them, as is EKFAC with
/// forward-only.
#[test]
fn parameters_outside_maps_get_exact_blocks_or_named_errors() {
    let (p, _) = Reference::load_extra("cnn_bn2d_affine_maxpool_ce");
    let all = ActiveSet::all(&p.net.layout);
    let d = all.dim;
    let ggn = dense_curvature(&CurvatureOperator::new(&p, Curvature::Ggn, all.clone(), 0), &|_, _| {});
    let k = dense_of(&Kfac::fit(&p, &all, &type2()).unwrap()).unwrap();
    for e in &p.net.layout.entries {
        if p.net.layers[e.layer].kind().starts_with("batchnorm") {
            let rg = e.offset..e.offset + e.len;
            let err = rel(&block(&k, d, rg.clone(), rg.clone()), &block(&ggn, d, rg.clone(), rg));
            assert!(err < TOL, "{}: dense block vs GGN block {err:.3e}", e.name);
        }
    }
    let fo = opts(FisherType::ForwardOnly, KfacApprox::Expand, false);
    let err = Kfac::fit(&p, &all, &fo).unwrap_err();
    assert!(matches!(&err, KfacError::Parameter { param, .. } if param == "1.weight"), "{err}");
    let err = err.to_string();
    assert!(err.contains("'1.weight'") && err.contains("batchnorm2d") && !err.contains("--"), "{err}");
    let names: Vec<String> = ["0.weight", "0.bias", "5.weight", "5.bias"].iter().map(|s| s.to_string()).collect();
    let sub = ActiveSet::from_names(&p.net.layout, &names).unwrap();
    let k = Kfac::fit(&p, &sub, &fo).unwrap();
    assert_eq!(k.nrows(), sub.dim);
    assert!(fit_ekfac(&p, &sub, &fo).is_err());
}

/// f32 KFAC / EKFAC agree with f64 to f32 accuracy.
#[test]
fn f32_close_to_f64() {
    let spec =
        diag_nets::kfac_cnn_spec(Loss { kind: LossKind::CrossEntropy, reduction: Reduction::Mean, positions: 1 });
    let p64 = diag_nets::random_problem::<f64>(&spec, 6, 3, false);
    let p32 = diag_nets::random_problem::<f32>(&spec, 6, 3, false);
    let all = ActiveSet::all(&p64.net.layout);
    let a = dense_of(&Kfac::fit(&p64, &all, &type2()).unwrap()).unwrap();
    let b: Vec<f64> = dense_of(&Kfac::fit(&p32, &all, &type2()).unwrap()).unwrap().iter().map(|&v| v as f64).collect();
    assert!(rel(&b, &a) < 1e-4, "KFAC f32 vs f64: {}", rel(&b, &a));
    let a = dense_of(&Ekfac::fit(&p64, &all, &type2()).unwrap()).unwrap();
    let b: Vec<f64> = dense_of(&Ekfac::fit(&p32, &all, &type2()).unwrap()).unwrap().iter().map(|&v| v as f64).collect();
    assert!(rel(&b, &a) < 1e-3, "EKFAC f32 vs f64: {}", rel(&b, &a));
}

/// With fewer data rows than half a factor's dimension the fit keeps low-rank factors
/// (`A = UᵀU`); products through them equal products with the dense factors.
#[test]
fn low_rank_factors_give_the_same_products() {
    for name in ["mlp_tanh_mse", "cnn_relu_maxpool_ce", "mlp_relu_ce_batches"] {
        // two data points: fewer rows than half of most factor dimensions
        let (p0, _) = Reference::load(name);
        let p = Problem { data: p0.data.select(&[0, 1]), net: p0.net, theta: p0.theta };
        let all = ActiveSet::all(&p.net.layout);
        for o in [type2(), opts(FisherType::Mc { samples: 1, seed: 0 }, KfacApprox::Reduce, true)] {
            let k = Kfac::fit(&p, &all, &o).unwrap();
            let kept = k.factors().layers.iter().filter(|l| l.a_rows.is_some() || l.b_rows.is_some()).count();
            assert!(kept > 0, "{name}: no low-rank factor kept");
            let mut f = k.factors().clone();
            for l in &mut f.layers {
                l.a_rows = None;
                l.b_rows = None;
            }
            let e = rel(&dense_of(&k).unwrap(), &dense_of(&Kfac::new(f)).unwrap());
            assert!(e < 1e-13, "{name}: low-rank vs dense products {e:.3e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Graph models
// ---------------------------------------------------------------------------------------------

/// A problem from the text of a graph `model.json`, parameters drawn from `N(0, 0.5²)`, and the
/// given data.
fn graph_problem(model: &str, seed: u64, x: Vec<f64>, y: Targets<f64>, target_width: usize) -> Problem<f64> {
    let spec = curvops_nn::spec::parse_model(model, "test model").unwrap();
    let net: curvops_nn::Network<f64> = spec
        .build("test model", &|name: &str, _c: usize| -> Result<BnBuffers, NnError> { panic!("no batch norm {name}") })
        .unwrap();
    let mut rng = Rng::new(seed);
    let theta = (0..net.num_params()).map(|_| 0.5 * rng.normal()).collect();
    let n = x.len() / net.in_size();
    let data = Dataset { x, sample_shape: net.input_shape.clone(), n, y, target_width };
    Problem { net, theta, data }
}

/// A model that is linear position by position (an untied embedding of repeated ids, a
/// `parameter` of positions added, a residual linear map on `[T, E]`, a transposed linear map,
/// a head) with MSE on `[T, V]` outputs: its Jacobians do not depend on the position.
const LINEAR_GRAPH: &str = r#"{
  "inputs": {"x": {"shape": [3], "dtype": "int"}},
  "nodes": [
    {"name": "emb", "type": "embedding", "num_embeddings": 5, "embedding_dim": 4, "inputs": ["x"]},
    {"name": "pos", "type": "parameter", "shape": [3, 4]},
    {"name": "h0", "type": "add", "inputs": ["emb", "pos"]},
    {"name": "fc", "type": "linear", "in_features": 4, "out_features": 4, "inputs": ["h0"]},
    {"name": "h1", "type": "add", "inputs": ["h0", "fc"]},
    {"name": "proj", "type": "linear", "in_features": 4, "out_features": 3, "transposed": true, "inputs": ["h1"]},
    {"name": "head", "type": "linear", "in_features": 3, "out_features": 2, "inputs": ["proj"]}
  ],
  "loss": {"type": "mse", "reduction": "mean"}
}"#;

fn linear_graph(n: usize) -> Problem<f64> {
    let ids = [1.0, 3.0, 1.0, 0.0, 4.0, 4.0, 2.0, 1.0, 3.0];
    let x: Vec<f64> = (0..3 * n).map(|i| ids[i % ids.len()]).collect();
    let y: Vec<f64> = (0..6 * n).map(|i| (i as f64 * 0.7).sin()).collect();
    graph_problem(LINEAR_GRAPH, 17, x, Targets::Dense(y), 6)
}

/// Per active index, the id of its KFAC block (weight, bias, joint, dense or tied).
fn block_ids(f: &KfacFactors<f64>) -> Vec<usize> {
    let mut ids = vec![usize::MAX; f.dim];
    let mut next = 0;
    let mut mark = |off: usize, len: usize, id: usize| ids[off..off + len].iter_mut().for_each(|v| *v = id);
    for l in &f.layers {
        if let Some(w) = &l.weight {
            mark(w.offset, l.out * l.inp, next);
            if !l.joint {
                next += 1;
            }
        }
        if let Some(b) = &l.bias {
            mark(b.offset, l.out, next);
        }
        next += 1;
    }
    for t in &f.tied {
        mark(t.param.offset, t.rows * t.cols, next);
        next += 1;
    }
    assert!(ids.iter().all(|&i| i != usize::MAX), "every index in a block");
    ids
}

/// `m` with the entries outside KFAC's blocks set to zero.
fn restrict_to_blocks(m: &[f64], ids: &[usize]) -> Vec<f64> {
    let d = ids.len();
    (0..d * d).map(|i| if ids[i / d] == ids[i % d] { m[i] } else { 0.0 }).collect()
}

/// On a model that is linear position by position with MSE and one data point, KFAC (expand,
/// type-2, positions summed before the backward pass as curvlinops does) is exact: every block
/// — the untied embedding (one-hot inputs, transposed storage), the `[T, E]` linear maps with
/// their biases (separately and joint), the transposed linear map and the `parameter` node's
/// dense block — equals the GGN's block, and KFAC is zero outside them.
#[test]
fn linear_graph_single_datum_kfac_equals_ggn_blocks() {
    let p = linear_graph(1);
    let all = ActiveSet::all(&p.net.layout);
    let ggn = dense_curvature(&CurvatureOperator::new(&p, Curvature::Ggn, all.clone(), 0), &|_, _| {});
    for joint in [false, true] {
        let k = Kfac::fit(&p, &all, &opts(FisherType::Type2, KfacApprox::Expand, joint)).unwrap();
        let f = k.factors();
        assert!(f.tied.is_empty());
        let kinds: Vec<&str> = f.layers.iter().map(|l| l.kind).collect();
        assert_eq!(kinds, ["embedding", "dense", "linear", "linear", "linear"], "joint={joint}");
        let want = restrict_to_blocks(&ggn, &block_ids(f));
        let e = rel(&dense_of(&k).unwrap(), &want);
        assert!(e < TOL, "joint={joint}: KFAC vs GGN blocks {e:.3e}");
    }
    // with several data points KFAC is no longer exact, but the embedding's input factor is
    // still the diagonal of id counts / (N·T)
    let p = linear_graph(3);
    let all = ActiveSet::all(&p.net.layout);
    let k = Kfac::fit(&p, &all, &type2()).unwrap();
    let emb = &k.factors().layers[0];
    let mut counts = [0.0; 5];
    for &id in &p.data.x {
        counts[id as usize] += 1.0;
    }
    let a = emb.a.as_ref().unwrap();
    for i in 0..5 {
        for j in 0..5 {
            let want = if i == j { counts[i] / 9.0 } else { 0.0 };
            assert!((a[(i, j)] - want).abs() < 1e-15, "A[{i},{j}] = {} vs {want}", a[(i, j)]);
        }
    }
}

/// On the graph references, the tensors outside Kronecker-factored maps (LayerNorm, BatchNorm,
/// the `parameter` of positions) get exactly their block of the GGN (type-2; both the backward
/// route and, for the sequence loss, the forward route) and of the empirical Fisher
/// (`empirical`), batched and unbatched; the Kronecker blocks of an all-parameter fit are
/// still `kfac_type2.npy`'s.
#[test]
fn graph_dense_blocks_equal_reference_blocks() {
    let mut log = common::ErrorLog::new(TOL);
    for name in GRAPH_PROBLEMS {
        let (p, r) = Reference::load_graph(name);
        let layout = &p.net.layout;
        let kp = kfac_params(&r);
        // every untied tensor
        let names: Vec<String> = layout.entries.iter().filter(|e| e.users.len() == 1).map(|e| e.name.clone()).collect();
        let active = ActiveSet::from_names(layout, &names).unwrap();
        let d = active.dim;
        let dfull = layout.total;
        let (_, kref) = r.array("kfac_type2");
        let dk = r.meta["kfac_D"].as_u64().unwrap() as usize;
        for bs in [0, r.batch_size()] {
            for (fisher, key) in [(FisherType::Type2, "ggn"), (FisherType::Empirical, "ef")] {
                let (_, want) = r.array(key);
                let k = dense_of(
                    &Kfac::fit(&p, &active, &KfacOptions { batch_size: bs, ..opts(fisher, KfacApprox::Expand, false) })
                        .unwrap(),
                )
                .unwrap();
                let mut kfac_idx = Vec::new();
                for (e, so) in active.names(layout) {
                    let sub: Vec<usize> = (so..so + e.len).collect();
                    if kp.contains(&e.name) {
                        kfac_idx.extend(sub);
                        continue;
                    }
                    let full: Vec<usize> = (e.offset..e.offset + e.len).collect();
                    log.rel(
                        &format!("dense block vs {key}"),
                        format!("{name} {} bs={bs}", e.name),
                        &sub_block(&k, d, &sub, &sub),
                        &sub_block(&want, dfull, &full, &full),
                    );
                }
                if fisher == FisherType::Type2 {
                    let all_k: Vec<usize> = (0..dk).collect();
                    log.rel(
                        "kfac blocks in an all-parameter fit",
                        format!("{name} bs={bs}"),
                        &sub_block(&k, d, &kfac_idx, &kfac_idx),
                        &sub_block(&kref, dk, &all_k, &all_k),
                    );
                }
            }
        }
    }
    log.finish();
}

fn kfac_params(r: &Reference) -> Vec<String> {
    r.meta["kfac_params"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// `tiny_gpt_ce` with `lm_head` holding its own copy of the tied tensor, `lm_head.weight`.
fn untied_gpt(p: &Problem<f64>) -> Problem<f64> {
    let text = std::fs::read_to_string(common::graph_dir().join("tiny_gpt_ce/model.json")).unwrap();
    let untied = text.replace(r#", "params": {"weight": "wte.weight"}"#, "");
    assert_ne!(untied, text);
    let spec = curvops_nn::spec::parse_model(&untied, "untied").unwrap();
    let net: curvops_nn::Network<f64> =
        spec.build("untied", &|_: &str, _: usize| -> Result<BnBuffers, NnError> { unreachable!() }).unwrap();
    let mut theta = vec![0.0; net.num_params()];
    for e in &net.layout.entries {
        let src = if e.name == "lm_head.weight" { "wte.weight" } else { e.name.as_str() };
        let se = &p.net.layout.entries[p.net.layout.find(src).unwrap()];
        theta[e.offset..e.offset + e.len].copy_from_slice(&p.theta[se.offset..se.offset + se.len]);
    }
    Problem { net, theta, data: p.data.clone() }
}

/// A tied tensor's block is the sum of its uses' Kronecker blocks (`tiny_gpt_ce`'s `wte.weight`:
/// the embedding's `A_e ⊗ B_e` on the `[vocab, E]` table plus `lm_head`'s `B_h ⊗ A_h`): it
/// equals the sum of the two blocks of the untied model, for every Fisher type and both
/// approximations, batched and unbatched.
#[test]
fn tied_block_is_the_sum_of_the_uses_blocks() {
    let (p, r) = Reference::load_graph("tiny_gpt_ce");
    let pu = untied_gpt(&p);
    let tied = ActiveSet::from_names(&p.net.layout, &["wte.weight".to_string()]).unwrap();
    let both =
        ActiveSet::from_names(&pu.net.layout, &["wte.weight".to_string(), "lm_head.weight".to_string()]).unwrap();
    let dt = tied.dim;
    for fisher in [FisherType::Type2, FisherType::Empirical, FisherType::Mc { samples: 2, seed: 5 }] {
        for approx in [KfacApprox::Expand, KfacApprox::Reduce] {
            for bs in [0, r.batch_size()] {
                let o = KfacOptions { batch_size: bs, ..opts(fisher, approx, false) };
                let kt = Kfac::fit(&p, &tied, &o).unwrap();
                assert_eq!(kt.factors().tied.len(), 1);
                assert_eq!(kt.factors().tied[0].uses.len(), 2);
                let a = dense_of(&kt).unwrap();
                let b = dense_of(&Kfac::fit(&pu, &both, &o).unwrap()).unwrap();
                let r0: Vec<usize> = (0..dt).collect();
                let r1: Vec<usize> = (dt..2 * dt).collect();
                let mut want = sub_block(&b, 2 * dt, &r0, &r0);
                for (w, v) in want.iter_mut().zip(sub_block(&b, 2 * dt, &r1, &r1)) {
                    *w += v;
                }
                let e = rel(&a, &want);
                assert!(e < 1e-12, "{fisher:?} {approx:?} bs={bs}: tied vs sum of untied blocks {e:.3e}");
            }
        }
    }
}

/// EKFAC on a sequence loss (no curvlinops reference): the eigenbases are KFAC's and the
/// eigenvalues are `E[i, j] = Σ_{n,r} (q_{B,i}ᵀ G_{nr} q_{A,j})²` with `G_{nr}` the per-sample
/// gradients of the same cotangents as KFAC's `B` (the loss-Hessian factor's columns summed
/// over the positions), here formed with the engine's per-sample VJP; bias blocks
/// `E[i] = Σ (q_{B,i}ᵀ g_{nr})²`. Independent of the batch size.
#[test]
fn sequence_ekfac_matches_its_definition() {
    let (p, r) = Reference::load_graph("tiny_gpt_ce");
    let active = ActiveSet::from_names(&p.net.layout, &kfac_params(&r)).unwrap();
    let e = fit_ekfac(&p, &active, &type2()).unwrap();
    let eb = fit_ekfac(&p, &active, &KfacOptions { batch_size: 4, ..type2() }).unwrap();
    assert!(rel(&dense_of(&eb).unwrap(), &dense_of(&e).unwrap()) < 1e-12);
    // the per-sample gradients of the position-summed columns
    let net = &p.net;
    let n = p.data.n;
    let cdim = net.out_size();
    let tape = net.forward(&p.theta, &p.data.x, n);
    let batch = p.data.batch(0, n);
    let (mut s, cols) = net.loss.hess_factor_position_summed(tape.output(), batch.y, n, cdim);
    let c = net.loss.factor(n, cdim).sqrt();
    s.iter_mut().for_each(|v| *v *= c);
    let d = active.dim;
    let mut g = vec![0.0; n * cols * d];
    net.vjp_per_sample(&p.theta, &tape, s, cols, &active, &mut g);
    let f = e.factors();
    let mut got_all = Vec::new();
    let mut want_all = Vec::new();
    for (li, l) in f.layers.iter().enumerate() {
        let (qa, qb) = &e.bases()[li];
        let (o, i) = (l.out, l.inp);
        if let (Some(w), Some(qa)) = (&l.weight, qa) {
            let mut want = vec![0.0; o * i];
            for row in g.chunks_exact(d) {
                let gm = Mat::<f64>::from_fn(o, i, |a, b| row[w.offset + a * i + b]);
                let t = qb.transpose() * &gm * qa.as_ref();
                for a in 0..o {
                    for b in 0..i {
                        want[a * i + b] += t[(a, b)] * t[(a, b)];
                    }
                }
            }
            want_all.push(want);
        }
        if let Some(bias) = &l.bias {
            let mut want = vec![0.0; o];
            for row in g.chunks_exact(d) {
                let gv = Mat::<f64>::from_fn(o, 1, |a, _| row[bias.offset + a]);
                let t = qb.transpose() * &gv;
                for a in 0..o {
                    want[a] += t[(a, 0)] * t[(a, 0)];
                }
            }
            want_all.push(want);
        }
    }
    for v in e.eigenvalues() {
        got_all.push(v.to_vec());
    }
    assert_eq!(got_all.len(), want_all.len());
    for (k, (got, want)) in got_all.iter().zip(&want_all).enumerate() {
        let err = rel(got, want);
        assert!(err < TOL, "block {k}: EKFAC eigenvalues vs definition {err:.3e}");
    }
}

/// Every operation of KFAC and EKFAC on graph models with every kind of block (attention and
/// MLP maps, LayerNorm and positional dense blocks, the tied embedding; the untied one-hot
/// embedding, a transposed map): exact operations equal dense algebra, `inverse` in each
/// damping mode equals the dense inverse of the damped matrix (tied blocks: exact damping),
/// and save → load round trips are exact.
#[test]
fn graph_operators_exact_ops_inverse_and_round_trip() {
    let delta: f64 = 0.05;
    let (gpt, _) = Reference::load_graph("tiny_gpt_ce");
    let problems = [("tiny_gpt_ce", gpt), ("linear_graph", linear_graph(3))];
    for (name, p) in &problems {
        let all = ActiveSet::all(&p.net.layout);
        let d = all.dim;
        for (o, tag) in
            [(type2(), "type-2"), (opts(FisherType::Empirical, KfacApprox::Reduce, true), "empirical reduce joint")]
        {
            let k = Kfac::fit(p, &all, &o).unwrap();
            let e = fit_ekfac(p, &all, &o).unwrap();
            let (fro, det) = (k.frobenius_norm(), k.det().unwrap());
            check_exact_ops(&format!("{name} {tag} kfac"), &k, fro, det);
            let (fro, det) = (e.frobenius_norm(), e.det());
            check_exact_ops(&format!("{name} {tag} ekfac"), &e, fro, det);
            let f = k.factors();
            assert!(
                rel(&dense_from_factors(f, |_| (0.0, 0.0), 0.0), &dense_of(&k).unwrap()) < 1e-14,
                "{name}: assembly"
            );
            let pi_damp = |li: usize| {
                let l = &f.layers[li];
                match &l.a {
                    Some(a) => {
                        let ma = trace_mat(a) / a.nrows() as f64;
                        let mb = trace_mat(&l.b) / l.b.nrows() as f64;
                        let pi = (ma / mb).sqrt();
                        ((delta.sqrt() * pi).max(1e-8), (delta.sqrt() / pi).max(1e-8))
                    }
                    None => (delta, delta),
                }
            };
            let mut exact = dense_of(&k).unwrap();
            for i in 0..d {
                exact[i * d + i] += delta;
            }
            for (mode, want) in [
                (DampingMode::Same, dense_inverse(&dense_from_factors(f, |_| (delta, delta), delta), d)),
                (DampingMode::Pi, dense_inverse(&dense_from_factors(f, pi_damp, delta), d)),
                (DampingMode::Exact, dense_inverse(&exact, d)),
            ] {
                let err = rel(&dense_of(&k.inverse(delta, mode).unwrap()).unwrap(), &want);
                assert!(err < TOL, "{name} {tag} {mode:?}: inverse {err:.3e}");
                let ld = DenseOp::with_structure(to_mat(&want, d), Structure::PSD).logdet().unwrap();
                let got = k.logdet_damped(delta, mode).unwrap();
                assert!((got + ld).abs() <= 1e-10 * ld.abs().max(1.0), "{name} {mode:?}: logdet {got} vs {}", -ld);
            }
            let path = tmp(&format!("{name}-{}-k.safetensors", o.joint_bias));
            save_kfac(&path, &k).unwrap();
            let LoadedFactors::Kfac(l) = load_factors::<f64>(&path, p, &all).unwrap() else { panic!("kind") };
            assert!(dense_of(&l).unwrap() == dense_of(&k).unwrap(), "{name}: KFAC round trip not exact");
            let path = tmp(&format!("{name}-{}-e.safetensors", o.joint_bias));
            save_ekfac(&path, &e).unwrap();
            let LoadedFactors::Ekfac(l) = load_factors::<f64>(&path, p, &all).unwrap() else { panic!("kind") };
            assert!(dense_of(&l).unwrap() == dense_of(&e).unwrap(), "{name}: EKFAC round trip not exact");
        }
    }
}

/// Errors name the tensor: a dense block over [`DENSE_MAX`] entries; a tied block too large for
/// a dense eigendecomposition works for products, trace and diagonal, and its eigen-based
/// operations are errors naming it.
#[test]
fn graph_size_limits_are_named_errors() {
    let big = r#"{
      "inputs": {"x": {"shape": [2], "dtype": "int"}},
      "nodes": [
        {"name": "wte", "type": "embedding", "num_embeddings": 80, "embedding_dim": 64, "inputs": ["x"]},
        {"name": "wpe", "type": "parameter", "shape": [2, 64]},
        {"name": "table", "type": "parameter", "shape": [65, 64]},
        {"name": "sl", "type": "slice", "dim": 0, "start": 0, "end": 2, "inputs": ["table"]},
        {"name": "h", "type": "add", "inputs": ["wte", "wpe", "sl"]},
        {"name": "lm_head", "type": "linear", "in_features": 64, "out_features": 80, "bias": false,
         "params": {"weight": "wte.weight"}, "inputs": ["h"]}
      ],
      "loss": {"type": "cross_entropy", "reduction": "mean"}
    }"#;
    let x = vec![1.0, 5.0, 7.0, 79.0, 0.0, 3.0];
    let p = graph_problem(big, 3, x, Targets::Classes(vec![2, 3, 4, 5, 6, 7]), 2);
    let all = ActiveSet::all(&p.net.layout);
    let err = Kfac::fit(&p, &all, &type2()).unwrap_err();
    assert!(matches!(&err, KfacError::Parameter { param, .. } if param == "table.weight"), "{err}");
    let err = err.to_string();
    assert!(err.contains("'table.weight'") && err.contains("4160") && !err.contains("--"), "{err}");
    let sub = ActiveSet::from_names(&p.net.layout, &["wte.weight".to_string(), "wpe.weight".to_string()]).unwrap();
    let k = Kfac::fit(&p, &sub, &type2()).unwrap();
    let v: Vec<f64> = (0..sub.dim).map(|i| (i as f64).cos()).collect();
    assert_eq!(k.apply_vec(&v).unwrap().len(), sub.dim);
    assert!(k.trace().unwrap() > 0.0);
    let err = k.logdet_shifted(0.1).unwrap_err().to_string();
    assert!(err.contains("'wte.weight'") && err.contains("5120"), "{err}");
    assert!(fit_ekfac(&p, &sub, &type2()).unwrap_err().to_string().contains("'wte.weight'"));
}

/// KFAC and EKFAC on a subset of the data (`fit_on` with a [`DataWalk`]): type-2 equals the fit
/// on a problem holding only those samples; the MC Fisher's labels are keyed by the samples'
/// global indices, so MC-KFAC on a permutation of all samples equals MC-KFAC on the data, and on
/// a proper subset differs from the fit on re-indexed data (whose keys are 0..|S|).
#[test]
fn kfac_on_subsets_of_the_data() {
    use curvops::DataWalk;
    for name in ["mlp_relu_ce_batches", "tiny_gpt_ce"] {
        let (p, mut q) = if name == "tiny_gpt_ce" {
            (Reference::load_graph(name).0, Reference::load_graph(name).0)
        } else {
            (Reference::load(name).0, Reference::load(name).0)
        };
        let n = p.data.n;
        let idx: Vec<usize> = (0..n).filter(|i| i % 3 != 1).collect();
        q.data = p.data.select(&idx);
        let all = if name == "tiny_gpt_ce" {
            let (_, r) = Reference::load_graph(name);
            let names: Vec<String> =
                r.meta["kfac_params"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
            ActiveSet::from_names(&p.net.layout, &names).unwrap()
        } else {
            ActiveSet::all(&p.net.layout)
        };
        for bs in [0, 2] {
            let walk = DataWalk::subset(&p.data, &idx, bs).unwrap();
            let o = KfacOptions { batch_size: bs, ..type2() };
            let on = dense_of(&Kfac::fit_on(&p, &walk, &all, &o).unwrap()).unwrap();
            let want = dense_of(&Kfac::fit(&q, &all, &o).unwrap()).unwrap();
            let e = rel(&on, &want);
            assert!(e < 1e-12, "{name} bs={bs}: KFAC on the subset vs on the selected data {e:.3e}");
            let eon = dense_of(&Ekfac::fit_on(&p, &walk, &all, &o).unwrap()).unwrap();
            let ewant = dense_of(&Ekfac::fit(&q, &all, &o).unwrap()).unwrap();
            let e = rel(&eon, &ewant);
            assert!(e < 1e-12, "{name} bs={bs}: EKFAC on the subset vs on the selected data {e:.3e}");
            // MC: keyed globally
            let mc = KfacOptions { fisher: FisherType::Mc { samples: 2, seed: 7 }, ..o };
            let perm: Vec<usize> = (0..n).rev().collect();
            let pw = DataWalk::subset(&p.data, &perm, bs).unwrap();
            let a = dense_of(&Kfac::fit_on(&p, &pw, &all, &mc).unwrap()).unwrap();
            let b = dense_of(&Kfac::fit(&p, &all, &mc).unwrap()).unwrap();
            let e = rel(&a, &b);
            assert!(e < 1e-12, "{name} bs={bs}: MC-KFAC on a permutation of the data {e:.3e}");
            let a = dense_of(&Kfac::fit_on(&p, &walk, &all, &mc).unwrap()).unwrap();
            let b = dense_of(&Kfac::fit(&q, &all, &mc).unwrap()).unwrap();
            assert!(rel(&a, &b) > 1e-6, "{name} bs={bs}: MC draws must follow the global sample index");
        }
    }
}

/// The operator registry builds KFAC and EKFAC on the spec's data walk (whole data or a
/// subset), with the damping mode of its shifted solves, and passes fit errors on typed.
#[test]
fn registry_builds_kfac_and_ekfac() {
    use curvops::registry::{build, OperatorKind, OperatorSpec, RegistryError};
    use curvops::DataWalk;
    let (p, _) = Reference::load("mlp_relu_ce_batches");
    let all = ActiveSet::all(&p.net.layout);
    let o = type2();
    let idx = vec![0, 2, 3];
    let walk = DataWalk::subset(&p.data, &idx, 2).unwrap();
    let o2 = KfacOptions { batch_size: 2, ..o };
    let kind = OperatorKind::Kfac { options: o, damping: DampingMode::Exact };
    let spec = OperatorSpec { subset: Some(idx.clone()), batch_size: 2, ..OperatorSpec::new(kind) };
    let got = dense_of(build(&p, &spec).unwrap().as_ref()).unwrap();
    let want = dense_of(&Kfac::fit_on(&p, &walk, &all, &o2).unwrap()).unwrap();
    assert!(rel(&got, &want) < 1e-14, "registry KFAC on a subset");
    let spec =
        OperatorSpec { subset: Some(idx), batch_size: 2, ..OperatorSpec::new(OperatorKind::Ekfac { options: o }) };
    let got = dense_of(build(&p, &spec).unwrap().as_ref()).unwrap();
    let want = dense_of(&Ekfac::fit_on(&p, &walk, &all, &o2).unwrap()).unwrap();
    assert!(rel(&got, &want) < 1e-14, "registry EKFAC on a subset");
    // π-damping: the shifted solve is the factor-damped inverse, not (KFAC + λI)⁻¹
    let op = build(&p, &OperatorSpec::new(OperatorKind::Kfac { options: o, damping: DampingMode::Pi })).unwrap();
    let k = Kfac::fit(&p, &all, &o).unwrap();
    let d = all.dim;
    let v: Vec<f64> = (0..d).map(|i| (0.3 * i as f64).sin()).collect();
    let mut out = Mat::<f64>::zeros(d, 1);
    op.solve_shifted(0.1, out.as_mut(), faer::MatRef::from_column_major_slice(&v, d, 1)).unwrap();
    let got: Vec<f64> = (0..d).map(|i| out[(i, 0)]).collect();
    let want = k.inverse(0.1, DampingMode::Pi).unwrap().apply_vec(&v).unwrap();
    assert!(rel(&got, &want) < 1e-12, "π-damped solve");
    let exact = k.inverse(0.1, DampingMode::Exact).unwrap().apply_vec(&v).unwrap();
    assert!(rel(&got, &exact) > 1e-6, "π damping differs from exact damping");
    assert!((op.logdet_shifted(0.1).unwrap() - k.logdet_damped(0.1, DampingMode::Pi).unwrap()).abs() < 1e-10);
    // a fit error arrives typed
    let (bn, _) = Reference::load("cnn_batchnorm_softlabel_ce");
    let fo = OperatorKind::Kfac {
        options: opts(FisherType::ForwardOnly, KfacApprox::Expand, false),
        damping: DampingMode::Exact,
    };
    let built = build(&bn, &OperatorSpec::new(fo));
    match &built {
        Err(RegistryError::Kfac(KfacError::Parameter { param, .. })) => assert!(param.contains("weight"), "{param}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("forward-only KFAC over batch norm must fail"),
    };
}
