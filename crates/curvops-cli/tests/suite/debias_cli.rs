//! `curvops bias`, `solve --debias` and `train --optimizer newton-cg` (issue 12).

use super::common::{npy, ok_json, reference, rel, run};
use std::path::PathBuf;

fn fixture(f: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/laplace").join(f).display().to_string()
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("curvops-debias-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn bias_reports_both_diagnostics_and_plots_them() {
    let dir = tmp("bias");
    let svg = dir.join("bias.svg");
    let (m, w, d) =
        (fixture("model.json"), fixture("init.safetensors"), format!("{}@:400", fixture("train.safetensors")));
    let args = [
        "bias",
        "ggn",
        "--model",
        &m,
        "--weights",
        &w,
        "--data",
        &d,
        "--dtype",
        "f64",
        "--batch-size",
        "16",
        "--k",
        "3",
        "--batches",
        "12",
        "--cg-iters",
        "10",
        "--cg-batches",
        "4",
        "--plot",
        svg.to_str().unwrap(),
        "--json",
    ];
    let o = ok_json(&args);
    assert_eq!(o["batch_size"], 16);
    assert_eq!(o["top"].as_array().unwrap().len(), 3);
    assert_eq!(o["bottom"].as_array().unwrap().len(), 3);
    let top = &o["top"][0];
    assert_eq!(top["rounds"], 12);
    // the batch's own top eigenvalue exceeds the full-data curvature along its eigenvector
    assert!(top["same_minus_full"]["mean"].as_f64().unwrap() > 0.0, "{top}");
    // the smallest nonzero one is underestimated
    assert!(o["bottom"][0]["same_minus_full"]["mean"].as_f64().unwrap() < 0.0);
    for key in ["cg_median_q_batch", "cg_median_q_full", "cg_median_q_full_debiased_a", "cg_median_q_full_debiased_b"] {
        assert_eq!(o[key].as_array().unwrap().len(), 11, "{key}");
    }
    // q along CG on the batch decreases
    let qb: Vec<f64> = o["cg_median_q_batch"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(qb.last().unwrap() < &qb[0]);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.matches("<svg").count() == 3 && text.contains("debiased A"));
    // same seed, same numbers
    let again = ok_json(&args);
    assert_eq!(again["top"], o["top"]);
    assert_eq!(again["cg_median_q_full"], o["cg_median_q_full"]);
}

#[test]
fn debiased_solve_with_all_data_is_the_exact_damped_solve() {
    // with --batch-size N both batches are all data: variant B over D + 2 CG directions solves
    // (GGN + δI) x = g exactly; variant A's line searches do the same (CG's own step lengths)
    let dir = tmp("solve");
    let prob = reference("mlp_tanh_mse");
    let p = prob.to_str().unwrap();
    let exact = dir.join("exact.npy");
    ok_json(&[
        "solve",
        "ggn",
        "--problem",
        p,
        "--damping",
        "0.1",
        "--method",
        "cg",
        "--out",
        exact.to_str().unwrap(),
        "--json",
    ]);
    let (_, xe) = npy(&exact);
    for v in ["a", "b"] {
        let out = dir.join(format!("{v}.npy"));
        let o = ok_json(&[
            "solve",
            "ggn",
            "--problem",
            p,
            "--damping",
            "0.1",
            "--debias",
            v,
            "--batch-size",
            "16",
            "--max-iters",
            "140",
            "--tol",
            "1e-12",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(o["debias"], v);
        let (shape, x) = npy(&out);
        assert_eq!(shape, vec![138]);
        assert!(rel(&x, &xe) < 1e-8, "variant {v}: {}", rel(&x, &xe));
        assert_eq!(o["matvecs"].as_u64().unwrap(), 2 * o["iterations"].as_u64().unwrap());
    }
    // a real mini-batch: a step that decreases the model
    let out = dir.join("mb.npy");
    let o = ok_json(&[
        "solve",
        "ggn",
        "--problem",
        p,
        "--damping",
        "0.1",
        "--debias",
        "a",
        "--batch-size",
        "8",
        "--max-iters",
        "5",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o["model_decrease"].as_f64().unwrap() < 0.0);
    // errors name the flag
    for (extra, msg) in [
        (vec!["--debias", "a"], "--batch-size"),
        (vec!["--debias", "a", "--batch-size", "9"], "--batch-size 9"),
        (vec!["--debias", "b", "--batch-size", "4", "--rhs", exact.to_str().unwrap()], "--rhs grad"),
    ] {
        let mut args = vec!["solve", "ggn", "--problem", p, "--out", out.to_str().unwrap()];
        args.extend(extra);
        let (code, _, err) = run(&args);
        assert_ne!(code, 0);
        assert!(err.contains(msg) && err.trim().lines().count() == 1, "{err}");
    }
}

#[test]
fn newton_cg_trains_with_biased_and_debiased_steps() {
    let dir = tmp("newton");
    let (m, w, d) =
        (fixture("model.json"), fixture("init.safetensors"), format!("{}@:400", fixture("train.safetensors")));
    for deb in [None, Some("a"), Some("b")] {
        let out = dir.join("w.safetensors");
        let mut args = vec![
            "train",
            "--optimizer",
            "newton-cg",
            "--model",
            &m,
            "--weights",
            &w,
            "--data",
            &d,
            "--dtype",
            "f64",
            "--batch-size",
            "32",
            "--cg-iters",
            "8",
            "--epochs",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ];
        if let Some(v) = deb {
            args.extend(["--debias", v]);
        }
        let o = ok_json(&args);
        assert_eq!(o["optimizer"], "newton-cg");
        let steps = o["steps"].as_u64().unwrap();
        assert_eq!(steps, if deb.is_some() { 2 * 6 } else { 2 * 12 });
        assert!(o["curvature_products"].as_u64().unwrap() <= 8 * 12 * 2);
        assert!(o["loss"].as_f64().unwrap() < o["loss_initial"].as_f64().unwrap(), "{deb:?}: {o}");
        assert!(out.exists());
    }
    for (extra, msg) in [
        (vec!["--optimizer", "adam", "--debias", "a", "--lr", "0.1", "--batch-size", "8"], "newton-cg"),
        (vec!["--optimizer", "adam"], "--lr"),
        (vec!["--optimizer", "newton-cg"], "--batch-size"),
        (vec!["--optimizer", "newton-cg", "--batch-size", "8", "--damping", "0"], "--damping"),
    ] {
        let out = dir.join("x.safetensors");
        let mut args = vec![
            "train",
            "--model",
            &m,
            "--weights",
            &w,
            "--data",
            &d,
            "--epochs",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let (code, _, err) = run(&args);
        assert_ne!(code, 0);
        assert!(err.contains(msg) && err.trim().lines().count() == 1, "{msg}: {err}");
    }
}
