//! Training (PyTorch's SGD / Adam / AdamW bit for bit up to rounding) and marginal-likelihood
//! tuning of the regression noise: σ = 0.3 recovered within 10 % from 150 points of a sine.

use curvops::laplace::marglik::{optimize_marglik, MarglikOptions, PriorStructure};
use curvops::laplace::{self, HessianStructure, LaplaceOptions, PriorPrecision};
use curvops::optim::{self, OptimizerKind, TrainOptions};
use curvops::{ActiveSet, Curvature, Problem};
use curvops_nn::data::{Dataset, Targets};
use curvops_nn::io::{load_data, load_weights, read_model};
use curvops_nn::layers::ActivationKind;
use curvops_nn::loss::{Loss, LossKind, Reduction};
use curvops_nn::spec::{LayerSpec, ModelSpec};
use curvops_nn::Network;
use curvops_tensor::rng::Rng;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/laplace")
}

#[test]
fn optimizers_match_pytorch() {
    let d = dir();
    let spec = read_model(&d.join("model.json")).unwrap();
    for (name, kind) in [
        ("sgd", OptimizerKind::Sgd { lr: 0.1, momentum: 0.9, nesterov: false, weight_decay: 1e-3 }),
        ("adam", OptimizerKind::Adam { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-3 }),
        ("adamw", OptimizerKind::AdamW { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-2 }),
    ] {
        let (net, mut theta) = load_weights::<f64>(&spec, "model.json", &d.join("init.safetensors")).unwrap();
        let data = load_data(&net, &d.join("train.safetensors")).unwrap();
        let data = data.select(&(0..300).collect::<Vec<_>>());
        let opts = TrainOptions { epochs: 3, batch_size: 50, optimizer: kind, seed: 0, shuffle: false };
        optim::train(&net, &mut theta, &data, &opts, &mut |_, _| {}, &mut |_, _| {});
        let (_, want) =
            load_weights::<f64>(&spec, "model.json", &d.join("train_ref").join(format!("{name}.safetensors"))).unwrap();
        let err = theta.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt()
            / want.iter().map(|b| b * b).sum::<f64>().sqrt();
        assert!(err < 1e-10, "{name}: relative difference to PyTorch {err:.2e}");
    }
}

/// An MLP with tanh and PyTorch's default initialization (seeded).
fn mlp(widths: &[usize], loss: Loss, seed: u64) -> (Network<f64>, Vec<f64>) {
    let mut layers = Vec::new();
    for w in widths.windows(2) {
        if !layers.is_empty() {
            layers.push(LayerSpec::Activation(ActivationKind::Tanh));
        }
        layers.push(LayerSpec::Linear { in_f: w[0], out_f: w[1], bias: true, transposed: false });
    }
    let spec = ModelSpec { input_shape: vec![widths[0]], layers, loss };
    let net = spec.build::<f64>("<test>", &|_, _| unreachable!()).unwrap();
    let mut rng = Rng::new(seed);
    let mut theta = vec![0.0; net.num_params()];
    for e in &net.layout.entries {
        let b = 1.0 / (net.layers[e.layer].in_size() as f64).sqrt();
        for v in &mut theta[e.offset..e.offset + e.len] {
            *v = (2.0 * rng.uniform() - 1.0) * b;
        }
    }
    (net, theta)
}

/// `n` points `x ~ U(-3, 3)`, `y = sin x + σε` (seeded) and the realized noise rms.
fn sine(n: usize, sigma: f64, seed: u64) -> (Dataset<f64>, f64) {
    let mut rng = Rng::new(seed);
    let x: Vec<f64> = (0..n).map(|_| 6.0 * rng.uniform() - 3.0).collect();
    let e: Vec<f64> = x.iter().map(|_| sigma * rng.normal()).collect();
    let realized = (e.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
    let y: Vec<f64> = x.iter().zip(&e).map(|(&v, &ei)| v.sin() + ei).collect();
    (Dataset { x, sample_shape: vec![1], n, y: Targets::Dense(y), target_width: 1 }, realized)
}

#[test]
fn marglik_recovers_the_noise_of_a_sine() {
    let (n, sigma) = (150, 0.3);
    let (data, realized) = sine(n, sigma, 0);
    let loss = Loss { kind: LossKind::Mse, reduction: Reduction::Mean, positions: 1 };
    let (net, mut theta) = mlp(&[1, 32, 32, 1], loss, 3);
    // MAP under the prior τ = 1 with σ = 0.3: weight decay τ·2σ²/(N·C)
    let wd = optim::weight_decay_of_prior_precision(loss, n, 1, 0, sigma, 1.0);
    let kind = OptimizerKind::Adam { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8, weight_decay: wd };
    let opts = TrainOptions { epochs: 3000, batch_size: 0, optimizer: kind, seed: 0, shuffle: false };
    optim::train(&net, &mut theta, &data, &opts, &mut |_, _| {}, &mut |_, _| {});
    let p = Problem { net, theta, data };
    let all = ActiveSet::all(&p.net.layout);
    for st in [HessianStructure::Full, HessianStructure::Kron, HessianStructure::Diag] {
        let lo = LaplaceOptions { structure: st, curvature: Curvature::Ggn, ..Default::default() };
        let fit = laplace::fit(&p, all.clone(), None, &lo, &|_, _| {}).unwrap();
        for ps in [PriorStructure::Scalar, PriorStructure::Layerwise] {
            let mo = MarglikOptions { prior_structure: ps, optimize_sigma: true, ..Default::default() };
            let t0 = std::time::Instant::now();
            let r = optimize_marglik(&fit, &mo).unwrap();
            println!(
                "  {} {ps:?}: {} iterations ({}), {:.2} s",
                st.name(),
                r.iterations,
                r.method,
                t0.elapsed().as_secs_f64()
            );
            let rel = (r.sigma - sigma).abs() / sigma;
            println!(
                "{} {ps:?}: σ = {:.4} (rel err {rel:.3}; the sample's noise rms is {realized:.4}), τ = {:?}",
                st.name(),
                r.sigma,
                r.prior
            );
            if st == HessianStructure::Diag {
                // the diagonal's log-determinant is a poor model evidence (a known failure of
                // diagonal Laplace marginal likelihoods): reported, not asserted
                continue;
            }
            assert!(rel < 0.1, "{} {ps:?}: σ = {} (want {sigma} within 10 %)", st.name(), r.sigma);
            let rel_realized = (r.sigma - realized).abs() / realized;
            assert!(rel_realized < 0.05, "{} {ps:?}: σ = {} vs the noise's rms {realized}", st.name(), r.sigma);
            if let PriorPrecision::Scalar(t) = r.prior {
                assert!(t.is_finite() && t > 0.0);
            }
        }
    }
}

/// σ̂ over several noise draws (`cargo test -- --ignored --nocapture`).
#[test]
#[ignore]
fn sigma_over_seeds() {
    let (n, sigma) = (150, 0.3);
    for seed in 0..8u64 {
        let (data, realized) = sine(n, sigma, seed);
        let loss = Loss { kind: LossKind::Mse, reduction: Reduction::Mean, positions: 1 };
        let (net, mut theta) = mlp(&[1, 32, 32, 1], loss, 3);
        let wd = optim::weight_decay_of_prior_precision(loss, n, 1, 0, sigma, 1.0);
        let kind = OptimizerKind::Adam { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8, weight_decay: wd };
        let opts = TrainOptions { epochs: 3000, batch_size: 0, optimizer: kind, seed: 0, shuffle: false };
        optim::train(&net, &mut theta, &data, &opts, &mut |_, _| {}, &mut |_, _| {});
        let p = Problem { net, theta, data };
        let lo = LaplaceOptions { structure: HessianStructure::Full, curvature: Curvature::Ggn, ..Default::default() };
        let fit = laplace::fit(&p, ActiveSet::all(&p.net.layout), None, &lo, &|_, _| {}).unwrap();
        let mo = MarglikOptions { optimize_sigma: true, ..Default::default() };
        let r = optimize_marglik(&fit, &mo).unwrap();
        println!("seed {seed}: noise rms {realized:.4}  σ̂ {:.4}  σ̂/0.3 − 1 = {:+.3}", r.sigma, r.sigma / sigma - 1.0);
    }
}

fn graph_dir() -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference-graph");
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference-graph")
}

/// Training on the graph references (residual block with batch norm in evaluation mode,
/// LayerNorm MLP, tiny GPT with the tied embedding / output layer): the loss decreases with SGD
/// and Adam in shuffled mini-batches; the tied tensor stays one tensor (one slot of `θ`, its
/// gradient the sum of its uses); a checkpoint keeps the weights file's keys and reloads to
/// the trained `θ`.
#[test]
fn training_decreases_the_loss_on_graphs() {
    let root = graph_dir();
    for name in ["resnet_block_ce", "layernorm_mlp_mse", "tiny_gpt_ce"] {
        let d = root.join(name);
        let p = curvops_nn::io::load_problem::<f64>(
            &d.join("model.json"),
            &d.join("weights.safetensors"),
            &d.join("data.safetensors"),
        )
        .unwrap();
        let loss_of = |theta: &[f64]| {
            let f = p.net.predict(theta, &p.data.x, p.data.n);
            let c = p.net.out_size();
            let y = p.data.batch(0, p.data.n).y;
            p.net.loss.factor(p.data.n, c) * p.net.loss.values(&f, y, p.data.n, c).iter().sum::<f64>()
        };
        let l0 = loss_of(&p.theta);
        for (oname, kind, epochs) in [
            ("sgd", OptimizerKind::Sgd { lr: 0.05, momentum: 0.9, nesterov: false, weight_decay: 1e-4 }, 30),
            ("adam", OptimizerKind::Adam { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 }, 30),
        ] {
            let mut theta = p.theta.clone();
            let opts = TrainOptions { epochs, batch_size: 4, optimizer: kind, seed: 1, shuffle: true };
            let hist = optim::train(&p.net, &mut theta, &p.data, &opts, &mut |_, _| {}, &mut |_, _| {});
            let l1 = loss_of(&theta);
            println!(
                "{name} {oname}: loss {l0:.6} → {l1:.6} (epochs {:.6} … {:.6})",
                hist[0].loss,
                hist[epochs - 1].loss
            );
            assert!(l1 < 0.9 * l0, "{name} {oname}: loss {l0} → {l1}");
            assert!(hist[epochs - 1].loss < hist[0].loss, "{name} {oname}: epoch losses do not decrease");
            assert_eq!(theta.len(), p.net.num_params());
            // checkpoint: the input file's keys, and reloading gives θ
            let out = std::env::temp_dir()
                .join(format!("curvops-train-graph-{name}-{oname}-{}.safetensors", std::process::id()));
            optim::write_checkpoint(&out, &d.join("weights.safetensors"), &p.net, &theta).unwrap();
            let keys = |path: &std::path::Path| {
                let b = std::fs::read(path).unwrap();
                let st = safetensors::SafeTensors::deserialize(&b).unwrap();
                let mut k: Vec<String> = st.names().iter().map(|s| s.to_string()).collect();
                k.sort();
                k
            };
            assert_eq!(keys(&out), keys(&d.join("weights.safetensors")), "{name}: checkpoint keys");
            let spec = read_model(&d.join("model.json")).unwrap();
            let (_, back) = load_weights::<f64>(&spec, "model.json", &out).unwrap();
            assert_eq!(back, theta, "{name}: checkpoint round trip");
            let _ = std::fs::remove_file(&out);
        }
    }
}
