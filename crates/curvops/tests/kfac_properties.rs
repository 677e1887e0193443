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

mod common;
mod diag_nets;

use common::{rel, Reference};
use curvops::dense::{dense_curvature, dense_of};
use curvops::kfac::io::{load_factors, save_ekfac, save_kfac, LoadedFactors};
use curvops::kfac::{fit_ekfac, DampingMode, Ekfac, FisherType, Kfac, KfacApprox, KfacFactors, KfacOptions};
use curvops::{ActiveSet, Curvature, CurvatureOperator, LinearOperator, Problem, Structure};
use curvops_linalg::DenseOp;
use curvops_nn::loss::{Loss, LossKind, Reduction};
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
        let kd = dense_of(&k);
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
            let kd = dense_of(&Kfac::fit(&p, &all, &type2()).unwrap());
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
        let exact = Kfac::fit(&p, &all, &type2()).unwrap().apply_vec(&v);
        let s = 1500;
        let mut sum = vec![0.0; d];
        let mut sum2 = vec![0.0; d];
        for seed in 0..s {
            let o = opts(FisherType::Mc { samples: 1, seed }, KfacApprox::Expand, false);
            let f = Kfac::fit(&p, &all, &o).unwrap().apply_vec(&v);
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
        let fm = Kfac::fit(&p, &all, &o).unwrap().apply_vec(&v);
        for i in 0..d {
            let tol = 4.0 * sd[i] / (m as f64).sqrt() + 1e-12;
            assert!((fm[i] - exact[i]).abs() < tol, "{kind:?}: M={m} coordinate {i}: {} vs {}", fm[i], exact[i]);
        }
        // keyed draws: the fit does not depend on the batch size
        let o = opts(FisherType::Mc { samples: 3, seed: 9 }, KfacApprox::Expand, false);
        let a = dense_of(&Kfac::fit(&p, &all, &o).unwrap());
        let b = dense_of(&Kfac::fit(&p, &all, &KfacOptions { batch_size: 2, ..o }).unwrap());
        assert!(rel(&a, &b) < 1e-13, "{kind:?}: MC KFAC depends on the batch size");
    }
}

/// The dense block-diagonal matrix of factors, with `A → A + δ_A I`, `B → B + δ_B I` per layer
/// (`damp(layer) = (δ_A, δ_B)`), assembled entry by entry in the parameter layout.
fn dense_from_factors(f: &KfacFactors<f64>, damp: impl Fn(usize) -> (f64, f64)) -> Vec<f64> {
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
            (0..l.out).flat_map(|o| (0..l.inp).map(move |c| (w + o * l.inp + c, o, Some(c)))).collect()
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
                let kd = dense_of(&k);
                assert!(rel(&dense_from_factors(f, |_| (0.0, 0.0)), &kd) < 1e-14, "{name}: assembly");
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
                    (DampingMode::Same, dense_inverse(&dense_from_factors(f, |_| (delta, delta)), d)),
                    (DampingMode::Pi, dense_inverse(&dense_from_factors(f, pi_damp), d)),
                    (DampingMode::Exact, {
                        let mut m = kd.clone();
                        for i in 0..d {
                            m[i * d + i] += delta;
                        }
                        dense_inverse(&m, d)
                    }),
                ];
                for (mode, want) in cases {
                    let inv = dense_of(&k.inverse(delta, mode).unwrap());
                    let e = rel(&inv, &want);
                    assert!(e < TOL, "{name} joint={joint} {approx:?} {mode:?}: {e:.3e}");
                    // log det of the damped matrix: −log det of its inverse
                    let ld = DenseOp::with_structure(to_mat(&want, d), Structure::PSD).logdet().unwrap();
                    let got = k.logdet_damped(delta, mode).unwrap();
                    assert!((got + ld).abs() <= 1e-10 * ld.abs().max(1.0), "{name} {mode:?}: logdet {got} vs {}", -ld);
                }
                // EKFAC: exact damping only
                let ek = fit_ekfac(p, &all, &o).unwrap();
                let mut m = dense_of(&ek);
                for i in 0..d {
                    m[i * d + i] += delta;
                }
                let e = rel(&dense_of(&ek.inverse(delta, DampingMode::Exact).unwrap()), &dense_inverse(&m, d));
                assert!(e < TOL, "{name} joint={joint} {approx:?} EKFAC inverse: {e:.3e}");
                assert!(ek.inverse(delta, DampingMode::Pi).is_err(), "EKFAC π-damping must be an error");
            }
        }
    }
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
        let d = all.dim;
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
                let tag = format!("{name} {tag} {which}");
                let m = dense_of(op.as_ref());
                let mm = to_mat(&m, d);
                let dense = DenseOp::with_structure(mm.clone(), Structure::PSD);
                let tr: f64 = (0..d).map(|i| m[i * d + i]).sum();
                assert!((op.trace().unwrap() - tr).abs() <= 1e-12 * tr.abs(), "{tag}: trace");
                assert!(
                    rel(&op.diagonal().unwrap(), &(0..d).map(|i| m[i * d + i]).collect::<Vec<_>>()) < 1e-13,
                    "{tag}: diag"
                );
                let f2: f64 = m.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!((fro - f2).abs() <= 1e-12 * f2, "{tag}: frobenius {fro} vs {f2}");
                for shift in [0.1, 1.0] {
                    let want = dense.logdet_shifted(shift).unwrap();
                    let got = op.logdet_shifted(shift).unwrap();
                    assert!(
                        (got - want).abs() <= 1e-10 * want.abs().max(1.0),
                        "{tag}: logdet +{shift}: {got} vs {want}"
                    );
                    let b = Mat::<f64>::from_fn(d, 2, |i, j| ((i * 3 + j) as f64).cos());
                    let mut x = Mat::<f64>::zeros(d, 2);
                    op.solve_shifted(shift, x.as_mut(), b.as_ref()).unwrap();
                    let mut r = Mat::<f64>::zeros(d, 2);
                    dense.apply(r.as_mut(), x.as_ref());
                    let res: f64 = (0..d)
                        .flat_map(|i| (0..2).map(move |j| (i, j)))
                        .map(|(i, j)| (r[(i, j)] + shift * x[(i, j)] - b[(i, j)]).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    assert!(res < 1e-10, "{tag}: solve +{shift}: residual {res}");
                }
                // determinant where the matrix is nonsingular
                let evals = mm.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
                if evals[0] > 1e-6 * evals[d - 1] {
                    let want = dense.logdet().unwrap().exp();
                    assert!((det - want).abs() <= 1e-9 * want, "{tag}: det {det} vs {want}");
                    det_checks += 1;
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
                    assert!(dense_of(&l) == dense_of(&k), "KFAC round trip not exact");
                    assert_eq!(l.factors().options, KfacOptions { batch_size: 0, ..o });
                }
                LoadedFactors::Ekfac(_) => panic!("loaded EKFAC from a KFAC file"),
            }
            let e = fit_ekfac(&p, &active, &o).unwrap();
            let path = tmp(&format!("e{joint}{}.safetensors", active.dim));
            save_ekfac(&path, &e).unwrap();
            match load_factors::<f64>(&path, &p, &active).unwrap() {
                LoadedFactors::Ekfac(l) => assert!(dense_of(&l) == dense_of(&e), "EKFAC round trip not exact"),
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
    assert!(dense_of(&l) == dense_of(&k), "f32 round trip not exact");
    // a file fitted for other parameters is refused, naming both sets
    let sub = ActiveSet::from_names(&p.net.layout, &["4.weight".to_string()]).unwrap();
    let err = load_factors::<f64>(&tmp(&format!("kfalse{}.safetensors", p.net.layout.total)), &p, &sub).unwrap_err();
    assert!(err.to_string().contains("4.weight"), "{err}");
}

/// A parameter of a layer KFAC does not support is an error naming it; restricting the
/// operator to supported layers works.
#[test]
fn unsupported_parameters_are_named() {
    let (p, _) = Reference::load_extra("cnn_bn2d_affine_maxpool_ce");
    let all = ActiveSet::all(&p.net.layout);
    let err = Kfac::fit(&p, &all, &type2()).unwrap_err().to_string();
    assert!(err.contains("'1.weight'") && err.contains("batchnorm2d"), "{err}");
    let err = fit_ekfac(&p, &all, &type2()).unwrap_err().to_string();
    assert!(err.contains("'1.weight'"), "{err}");
    let names: Vec<String> = ["0.weight", "0.bias", "5.weight", "5.bias"].iter().map(|s| s.to_string()).collect();
    let sub = ActiveSet::from_names(&p.net.layout, &names).unwrap();
    let k = Kfac::fit(&p, &sub, &type2()).unwrap();
    assert_eq!(k.nrows(), sub.dim);
    // EKFAC with forward-only is an error too
    assert!(fit_ekfac(&p, &sub, &opts(FisherType::ForwardOnly, KfacApprox::Expand, false)).is_err());
}

/// f32 KFAC / EKFAC agree with f64 to f32 accuracy.
#[test]
fn f32_close_to_f64() {
    let spec =
        diag_nets::kfac_cnn_spec(Loss { kind: LossKind::CrossEntropy, reduction: Reduction::Mean, positions: 1 });
    let p64 = diag_nets::random_problem::<f64>(&spec, 6, 3, false);
    let p32 = diag_nets::random_problem::<f32>(&spec, 6, 3, false);
    let all = ActiveSet::all(&p64.net.layout);
    let a = dense_of(&Kfac::fit(&p64, &all, &type2()).unwrap());
    let b: Vec<f64> = dense_of(&Kfac::fit(&p32, &all, &type2()).unwrap()).iter().map(|&v| v as f64).collect();
    assert!(rel(&b, &a) < 1e-4, "KFAC f32 vs f64: {}", rel(&b, &a));
    let a = dense_of(&Ekfac::fit(&p64, &all, &type2()).unwrap());
    let b: Vec<f64> = dense_of(&Ekfac::fit(&p32, &all, &type2()).unwrap()).iter().map(|&v| v as f64).collect();
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
            let e = rel(&dense_of(&k), &dense_of(&Kfac::new(f)));
            assert!(e < 1e-13, "{name}: low-rank vs dense products {e:.3e}");
        }
    }
}
