//! Whole-network identities on random networks that use every layer option (beyond the
//! reference problems): Hessian-vector products against finite differences of the gradient,
//! symmetry, PSD-ness, Jacobian adjoints, Gram identities, batch-size invariance, f32 vs f64,
//! and the Monte-Carlo Fisher's convergence to the GGN (tolerance from the standard error).

use curvops::dense::{dense_curvature, dense_jacobian};
use curvops::gradient::{loss_and_grad, loss_value, per_sample_grads};
use curvops::{ActiveSet, Curvature, CurvatureOperator, JacobianOperator, Problem};
use curvops_nn::data::{Dataset, Targets};
use curvops_nn::layers::ActivationKind as A;
use curvops_nn::loss::{Loss, LossKind, Reduction};
use curvops_nn::spec::{BnBuffers, LayerSpec as L, ModelSpec};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;

#[allow(clippy::too_many_arguments)]
fn conv(
    in_c: usize,
    out_c: usize,
    k: (usize, usize),
    s: (usize, usize),
    p: (usize, usize),
    d: (usize, usize),
    g: usize,
    bias: bool,
) -> L {
    L::Conv2d { in_c, out_c, kernel: k, stride: s, padding: p, dilation: d, groups: g, bias }
}

/// A CNN with every layer type and option, on [2, 9, 8] inputs.
fn cnn_spec(loss: Loss) -> ModelSpec {
    ModelSpec {
        input_shape: vec![2, 9, 8],
        layers: vec![
            conv(2, 4, (3, 2), (2, 1), (1, 0), (1, 2), 2, false),
            L::BatchNorm { dim: 2, num_features: 4, eps: 1e-3, affine: true },
            L::Activation(A::Silu),
            L::MaxPool2d { kernel: (2, 3), stride: (1, 2), padding: (1, 1), dilation: (1, 1) },
            conv(4, 4, (2, 2), (1, 1), (1, 1), (1, 1), 4, true),
            L::Activation(A::Gelu),
            L::AvgPool2d { kernel: (3, 2), stride: (2, 2), padding: (1, 1) },
            L::Dropout,
            L::Flatten,
            L::Linear { in_f: 48, out_f: 6, bias: true, transposed: false },
            L::BatchNorm { dim: 1, num_features: 6, eps: 1e-5, affine: false },
            L::Activation(A::LeakyRelu(0.1)),
            L::Linear { in_f: 6, out_f: 5, bias: false, transposed: false },
            L::Activation(A::Sigmoid),
            L::Linear { in_f: 5, out_f: 3, bias: true, transposed: false },
        ],
        loss,
    }
}

fn mlp_spec(loss: Loss) -> ModelSpec {
    ModelSpec {
        input_shape: vec![4],
        layers: vec![
            L::Linear { in_f: 4, out_f: 5, bias: true, transposed: false },
            L::Activation(A::Tanh),
            L::Linear { in_f: 5, out_f: 5, bias: true, transposed: false },
            L::Activation(A::Relu),
            L::Linear { in_f: 5, out_f: 3, bias: true, transposed: false },
        ],
        loss,
    }
}

fn random_problem<T: Float>(spec: &ModelSpec, n: usize, seed: u64, soft: bool) -> Problem<T> {
    let mut rng = Rng::new(seed);
    let mut stats = Vec::new();
    for _ in 0..8 {
        let mean: Vec<f64> = (0..8).map(|_| 0.3 * rng.normal()).collect();
        let var: Vec<f64> = (0..8).map(|_| 0.5 + rng.uniform()).collect();
        stats.push((mean, var));
    }
    let net = spec
        .build::<T>("<test>", &|i, c| {
            let (m, v) = &stats[i.parse::<usize>().unwrap_or(0) % 8];
            Ok(BnBuffers { mean: m[..c].to_vec(), var: v[..c].to_vec(), has_affine: false })
        })
        .unwrap();
    let theta: Vec<T> = (0..net.num_params()).map(|_| T::of(0.5 * rng.normal())).collect();
    let s: usize = spec.input_shape.iter().product();
    let x: Vec<T> = (0..n * s).map(|_| T::of(rng.normal())).collect();
    let c = net.out_size();
    let (y, w) = match spec.loss.kind {
        LossKind::CrossEntropy if soft => {
            let mut y = Vec::new();
            for _ in 0..n {
                let r: Vec<f64> = (0..c).map(|_| rng.uniform()).collect();
                let z: f64 = r.iter().sum();
                y.extend(r.iter().map(|v| T::of(v / z)));
            }
            (Targets::Dense(y), c)
        }
        LossKind::CrossEntropy => (Targets::Classes((0..n).map(|_| rng.below(c as u64) as usize).collect()), 0),
        LossKind::BceWithLogits => (Targets::Dense((0..n * c).map(|_| T::of(rng.uniform())).collect()), c),
        LossKind::Mse => (Targets::Dense((0..n * c).map(|_| T::of(rng.normal())).collect()), c),
    };
    Problem { net, theta, data: Dataset { x, sample_shape: spec.input_shape.clone(), n, y, target_width: w } }
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-300)
}

fn losses() -> Vec<(Loss, bool)> {
    let mut v = Vec::new();
    for reduction in [Reduction::Mean, Reduction::Sum] {
        for kind in [LossKind::Mse, LossKind::CrossEntropy, LossKind::BceWithLogits] {
            v.push((Loss { kind, reduction, positions: 1 }, false));
        }
        v.push((Loss { kind: LossKind::CrossEntropy, reduction, positions: 1 }, true));
    }
    v
}

fn min_eig(m: &[f64], d: usize) -> (f64, f64) {
    let mat = faer::Mat::<f64>::from_fn(d, d, |i, j| 0.5 * (m[i * d + j] + m[j * d + i]));
    let w = mat.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
    (w[0], w[d - 1])
}

#[test]
fn hessian_ggn_ef_identities_on_random_networks() {
    for (li, (loss, soft)) in losses().into_iter().enumerate() {
        for (si, spec) in [cnn_spec(loss), mlp_spec(loss)].iter().enumerate() {
            let tag = format!("{loss:?} soft={soft} net={si}");
            check_identities(&tag, &|| random_problem::<f64>(spec, 5, 100 + li as u64, soft));
        }
    }
}

/// Hessian symmetric and equal to finite differences of the gradient, gradient vs finite
/// differences of the loss, GGN = Jᵀ(c∇²ℓ)J and PSD, EF = cΣ∇ℓ∇ℓᵀ, Jacobian adjoint and vs
/// finite differences, batch-split invariance — on the problem `make` builds (called again for
/// perturbed copies).
fn check_identities(tag: &str, make: &dyn Fn() -> Problem<f64>) {
    let p = make();
    let all = ActiveSet::all(&p.net.layout);
    let d = all.dim;
    let h = dense_curvature(&CurvatureOperator::new(&p, Curvature::Hessian, all.clone(), 0), &|_, _| {});
    // symmetric
    let ht: Vec<f64> = (0..d * d).map(|i| h[(i % d) * d + i / d]).collect();
    assert!(rel(&h, &ht) < 1e-12, "{tag}: Hessian not symmetric");
    // H v = finite difference of the gradient along v
    let mut rng = Rng::new(7);
    let v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let hv: Vec<f64> = (0..d).map(|i| (0..d).map(|j| h[i * d + j] * v[j]).sum()).collect();
    // central differences: truncation error ∝ eps² (the graphs' LayerNorm/attention have large
    // third derivatives: 3.8e-6 at 1e-5, 3.8e-8 at 1e-6)
    let eps = 1e-6;
    let mut pp = make();
    pp.theta = p.theta.iter().zip(&v).map(|(t, vi)| t + eps * vi).collect();
    let (_, gp) = loss_and_grad(&pp, &all, 0);
    pp.theta = p.theta.iter().zip(&v).map(|(t, vi)| t - eps * vi).collect();
    let (_, gm) = loss_and_grad(&pp, &all, 0);
    let fd: Vec<f64> = gp.iter().zip(&gm).map(|(a, b)| (a - b) / (2.0 * eps)).collect();
    assert!(rel(&hv, &fd) < 1e-6, "{tag}: Hv vs FD {}", rel(&hv, &fd));
    // gradient vs FD of the loss
    let (l0, g) = loss_and_grad(&p, &all, 0);
    pp.theta = p.theta.iter().zip(&v).map(|(t, vi)| t + eps * vi).collect();
    let lp = loss_value(&pp, 0);
    pp.theta = p.theta.iter().zip(&v).map(|(t, vi)| t - eps * vi).collect();
    let lm = loss_value(&pp, 0);
    let gv: f64 = g.iter().zip(&v).map(|(a, b)| a * b).sum();
    assert!(((lp - lm) / (2.0 * eps) - gv).abs() < 1e-6 * gv.abs().max(1.0), "{tag}: gradient vs FD");
    assert!(l0.is_finite());
    // GGN = Jᵀ (c ∇²ℓ) J from the dense Jacobian and dense loss Hessians
    let ggn = dense_curvature(&CurvatureOperator::new(&p, Curvature::Ggn, all.clone(), 0), &|_, _| {});
    let j = dense_jacobian(&p, &all, 0);
    let cdim = p.net.out_size();
    let n = p.data.n;
    let f = p.net.predict(&p.theta, &p.data.x, n);
    let hl = p.net.loss.hess_dense(&f, p.data.batch(0, n).y, n, cdim);
    let c = p.net.loss.factor(n, cdim);
    let mut want = vec![0.0; d * d];
    for s in 0..n {
        for a in 0..cdim {
            for b in 0..cdim {
                let w = c * hl[(s * cdim + a) * cdim + b];
                if w == 0.0 {
                    continue;
                }
                for i in 0..d {
                    let ji = j[(s * cdim + a) * d + i] * w;
                    for k2 in 0..d {
                        want[i * d + k2] += ji * j[(s * cdim + b) * d + k2];
                    }
                }
            }
        }
    }
    assert!(rel(&ggn, &want) < 1e-10, "{tag}: GGN vs JᵀHJ {}", rel(&ggn, &want));
    let (lo, hi) = min_eig(&ggn, d);
    assert!(lo > -1e-10 * hi.abs().max(1.0), "{tag}: GGN not PSD ({lo})");
    // EF = c Σ g gᵀ, PSD
    let ef = dense_curvature(&CurvatureOperator::new(&p, Curvature::Ef, all.clone(), 0), &|_, _| {});
    let ps = per_sample_grads(&p, &all, 0);
    let mut want = vec![0.0; d * d];
    for s in 0..n {
        for i in 0..d {
            for k2 in 0..d {
                want[i * d + k2] += c * ps[s * d + i] * ps[s * d + k2];
            }
        }
    }
    assert!(rel(&ef, &want) < 1e-10, "{tag}: EF vs Σ ggᵀ");
    // Jacobian adjoint and J vs FD of the outputs
    let jo = JacobianOperator::new(&p, all.clone(), 2, false);
    let jv = jo.jvp_block(&v, 1);
    let u: Vec<f64> = (0..n * cdim).map(|_| rng.normal()).collect();
    let jtu = jo.vjp_block(&u, 1);
    let lhs: f64 = u.iter().zip(&jv).map(|(a, b)| a * b).sum();
    let rhs: f64 = jtu.iter().zip(&v).map(|(a, b)| a * b).sum();
    assert!((lhs - rhs).abs() < 1e-10 * lhs.abs().max(1.0), "{tag}: <u, Jv> != <Jᵀu, v>");
    pp.theta = p.theta.iter().zip(&v).map(|(t, vi)| t + eps * vi).collect();
    let fp = pp.net.predict(&pp.theta, &p.data.x, n);
    pp.theta = p.theta.iter().zip(&v).map(|(t, vi)| t - eps * vi).collect();
    let fm = pp.net.predict(&pp.theta, &p.data.x, n);
    let fdj: Vec<f64> = fp.iter().zip(&fm).map(|(a, b)| (a - b) / (2.0 * eps)).collect();
    assert!(rel(&jv, &fdj) < 1e-6, "{tag}: Jv vs FD");
    // batch-size invariance
    for bs in [1, 2, 3] {
        for (kind, m) in [(Curvature::Hessian, &h), (Curvature::Ggn, &ggn), (Curvature::Ef, &ef)] {
            let op = CurvatureOperator::new(&p, kind, all.clone(), bs);
            let got = op.apply_block(&v, 1);
            let want: Vec<f64> = (0..d).map(|i| (0..d).map(|jj| m[i * d + jj] * v[jj]).sum()).collect();
            assert!(rel(&got, &want) < 1e-12, "{tag}: {kind:?} bs={bs}");
        }
    }
}

/// A small GPT: token ids, embedding + learned positions, pre-LN causal attention, MLP with
/// tanh-GELU and a transposed linear, residual adds, output layer tied to the embedding.
const GPT_GRAPH: &str = r#"{
  "inputs": {"x": {"shape": [5], "dtype": "int"}},
  "nodes": [
    {"name": "wte", "type": "embedding", "num_embeddings": 7, "embedding_dim": 6, "inputs": ["x"]},
    {"name": "wpe", "type": "parameter", "shape": [5, 6]},
    {"name": "h0", "type": "add", "inputs": ["wte", "wpe"]},
    {"name": "ln1", "type": "layernorm", "normalized_shape": 6, "inputs": ["h0"]},
    {"name": "attn", "type": "multihead_attention", "embed_dim": 6, "num_heads": 2, "causal": true},
    {"name": "h1", "type": "add", "inputs": ["h0", "attn"]},
    {"name": "ln2", "type": "layernorm", "normalized_shape": [6], "bias": false},
    {"name": "fc", "type": "linear", "in_features": 6, "out_features": 9},
    {"name": "act", "type": "gelu", "approximate": "tanh"},
    {"name": "proj", "type": "linear", "in_features": 9, "out_features": 6, "transposed": true},
    {"name": "h2", "type": "add", "inputs": ["h1", "proj"]},
    {"name": "lm_head", "type": "linear", "in_features": 6, "out_features": 7, "bias": false,
     "params": {"weight": "wte.weight"}}
  ],
  "loss": {"type": "cross_entropy", "reduction": "REDUCTION"}
}"#;

/// A small vision graph: convolutions with a residual add, patches as tokens (reshape,
/// permute), a class token concatenated, attention, select and slice+mean pooled and added,
/// silu, linear head.
const VISION_GRAPH: &str = r#"{
  "input_shape": [2, 4, 4],
  "nodes": [
    {"name": "c1", "type": "conv2d", "in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1},
    {"name": "r1", "type": "tanh"},
    {"name": "c2", "type": "conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 3, "padding": 1, "bias": false},
    {"name": "res", "type": "add", "inputs": ["c1", "c2"]},
    {"name": "seq", "type": "reshape", "shape": [3, -1]},
    {"name": "tok", "type": "permute", "dims": [1, 0]},
    {"name": "cls", "type": "parameter", "shape": [1, 3], "params": {"weight": "class_token"}},
    {"name": "cat", "type": "concat", "dim": 0, "inputs": ["cls", "tok"]},
    {"name": "ln", "type": "layernorm", "normalized_shape": 3},
    {"name": "attn", "type": "multihead_attention", "embed_dim": 3, "num_heads": 1},
    {"name": "first", "type": "select", "dim": 0, "index": 0},
    {"name": "rest", "type": "slice", "dim": 0, "start": 1, "end": 17, "inputs": ["attn"]},
    {"name": "pool", "type": "mean", "dims": [0]},
    {"name": "both", "type": "add", "inputs": ["first", "pool"]},
    {"name": "s", "type": "silu"},
    {"name": "head", "type": "linear", "in_features": 3, "out_features": OUT}
  ],
  "loss": {"type": "LOSS", "reduction": "REDUCTION"}
}"#;

/// A random problem for a graph spec (weights scaled small enough to keep softmaxes smooth).
fn random_graph_problem(json: &str, n: usize, seed: u64) -> Problem<f64> {
    let spec = curvops_nn::spec::parse_model(json, "<test>").unwrap_or_else(|e| panic!("{e}"));
    let net = spec.build::<f64>("<test>", &|_, _| unreachable!("no batch norm")).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng::new(seed);
    let theta: Vec<f64> = (0..net.num_params()).map(|_| 0.5 * rng.normal()).collect();
    let s: usize = spec.input_shape.iter().product();
    let x: Vec<f64> = if spec.input_int {
        (0..n * s).map(|_| rng.below(7) as f64).collect()
    } else {
        (0..n * s).map(|_| rng.normal()).collect()
    };
    let c = net.out_size();
    let t = net.loss.positions;
    let (y, w) = match net.loss.kind {
        LossKind::CrossEntropy => (
            Targets::Classes((0..n * t).map(|_| rng.below((c / t) as u64) as usize).collect()),
            if t > 1 { t } else { 0 },
        ),
        LossKind::BceWithLogits => (Targets::Dense((0..n * c).map(|_| rng.uniform()).collect()), c),
        LossKind::Mse => (Targets::Dense((0..n * c).map(|_| rng.normal()).collect()), c),
    };
    Problem { net, theta, data: Dataset { x, sample_shape: spec.input_shape.clone(), n, y, target_width: w } }
}

#[test]
fn identities_on_random_graphs() {
    for red in ["mean", "sum"] {
        let gpt = GPT_GRAPH.replace("REDUCTION", red);
        check_identities(&format!("gpt {red}"), &|| random_graph_problem(&gpt, 4, 11));
        for (loss, out) in [("cross_entropy", "3"), ("mse", "2"), ("bce_with_logits", "2")] {
            let vis = VISION_GRAPH.replace("REDUCTION", red).replace("LOSS", loss).replace("OUT", out);
            check_identities(&format!("vision {loss} {red}"), &|| random_graph_problem(&vis, 4, 12));
        }
    }
}

#[test]
fn graphs_are_thread_count_invariant() {
    let gpt = GPT_GRAPH.replace("REDUCTION", "mean");
    let vis = VISION_GRAPH.replace("REDUCTION", "mean").replace("LOSS", "cross_entropy").replace("OUT", "3");
    for json in [gpt, vis] {
        assert_thread_count_invariant(&random_graph_problem(&json, 9, 5));
    }
}

#[test]
fn f32_agrees_with_f64() {
    let spec = cnn_spec(Loss { kind: LossKind::CrossEntropy, reduction: Reduction::Mean, positions: 1 });
    let p64 = random_problem::<f64>(&spec, 6, 3, false);
    let p32 = random_problem::<f32>(&spec, 6, 3, false);
    let (a64, a32) = (ActiveSet::all(&p64.net.layout), ActiveSet::all(&p32.net.layout));
    let v: Vec<f64> = (0..a64.dim).map(|i| ((i * 7) as f64).sin()).collect();
    let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    for kind in [Curvature::Hessian, Curvature::Ggn, Curvature::Ef] {
        let r64 = CurvatureOperator::new(&p64, kind, a64.clone(), 4).apply_block(&v, 1);
        let r32: Vec<f64> =
            CurvatureOperator::new(&p32, kind, a32.clone(), 4).apply_block(&v32, 1).iter().map(|&x| x as f64).collect();
        assert!(rel(&r32, &r64) < 1e-4, "{kind:?}: f32 vs f64 {}", rel(&r32, &r64));
    }
}

/// MC Fisher with `M = 1` and independent seeds: the sample mean of `F v` converges to `G v`
/// with the standard error of the mean; and the operator with many samples is within 4
/// standard errors. Draws do not depend on the batch size.
#[test]
fn mc_fisher_converges_to_ggn() {
    for kind in [LossKind::CrossEntropy, LossKind::Mse, LossKind::BceWithLogits] {
        let p = random_problem::<f64>(&mlp_spec(Loss { kind, reduction: Reduction::Mean, positions: 1 }), 6, 11, false);
        let all = ActiveSet::all(&p.net.layout);
        let d = all.dim;
        let v: Vec<f64> = (0..d).map(|i| ((i * 3) as f64).cos()).collect();
        let gv = CurvatureOperator::new(&p, Curvature::Ggn, all.clone(), 0).apply_block(&v, 1);
        let s = 800;
        let mut sum = vec![0.0; d];
        let mut sum2 = vec![0.0; d];
        for seed in 0..s {
            let f =
                CurvatureOperator::new(&p, Curvature::FisherMc { samples: 1, seed }, all.clone(), 0).apply_block(&v, 1);
            for i in 0..d {
                sum[i] += f[i];
                sum2[i] += f[i] * f[i];
            }
        }
        // z-scores of the per-coordinate means; a χ²-style aggregate keeps the test sharp
        let mut z2 = 0.0;
        let mut used = 0;
        let mut se1 = vec![0.0; d];
        for i in 0..d {
            let mean = sum[i] / s as f64;
            let var = (sum2[i] / s as f64 - mean * mean) * s as f64 / (s - 1) as f64;
            se1[i] = var.sqrt();
            let se = (var / s as f64).sqrt();
            if se > 1e-12 {
                let z = (mean - gv[i]) / se;
                assert!(z.abs() < 5.0, "{kind:?}: coordinate {i} z = {z}");
                z2 += z * z;
                used += 1;
            }
        }
        // E[z²] = 1; with `used` coordinates the mean z² is within a generous band
        let mz2 = z2 / used as f64;
        assert!(mz2 < 2.0, "{kind:?}: mean z² = {mz2}");
        // one operator with M = 4000 samples: error within 4 standard errors per coordinate
        let m = 4000;
        let fm =
            CurvatureOperator::new(&p, Curvature::FisherMc { samples: m, seed: 99 }, all.clone(), 0).apply_block(&v, 1);
        for i in 0..d {
            let tol = 4.0 * se1[i] / (m as f64).sqrt() + 1e-12;
            assert!((fm[i] - gv[i]).abs() < tol, "{kind:?}: M={m} coordinate {i}: {} vs {} (tol {tol})", fm[i], gv[i]);
        }
        // independent of batch splitting (draws keyed by sample index)
        let f1 =
            CurvatureOperator::new(&p, Curvature::FisherMc { samples: 3, seed: 5 }, all.clone(), 0).apply_block(&v, 1);
        let f2 =
            CurvatureOperator::new(&p, Curvature::FisherMc { samples: 3, seed: 5 }, all.clone(), 4).apply_block(&v, 1);
        assert!(rel(&f1, &f2) < 1e-13, "{kind:?}: MC Fisher depends on batch size");
    }
}

/// Same data, same seed: bitwise the same result with 1 and 2 threads (fixed chunking of the
/// per-sample loops; faer's parallel GEMM splits only the output).
#[test]
fn thread_count_does_not_change_results() {
    let spec = cnn_spec(Loss { kind: LossKind::CrossEntropy, reduction: Reduction::Mean, positions: 1 });
    assert_thread_count_invariant(&random_problem::<f64>(&spec, 19, 8, false));
}

/// Hessian, GGN and MC-Fisher products, the gradient and the per-sample gradients of `p` are
/// bitwise identical with 1 and 2 threads.
fn assert_thread_count_invariant(p: &Problem<f64>) {
    let all = ActiveSet::all(&p.net.layout);
    let v: Vec<f64> = (0..all.dim * 3).map(|i| ((i * 5) as f64).sin()).collect();
    let run = || {
        let mut out = Vec::new();
        for kind in [Curvature::Hessian, Curvature::Ggn, Curvature::FisherMc { samples: 2, seed: 4 }] {
            out.push(CurvatureOperator::new(p, kind, all.clone(), 0).apply_block(&v, 3));
        }
        out.push(loss_and_grad(p, &all, 0).1);
        out.push(per_sample_grads(p, &all, 0));
        out
    };
    curvops_tensor::threads::set_threads(1);
    let a = run();
    curvops_tensor::threads::set_threads(2);
    let b = run();
    curvops_tensor::threads::set_threads(1);
    assert_eq!(a, b);
}
