//! `curvops demo`: the main job on a built-in default, with nothing to download.
//!
//! Three interleaved spirals (300 points in the plane, 3 classes), an MLP 2-16-16-3 with tanh
//! and cross-entropy; trained briefly by full-batch gradient descent with momentum, then the
//! loss, gradient norm, accuracy, and the largest (and smallest) eigenvalues of the dense
//! Hessian and GGN at the trained point.

use crate::args::{Common, Dtype};
use crate::common::{CliResult, Progress};
use crate::obj;
use crate::output::emit;
use curvops::dense::dense_curvature;
use curvops::gradient::loss_and_grad;
use curvops::{ActiveSet, Curvature, CurvatureOperator, Problem};
use curvops_nn::data::{Dataset, Targets};
use curvops_nn::layers::ActivationKind;
use curvops_nn::loss::{Loss, LossKind, Reduction};
use curvops_nn::spec::{LayerSpec, ModelSpec};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use std::time::Instant;

/// The built-in problem: spirals + MLP with PyTorch-style initialization (seeded).
pub fn builtin_problem<T: Float>(seed: u64) -> Problem<T> {
    let lin = |i, o| LayerSpec::Linear { in_f: i, out_f: o, bias: true };
    let tanh = LayerSpec::Activation(ActivationKind::Tanh);
    let spec = ModelSpec {
        input_shape: vec![2],
        layers: vec![lin(2, 16), tanh.clone(), lin(16, 16), tanh, lin(16, 3)],
        loss: Loss { kind: LossKind::CrossEntropy, reduction: Reduction::Mean },
    };
    let net =
        spec.build::<T>("<built-in demo>", &|_, _| unreachable!("no batch norm")).expect("built-in spec is valid");
    let mut rng = Rng::new(seed);
    // nn.Linear's default init: U(-1/√fan_in, 1/√fan_in) for weight and bias
    let mut theta = vec![T::zero(); net.num_params()];
    for e in &net.layout.entries {
        let fan_in = net.layers[e.layer].in_size() as f64;
        let b = 1.0 / fan_in.sqrt();
        for v in &mut theta[e.offset..e.offset + e.len] {
            *v = T::of((2.0 * rng.uniform() - 1.0) * b);
        }
    }
    let (n_per, classes) = (100, 3);
    let mut x = Vec::with_capacity(n_per * classes * 2);
    let mut y = Vec::with_capacity(n_per * classes);
    for i in 0..n_per {
        for c in 0..classes {
            let r = i as f64 / n_per as f64;
            let t = 1.75 * r * 2.0 * std::f64::consts::PI + c as f64 * 2.0 * std::f64::consts::PI / classes as f64;
            x.push(T::of(r * t.sin() + 0.05 * rng.normal()));
            x.push(T::of(r * t.cos() + 0.05 * rng.normal()));
            y.push(c);
        }
    }
    let n = y.len();
    let data = Dataset { x, sample_shape: vec![2], n, y: Targets::Classes(y), target_width: 0 };
    Problem { net, theta, data }
}

fn accuracy<T: Float>(p: &Problem<T>) -> f64 {
    let f = p.net.predict(&p.theta, &p.data.x, p.data.n);
    let c = p.net.out_size();
    let Targets::Classes(y) = &p.data.y else { return f64::NAN };
    let hits = (0..p.data.n)
        .filter(|&s| {
            let row = &f[s * c..(s + 1) * c];
            let arg = (0..c).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            arg == y[s]
        })
        .count();
    hits as f64 / p.data.n as f64
}

fn eigenvalues<T: Float>(m: &[T], d: usize) -> CliResult<Vec<f64>> {
    let mat = faer::Mat::<f64>::from_fn(d, d, |i, j| 0.5 * (m[i * d + j].as_f64() + m[j * d + i].as_f64()));
    let mut w = mat.self_adjoint_eigenvalues(faer::Side::Lower).map_err(|e| format!("eigenvalues: {e:?}"))?;
    w.sort_by(|a, b| b.partial_cmp(a).unwrap());
    Ok(w)
}

pub fn run(c: &Common) -> CliResult<()> {
    match c.dtype.unwrap_or(Dtype::F64) {
        Dtype::F32 => run_typed::<f32>(c),
        Dtype::F64 => run_typed::<f64>(c),
    }
}

fn run_typed<T: Float>(c: &Common) -> CliResult<()> {
    let t0 = Instant::now();
    let mut p = builtin_problem::<T>(c.seed);
    let all = ActiveSet::all(&p.net.layout);
    let d = all.dim;
    let (loss0, _) = loss_and_grad(&p, &all, 0);
    // full-batch gradient descent with heavy-ball momentum
    let (steps, lr, mom) = (1500, T::of(0.5), T::of(0.9));
    let mut vel = vec![T::zero(); d];
    let bar = Progress::new(steps, "training");
    for s in 0..steps {
        let (_, g) = loss_and_grad(&p, &all, 0);
        for ((th, v), gi) in p.theta.iter_mut().zip(&mut vel).zip(&g) {
            *v = mom * *v - lr * *gi;
            *th += *v;
        }
        if s % 50 == 0 {
            bar.set(s, steps);
        }
    }
    drop(bar);
    let t_train = t0.elapsed().as_secs_f64();
    let (loss, g) = loss_and_grad(&p, &all, 0);
    let acc = accuracy(&p);
    let t1 = Instant::now();
    let h = dense_curvature(&CurvatureOperator::new(&p, Curvature::Hessian, all.clone(), 0), &|_, _| {});
    let gg = dense_curvature(&CurvatureOperator::new(&p, Curvature::Ggn, all.clone(), 0), &|_, _| {});
    let t_dense = t1.elapsed().as_secs_f64();
    let wh = eigenvalues(&h, d)?;
    let wg = eigenvalues(&gg, d)?;
    let top = |w: &[f64]| w.iter().take(5).copied().collect::<Vec<f64>>();
    let trace = |m: &[T]| (0..d).map(|i| m[i * d + i].as_f64()).sum::<f64>();
    let o = obj! {
        "problem" => "built-in: 3 spirals (N=300), MLP 2-16-16-3 tanh, cross-entropy",
        "dtype" => T::DTYPE,
        "D" => d,
        "loss_initial" => loss0,
        "loss" => loss,
        "grad_norm" => curvops_tensor::ops::norm2(&g),
        "train_accuracy" => acc,
        "hessian_top5" => top(&wh),
        "hessian_min" => *wh.last().unwrap_or(&f64::NAN),
        "hessian_trace" => trace(&h),
        "ggn_top5" => top(&wg),
        "ggn_min" => *wg.last().unwrap_or(&f64::NAN),
        "ggn_trace" => trace(&gg),
        "seconds_training" => t_train,
        "seconds_dense_hessian_and_ggn" => t_dense,
    };
    emit(c.json, o);
    Ok(())
}
