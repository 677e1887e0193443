//! Exact diagonals on random networks with every layer option (grouped / strided / dilated /
//! padded convolutions, max and average pooling, batch norm 1d/2d with and without affine,
//! every activation, dropout, flatten) and every loss and reduction: equal to the diagonals of
//! the dense operators (`dense_curvature`) to 1e-10, for all parameters and for subsets, with
//! and without batches. The Monte-Carlo GGN diagonal equals the `fisher-mc` operator's diagonal
//! exactly and converges to the GGN diagonal (tolerance from the standard error).

use crate::diag_nets::*;
use curvops::dense::dense_curvature;
use curvops::diag::{curvature_diag, ggn_diag, ggn_mc_diag, DiagKind};
use curvops::{ActiveSet, Curvature, CurvatureOperator};
use curvops_nn::loss::{Loss, LossKind, Reduction};

const TOL: f64 = 1e-10;

#[test]
fn diagonals_equal_dense_diagonals_on_random_networks() {
    let mut worst: Vec<(f64, String)> = Vec::new();
    for (li, (loss, soft)) in losses().into_iter().enumerate() {
        for (si, spec) in [cnn_spec(loss), mlp_spec(loss), kfac_cnn_spec(loss)].iter().enumerate() {
            let p = random_problem::<f64>(spec, 5, 300 + li as u64, soft);
            let all = ActiveSet::all(&p.net.layout);
            // a subset: the parameters of every other tensor
            let mask: Vec<bool> = (0..p.net.layout.entries.len()).map(|i| i % 2 == 1).collect();
            let sub = ActiveSet::from_mask(&p.net.layout, &mask);
            for (set, sname) in [(&all, "all"), (&sub, "subset")] {
                for (curv, kind) in [
                    (Curvature::Hessian, DiagKind::Hessian),
                    (Curvature::Ggn, DiagKind::Ggn),
                    (Curvature::Ef, DiagKind::Ef),
                    (Curvature::FisherMc { samples: 3, seed: 4 }, DiagKind::GgnMc { samples: 3, seed: 4 }),
                ] {
                    let d = set.dim;
                    let dense = dense_curvature(&CurvatureOperator::new(&p, curv, set.clone(), 0), &|_, _| {});
                    let want = diag_of(&dense, d);
                    for bs in [0, 2] {
                        let got = curvature_diag(&p, kind, set, bs);
                        let e = rel(&got, &want);
                        let tag = format!("{loss:?} soft={soft} net={si} {sname} {kind:?} bs={bs}");
                        assert!(e < TOL, "{tag}: rel err {e:.3e}");
                        worst.push((e, tag));
                    }
                }
            }
        }
    }
    worst.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
    println!("largest error: {:.2e} ({})", worst[0].0, worst[0].1);
}

/// MC GGN diagonal with `M = 1` and independent seeds: the mean converges to the GGN diagonal
/// with the standard error of the mean; many samples are within 4 standard errors.
#[test]
fn mc_diagonal_converges_to_ggn_diagonal() {
    for kind in [LossKind::CrossEntropy, LossKind::Mse, LossKind::BceWithLogits] {
        let p = random_problem::<f64>(&mlp_spec(Loss { kind, reduction: Reduction::Mean, positions: 1 }), 6, 21, false);
        let all = ActiveSet::all(&p.net.layout);
        let d = all.dim;
        let exact = ggn_diag(&p, &all, 0);
        let s = 2000;
        let mut sum = vec![0.0; d];
        let mut sum2 = vec![0.0; d];
        for seed in 0..s {
            let f = ggn_mc_diag(&p, &all, 0, 1, seed);
            for i in 0..d {
                sum[i] += f[i];
                sum2[i] += f[i] * f[i];
            }
        }
        let mut z2 = 0.0;
        let mut used = 0;
        let mut sd = vec![0.0; d];
        for i in 0..d {
            let mean = sum[i] / s as f64;
            let var = (sum2[i] / s as f64 - mean * mean) * s as f64 / (s - 1) as f64;
            sd[i] = var.max(0.0).sqrt();
            let se = sd[i] / (s as f64).sqrt();
            if se > 1e-12 {
                let z = (mean - exact[i]) / se;
                assert!(z.abs() < 5.0, "{kind:?}: coordinate {i} z = {z}");
                z2 += z * z;
                used += 1;
            }
        }
        let mz2 = z2 / used as f64;
        assert!(mz2 < 2.0, "{kind:?}: mean z² = {mz2}");
        let m = 4000;
        let fm = ggn_mc_diag(&p, &all, 0, m, 99);
        for i in 0..d {
            let tol = 4.0 * sd[i] / (m as f64).sqrt() + 1e-12;
            assert!((fm[i] - exact[i]).abs() < tol, "{kind:?}: M={m} coordinate {i}: {} vs {}", fm[i], exact[i]);
        }
        // keyed draws: independent of the batch size
        let a = ggn_mc_diag(&p, &all, 0, 3, 5);
        let b = ggn_mc_diag(&p, &all, 4, 3, 5);
        assert!(rel(&a, &b) < 1e-13, "{kind:?}: MC diagonal depends on the batch size");
    }
}

/// f32 diagonals agree with f64 ones to f32 accuracy.
#[test]
fn f32_diagonals_close_to_f64() {
    let loss = Loss { kind: LossKind::CrossEntropy, reduction: Reduction::Mean, positions: 1 };
    let spec = cnn_spec(loss);
    let p64 = random_problem::<f64>(&spec, 4, 7, false);
    let p32 = random_problem::<f32>(&spec, 4, 7, false);
    let all = ActiveSet::all(&p64.net.layout);
    for kind in [DiagKind::Hessian, DiagKind::Ggn, DiagKind::Ef] {
        let a = curvature_diag(&p64, kind, &all, 0);
        let b: Vec<f64> = curvature_diag(&p32, kind, &all, 0).iter().map(|&v| v as f64).collect();
        assert!(rel(&b, &a) < 1e-4, "{kind:?}: f32 vs f64 {}", rel(&b, &a));
    }
}

/// Graphs (fan-out, multi-row and transposed linear layers, ties, parameters, layer norm,
/// attention, sequence outputs) with every loss: every exact diagonal equals the dense
/// operator's diagonal, for all parameters and a subset, unbatched and in batches of 2. The
/// Hessian takes the residual columns exactly where they are exact (the smooth graph).
#[test]
fn diagonals_equal_dense_diagonals_on_random_graphs() {
    use curvops::diag::{hessian_diag_by, hessian_diag_plan, HessianDiagMethod};
    let mut worst = (0.0f64, String::new());
    for (gi, (name, json)) in graph_specs().iter().enumerate() {
        let p = random_graph_problem::<f64>(json, 5, 40 + gi as u64);
        let all = ActiveSet::all(&p.net.layout);
        let mask: Vec<bool> = (0..p.net.layout.entries.len()).map(|i| i % 2 == 0).collect();
        let sub = ActiveSet::from_mask(&p.net.layout, &mask);
        let plan = hessian_diag_plan(&p.net, &all, HessianDiagMethod::Auto);
        let want_plan = if name.starts_with("smooth") { HessianDiagMethod::Residual } else { HessianDiagMethod::Hvp };
        assert_eq!(plan, want_plan, "{name}");
        for (set, sname) in [(&all, "all"), (&sub, "subset")] {
            for (curv, kind) in [
                (Curvature::Hessian, DiagKind::Hessian),
                (Curvature::Ggn, DiagKind::Ggn),
                (Curvature::Ef, DiagKind::Ef),
                (Curvature::FisherMc { samples: 2, seed: 3 }, DiagKind::GgnMc { samples: 2, seed: 3 }),
            ] {
                let dense = dense_curvature(&CurvatureOperator::new(&p, curv, set.clone(), 0), &|_, _| {});
                let want = diag_of(&dense, set.dim);
                for bs in [0, 2] {
                    let got = curvature_diag(&p, kind, set, bs);
                    let e = rel(&got, &want);
                    let tag = format!("{name} {sname} {kind:?} bs={bs}");
                    assert!(e < TOL, "{tag}: rel err {e:.3e}");
                    if e > worst.0 {
                        worst = (e, tag);
                    }
                }
                if kind == DiagKind::Hessian {
                    let hv = hessian_diag_by(&p, set, 2, HessianDiagMethod::Hvp);
                    assert!(rel(&hv, &want) < TOL, "{name} {sname}: Hessian diagonal by HVPs");
                }
            }
        }
    }
    println!("largest error: {:.2e} ({})", worst.0, worst.1);
}

/// Diagonals on subsets of the data ([`curvature_diag_on`] with a [`curvops::DataWalk`]): the
/// exact diagonals equal those of a problem holding only the selected samples, and the MC GGN
/// diagonal, keyed by global sample index, is additive over samples: the full-data diagonal is
/// `c_N / c_1 · Σ_n` (diagonal on the singleton `{n}`) — the same draws per sample.
#[test]
fn diagonals_on_subsets_of_the_data() {
    use curvops::diag::curvature_diag_on;
    use curvops::DataWalk;
    for (li, (loss, soft)) in losses().into_iter().enumerate() {
        let spec = mlp_spec(loss);
        let p = random_problem::<f64>(&spec, 7, 900 + li as u64, soft);
        let mut q = random_problem::<f64>(&spec, 7, 900 + li as u64, soft);
        let idx = [5, 0, 3, 3];
        q.data = p.data.select(&idx);
        let all = ActiveSet::all(&p.net.layout);
        for kind in [DiagKind::Ggn, DiagKind::Ef, DiagKind::Hessian] {
            for bs in [0, 3] {
                let walk = DataWalk::subset(&p.data, &idx, bs).unwrap();
                let (on, loss_on) = curvature_diag_on(&p, kind, &all, &walk, &|_, _| {});
                let (want, loss_want) = curvops::diag::curvature_diag_with_loss(&q, kind, &all, bs, &|_, _| {});
                let e = rel(&on, &want);
                assert!(e < 1e-12, "{li} {kind:?} bs={bs}: subset vs selected data {e:.3e}");
                assert!((loss_on - loss_want).abs() <= 1e-12 * loss_want.abs().max(1.0));
            }
        }
        let kind = DiagKind::GgnMc { samples: 3, seed: 11 };
        let full = curvature_diag(&p, kind, &all, 2);
        let mut sum = vec![0.0; full.len()];
        for i in 0..p.data.n {
            let w = DataWalk::subset(&p.data, &[i], 0).unwrap();
            let (d, _) = curvature_diag_on(&p, kind, &all, &w, &|_, _| {});
            let s = DataWalk::new(&p.data, 0).factor(&p.net) / w.factor(&p.net);
            for (a, b) in sum.iter_mut().zip(&d) {
                *a += s * b;
            }
        }
        let e = rel(&sum, &full);
        assert!(e < 1e-12, "{li}: MC diagonal over singletons vs full data {e:.3e}");
    }
}
