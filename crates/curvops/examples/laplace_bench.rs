//! Benchmark of Laplace fits against a gradient pass over the same data (medians):
//! `gradient` (loss and gradient, all data), `diag_fit` (exact GGN diagonal + summed loss),
//! `kfac_fit` (KFAC factors + summed loss), `kfac_fit_eig` (also the factors'
//! eigendecompositions, as laplace-torch's `fit` does), `lastlayer_full_fit` (dense last-layer GGN) and `lastlayer_full_chol`
//! (its posterior Cholesky), and the probit predictive on the data (`*_predict`).
//!
//! `cargo run --release -p curvops --example laplace_bench -- DIR [reps] [threads] [f32|f64] [fit]`
//! prints one JSON object per line; a fifth argument `fit` skips the predictive timings.

use curvops::gradient::loss_and_grad;
use curvops::laplace::{self, HessianStructure, LaplaceOptions, Link, Posterior, PriorPrecision};
use curvops::{ActiveSet, Curvature, Problem};
use curvops_nn::io::load_problem;
use curvops_tensor::Float;
use std::path::Path;
use std::time::Instant;

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ts[ts.len() / 2]
}

fn run<T: Float>(dir: &Path, reps: usize, threads: usize, predict: bool) {
    let p: Problem<T> =
        load_problem(&dir.join("model.json"), &dir.join("weights.safetensors"), &dir.join("data.safetensors")).unwrap();
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let all = ActiveSet::all(&p.net.layout);
    let last = p.net.layers.iter().rposition(|l| l.num_params() > 0).unwrap();
    let ll = ActiveSet::from_names(&p.net.layout, &[last.to_string()]).unwrap();
    let emit = |op: &str, ms: f64, grad: f64| {
        println!(
            "{}",
            serde_json::json!({"problem": name, "op": op, "ms": ms, "ratio_to_gradient": ms / grad, "dtype": T::DTYPE,
                "threads": threads, "D": all.dim, "N": p.data.n})
        );
    };
    let g = median_ms(reps, || {
        std::hint::black_box(loss_and_grad(&p, &all, 0));
    });
    emit("gradient", g, g);
    let opts = |s| LaplaceOptions { structure: s, curvature: Curvature::Ggn, ..Default::default() };
    let fit = |s, a: &ActiveSet| laplace::fit(&p, a.clone(), None, &opts(s), &|_, _| {}).unwrap();
    emit("diag_fit", median_ms(reps, || drop(fit(HessianStructure::Diag, &all))), g);
    emit("kfac_fit", median_ms(reps, || drop(fit(HessianStructure::Kron, &all))), g);
    emit(
        "kfac_fit_eig",
        median_ms(reps, || {
            let f = fit(HessianStructure::Kron, &all);
            drop(Posterior::new(&f, PriorPrecision::Scalar(1.0), 1.0, 1.0).unwrap());
        }),
        g,
    );
    emit("lastlayer_full_fit", median_ms(reps, || drop(fit(HessianStructure::Full, &ll))), g);
    let f = fit(HessianStructure::Full, &ll);
    emit(
        "lastlayer_full_chol",
        median_ms(reps, || drop(Posterior::new(&f, PriorPrecision::Scalar(1.0), 1.0, 1.0).unwrap())),
        g,
    );
    if !predict {
        return;
    }
    for (op, s, a) in [
        ("diag_predict", HessianStructure::Diag, &all),
        ("kfac_predict", HessianStructure::Kron, &all),
        ("lastlayer_full_predict", HessianStructure::Full, &ll),
    ] {
        let f = fit(s, a);
        let post = Posterior::new(&f, PriorPrecision::Scalar(1.0), 1.0, 1.0).unwrap();
        let ms = median_ms(reps.min(5), || {
            std::hint::black_box(post.predict_probs(&p.net, &p.data.x, p.data.n, Link::Probit));
        });
        emit(op, ms, g);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).map(String::as_str).unwrap_or("../shared/bench/P1")).to_path_buf();
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let threads: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    curvops_tensor::threads::set_threads(threads);
    let predict = args.get(5).map(String::as_str) != Some("fit");
    match args.get(4).map(String::as_str).unwrap_or("f32") {
        "f64" => run::<f64>(&dir, reps, threads, predict),
        _ => run::<f32>(&dir, reps, threads, predict),
    }
}
