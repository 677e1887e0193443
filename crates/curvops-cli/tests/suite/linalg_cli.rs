//! Issue-3 acceptance through the binary, on every reference problem in f64: `eigs --k 5` of
//! hessian/ggn/ef equals the dense top-5, `trace`/`diag --method exact` match the dense
//! matrices, `solve --damping` equals the dense solve of (A + λI) x = ∇L, and the same with
//! `--blocks layer` against the dense block diagonal (`solve`, `logdet`, `eigs`).

use crate::common::{chol_solve, damped, logdet_spd, npy, ok, ok_json as json, reference, rel};
use faer::Mat;

const PROBLEMS: [&str; 6] = [
    "cnn_batchnorm_softlabel_ce",
    "cnn_relu_maxpool_ce",
    "deep_linear_mse",
    "mlp_relu_ce_batches",
    "mlp_sigmoid_bce_sum",
    "mlp_tanh_mse",
];

fn dense(name: &str, file: &str) -> Mat<f64> {
    let (shape, v) = npy(&reference(name).join("ref").join(file));
    Mat::from_fn(shape[0], shape[1], |i, j| v[i * shape[1] + j])
}

fn sym_eigs_desc(m: &Mat<f64>) -> Vec<f64> {
    let mut e: Vec<f64> = m.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
    e.sort_by(|a, b| b.partial_cmp(a).unwrap());
    e
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Parameter ranges grouped by layer (the state-dict prefix), from `info --json`.
fn layer_blocks(prob: &str) -> Vec<std::ops::Range<usize>> {
    let info = json(&["info", "--problem", prob, "--json"]);
    let mut blocks: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    for p in info["param_order"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let layer = name.split('.').next().unwrap().to_string();
        let off = p["offset"].as_u64().unwrap() as usize;
        let len: usize = p["shape"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap() as usize).product();
        match blocks.last_mut() {
            Some((l, r)) if *l == layer => r.end = off + len,
            _ => blocks.push((layer, off..off + len)),
        }
    }
    blocks.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn eigs_trace_diag_match_dense() {
    for name in PROBLEMS {
        let prob = reference(name).display().to_string();
        for (curv, file) in [("hessian", "hessian.npy"), ("ggn", "ggn.npy"), ("ef", "ef.npy")] {
            let a = dense(name, file);
            let d = a.nrows();
            let want = sym_eigs_desc(&a);
            let e = json(&["eigs", curv, "--problem", &prob, "--dtype", "f64", "--k", "5", "--tol", "1e-10", "--json"]);
            let got = floats(&e["eigenvalues"]);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-8 * want[0].abs().max(w.abs()), "{name} {curv} λ{i}: {g} vs {w}");
            }
            let tr: f64 = (0..d).map(|i| a[(i, i)]).sum();
            let t = json(&["trace", curv, "--problem", &prob, "--dtype", "f64", "--method", "exact", "--json"]);
            let got = t["trace"].as_f64().unwrap();
            assert!((got - tr).abs() <= 1e-10 * tr.abs().max(1e-300), "{name} {curv} trace {got} vs {tr}");
            let out = std::env::temp_dir().join(format!("curvops-linalg-cli-{name}-{curv}-{}.npy", std::process::id()));
            let o = out.display().to_string();
            ok(&["diag", curv, "--problem", &prob, "--dtype", "f64", "--method", "exact", "--out", &o]);
            let (_, dg) = npy(&out);
            let want: Vec<f64> = (0..d).map(|i| a[(i, i)]).collect();
            assert!(rel(&dg, &want) <= 1e-10, "{name} {curv} diag");
            let _ = std::fs::remove_file(out);
        }
    }
}

#[test]
fn damped_solves_and_blocks_match_dense() {
    let lam = 0.1;
    for name in PROBLEMS {
        let prob = reference(name).display().to_string();
        let (_, g) = npy(&reference(name).join("ref/grad.npy"));
        let blocks = layer_blocks(&prob);
        for (curv, file) in [("ggn", "ggn.npy"), ("ef", "ef.npy")] {
            let a = dense(name, file);
            let d = a.nrows();
            let ad = damped(&a, lam);
            let out =
                std::env::temp_dir().join(format!("curvops-linalg-solve-{name}-{curv}-{}.npy", std::process::id()));
            let o = out.display().to_string();
            ok(&["solve", curv, "--problem", &prob, "--dtype", "f64", "--damping", "0.1", "--out", &o]);
            let (_, x) = npy(&out);
            let r = rel(&x, &chol_solve(&ad, &g));
            assert!(r <= 1e-8, "{name} {curv} solve rel {r:.2e}");
            // block diagonal per layer
            let bd = Mat::from_fn(d, d, |i, j| {
                if blocks.iter().any(|b| b.contains(&i) && b.contains(&j)) {
                    ad[(i, j)]
                } else {
                    0.0
                }
            });
            ok(&[
                "solve",
                curv,
                "--problem",
                &prob,
                "--dtype",
                "f64",
                "--damping",
                "0.1",
                "--blocks",
                "layer",
                "--out",
                &o,
            ]);
            let (_, x) = npy(&out);
            let r = rel(&x, &chol_solve(&bd, &g));
            assert!(r <= 1e-8, "{name} {curv} block solve rel {r:.2e}");
            let want = logdet_spd(&bd);
            let ld = json(&[
                "logdet",
                curv,
                "--problem",
                &prob,
                "--dtype",
                "f64",
                "--damping",
                "0.1",
                "--blocks",
                "layer",
                "--json",
            ]);
            let got = ld["logdet"].as_f64().unwrap();
            assert!((got - want).abs() <= 1e-8 * want.abs().max(1.0), "{name} {curv} block logdet {got} vs {want}");
            let bd0 = Mat::from_fn(d, d, |i, j| bd[(i, j)] - if i == j { lam } else { 0.0 });
            let want = sym_eigs_desc(&bd0);
            let e = json(&[
                "eigs",
                curv,
                "--problem",
                &prob,
                "--dtype",
                "f64",
                "--k",
                "3",
                "--tol",
                "1e-10",
                "--blocks",
                "layer",
                "--json",
            ]);
            for (i, (g, w)) in floats(&e["eigenvalues"]).iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-8 * want[0].abs(), "{name} {curv} block λ{i}: {g} vs {w}");
            }
            let _ = std::fs::remove_file(out);
        }
    }
}
