//! The checks of `reference.rs` over the extra problems of `testdata/extra` (made by
//! `testdata/gen_extra.py` with PyTorch 2.15 + curvlinops 3.0.1): conv2d stride / padding /
//! dilation / groups / rectangular kernels / no bias, max- and avg-pooling with stride ≠ kernel
//! and padding, batch norm 1d/2d with and without affine, gelu, silu, leaky_relu, sigmoid, tanh,
//! dropout, every loss and reduction with hard and soft targets, single- and multi-output, deep
//! and bias-free networks. Data unsplit and split into the `batch_size` of `meta.json` (which
//! never divides N); relative Frobenius error ≤ 1e-10.
//!
//! Each test checks every problem before failing and lists all checks over the tolerance; run
//! with `--nocapture` to see the largest error per quantity.

use crate::common::*;
use curvops::dense::{dense_curvature, dense_jacobian};
use curvops::gradient::{loss_and_grad, loss_value, per_sample_grads};
use curvops::{ActiveSet, Curvature, CurvatureOperator, JacobianOperator, LinearOperator};
use curvops_tensor::rng::Rng;

const TOL: f64 = 1e-10;

const CURVATURES: [(Curvature, &str); 3] =
    [(Curvature::Hessian, "hessian"), (Curvature::Ggn, "ggn"), (Curvature::Ef, "ef")];

fn batch_sizes(r: &Reference) -> [usize; 2] {
    [0, r.batch_size()]
}

/// Indices of the parameter entries selected by `keep` (in the full vector) and their names.
fn entries(
    layout: &curvops_nn::ParamLayout,
    keep: impl Fn(&curvops_nn::ParamEntry) -> bool,
) -> (Vec<String>, Vec<usize>) {
    let sel: Vec<_> = layout.entries.iter().filter(|e| keep(e)).collect();
    let names = sel.iter().map(|e| e.name.clone()).collect();
    let idx = sel.iter().flat_map(|e| e.offset..e.offset + e.len).collect();
    (names, idx)
}

#[test]
fn extra_list_matches_testdata() {
    let mut on_disk: Vec<String> = std::fs::read_dir(extra_dir())
        .expect("testdata/extra (run testdata/gen_extra.py)")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("model.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = EXTRA.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "common::EXTRA vs testdata/extra");
    for name in EXTRA {
        let (p, r) = Reference::load_extra(name);
        assert_eq!(p.net.layout.total as u64, r.meta["D"].as_u64().unwrap(), "{name}: D");
        assert_eq!(p.data.n as u64, r.meta["N"].as_u64().unwrap(), "{name}: N");
        for (i, e) in p.net.layout.entries.iter().enumerate() {
            let m = &r.meta["param_order"][i];
            assert_eq!(e.name, m["name"].as_str().unwrap(), "{name}: param order");
            assert_eq!(e.offset as u64, m["offset"].as_u64().unwrap(), "{name}: offset");
        }
        assert_ne!(p.data.n % r.batch_size(), 0, "{name}: batch size should not divide N");
    }
}

#[test]
fn outputs_loss_and_gradient() {
    let mut log = ErrorLog::new(TOL);
    for name in EXTRA {
        let (p, r) = Reference::load_extra(name);
        let (_, outs) = r.array("outputs");
        let f = p.net.predict(&p.theta, &p.data.x, p.data.n);
        log.rel("outputs", name, &f, &outs);
        let (_, loss) = r.array("loss");
        let (_, grad) = r.array("grad");
        let all = ActiveSet::all(&p.net.layout);
        for bs in batch_sizes(&r) {
            let (l, g) = loss_and_grad(&p, &all, bs);
            log.check("loss", format!("{name} bs={bs}"), (l - loss[0]).abs() / loss[0].abs());
            let l2 = loss_value(&p, bs);
            log.check("loss_value", format!("{name} bs={bs}"), (l2 - loss[0]).abs() / loss[0].abs());
            log.rel("grad", format!("{name} bs={bs}"), &g, &grad);
        }
    }
    log.finish();
}

#[test]
fn dense_curvatures_match() {
    let mut log = ErrorLog::new(TOL);
    for name in EXTRA {
        let (p, r) = Reference::load_extra(name);
        let all = ActiveSet::all(&p.net.layout);
        for (kind, key) in CURVATURES {
            let (_, want) = r.array(key);
            for bs in batch_sizes(&r) {
                let op = CurvatureOperator::new(&p, kind, all.clone(), bs);
                let got = dense_curvature(&op, &|_, _| {});
                log.rel(&format!("{key} dense_curvature"), format!("{name} bs={bs}"), &got, &want);
                // the generic unit-vector route agrees too
                let got2 = curvops::dense::dense_of(&op).unwrap();
                log.rel(&format!("{key} dense_of"), format!("{name} bs={bs}"), &got2, &want);
            }
        }
    }
    log.finish();
}

#[test]
fn matvec_blocks_match() {
    let mut log = ErrorLog::new(TOL);
    let mut rng = Rng::new(1);
    for name in EXTRA {
        let (p, r) = Reference::load_extra(name);
        let all = ActiveSet::all(&p.net.layout);
        let d = all.dim;
        for k in [1, 3] {
            let v: Vec<f64> = (0..k * d).map(|_| rng.normal()).collect();
            for (kind, key) in CURVATURES {
                let (_, m) = r.array(key);
                let want = matmul_block(&m, d, d, &v, k);
                for bs in batch_sizes(&r) {
                    let op = CurvatureOperator::new(&p, kind, all.clone(), bs);
                    let got = op.apply_block(&v, k);
                    log.rel(&format!("{key} matvec"), format!("{name} k={k} bs={bs}"), &got, &want);
                }
            }
        }
    }
    log.finish();
}

#[test]
fn jacobian_and_transpose_match() {
    let mut log = ErrorLog::new(TOL);
    let mut rng = Rng::new(2);
    for name in EXTRA {
        let (p, r) = Reference::load_extra(name);
        let all = ActiveSet::all(&p.net.layout);
        let (shape, jref) = r.array("jacobian");
        let (rows, d) = (shape[0], shape[1]);
        let jt: Vec<f64> = (0..d).flat_map(|i| (0..rows).map(move |q| (i, q))).map(|(i, q)| jref[q * d + i]).collect();
        for bs in batch_sizes(&r) {
            let what = format!("{name} bs={bs}");
            log.rel("jacobian dense", &what, &dense_jacobian(&p, &all, bs), &jref);
            let op = JacobianOperator::new(&p, all.clone(), bs, false);
            let opt = JacobianOperator::new(&p, all.clone(), bs, true);
            assert_eq!((op.nrows(), op.ncols()), (rows, d), "{what}");
            assert_eq!((opt.nrows(), opt.ncols()), (d, rows), "{what}");
            let k = 2;
            let v: Vec<f64> = (0..k * d).map(|_| rng.normal()).collect();
            let want = matmul_block(&jref, rows, d, &v, k);
            log.rel("jacobian J v", &what, &op.jvp_block(&v, k), &want);
            let u: Vec<f64> = (0..k * rows).map(|_| rng.normal()).collect();
            let want_t = matmul_block(&jt, d, rows, &u, k);
            log.rel("jacobian J^T u", &what, &opt.vjp_block(&u, k), &want_t);
            log.rel("jacobian dense_of(J).unwrap()", &what, &curvops::dense::dense_of(&op).unwrap(), &jref);
            log.rel("jacobian-t dense_of(J^T).unwrap()", &what, &curvops::dense::dense_of(&opt).unwrap(), &jt);
        }
    }
    log.finish();
}

#[test]
fn per_sample_gradients_match() {
    let mut log = ErrorLog::new(TOL);
    for name in EXTRA {
        let (p, r) = Reference::load_extra(name);
        let all = ActiveSet::all(&p.net.layout);
        let (_, want) = r.array("per_sample_loss_grads");
        for bs in batch_sizes(&r) {
            let got = per_sample_grads(&p, &all, bs);
            log.rel("per_sample_loss_grads", format!("{name} bs={bs}"), &got, &want);
        }
    }
    log.finish();
}

#[test]
fn last_layer_subset_is_the_sub_block() {
    let mut log = ErrorLog::new(TOL);
    for name in EXTRA {
        let (p, r) = Reference::load_extra(name);
        let layout = &p.net.layout;
        let d = layout.total;
        let last = layout.entries.last().unwrap().layer;
        let (names, idx) = entries(layout, |e| e.layer == last);
        let sub = ActiveSet::from_names(layout, &names).unwrap();
        for (kind, key) in CURVATURES {
            let (_, m) = r.array(key);
            let want = sub_block(&m, d, &idx, &idx);
            for bs in batch_sizes(&r) {
                let op = CurvatureOperator::new(&p, kind, sub.clone(), bs);
                let got = dense_curvature(&op, &|_, _| {});
                log.rel(&format!("{key} last layer"), format!("{name} bs={bs}"), &got, &want);
            }
        }
        let (_, jref) = r.array("jacobian");
        let rows = jref.len() / d;
        let want = sub_block(&jref, d, &(0..rows).collect::<Vec<_>>(), &idx);
        for bs in batch_sizes(&r) {
            let got = dense_jacobian(&p, &sub, bs);
            log.rel("jacobian last layer", format!("{name} bs={bs}"), &got, &want);
        }
        // a single weight tensor in the first layer (exercises the skipped layers below it)
        let first = &layout.entries[0];
        let one = ActiveSet::from_names(layout, std::slice::from_ref(&first.name)).unwrap();
        let idx1: Vec<usize> = (first.offset..first.offset + first.len).collect();
        let (_, h) = r.array("hessian");
        let op = CurvatureOperator::new(&p, Curvature::Hessian, one, r.batch_size());
        let got = dense_curvature(&op, &|_, _| {});
        log.rel("hessian first tensor", format!("{name} {}", first.name), &got, &sub_block(&h, d, &idx1, &idx1));
    }
    log.finish();
}

#[test]
fn every_layer_block_matches() {
    // the diagonal block of each parametric layer (deep networks: active layers in the middle,
    // inactive ones on both sides)
    let mut log = ErrorLog::new(TOL);
    for name in EXTRA {
        let (p, r) = Reference::load_extra(name);
        let layout = &p.net.layout;
        let d = layout.total;
        let mut layers: Vec<usize> = layout.entries.iter().map(|e| e.layer).collect();
        layers.dedup();
        for l in layers {
            let (names, idx) = entries(layout, |e| e.layer == l);
            let sub = ActiveSet::from_names(layout, &names).unwrap();
            for (kind, key) in CURVATURES {
                let (_, m) = r.array(key);
                let want = sub_block(&m, d, &idx, &idx);
                let op = CurvatureOperator::new(&p, kind, sub.clone(), r.batch_size());
                let got = dense_curvature(&op, &|_, _| {});
                log.rel(&format!("{key} layer block"), format!("{name} layer {l}"), &got, &want);
            }
        }
    }
    log.finish();
}

#[test]
fn bias_only_subsets_match() {
    // every bias tensor (no weights): inactive weights between active biases
    let mut log = ErrorLog::new(TOL);
    for name in EXTRA {
        let (p, r) = Reference::load_extra(name);
        let layout = &p.net.layout;
        let (names, idx) = entries(layout, |e| e.name.ends_with("bias"));
        if names.is_empty() {
            continue; // the bias-free networks
        }
        let sub = ActiveSet::from_names(layout, &names).unwrap();
        let d = layout.total;
        for (kind, key) in [(Curvature::Hessian, "hessian"), (Curvature::Ggn, "ggn")] {
            let (_, m) = r.array(key);
            let want = sub_block(&m, d, &idx, &idx);
            let op = CurvatureOperator::new(&p, kind, sub.clone(), r.batch_size());
            let v: Vec<f64> = (0..idx.len() * 2).map(|i| (i as f64 * 0.37).sin()).collect();
            let got = op.apply_block(&v, 2);
            let want_v = matmul_block(&want, idx.len(), idx.len(), &v, 2);
            log.rel(&format!("{key} biases"), name, &got, &want_v);
        }
    }
    log.finish();
}

#[test]
fn cached_operator_equals_cold_operator() {
    for name in EXTRA {
        let (p, r) = Reference::load_extra(name);
        let all = ActiveSet::all(&p.net.layout);
        let v: Vec<f64> = (0..all.dim * 2).map(|i| (i as f64 * 0.11).cos()).collect();
        let batches = p.data.n.div_ceil(r.batch_size());
        for kind in [Curvature::Hessian, Curvature::Ggn, Curvature::Ef] {
            let cold = CurvatureOperator::new(&p, kind, all.clone(), r.batch_size());
            let warm = CurvatureOperator::new(&p, kind, all.clone(), r.batch_size()).with_cache(1 << 30);
            let a = cold.apply_block(&v, 2);
            let b1 = warm.apply_block(&v, 2);
            assert_eq!(warm.cache().batches_held(), batches, "{name}: all batches cached");
            let b2 = warm.apply_block(&v, 2);
            assert_eq!(a, b1, "{name} {kind:?}");
            assert_eq!(a, b2, "{name} {kind:?}");
        }
    }
}
