//! KFAC / EKFAC and exact diagonals through the `curvops` binary: `dense kfac|ekfac` and
//! `diag ggn|hessian --method exact` against curvlinops/BackPACK references (batched and
//! unbatched), fitted factors saved and reused without a data pass, `trace|logdet|solve kfac`
//! against dense algebra on the KFAC matrix, KFAC-preconditioned CG, and one-line errors.

use crate::common::{chol_solve, damped, logdet_spd, npy, ok, ok_json, reference, rel, run};
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
    // batch-norm parameters get dense blocks, but forward-only KFAC has none for them
    let bn = s(&reference("cnn_batchnorm_softlabel_ce"));
    ok_json(&["trace", "kfac", "--problem", &bn, "--json"]);
    let (code, out, err) = run(&["trace", "kfac", "--problem", &bn, "--fisher", "forward-only"]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("batchnorm") && err.contains("forward-only") && err.contains("--params"), "{err}");
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

/// A graph problem of `../shared/reference-graph` (or `testdata/reference-graph`).
fn graph(name: &str) -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference-graph");
    let root = if local.exists() {
        local
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference-graph")
    };
    root.join(name)
}

fn meta(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap()
}

/// `dense kfac|ekfac --params <kfac_params>` on the graph references (residual CNN, LayerNorm MLP,
/// tiny GPT with attention, sequence loss and a tied embedding), batched and unbatched.
#[test]
fn graph_dense_kfac_ekfac_match_references() {
    let dir = tmp("graph-ref");
    let mut checked = 0;
    for name in ["resnet_block_ce", "layernorm_mlp_mse", "tiny_gpt_ce"] {
        let g = graph(name);
        let prob = s(&g);
        let m = meta(&g);
        let params: Vec<&str> = m["kfac_params"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let params = params.join(",");
        let bs = m["batch_size"].as_u64().unwrap().to_string();
        for batch in [None, Some(bs.as_str())] {
            let cases: [(&[&str], &str); 3] = [
                (&["dense", "kfac"], "kfac_type2.npy"),
                (&["dense", "kfac", "--fisher", "empirical"], "kfac_empirical.npy"),
                (&["dense", "ekfac"], "ekfac_type2.npy"),
            ];
            for (cmd, file) in cases {
                let want_path = g.join("ref").join(file);
                if !want_path.exists() {
                    continue;
                }
                let out = dir.join(format!("{name}-{file}"));
                let o = s(&out);
                let mut args: Vec<&str> = cmd.to_vec();
                args.extend(["--problem", &prob, "--dtype", "f64", "--params", &params, "--out", &o]);
                if let Some(b) = batch {
                    args.extend(["--batch-size", b]);
                }
                let (code, _, err) = run(&args);
                assert_eq!(code, 0, "{args:?}: {err}");
                let (_, got) = npy(&out);
                let (_, want) = npy(&want_path);
                let r = rel(&got, &want);
                assert!(r <= 1e-10, "{name} {file} batch {batch:?}: rel {r:.2e}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 16);
    let _ = std::fs::remove_dir_all(dir);
}

/// On the tiny GPT with every parameter (attention and MLP maps, LayerNorm and positional dense
/// blocks, the tied embedding): saved factors reproduce the operator, and `matvec`, `trace`,
/// `logdet`, `solve` and `eigs` of KFAC agree with dense algebra on its matrix; on the residual
/// CNN the batch-norm blocks of `dense kfac` are the GGN's.
#[test]
fn graph_kfac_commands_on_all_parameters() {
    let dir = tmp("graph-all");
    let g = graph("tiny_gpt_ce");
    let prob = s(&g);
    let k_npy = s(&dir.join("K.npy"));
    ok(&["dense", "kfac", "--problem", &prob, "--dtype", "f64", "--out", &k_npy]);
    let (shape, k) = npy(&dir.join("K.npy"));
    let d = shape[0];
    assert_eq!(d, 744);
    let km = faer::Mat::<f64>::from_fn(d, d, |i, j| k[i * d + j]);
    // fit once, reuse
    for kind in ["kfac", "ekfac"] {
        let f = s(&dir.join(format!("{kind}.safetensors")));
        let fitted = ok_json(&["kfac-fit", kind, "--problem", &prob, "--dtype", "f64", "--out", &f, "--json"]);
        let a = s(&dir.join(format!("{kind}-fitted.npy")));
        let b = s(&dir.join(format!("{kind}-loaded.npy")));
        ok(&["dense", kind, "--problem", &prob, "--dtype", "f64", "--out", &a]);
        ok(&["dense", kind, "--problem", &prob, "--dtype", "f64", "--kfac-factors", &f, "--out", &b]);
        let (_, va) = npy(Path::new(&a));
        let (_, vb) = npy(Path::new(&b));
        assert_eq!(va, vb, "{kind}: loaded factors differ from fitted ones");
        let tr: f64 = (0..d).map(|i| va[i * d + i]).sum();
        assert!((fitted["trace"].as_f64().unwrap() - tr).abs() <= 1e-10 * tr, "{kind}: {fitted}");
    }
    let f = s(&dir.join("kfac.safetensors"));
    let common = ["--problem", prob.as_str(), "--dtype", "f64", "--kfac-factors", f.as_str()];
    let with = |cmd: &[&str]| -> Vec<String> { cmd.iter().chain(common.iter()).map(|s| s.to_string()).collect() };
    let json = |cmd: &[&str]| -> serde_json::Value {
        let args = with(cmd);
        ok_json(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let tr: f64 = (0..d).map(|i| km[(i, i)]).sum();
    let t = json(&["trace", "kfac", "--json"]);
    assert!((t["trace"].as_f64().unwrap() - tr).abs() <= 1e-10 * tr, "{t}");
    let lam = 0.1;
    let kd = damped(&km, lam);
    let logdet = logdet_spd(&kd);
    let ld = json(&["logdet", "kfac", "--damping", "0.1", "--json"]);
    assert!((ld["logdet"].as_f64().unwrap() - logdet).abs() <= 1e-9 * logdet.abs(), "{ld} vs {logdet}");
    let x_npy = s(&dir.join("x.npy"));
    let args = with(&["solve", "kfac", "--damping", "0.1", "--out", &x_npy]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (_, x) = npy(Path::new(&x_npy));
    let (_, grad) = npy(&g.join("ref/grad.npy"));
    assert!(rel(&x, &chol_solve(&kd, &grad)) <= 1e-8, "solve kfac");
    // matvec with the reference probes [D, 3]
    let probes = g.join("ref/probes.npy");
    let (pshape, pv) = npy(&probes);
    let kk = pshape[1];
    let y_npy = s(&dir.join("y.npy"));
    let args = with(&["matvec", "kfac", "--vectors", &s(&probes), "--out", &y_npy]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (_, y) = npy(Path::new(&y_npy));
    let want: Vec<f64> =
        (0..d * kk).map(|idx| (0..d).map(|j| km[(idx / kk, j)] * pv[j * kk + idx % kk]).sum()).collect();
    assert!(rel(&y, &want) <= 1e-12, "matvec kfac");
    // the largest eigenvalues
    let e = json(&["eigs", "kfac", "--k", "3", "--tol", "1e-10", "--json"]);
    let mut evals = km.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
    evals.reverse();
    for (i, v) in e["eigenvalues"].as_array().unwrap().iter().enumerate() {
        let v = v.as_f64().unwrap();
        assert!((v - evals[i]).abs() <= 1e-8 * evals[0], "eigs λ{i}: {v} vs {}", evals[i]);
    }
    // batch norm: exact GGN blocks through the CLI
    let rn = graph("resnet_block_ce");
    let kr = s(&dir.join("KR.npy"));
    ok(&["dense", "kfac", "--problem", &s(&rn), "--dtype", "f64", "--batch-size", "4", "--out", &kr]);
    let (_, kr) = npy(Path::new(&kr));
    let (_, ggn) = npy(&rn.join("ref/ggn.npy"));
    let m = meta(&rn);
    let dr = m["D"].as_u64().unwrap() as usize;
    for p in m["param_order"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        if !name.contains(".bn") && !name.starts_with("bn") {
            continue;
        }
        let off = p["offset"].as_u64().unwrap() as usize;
        let len: usize = p["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).product();
        let blk = |a: &[f64]| -> Vec<f64> {
            (off..off + len).flat_map(|i| (off..off + len).map(move |j| a[i * dr + j])).collect()
        };
        assert!(rel(&blk(&kr), &blk(&ggn)) <= 1e-10, "{name}: dense block vs GGN");
    }
    let _ = std::fs::remove_dir_all(dir);
}
