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
