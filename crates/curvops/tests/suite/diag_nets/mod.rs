//! Random networks using every layer option of the engine (for the diagonal and KFAC tests):
//! the CNN and MLP of `identities.rs`, with every loss and reduction.

#![allow(dead_code)]

use curvops::Problem;
use curvops_nn::data::{Dataset, Targets};
use curvops_nn::layers::ActivationKind as A;
use curvops_nn::loss::{Loss, LossKind, Reduction};
use curvops_nn::spec::{BnBuffers, LayerSpec as L, ModelSpec};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;

#[allow(clippy::too_many_arguments)]
pub fn conv(
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
pub fn cnn_spec(loss: Loss) -> ModelSpec {
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

/// A CNN without batch norm (every parameter is KFAC-able): grouped, strided, dilated and
/// padded convolutions, pooling, smooth and piecewise-linear activations.
pub fn kfac_cnn_spec(loss: Loss) -> ModelSpec {
    ModelSpec {
        input_shape: vec![2, 9, 8],
        layers: vec![
            conv(2, 4, (3, 2), (2, 1), (1, 0), (1, 2), 2, true),
            L::Activation(A::Tanh),
            L::MaxPool2d { kernel: (2, 3), stride: (1, 2), padding: (1, 1), dilation: (1, 1) },
            conv(4, 4, (2, 2), (1, 1), (1, 1), (1, 1), 4, false),
            L::Activation(A::Relu),
            L::AvgPool2d { kernel: (3, 2), stride: (2, 2), padding: (1, 1) },
            L::Flatten,
            L::Linear { in_f: 48, out_f: 5, bias: true, transposed: false },
            L::Activation(A::Sigmoid),
            L::Linear { in_f: 5, out_f: 3, bias: true, transposed: false },
        ],
        loss,
    }
}

pub fn mlp_spec(loss: Loss) -> ModelSpec {
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

pub fn random_problem<T: Float>(spec: &ModelSpec, n: usize, seed: u64, soft: bool) -> Problem<T> {
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

pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-300)
}

/// Every loss and reduction, with soft labels for cross-entropy.
pub fn losses() -> Vec<(Loss, bool)> {
    let mut v = Vec::new();
    for reduction in [Reduction::Mean, Reduction::Sum] {
        for kind in [LossKind::Mse, LossKind::CrossEntropy, LossKind::BceWithLogits] {
            v.push((Loss { kind, reduction, positions: 1 }, false));
        }
        v.push((Loss { kind: LossKind::CrossEntropy, reduction, positions: 1 }, true));
    }
    v
}

/// The diagonal of a row-major `d × d` matrix.
pub fn diag_of(m: &[f64], d: usize) -> Vec<f64> {
    (0..d).map(|i| m[i * d + i]).collect()
}

/// A graph on `[3, 4]` inputs whose second derivatives are all elementwise (the Hessian
/// diagonal's residual columns apply): linear on three rows per sample, a transposed linear,
/// smooth activations, a fan-out into a residual add and a concat, mean over rows, head.
/// `LOSS`, `REDUCTION`, `OUT` are placeholders.
pub const SMOOTH_GRAPH: &str = r#"{
  "input_shape": [3, 4],
  "nodes": [
    {"name": "fc1", "type": "linear", "in_features": 4, "out_features": 5, "inputs": ["x"]},
    {"name": "a1", "type": "tanh"},
    {"name": "fc2", "type": "linear", "in_features": 5, "out_features": 5, "transposed": true},
    {"name": "a2", "type": "gelu"},
    {"name": "res", "type": "add", "inputs": ["a1", "a2"]},
    {"name": "s", "type": "sigmoid"},
    {"name": "cat", "type": "concat", "dim": 1, "inputs": ["s", "a1"]},
    {"name": "pool", "type": "mean", "dims": [0]},
    {"name": "head", "type": "linear", "in_features": 10, "out_features": OUT}
  ],
  "loss": {"type": "LOSS", "reduction": "REDUCTION"}
}"#;

/// [`SMOOTH_GRAPH`] with a tied weight (`fc3` reuses `fc2.weight`), a `parameter` added, and
/// sequence outputs `[3, OUT]` (no pooling).
pub const TIED_GRAPH: &str = r#"{
  "input_shape": [3, 4],
  "nodes": [
    {"name": "fc1", "type": "linear", "in_features": 4, "out_features": 5, "inputs": ["x"]},
    {"name": "a1", "type": "tanh"},
    {"name": "fc2", "type": "linear", "in_features": 5, "out_features": 5, "transposed": true},
    {"name": "a2", "type": "silu"},
    {"name": "pos", "type": "parameter", "shape": [5]},
    {"name": "res", "type": "add", "inputs": ["a1", "a2", "pos"]},
    {"name": "fc3", "type": "linear", "in_features": 5, "out_features": 5, "bias": false, "transposed": true,
     "params": {"weight": "fc2.weight"}},
    {"name": "s", "type": "sigmoid"},
    {"name": "head", "type": "linear", "in_features": 5, "out_features": OUT}
  ],
  "loss": {"type": "LOSS", "reduction": "REDUCTION"}
}"#;

/// A small GPT (token ids, embedding + learned positions, layer norm, causal attention, GELU
/// MLP, residual adds, output layer tied to the embedding), sequence outputs `[5, 7]`.
pub const GPT_GRAPH: &str = r#"{
  "inputs": {"x": {"shape": [5], "dtype": "int"}},
  "nodes": [
    {"name": "wte", "type": "embedding", "num_embeddings": 7, "embedding_dim": 6, "inputs": ["x"]},
    {"name": "wpe", "type": "parameter", "shape": [5, 6]},
    {"name": "h0", "type": "add", "inputs": ["wte", "wpe"]},
    {"name": "ln1", "type": "layernorm", "normalized_shape": 6, "inputs": ["h0"]},
    {"name": "attn", "type": "multihead_attention", "embed_dim": 6, "num_heads": 2, "causal": true},
    {"name": "h1", "type": "add", "inputs": ["h0", "attn"]},
    {"name": "ln2", "type": "layernorm", "normalized_shape": [6]},
    {"name": "fc", "type": "linear", "in_features": 6, "out_features": 9},
    {"name": "act", "type": "gelu", "approximate": "tanh"},
    {"name": "proj", "type": "linear", "in_features": 9, "out_features": 6, "transposed": true},
    {"name": "h2", "type": "add", "inputs": ["h1", "proj"]},
    {"name": "lm_head", "type": "linear", "in_features": 6, "out_features": 7, "bias": false,
     "params": {"weight": "wte.weight"}}
  ],
  "loss": {"type": "cross_entropy", "reduction": "REDUCTION"}
}"#;

/// A random problem for a graph spec (`model.json` text): weights `0.5·N(0, 1)`, inputs and
/// targets of the loss (class ids per position for sequence cross-entropy).
pub fn random_graph_problem<T: Float>(json: &str, n: usize, seed: u64) -> Problem<T> {
    let spec = curvops_nn::spec::parse_model(json, "<test>").unwrap_or_else(|e| panic!("{e}"));
    let net = spec.build::<T>("<test>", &|_, _| unreachable!("no batch norm")).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng::new(seed);
    let theta: Vec<T> = (0..net.num_params()).map(|_| T::of(0.5 * rng.normal())).collect();
    let s: usize = spec.input_shape.iter().product();
    let x: Vec<T> = if spec.input_int {
        (0..n * s).map(|_| T::of(rng.below(7) as f64)).collect()
    } else {
        (0..n * s).map(|_| T::of(rng.normal())).collect()
    };
    let c = net.out_size();
    let t = net.loss.positions;
    let (y, w) = match net.loss.kind {
        LossKind::CrossEntropy => (
            Targets::Classes((0..n * t).map(|_| rng.below((c / t) as u64) as usize).collect()),
            if t > 1 { t } else { 0 },
        ),
        LossKind::BceWithLogits => (Targets::Dense((0..n * c).map(|_| T::of(rng.uniform())).collect()), c),
        LossKind::Mse => (Targets::Dense((0..n * c).map(|_| T::of(rng.normal())).collect()), c),
    };
    Problem { net, theta, data: Dataset { x, sample_shape: spec.input_shape.clone(), n, y, target_width: w } }
}

/// The graphs above with every loss and reduction they take (`(name, model.json)`).
pub fn graph_specs() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for red in ["mean", "sum"] {
        for (loss, out) in [("cross_entropy", "3"), ("mse", "2"), ("bce_with_logits", "2")] {
            for (g, json) in [("smooth", SMOOTH_GRAPH), ("tied", TIED_GRAPH)] {
                let j = json.replace("LOSS", loss).replace("REDUCTION", red).replace("OUT", out);
                v.push((format!("{g} {loss} {red}"), j));
            }
        }
        v.push((format!("gpt {red}"), GPT_GRAPH.replace("REDUCTION", red)));
    }
    v
}
