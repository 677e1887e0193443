//! Cost per vector of a cached curvature operator applied to blocks of K vectors (medians):
//! shows what block application saves over K single products.
//!
//! `cargo run --release -p curvops --example block_scaling -- DIR [ggn|hessian] [reps] [f32|f64]`
//! (`BLOCK_K=1,16` restricts the block sizes).

use curvops::{ActiveSet, Curvature, CurvatureOperator, Problem};
use curvops_nn::io::load_problem;
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use std::path::Path;
use std::time::Instant;

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
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

fn run<T: Float>(dir: &Path, curv: Curvature, reps: usize) {
    let p: Problem<T> =
        load_problem(&dir.join("model.json"), &dir.join("weights.safetensors"), &dir.join("data.safetensors"))
            .expect("problem");
    let all = ActiveSet::all(&p.net.layout);
    let d = all.dim;
    let op = CurvatureOperator::new(&p, curv, all, 0).with_cache(usize::MAX);
    let mut rng = Rng::new(0);
    let v: Vec<T> = (0..64 * d).map(|_| T::of(rng.normal())).collect();
    let ks: Vec<usize> = match std::env::var("BLOCK_K") {
        Ok(v) => v.split(',').filter_map(|x| x.parse().ok()).collect(),
        Err(_) => vec![1, 2, 4, 8, 16, 32, 64],
    };
    for k in ks {
        let ms = median_ms(reps, || {
            std::hint::black_box(op.apply_block(&v[..k * d], k));
        });
        println!("{{\"K\": {k}, \"ms\": {ms:.4}, \"ms_per_vector\": {:.4}}}", ms / k as f64);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).map(String::as_str).unwrap_or("../shared/bench/P1")).to_path_buf();
    let curv = match args.get(2).map(String::as_str) {
        Some("hessian") => Curvature::Hessian,
        _ => Curvature::Ggn,
    };
    let reps = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(11);
    match args.get(4).map(String::as_str) {
        Some("f64") => run::<f64>(&dir, curv, reps),
        _ => run::<f32>(&dir, curv, reps),
    }
}
