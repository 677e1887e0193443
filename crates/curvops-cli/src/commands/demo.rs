//! `curvops demo`: the main job on a built-in default, with nothing to download.
//!
//! Three interleaved spirals (300 points in the plane, 3 classes), an MLP 2-16-16-3 with tanh
//! and cross-entropy; trained briefly by full-batch gradient descent with momentum, then the
//! loss, gradient norm, accuracy, and the largest (and smallest) eigenvalues of the dense
//! Hessian and GGN at the trained point. Then a Laplace approximation at the trained weights
//! (full GGN over all weights, KFAC over all weights, full GGN over the last layer; prior
//! precision maximizing the log marginal likelihood) and the calibration of its probit
//! predictive against the MAP's on a fresh draw of spirals, in distribution and shifted (three
//! times the coordinate noise): accuracy, NLL, Brier score, 15-bin ECE.

use crate::args::{Common, Dtype};
use crate::common::{CliResult, Progress};
use crate::obj;
use crate::output::emit;
use curvops::dense::dense_curvature;
use curvops::gradient::loss_and_grad;
use curvops::laplace::marglik::{optimize_marglik, MarglikOptions};
use curvops::laplace::predictive::map_predict;
use curvops::laplace::{self, HessianStructure, LaplaceOptions, Likelihood, Link, Posterior};
use curvops::{metrics, ActiveSet, Curvature, CurvatureOperator, Problem};
use curvops_nn::data::{Dataset, Targets};
use curvops_nn::layers::ActivationKind;
use curvops_nn::loss::{Loss, LossKind, Reduction};
use curvops_nn::spec::{LayerSpec, ModelSpec};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use serde_json::{json, Value};
use std::time::Instant;

/// The built-in problem: spirals + MLP with PyTorch-style initialization (seeded).
pub fn builtin_problem<T: Float>(seed: u64) -> Problem<T> {
    let lin = |i, o| LayerSpec::Linear { in_f: i, out_f: o, bias: true, transposed: false };
    let tanh = LayerSpec::Activation(ActivationKind::Tanh);
    let spec = ModelSpec {
        input_shape: vec![2],
        layers: vec![lin(2, 16), tanh.clone(), lin(16, 16), tanh, lin(16, 3)],
        loss: Loss { kind: LossKind::CrossEntropy, reduction: Reduction::Mean, positions: 1 },
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
    let data = spirals(&mut rng, 0.05);
    Problem { net, theta, data }
}

/// Three interleaved spirals, 100 points each, with Gaussian noise of standard deviation
/// `noise` on the coordinates.
pub fn spirals<T: Float>(rng: &mut Rng, noise: f64) -> Dataset<T> {
    let (n_per, classes) = (100, 3);
    let mut x = Vec::with_capacity(n_per * classes * 2);
    let mut y = Vec::with_capacity(n_per * classes);
    for i in 0..n_per {
        for c in 0..classes {
            let r = i as f64 / n_per as f64;
            let t = 1.75 * r * 2.0 * std::f64::consts::PI + c as f64 * 2.0 * std::f64::consts::PI / classes as f64;
            x.push(T::of(r * t.sin() + noise * rng.normal()));
            x.push(T::of(r * t.cos() + noise * rng.normal()));
            y.push(c);
        }
    }
    let n = y.len();
    Dataset { x, sample_shape: vec![2], n, y: Targets::Classes(y), target_width: 0 }
}

/// Accuracy, NLL, Brier score and ECE (15 bins) of class probabilities.
fn calibration(p: &[f64], c: usize, y: &[usize]) -> Value {
    let m = metrics::metrics(p, c, y);
    json!({"accuracy": m.accuracy, "nll": m.nll, "brier": m.brier, "ece": m.ece})
}

/// Adds MAP vs Laplace (probit) calibration on a test set and a shifted test set to `o`, for
/// three Laplace variants with the prior precision maximizing the log marginal likelihood:
/// `test_map`, `test_laplace_VARIANT`, `shifted_map`, `shifted_laplace_VARIANT`, and
/// `laplace_prior_precision` / `laplace_log_marginal_likelihood` per variant.
fn laplace_calibration<T: Float>(
    p: &Problem<T>,
    test: &Dataset<T>,
    shifted: &Dataset<T>,
    o: &mut serde_json::Map<String, Value>,
) -> CliResult<()> {
    let c = p.net.out_size();
    let (Targets::Classes(y), Targets::Classes(ys)) = (&test.y, &shifted.y) else {
        return Err("the demo's test data has no labels".into());
    };
    let lik = Likelihood::Classification;
    let map = map_predict(&p.net, &p.theta, &test.x, test.n, lik);
    let map_s = map_predict(&p.net, &p.theta, &shifted.x, shifted.n, lik);
    o.insert("test_map".into(), calibration(&map, c, y));
    o.insert("shifted_map".into(), calibration(&map_s, c, ys));
    let last = p.net.layers.iter().rposition(|l| l.num_params() > 0).ok_or("the demo net has no parameters")?;
    let last = ActiveSet::from_names(&p.net.layout, &[last.to_string()]).map_err(|e| e.to_string())?;
    let (mut taus, mut lmls) = (serde_json::Map::new(), serde_json::Map::new());
    for (name, structure, active) in [
        ("full_all", HessianStructure::Full, ActiveSet::all(&p.net.layout)),
        ("kfac_all", HessianStructure::Kron, ActiveSet::all(&p.net.layout)),
        ("full_last_layer", HessianStructure::Full, last),
    ] {
        let opts = LaplaceOptions { structure, curvature: Curvature::Ggn, ..Default::default() };
        let fit = laplace::fit(p, active, None, &opts, &|_, _| {}).map_err(|e| e.to_string())?;
        let r = optimize_marglik(&fit, &MarglikOptions::default()).map_err(|e| e.to_string())?;
        let post = Posterior::new(&fit, r.prior.clone(), 1.0, 1.0).map_err(|e| e.to_string())?;
        let probs = post.predict_probs(&p.net, &test.x, test.n, Link::Probit);
        let probs_s = post.predict_probs(&p.net, &shifted.x, shifted.n, Link::Probit);
        o.insert(format!("test_laplace_{name}"), calibration(&probs, c, y));
        o.insert(format!("shifted_laplace_{name}"), calibration(&probs_s, c, ys));
        taus.insert(name.into(), r.prior.to_json());
        lmls.insert(name.into(), json!(r.log_marginal_likelihood));
    }
    o.insert("laplace_prior_precision".into(), Value::Object(taus));
    o.insert("laplace_log_marginal_likelihood".into(), Value::Object(lmls));
    Ok(())
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
    // Laplace: a fresh draw of spirals as test data, and the same with shifted inputs
    let t2 = Instant::now();
    let mut rng = Rng::new(c.seed ^ 0x7e57_da7a);
    let test = spirals::<T>(&mut rng, 0.05);
    let shifted = spirals::<T>(&mut rng, 0.15);
    let mut o = obj! {
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
    laplace_calibration(&p, &test, &shifted, &mut o)?;
    o.insert("seconds_laplace".into(), json!(t2.elapsed().as_secs_f64()));
    o.insert(
        "test_data".into(),
        json!("a fresh draw of the spirals (N=300); shifted: coordinate noise 0.15 instead of 0.05"),
    );
    emit(c.json, o);
    Ok(())
}
