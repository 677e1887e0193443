//! `curvops laplace fit|evaluate|predict --structure kfac --debias | --fit-samples M | --ekfac`
//! on the digits fixture: the reported sample counts, the saved posterior, predictions from it,
//! the seed convention, and one-line errors that name the flag.

use crate::common::{ok_json, run};
use std::path::PathBuf;

fn fixture(f: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/laplace").join(f).display().to_string()
}

fn base(action: &str) -> Vec<String> {
    let mut v: Vec<String> = vec!["laplace".into(), action.into()];
    for (k, f) in [("--model", "model.json"), ("--weights", "trained.safetensors"), ("--data", "train.safetensors")] {
        v.push(k.into());
        v.push(fixture(f));
    }
    v
}

fn with(action: &str, extra: &[&str]) -> Vec<String> {
    let mut v = base(action);
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn json(args: Vec<String>) -> serde_json::Value {
    ok_json(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn err_line(args: Vec<String>) -> String {
    let (code, _, err) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1, "expected an error: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

#[test]
fn debias_fit_saves_and_predicts() {
    let dir = std::env::temp_dir().join(format!("curvops-debias-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let post = dir.join("post.safetensors").display().to_string();
    let t = fixture("test.safetensors");
    let flags = ["--structure", "kfac", "--debias", "--batch-size", "100", "--seed", "3", "--prior-precision", "1"];
    let f = json(with("fit", &[&flags[..], &["--out", &post, "--json"]].concat()));
    let cs = &f["curvature_samples"];
    assert_eq!(cs["sampling"], "debiased");
    assert_eq!(
        (cs["basis"].as_u64(), cs["eigenvalues"].as_u64(), cs["distinct"].as_u64()),
        (Some(100), Some(100), Some(200))
    );
    assert_eq!(cs["seed"], 3);
    assert_eq!(f["N"], 1200);
    // the file holds corrected-eigenvalue blocks and the sampling
    let b = std::fs::read(&post).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"]["kfac_sampling"], "debiased:100:3");
    assert_eq!(header["kfac.0.E"]["shape"], serde_json::json!([24, 64]));
    assert_eq!(header["kfac.1.E"]["shape"], serde_json::json!([24, 1]));
    // predicting from the file = evaluating in one go
    let p = json(
        ["laplace", "predict", "--model", &fixture("model.json"), "--weights", &fixture("trained.safetensors")]
            .iter()
            .map(|s| s.to_string())
            .chain(["--posterior", &post, "--test-data", &t, "--json"].iter().map(|s| s.to_string()))
            .collect(),
    );
    let e = json(with("evaluate", &[&flags[..], &["--test-data", &t, "--json"]].concat()));
    let (a, b) = (p["laplace"]["nll"].as_f64().unwrap(), e["laplace"]["nll"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-12 * b.abs(), "predict {a} vs evaluate {b}");
    assert_eq!(e["log_marginal_likelihood"], f["log_marginal_likelihood"]);
    // the same seed gives the same posterior, another seed another one
    let e2 = json(with("evaluate", &[&flags[..8], &["4", "--test-data", &t, "--json"]].concat()));
    assert_ne!(e2["log_marginal_likelihood"], e["log_marginal_likelihood"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fit_samples_and_ekfac_report_their_samples() {
    let fixed = ["--structure", "kfac", "--prior-precision", "1", "--json"];
    let all = json(with("fit", &[&fixed[..], &["--out", "/dev/null"]].concat()));
    assert_eq!(all["curvature_samples"]["sampling"], "all");
    assert_eq!(all["curvature_samples"]["basis"], 1200);
    // all N samples as a subset: the plain KFAC posterior (up to summation order)
    let sub =
        json(with("fit", &[&fixed[..], &["--fit-samples", "1200", "--seed", "5", "--out", "/dev/null"]].concat()));
    let (a, b) = (sub["log_marginal_likelihood"].as_f64().unwrap(), all["log_marginal_likelihood"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-9 * b.abs(), "subset of all {a} vs all {b}");
    let sub = json(with("fit", &[&fixed[..], &["--fit-samples", "64", "--seed", "5", "--out", "/dev/null"]].concat()));
    let cs = &sub["curvature_samples"];
    assert_eq!(
        (cs["sampling"].as_str(), cs["basis"].as_u64(), cs["distinct"].as_u64()),
        (Some("subset"), Some(64), Some(64))
    );
    let ek = json(with("fit", &[&fixed[..], &["--ekfac", "--fit-samples", "64", "--out", "/dev/null"]].concat()));
    assert_eq!(ek["curvature_samples"]["sampling"], "ekfac");
    assert_ne!(ek["log_marginal_likelihood"], sub["log_marginal_likelihood"]);
}

#[test]
fn debias_flag_errors_name_the_flag() {
    let fit =
        |extra: &[&str]| err_line(with("fit", &[extra, &["--prior-precision", "1", "--out", "/dev/null"]].concat()));
    let e = fit(&["--structure", "diag", "--debias", "--batch-size", "10"]);
    assert!(e.contains("--debias") && e.contains("kfac"), "{e}");
    let e = fit(&["--structure", "kfac", "--debias"]);
    assert!(e.contains("--debias needs --batch-size"), "{e}");
    let e = fit(&["--structure", "kfac", "--debias", "--batch-size", "601"]);
    assert!(e.contains("--batch-size 601") && e.contains("N = 1200"), "{e}");
    let e = fit(&["--structure", "kfac", "--debias", "--batch-size", "10", "--fit-samples", "20"]);
    assert!(e.contains("--fit-samples"), "{e}");
    let e = fit(&["--structure", "kfac", "--fit-samples", "1201"]);
    assert!(e.contains("--fit-samples 1201"), "{e}");
    let e = fit(&["--structure", "kfac", "--fit-samples", "0"]);
    assert!(e.contains("--fit-samples 0"), "{e}");
    let e = fit(&["--structure", "full", "--fit-samples", "10"]);
    assert!(e.contains("--fit-samples applies to --structure kfac"), "{e}");
    let e = fit(&["--structure", "lowrank", "--ekfac"]);
    assert!(e.contains("--ekfac applies to --structure kfac"), "{e}");
}
