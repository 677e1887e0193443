//! KFAC / EKFAC and exact diagonals through the `curvops` binary: `dense kfac|ekfac` and
//! `diag ggn|hessian --method exact` against curvlinops/BackPACK references (batched and
//! unbatched), fitted factors saved and reused without a data pass, `trace|logdet|solve kfac`
//! against dense algebra on the KFAC matrix, KFAC-preconditioned CG, and one-line errors.

mod common;

use common::{chol_solve, damped, logdet_spd, npy, ok_json, reference, rel, run};
use std::path::{Path, PathBuf};

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("curvops-kfac-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn dense_kfac_ekfac_and_exact_diagonals_match_references() {
    let dir = tmp("ref");
    for name in ["mlp_relu_ce_batches", "cnn_relu_maxpool_ce", "deep_linear_mse"] {
        let prob = s(&reference(name));
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(reference(name).join("meta.json")).unwrap()).unwrap();
        let bs = meta["batch_size"].as_u64().unwrap().to_string();
        for batch in [None, Some(bs.as_str())] {
            let mut common = vec!["--problem", &prob, "--dtype", "f64"];
            if let Some(b) = batch {
                common.extend(["--batch-size", b]);
            }
            let cases: [(&[&str], &str); 5] = [
                (&["dense", "kfac"], "kfac_type2.npy"),
                (&["dense", "ekfac"], "ekfac_type2.npy"),
                (&["dense", "kfac", "--fisher", "empirical"], "kfac_empirical.npy"),
                (&["diag", "ggn", "--method", "exact"], "ggn_diag.npy"),
                (&["diag", "hessian", "--method", "exact"], "hessian_diag.npy"),
            ];
            for (cmd, file) in cases {
                let out = dir.join(format!("{name}-{file}"));
                let mut args: Vec<&str> = cmd.to_vec();
                args.extend(common.iter().copied());
                let o = s(&out);
                args.extend(["--out", &o]);
                let (code, _, err) = run(&args);
                assert_eq!(code, 0, "{args:?}: {err}");
                let (_, got) = npy(&out);
                let (_, want) = npy(&reference(name).join("ref").join(file));
                let r = rel(&got, &want);
                assert!(r <= 1e-10, "{name} {file} batch {batch:?}: rel {r:.2e}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn saved_factors_are_reused_and_algebra_matches_dense() {
    let dir = tmp("fit");
    let prob = s(&reference("mlp_relu_ce_batches"));
    let f = s(&dir.join("factors.safetensors"));
    let fitted = ok_json(&["kfac-fit", "kfac", "--problem", &prob, "--dtype", "f64", "--out", &f, "--json"]);
    // the dense matrix from the saved factors equals the reference, with no data pass needed
    let k_npy = dir.join("K.npy");
    let (code, _, err) =
        run(&["dense", "kfac", "--problem", &prob, "--dtype", "f64", "--kfac-factors", &f, "--out", &s(&k_npy)]);
    assert_eq!(code, 0, "{err}");
    let (shape, k) = npy(&k_npy);
    let (_, want) = npy(&reference("mlp_relu_ce_batches").join("ref/kfac_type2.npy"));
    assert!(rel(&k, &want) <= 1e-12);
    let d = shape[0];
    let km = faer::Mat::<f64>::from_fn(d, d, |i, j| k[i * d + j]);
    let tr: f64 = (0..d).map(|i| km[(i, i)]).sum();
    assert!((fitted["trace"].as_f64().unwrap() - tr).abs() <= 1e-10 * tr.abs());
    let t = ok_json(&["trace", "kfac", "--problem", &prob, "--dtype", "f64", "--kfac-factors", &f, "--json"]);
    assert!((t["trace"].as_f64().unwrap() - tr).abs() <= 1e-10 * tr.abs(), "{t}");
    // logdet and solve of KFAC + λI against dense algebra
    let lam = 0.1;
    let kd = damped(&km, lam);
    let logdet = logdet_spd(&kd);
    let ld = ok_json(&[
        "logdet",
        "kfac",
        "--problem",
        &prob,
        "--dtype",
        "f64",
        "--damping",
        "0.1",
        "--kfac-factors",
        &f,
        "--json",
    ]);
    assert!((ld["logdet"].as_f64().unwrap() - logdet).abs() <= 1e-9 * logdet.abs(), "{ld} vs {logdet}");
    let x_npy = dir.join("x.npy");
    let (code, _, err) = run(&[
        "solve",
        "kfac",
        "--problem",
        &prob,
        "--dtype",
        "f64",
        "--damping",
        "0.1",
        "--kfac-factors",
        &f,
        "--out",
        &s(&x_npy),
    ]);
    assert_eq!(code, 0, "{err}");
    let (_, x) = npy(&x_npy);
    let (_, g) = npy(&reference("mlp_relu_ce_batches").join("ref/grad.npy"));
    let want = chol_solve(&kd, &g);
    assert!(rel(&x, &want) <= 1e-8, "solve kfac rel {:.2e}", rel(&x, &want));
    // CG on the GGN preconditioned by damped KFAC converges to the dense damped GGN solve
    let y_npy = dir.join("y.npy");
    let (code, _, err) = run(&[
        "solve",
        "ggn",
        "--problem",
        &prob,
        "--dtype",
        "f64",
        "--damping",
        "0.1",
        "--method",
        "cg",
        "--precond",
        "kfac",
        "--kfac-factors",
        &f,
        "--out",
        &s(&y_npy),
    ]);
    assert_eq!(code, 0, "{err}");
    let (_, y) = npy(&y_npy);
    let (_, ggn) = npy(&reference("mlp_relu_ce_batches").join("ref/ggn.npy"));
    let gd = damped(&faer::Mat::<f64>::from_fn(d, d, |i, j| ggn[i * d + j]), lam);
    let want = chol_solve(&gd, &g);
    assert!(rel(&y, &want) <= 1e-8, "pcg rel {:.2e}", rel(&y, &want));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn kfac_errors_are_one_line() {
    let bn = s(&reference("cnn_batchnorm_softlabel_ce"));
    let (code, out, err) = run(&["trace", "kfac", "--problem", &bn]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("batchnorm") || err.contains("weight") || err.contains("KFAC"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let prob = s(&reference("mlp_relu_ce_batches"));
    let (code, _, err) = run(&[
        "dense",
        "kfac",
        "--problem",
        &prob,
        "--kfac-factors",
        "/nonexistent/f.safetensors",
        "--out",
        "/tmp/x.npy",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/f.safetensors") && err.trim().lines().count() == 1, "{err}");
}
