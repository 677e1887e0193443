//! `curvops laplace` and `curvops train` end to end: the SPEC.md §5 JSON of `laplace evaluate`
//! against laplace-torch's numbers, `fit` + `predict` from a saved posterior, `train` against
//! PyTorch and writing the input's layout.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_curvops"))
}

fn fixture(f: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/laplace").join(f).display().to_string()
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("curvops-laplace-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn run(args: &[&str]) -> (i32, String, String) {
    let o = bin().args(args).output().expect("run curvops");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn ok_json(args: &[&str]) -> serde_json::Value {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "curvops {args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The tensors of a safetensors file: name → (dtype, shape, values as f64).
fn tensors(path: &str) -> std::collections::BTreeMap<String, (String, Vec<u64>, Vec<f64>)> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let data = &b[8 + n..];
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in header.as_object().unwrap() {
        if k == "__metadata__" {
            continue;
        }
        let dtype = v["dtype"].as_str().unwrap().to_string();
        let shape: Vec<u64> = v["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        let (s, e) = (v["data_offsets"][0].as_u64().unwrap() as usize, v["data_offsets"][1].as_u64().unwrap() as usize);
        let vals = match dtype.as_str() {
            "F32" => data[s..e].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            "F64" => data[s..e].chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
            _ => Vec::new(),
        };
        out.insert(k.clone(), (dtype, shape, vals));
    }
    out
}

fn anchor() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("anchor.json")).unwrap()).unwrap()
}

fn close(got: &serde_json::Value, want: &serde_json::Value, what: &str) {
    let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
    assert!((g - w).abs() <= 1e-6 * w.abs(), "{what}: {g} vs laplace-torch {w}");
}

fn evaluate(structure: &str, subset: &str, prior: &[&str]) -> serde_json::Value {
    let (m, w, d, t) = (
        fixture("model.json"),
        fixture("trained.safetensors"),
        fixture("train.safetensors"),
        fixture("test.safetensors"),
    );
    let mut args = vec![
        "laplace",
        "evaluate",
        "--model",
        &m,
        "--weights",
        &w,
        "--data",
        &d,
        "--test-data",
        &t,
        "--structure",
        structure,
        "--subset",
        subset,
        "--json",
    ];
    args.extend_from_slice(prior);
    ok_json(&args)
}

#[test]
fn evaluate_reproduces_laplace_torch() {
    let a = anchor();
    for (structure, subset, key, tau) in [
        ("diag", "all", "diag_all", "0.1"),
        ("kfac", "all", "kron_all", "10.0"),
        ("full", "last-layer", "full_lastlayer", "1.0"),
    ] {
        let o = evaluate(structure, subset, &["--prior-precision", tau]);
        let want = &a[key]["fixed"][tau];
        close(&o["log_marginal_likelihood"], &want["log_marginal_likelihood"], &format!("{key} τ={tau} lml"));
        for m in ["accuracy", "nll", "ece"] {
            close(&o["laplace"][m], &want[m], &format!("{key} τ={tau} {m}"));
            close(&o["map"][m], &a["map"][m], &format!("MAP {m}"));
        }
        assert_eq!(o["prior_precision"].as_f64().unwrap(), tau.parse::<f64>().unwrap());
    }
    let o = evaluate("kfac", "all", &["--prior", "marglik"]);
    let (got, want) = (o["prior_precision"].as_f64().unwrap(), a["kron_all"]["marglik_tau"].as_f64().unwrap());
    assert!((got - want).abs() / want < 0.02, "marglik τ {got} vs laplace-torch {want}");
}

#[test]
fn fit_then_predict_without_data() {
    let dir = tmp("fit");
    let post = dir.join("post.safetensors").display().to_string();
    let probs = dir.join("probs.npy").display().to_string();
    let (m, w, d, t) = (
        fixture("model.json"),
        fixture("trained.safetensors"),
        fixture("train.safetensors"),
        fixture("test.safetensors"),
    );
    let f = ok_json(&[
        "laplace",
        "fit",
        "--model",
        &m,
        "--weights",
        &w,
        "--data",
        &d,
        "--structure",
        "kfac",
        "--prior-precision",
        "1",
        "--out",
        &post,
        "--json",
    ]);
    close(&f["log_marginal_likelihood"], &anchor()["kron_all"]["fixed"]["1.0"]["log_marginal_likelihood"], "fit lml");
    let p = ok_json(&[
        "laplace",
        "predict",
        "--model",
        &m,
        "--weights",
        &w,
        "--posterior",
        &post,
        "--test-data",
        &t,
        "--out",
        &probs,
        "--json",
    ]);
    close(&p["laplace"]["nll"], &anchor()["kron_all"]["fixed"]["1.0"]["nll"], "predict nll");
    let (shape, v) = curvops_nn::io::read_npy::<f64>(std::path::Path::new(&probs)).unwrap();
    assert_eq!(shape, vec![597, 10]);
    assert!(v.chunks(10).all(|r| (r.iter().sum::<f64>() - 1.0).abs() < 1e-12));
    // other weights than the posterior's: a clear error
    let (code, _, err) = run(&[
        "laplace",
        "predict",
        "--model",
        &m,
        "--weights",
        &fixture("init.safetensors"),
        "--posterior",
        &post,
        "--test-data",
        &t,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("fitted on other weights"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn train_matches_pytorch_and_keeps_the_layout() {
    let dir = tmp("train");
    let out = dir.join("w.safetensors").display().to_string();
    let (m, init) = (fixture("model.json"), fixture("init.safetensors"));
    let data = format!("{}@:300", fixture("train.safetensors"));
    let o = ok_json(&[
        "train",
        "--model",
        &m,
        "--weights",
        &init,
        "--data",
        &data,
        "--epochs",
        "3",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--weight-decay",
        "1e-3",
        "--batch-size",
        "50",
        "--no-shuffle",
        "--dtype",
        "f64",
        "--out",
        &out,
        "--json",
    ]);
    assert_eq!(o["prior_precision"].as_f64().unwrap(), 300.0 * 1e-3);
    let (got, want, reference) = (tensors(&out), tensors(&init), tensors(&fixture("train_ref/adam.safetensors")));
    let names: Vec<&String> = got.keys().collect();
    assert_eq!(names, want.keys().collect::<Vec<_>>());
    for (n, (dtype, shape, vals)) in &got {
        assert_eq!((dtype, shape), (&want[n].0, &want[n].1), "{n}");
        // trained in f64, written in the input's f32: PyTorch's result to f32 rounding
        for (g, w) in vals.iter().zip(&reference[n].2) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "{n}: {g} vs {w}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_are_one_line_errors() {
    let (m, w, d) = (fixture("model.json"), fixture("trained.safetensors"), fixture("train.safetensors"));
    let (code, _, err) = run(&[
        "laplace",
        "evaluate",
        "--model",
        &m,
        "--weights",
        &w,
        "--data",
        &d,
        "--test-data",
        &d,
        "--structure",
        "banded",
    ]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&[
        "laplace",
        "evaluate",
        "--model",
        &m,
        "--weights",
        &w,
        "--data",
        &d,
        "--test-data",
        &d,
        "--prior-precision",
        "0",
    ]);
    assert_eq!(code, 1);
    assert!(err.lines().count() == 1 && err.contains("positive"), "{err}");
    let (code, _, err) = run(&[
        "laplace",
        "evaluate",
        "--model",
        &m,
        "--weights",
        &w,
        "--data",
        &d,
        "--test-data",
        &d,
        "--prior",
        "gridsearch",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--val-data"), "{err}");
}

#[test]
fn data_formats_give_the_same_posterior() {
    // testdata/laplace/formats: the first 100 training rows as .npz, .npy (+ labels), CSV and IDX
    let (m, w) = (fixture("model.json"), fixture("trained.safetensors"));
    let dir = tmp("formats");
    let out = dir.join("p.safetensors").display().to_string();
    let lml = |data: &[&str]| {
        let mut args = vec![
            "laplace",
            "fit",
            "--model",
            &m,
            "--weights",
            &w,
            "--structure",
            "diag",
            "--prior-precision",
            "1",
            "--out",
            &out,
            "--json",
            "--data",
        ];
        args.extend_from_slice(data);
        let o = ok_json(&args);
        assert_eq!(o["N"], 100, "{data:?}");
        o["log_marginal_likelihood"].as_f64().unwrap()
    };
    let want = lml(&[&format!("{}@:100", fixture("train.safetensors"))]);
    let (npy, labels) = (fixture("formats/x100.npy"), fixture("formats/y100.npy"));
    for data in [
        vec![fixture("formats/digits100.npz")],
        vec![npy, "--labels".into(), labels],
        vec![
            fixture("formats/digits100.csv"),
            "--label-column".into(),
            "digit".into(),
            "--x-scale".into(),
            "16".into(),
        ],
        vec![fixture("formats/digits100-images-idx3-ubyte.gz"), "--x-scale".into(), "16".into()],
    ] {
        let args: Vec<&str> = data.iter().map(String::as_str).collect();
        assert_eq!(lml(&args), want, "{data:?}");
    }
    // splits: the same permutation for every spec of a file, so the parts are disjoint
    let csv = fixture("formats/digits100.csv");
    let part = |s: &str| {
        let o = ok_json(&[
            "laplace",
            "fit",
            "--model",
            &m,
            "--weights",
            &w,
            "--data",
            &format!("{csv}@{s}"),
            "--label-column",
            "0",
            "--x-scale",
            "16",
            "--permute-seed",
            "3",
            "--structure",
            "diag",
            "--prior-precision",
            "1",
            "--out",
            &out,
            "--json",
        ]);
        (o["N"].as_u64().unwrap(), o["log_likelihood"].as_f64().unwrap())
    };
    let (a, b, all) = (part(":0.7"), part("0.7:"), part(":"));
    assert_eq!((a.0, b.0, all.0), (70, 30, 100));
    assert!((a.1 + b.1 - all.1).abs() < 1e-9 * all.1.abs());
    // a CSV whose default label column (the last) is not a class: a clear one-line error
    let (code, _, err) = run(&[
        "laplace",
        "fit",
        "--model",
        &m,
        "--weights",
        &w,
        "--data",
        &csv,
        "--prior-precision",
        "1",
        "--out",
        &out,
    ]);
    assert_eq!(code, 1);
    assert!(err.lines().count() == 1 && err.contains("digits100.csv") && err.contains("label"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn evaluate_reports_shift_ood_grid_and_reliability() {
    let dir = tmp("extras");
    let svg = dir.join("rel.svg").display().to_string();
    let (t, d) = (fixture("test.safetensors"), fixture("train.safetensors"));
    let o = evaluate(
        "full",
        "last-layer",
        &[
            "--prior",
            "gridsearch",
            "--val-data",
            &format!("{d}@1000:"),
            "--grid",
            "-2,2,9",
            "--shift-noise",
            "0.3",
            "--ood-data",
            &format!("{t}@:100"),
            "--reliability",
            &svg,
        ],
    );
    let grid = o["grid"].as_array().unwrap();
    assert_eq!(grid.len(), 9);
    let best = grid.iter().min_by(|a, b| a[1].as_f64().unwrap().total_cmp(&b[1].as_f64().unwrap())).unwrap();
    assert_eq!(o["prior_precision"], best[0]);
    assert_eq!(o["prior_method"], "gridsearch");
    for k in ["map", "laplace"] {
        let s = &o["shifted"][k];
        assert!(s["nll"].as_f64().unwrap() > o[k]["nll"].as_f64().unwrap(), "noise makes {k} worse");
        let auroc = o["ood_auroc"][k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{auroc}");
        assert!(o[k]["brier"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(o["shifted"]["noise_std"], 0.3);
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.contains("Laplace"), "{}", &s[..s.len().min(200)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_reports_calibration_before_and_after() {
    let d = ok_json(&["demo", "--json"]);
    for k in
        ["test_map", "shifted_map", "test_laplace_full_all", "shifted_laplace_kfac_all", "test_laplace_full_last_layer"]
    {
        for m in ["accuracy", "nll", "brier", "ece"] {
            let v = d[k][m].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v >= 0.0, "{k}.{m} = {v}");
        }
    }
    // the Laplace predictive is far less overconfident than the MAP away from the data
    let (map, la) = (d["shifted_map"]["nll"].as_f64().unwrap(), d["shifted_laplace_full_all"]["nll"].as_f64().unwrap());
    assert!(la < map, "shifted NLL: Laplace {la} vs MAP {map}");
    assert!(d["laplace_prior_precision"]["full_all"].as_f64().unwrap() > 0.0);
}

fn graph_reference(name: &str) -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference-graph").join(name);
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference-graph").join(name)
}

/// `curvops train` on the graph references: the loss decreases, the output has the input's keys
/// (the tied `wte.weight` once), shapes and dtypes; batch norm gets its evaluation-mode warning.
/// Then `laplace evaluate` on the trained weights for several structures and subsets.
#[test]
fn train_and_laplace_on_graph_references() {
    for name in ["resnet_block_ce", "layernorm_mlp_mse", "tiny_gpt_ce"] {
        let dir = tmp(&format!("graph-{name}"));
        let src = graph_reference(name);
        let out = dir.join("w.safetensors").display().to_string();
        let args = [
            "train",
            "--problem",
            src.to_str().unwrap(),
            "--epochs",
            "20",
            "--optimizer",
            "adam",
            "--lr",
            "0.01",
            "--batch-size",
            "4",
            "--out",
            &out,
            "--json",
        ];
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert_eq!(stderr.contains("batch norm"), name == "resnet_block_ce", "{name}: {stderr}");
        let o: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let (l0, l1) = (o["loss_initial"].as_f64().unwrap(), o["loss"].as_f64().unwrap());
        assert!(l1 < 0.8 * l0, "{name}: loss {l0} → {l1}");
        if name != "layernorm_mlp_mse" {
            let acc = o["train_accuracy"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&acc), "{name}: accuracy {acc}");
        }
        let (got, want) = (tensors(&out), tensors(&src.join("weights.safetensors").display().to_string()));
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{name}: keys");
        for (k, (dtype, shape, _)) in &got {
            assert_eq!((dtype, shape), (&want[k].0, &want[k].1), "{name}: {k}");
        }
        // Laplace on the trained network (test data = the training data)
        let data = src.join("data.safetensors").display().to_string();
        let model = src.join("model.json").display().to_string();
        for (structure, subset) in [("full", "all"), ("diag", "all"), ("kfac", "all"), ("full", "last-layer")] {
            let j = ok_json(&[
                "laplace",
                "evaluate",
                "--model",
                &model,
                "--weights",
                &out,
                "--data",
                &data,
                "--test-data",
                &data,
                "--structure",
                structure,
                "--subset",
                subset,
                "--prior",
                "marglik",
                "--json",
            ]);
            let lml = j["log_marginal_likelihood"].as_f64().unwrap();
            assert!(lml.is_finite(), "{name} {structure}/{subset}: {j}");
            if name != "layernorm_mlp_mse" {
                for k in ["map", "laplace"] {
                    let acc = j[k]["accuracy"].as_f64().unwrap();
                    let nll = j[k]["nll"].as_f64().unwrap();
                    assert!(
                        (0.0..=1.0).contains(&acc) && nll.is_finite() && nll > 0.0,
                        "{name} {structure}/{subset} {k}: {j}"
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
