//! Every operator against the dense float64 references of `testdata/reference` (PyTorch 2.15 +
//! curvlinops 3.0.1), with the data unsplit and split into the `batch_size` of `meta.json`:
//! relative Frobenius error ≤ 1e-10.

use crate::common::*;
use curvops::dense::{dense_curvature, dense_jacobian};
use curvops::gradient::{loss_and_grad, per_sample_grads};
use curvops::{ActiveSet, Curvature, CurvatureOperator, JacobianOperator, LinearOperator};
use curvops_tensor::rng::Rng;

const TOL: f64 = 1e-10;

fn batch_sizes(r: &Reference) -> [usize; 2] {
    [0, r.batch_size()]
}

#[test]
fn outputs_loss_and_gradient() {
    for name in PROBLEMS {
        let (p, r) = Reference::load(name);
        let (_, outs) = r.array("outputs");
        let f = p.net.predict(&p.theta, &p.data.x, p.data.n);
        assert!(rel(&f, &outs) < TOL, "{name}: outputs {}", rel(&f, &outs));
        let (_, loss) = r.array("loss");
        let (_, grad) = r.array("grad");
        let all = ActiveSet::all(&p.net.layout);
        for bs in batch_sizes(&r) {
            let (l, g) = loss_and_grad(&p, &all, bs);
            assert!((l - loss[0]).abs() <= TOL * loss[0].abs(), "{name} bs={bs}: loss {l} vs {}", loss[0]);
            assert!(rel(&g, &grad) < TOL, "{name} bs={bs}: grad {}", rel(&g, &grad));
        }
    }
}

#[test]
fn dense_curvatures_match() {
    for name in PROBLEMS {
        let (p, r) = Reference::load(name);
        let all = ActiveSet::all(&p.net.layout);
        for (kind, key) in [(Curvature::Hessian, "hessian"), (Curvature::Ggn, "ggn"), (Curvature::Ef, "ef")] {
            let (_, want) = r.array(key);
            for bs in batch_sizes(&r) {
                let op = CurvatureOperator::new(&p, kind, all.clone(), bs);
                let got = dense_curvature(&op, &|_, _| {});
                let e = rel(&got, &want);
                assert!(e < TOL, "{name} {key} bs={bs}: dense rel err {e}");
                // the generic unit-vector route agrees too
                let got2 = curvops::dense::dense_of(&op).unwrap();
                assert!(rel(&got2, &want) < TOL, "{name} {key} bs={bs}: blocked dense {}", rel(&got2, &want));
            }
        }
    }
}

#[test]
fn matvec_blocks_match() {
    let mut rng = Rng::new(1);
    for name in PROBLEMS {
        let (p, r) = Reference::load(name);
        let all = ActiveSet::all(&p.net.layout);
        let d = all.dim;
        for k in [1, 3] {
            let v: Vec<f64> = (0..k * d).map(|_| rng.normal()).collect();
            for (kind, key) in [(Curvature::Hessian, "hessian"), (Curvature::Ggn, "ggn"), (Curvature::Ef, "ef")] {
                let (_, m) = r.array(key);
                let want = matmul_block(&m, d, d, &v, k);
                for bs in batch_sizes(&r) {
                    let op = CurvatureOperator::new(&p, kind, all.clone(), bs);
                    let got = op.apply_block(&v, k);
                    assert!(rel(&got, &want) < TOL, "{name} {key} k={k} bs={bs}: {}", rel(&got, &want));
                }
            }
        }
    }
}

#[test]
fn jacobian_and_transpose_match() {
    let mut rng = Rng::new(2);
    for name in PROBLEMS {
        let (p, r) = Reference::load(name);
        let all = ActiveSet::all(&p.net.layout);
        let (shape, jref) = r.array("jacobian");
        let (rows, d) = (shape[0], shape[1]);
        for bs in batch_sizes(&r) {
            let j = dense_jacobian(&p, &all, bs);
            assert!(rel(&j, &jref) < TOL, "{name} bs={bs}: dense jacobian {}", rel(&j, &jref));
            let op = JacobianOperator::new(&p, all.clone(), bs, false);
            let opt = JacobianOperator::new(&p, all.clone(), bs, true);
            assert_eq!((op.nrows(), op.ncols()), (rows, d));
            assert_eq!((opt.nrows(), opt.ncols()), (d, rows));
            let k = 2;
            let v: Vec<f64> = (0..k * d).map(|_| rng.normal()).collect();
            let want = matmul_block(&jref, rows, d, &v, k);
            assert!(rel(&op.jvp_block(&v, k), &want) < TOL, "{name}: J v");
            let u: Vec<f64> = (0..k * rows).map(|_| rng.normal()).collect();
            let jt: Vec<f64> =
                (0..d).flat_map(|i| (0..rows).map(move |q| (i, q))).map(|(i, q)| jref[q * d + i]).collect();
            let want_t = matmul_block(&jt, d, rows, &u, k);
            assert!(rel(&opt.vjp_block(&u, k), &want_t) < TOL, "{name}: J^T u");
            // dense of the transpose operator
            let jt_dense = curvops::dense::dense_of(&opt).unwrap();
            assert!(rel(&jt_dense, &jt) < TOL, "{name}: dense jacobian-t");
        }
    }
}

#[test]
fn per_sample_gradients_match() {
    for name in PROBLEMS {
        let (p, r) = Reference::load(name);
        let all = ActiveSet::all(&p.net.layout);
        let (_, want) = r.array("per_sample_loss_grads");
        for bs in batch_sizes(&r) {
            let got = per_sample_grads(&p, &all, bs);
            assert!(rel(&got, &want) < TOL, "{name} bs={bs}: {}", rel(&got, &want));
        }
    }
}

#[test]
fn last_layer_subset_is_the_sub_block() {
    for name in PROBLEMS {
        let (p, r) = Reference::load(name);
        let layout = &p.net.layout;
        let last = layout.entries.last().unwrap().layer;
        let names: Vec<String> = layout.entries.iter().filter(|e| e.layer == last).map(|e| e.name.clone()).collect();
        let sub = ActiveSet::from_names(layout, &names).unwrap();
        let idx: Vec<usize> =
            layout.entries.iter().filter(|e| e.layer == last).flat_map(|e| e.offset..e.offset + e.len).collect();
        let d = layout.total;
        for (kind, key) in [(Curvature::Hessian, "hessian"), (Curvature::Ggn, "ggn"), (Curvature::Ef, "ef")] {
            let (_, m) = r.array(key);
            let want = sub_block(&m, d, &idx, &idx);
            for bs in batch_sizes(&r) {
                let op = CurvatureOperator::new(&p, kind, sub.clone(), bs);
                let got = dense_curvature(&op, &|_, _| {});
                assert!(rel(&got, &want) < TOL, "{name} {key} last layer bs={bs}: {}", rel(&got, &want));
            }
        }
        let (_, jref) = r.array("jacobian");
        let rows = jref.len() / d;
        let want = sub_block(&jref, d, &(0..rows).collect::<Vec<_>>(), &idx);
        assert!(rel(&dense_jacobian(&p, &sub, 0), &want) < TOL, "{name}: jacobian last layer");
        // a single weight tensor in the first layer (exercises the skipped layers below it)
        let first = &layout.entries[0];
        let one = ActiveSet::from_names(layout, std::slice::from_ref(&first.name)).unwrap();
        let idx1: Vec<usize> = (first.offset..first.offset + first.len).collect();
        let (_, h) = r.array("hessian");
        let op = CurvatureOperator::new(&p, Curvature::Hessian, one, r.batch_size());
        let got = dense_curvature(&op, &|_, _| {});
        assert!(rel(&got, &sub_block(&h, d, &idx1, &idx1)) < TOL, "{name}: hessian block of {}", first.name);
    }
}

#[test]
fn bias_only_subsets_match() {
    // every bias tensor (no weights): inactive weights between active biases
    for name in PROBLEMS {
        let (p, r) = Reference::load(name);
        let layout = &p.net.layout;
        let names: Vec<String> =
            layout.entries.iter().filter(|e| e.name.ends_with("bias")).map(|e| e.name.clone()).collect();
        let idx: Vec<usize> = layout
            .entries
            .iter()
            .filter(|e| e.name.ends_with("bias"))
            .flat_map(|e| e.offset..e.offset + e.len)
            .collect();
        let sub = ActiveSet::from_names(layout, &names).unwrap();
        let d = layout.total;
        for (kind, key) in [(Curvature::Hessian, "hessian"), (Curvature::Ggn, "ggn")] {
            let (_, m) = r.array(key);
            let want = sub_block(&m, d, &idx, &idx);
            let op = CurvatureOperator::new(&p, kind, sub.clone(), r.batch_size());
            let v: Vec<f64> = (0..idx.len() * 2).map(|i| (i as f64 * 0.37).sin()).collect();
            let got = op.apply_block(&v, 2);
            let want_v = matmul_block(&want, idx.len(), idx.len(), &v, 2);
            assert!(rel(&got, &want_v) < TOL, "{name} {key} biases: {}", rel(&got, &want_v));
        }
    }
}

#[test]
fn cached_operator_equals_cold_operator() {
    let (p, r) = Reference::load("cnn_relu_maxpool_ce");
    let all = ActiveSet::all(&p.net.layout);
    let v: Vec<f64> = (0..all.dim * 2).map(|i| (i as f64 * 0.11).cos()).collect();
    for kind in [Curvature::Hessian, Curvature::Ggn, Curvature::Ef] {
        let cold = CurvatureOperator::new(&p, kind, all.clone(), r.batch_size());
        let warm = CurvatureOperator::new(&p, kind, all.clone(), r.batch_size()).with_cache(1 << 30);
        let a = cold.apply_block(&v, 2);
        let b1 = warm.apply_block(&v, 2);
        assert_eq!(warm.cache().batches_held(), 2, "both batches cached");
        let b2 = warm.apply_block(&v, 2);
        assert_eq!(a, b1);
        assert_eq!(a, b2);
        // a budget too small for any batch caches nothing
        let tiny = CurvatureOperator::new(&p, kind, all.clone(), r.batch_size()).with_cache(16);
        assert_eq!(tiny.apply_block(&v, 2), a);
        assert_eq!(tiny.cache().batches_held(), 0);
    }
}

/// Graph models (`../shared/reference-graph`): outputs, loss, gradient, Hessian, GGN, EF,
/// Jacobian and per-sample gradients, unbatched and at meta.json's batch size.
#[test]
fn graph_problems_match() {
    let mut log = ErrorLog::new(TOL);
    let mut rng = Rng::new(3);
    for name in GRAPH_PROBLEMS {
        let (p, r) = Reference::load_graph(name);
        let all = ActiveSet::all(&p.net.layout);
        let d = all.dim;
        assert_eq!(d, r.meta["D"].as_u64().unwrap() as usize, "{name}: D");
        // the flat order is meta.json's param_order
        for (e, m) in p.net.layout.entries.iter().zip(r.meta["param_order"].as_array().unwrap()) {
            assert_eq!(e.name, m["name"].as_str().unwrap(), "{name}: parameter order");
            assert_eq!(e.offset, m["offset"].as_u64().unwrap() as usize, "{name}: offset of {}", e.name);
        }
        let (_, outs) = r.array("outputs");
        log.rel("outputs", name, &p.net.predict(&p.theta, &p.data.x, p.data.n), &outs);
        let (_, loss) = r.array("loss");
        let (_, grad) = r.array("grad");
        let (_, psg) = r.array("per_sample_loss_grads");
        let (shape, jref) = r.array("jacobian");
        for bs in batch_sizes(&r) {
            let (l, g) = loss_and_grad(&p, &all, bs);
            log.check("loss", format!("{name} bs={bs}"), (l - loss[0]).abs() / loss[0].abs());
            log.rel("grad", format!("{name} bs={bs}"), &g, &grad);
            log.rel("per-sample grads", format!("{name} bs={bs}"), &per_sample_grads(&p, &all, bs), &psg);
            log.rel("jacobian", format!("{name} bs={bs}"), &dense_jacobian(&p, &all, bs), &jref);
            for (kind, key) in [(Curvature::Hessian, "hessian"), (Curvature::Ggn, "ggn"), (Curvature::Ef, "ef")] {
                let (_, want) = r.array(key);
                let op = CurvatureOperator::new(&p, kind, all.clone(), bs);
                log.rel(key, format!("{name} bs={bs} dense"), &dense_curvature(&op, &|_, _| {}), &want);
                let k = 3;
                let v: Vec<f64> = (0..k * d).map(|_| rng.normal()).collect();
                log.rel(
                    key,
                    format!("{name} bs={bs} matvec"),
                    &op.apply_block(&v, k),
                    &matmul_block(&want, d, d, &v, k),
                );
            }
        }
        let rows = shape[0];
        let op = JacobianOperator::new(&p, all.clone(), 0, false);
        let v: Vec<f64> = (0..2 * d).map(|_| rng.normal()).collect();
        log.rel("jacobian", format!("{name} J v"), &op.jvp_block(&v, 2), &matmul_block(&jref, rows, d, &v, 2));
        let opt = JacobianOperator::new(&p, all.clone(), 0, true);
        let jt: Vec<f64> = (0..d).flat_map(|i| (0..rows).map(move |q| (i, q))).map(|(i, q)| jref[q * d + i]).collect();
        let u: Vec<f64> = (0..2 * rows).map(|_| rng.normal()).collect();
        log.rel("jacobian-t", format!("{name} J^T u"), &opt.vjp_block(&u, 2), &matmul_block(&jt, d, rows, &u, 2));
    }
    log.finish();
}

/// The registry's subset operators (the data seam): for complementary subsets B₁, B₂ of a
/// mean-reduced loss, |B₁|·A_{B₁} + |B₂|·A_{B₂} = N·A for GGN, Hessian and the MC Fisher (whose
/// draws are keyed by the global sample index); damping adds λI; blocks restrict.
#[test]
fn registry_subsets_damping_blocks() {
    use curvops::registry::{build, Blocks, OperatorKind, OperatorSpec};
    fn two(op: &dyn LinearOperator<f64>, v: &[f64]) -> Vec<f64> {
        let d = v.len() / 2;
        [op.apply_vec(&v[..d]).unwrap(), op.apply_vec(&v[d..]).unwrap()].concat()
    }
    let mut rng = Rng::new(9);
    for name in ["layernorm_mlp_mse", "tiny_gpt_ce"] {
        let (p, _) = Reference::load_graph(name);
        let n = p.data.n;
        let d = p.net.num_params();
        let v: Vec<f64> = (0..2 * d).map(|_| rng.normal()).collect();
        let b1: Vec<usize> = (0..n).filter(|i| i % 3 == 1).collect();
        let b2: Vec<usize> = (0..n).filter(|i| i % 3 != 1).collect();
        for kind in [Curvature::Ggn, Curvature::Hessian, Curvature::FisherMc { samples: 3, seed: 5 }] {
            let full = build(&p, &OperatorSpec::new(OperatorKind::Curvature(kind))).unwrap();
            let want = two(&*full, &v);
            let mut got = vec![0.0; 2 * d];
            for b in [&b1, &b2] {
                let mut spec = OperatorSpec::new(OperatorKind::Curvature(kind));
                spec.subset = Some(b.clone());
                spec.batch_size = 2;
                let op = build(&p, &spec).unwrap();
                for (g, x) in got.iter_mut().zip(two(&*op, &v)) {
                    *g += b.len() as f64 * x / n as f64;
                }
            }
            assert!(rel(&got, &want) < TOL, "{name} {kind:?}: subsets {}", rel(&got, &want));
        }
        let mut spec = OperatorSpec::new(OperatorKind::Curvature(Curvature::Ggn));
        let plain = two(&*build(&p, &spec).unwrap(), &v);
        spec.damping = 0.5;
        let damped = two(&*build(&p, &spec).unwrap(), &v);
        let want: Vec<f64> = plain.iter().zip(&v).map(|(a, b)| a + 0.5 * b).collect();
        assert!(rel(&damped, &want) < 1e-14, "{name}: damping");
        spec.damping = 0.0;
        spec.blocks = Some(Blocks::Param);
        assert!(build(&p, &spec).is_ok());
        spec.subset = Some(vec![0, n]);
        let e = build(&p, &spec).err().expect("index out of range");
        assert!(e.to_string().contains(&format!("sample index {n}")), "{e}");
    }
}
