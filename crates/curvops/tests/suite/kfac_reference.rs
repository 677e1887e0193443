//! KFAC and EKFAC against curvlinops 3.0.1 (float64, relative Frobenius error ≤ 1e-10):
//!
//! * `kfac_type2`, `ekfac_type2`, `kfac_empirical` (expand, separate weight and bias) of every
//!   problem in `testdata/reference` and `testdata/extra` that has them, with the data unsplit
//!   and split into the `batch_size` of `meta.json`;
//! * the other options (`reduce`, joint weight and bias, `forward-only`, empirical EKFAC,
//!   parameter subsets, and the damped inverses in the three damping modes) from
//!   `testdata/kfac` (made by `testdata/gen_kfac.py`), as products with fixed probe vectors
//!   (EKFAC with `reduce` on `cnn_fullrank_reduce` only, where it does not depend on the
//!   eigensolver's basis of a degenerate eigenspace).
//!
//! Run with `--nocapture` to see the largest error per quantity.

use crate::common::*;
use curvops::dense::dense_of;
use curvops::kfac::{fit_ekfac, DampingMode, FisherType, Kfac, KfacApprox, KfacOptions};
use curvops::{ActiveSet, LinearOperator};
use curvops_nn::io::read_npy;
use std::path::PathBuf;

const TOL: f64 = 1e-10;

fn opts(fisher: FisherType, approx: KfacApprox, joint_bias: bool, batch_size: usize) -> KfacOptions {
    KfacOptions { fisher, approx, joint_bias, batch_size }
}

fn all_problems() -> Vec<(bool, &'static str)> {
    PROBLEMS.iter().map(|p| (false, *p)).chain(EXTRA.iter().map(|p| (true, *p))).collect()
}

#[test]
fn kfac_ekfac_match_curvlinops_defaults() {
    let mut log = ErrorLog::new(TOL);
    let mut checked = 0;
    for (extra, name) in all_problems() {
        let (p, r) = if extra { Reference::load_extra(name) } else { Reference::load(name) };
        let all = ActiveSet::all(&p.net.layout);
        for bs in [0, r.batch_size()] {
            let what = format!("{name} bs={bs}");
            for (key, fisher) in [("kfac_type2", FisherType::Type2), ("kfac_empirical", FisherType::Empirical)] {
                if !r.has(key) {
                    continue;
                }
                let k = Kfac::fit(&p, &all, &opts(fisher, KfacApprox::Expand, false, bs)).unwrap();
                log.rel(key, &what, &dense_of(&k).unwrap(), &r.array(key).1);
                checked += 1;
            }
            if r.has("ekfac_type2") {
                let e = fit_ekfac(&p, &all, &opts(FisherType::Type2, KfacApprox::Expand, false, bs)).unwrap();
                log.rel("ekfac_type2", &what, &dense_of(&e).unwrap(), &r.array("ekfac_type2").1);
                checked += 1;
            }
        }
    }
    assert!(checked >= 50, "only {checked} reference matrices checked");
    log.finish();
}

fn kfac_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/kfac")
}

/// `M · P` for an operator and probes `P` (`[D, K]` row-major) → `[D, K]` row-major.
fn times_probes(op: &dyn LinearOperator<f64>, probes: &[f64], k: usize) -> Vec<f64> {
    let d = op.nrows();
    let p = faer::Mat::<f64>::from_fn(d, k, |i, j| probes[i * k + j]);
    let mut out = faer::Mat::<f64>::zeros(d, k);
    op.apply(out.as_mut(), p.as_ref()).unwrap();
    (0..d * k).map(|i| out[(i / k, i % k)]).collect()
}

#[test]
fn kfac_options_match_curvlinops() {
    let mut log = ErrorLog::new(TOL);
    let mut checked = 0;
    for entry in std::fs::read_dir(kfac_dir()).expect("testdata/kfac (run testdata/gen_kfac.py)") {
        let dir = entry.unwrap().path();
        if !dir.join("meta.json").exists() {
            continue;
        }
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
        let prob = meta["problem"].as_str().unwrap();
        let (folder, name) = prob.split_once('/').unwrap();
        let (p, _) = match folder {
            "extra" => Reference::load_extra(name),
            "kfac" => Reference::load_from(&kfac_dir(), name),
            _ => Reference::load(name),
        };
        let batch_size = meta["batch_size"].as_u64().unwrap() as usize;
        let (pshape, probes_full) = read_npy::<f64>(&dir.join("probes.npy")).unwrap();
        let k = pshape[1];
        let damping = meta["damping"].as_f64().unwrap();
        for (vname, v) in meta["variants"].as_object().unwrap() {
            if v.get("skipped").is_some() {
                continue;
            }
            let names: Vec<String> =
                v["params"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
            let active = ActiveSet::from_names(&p.net.layout, &names).unwrap();
            let d = active.dim;
            let (_, want) = read_npy::<f64>(&dir.join(format!("{vname}.npy"))).unwrap();
            let probes = &probes_full[..d * k];
            let kind = v["kind"].as_str().unwrap();
            let fisher = match v.get("fisher_type").and_then(|f| f.as_str()).unwrap_or("type-2") {
                "type-2" => FisherType::Type2,
                "empirical" => FisherType::Empirical,
                "forward-only" => FisherType::ForwardOnly,
                f => panic!("fisher type {f}"),
            };
            let approx = match v.get("kfac_approx").and_then(|f| f.as_str()).unwrap_or("expand") {
                "expand" => KfacApprox::Expand,
                _ => KfacApprox::Reduce,
            };
            let joint = !v.get("separate_weight_and_bias").and_then(|s| s.as_bool()).unwrap_or(true);
            for bs in [0, batch_size] {
                let o = opts(fisher, approx, joint, bs);
                let what = format!("{name} {vname} bs={bs}");
                let got = match kind {
                    "kfac" => times_probes(&Kfac::fit(&p, &active, &o).unwrap(), probes, k),
                    "ekfac" => times_probes(&fit_ekfac(&p, &active, &o).unwrap(), probes, k),
                    "inverse" => {
                        let mode = match v["mode"].as_str().unwrap() {
                            "same" => DampingMode::Same,
                            "pi" => DampingMode::Pi,
                            _ => DampingMode::Exact,
                        };
                        let kf = Kfac::fit(&p, &active, &o).unwrap();
                        times_probes(&kf.inverse(damping, mode).unwrap(), probes, k)
                    }
                    "ekfac_inverse" => {
                        let e = fit_ekfac(&p, &active, &o).unwrap();
                        times_probes(&e.inverse(damping, DampingMode::Exact).unwrap(), probes, k)
                    }
                    other => panic!("kind {other}"),
                };
                log.rel(vname, &what, &got, &want);
                checked += 1;
            }
        }
    }
    assert!(checked >= 100, "only {checked} variants checked");
    log.finish();
}

/// `meta.json`'s `kfac_params` of a graph problem.
fn kfac_params(r: &Reference) -> Vec<String> {
    r.meta["kfac_params"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// The graph problems (residual CNN, LayerNorm MLP, tiny GPT with attention and a sequence
/// loss): `kfac_type2`, `kfac_empirical`, `ekfac_type2` over `kfac_params`, unbatched and at
/// `batch_size`.
#[test]
fn graph_kfac_ekfac_match_curvlinops() {
    let mut log = ErrorLog::new(TOL);
    let mut checked = 0;
    for name in GRAPH_PROBLEMS {
        let (p, r) = Reference::load_graph(name);
        let active = ActiveSet::from_names(&p.net.layout, &kfac_params(&r)).unwrap();
        assert_eq!(active.dim, r.meta["kfac_D"].as_u64().unwrap() as usize);
        for bs in [0, r.batch_size()] {
            let what = format!("{name} bs={bs}");
            for (key, fisher) in [("kfac_type2", FisherType::Type2), ("kfac_empirical", FisherType::Empirical)] {
                let k = Kfac::fit(&p, &active, &opts(fisher, KfacApprox::Expand, false, bs)).unwrap();
                log.rel(key, &what, &dense_of(&k).unwrap(), &r.array(key).1);
                checked += 1;
            }
            if r.has("ekfac_type2") {
                let e = fit_ekfac(&p, &active, &opts(FisherType::Type2, KfacApprox::Expand, false, bs)).unwrap();
                log.rel("ekfac_type2", &what, &dense_of(&e).unwrap(), &r.array("ekfac_type2").1);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 16);
    log.finish();
}
