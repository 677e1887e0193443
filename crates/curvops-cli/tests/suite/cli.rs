//! The `curvops` binary end to end: commands on a reference problem against its ground truth,
//! and bad input giving one-line errors with a non-zero exit status (never a panic).

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_curvops"))
}

fn reference(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference").join(name)
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("curvops-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs and returns (status code, stdout, stderr).
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

fn npy(path: &Path) -> (Vec<usize>, Vec<f64>) {
    curvops_nn::io::read_npy::<f64>(path).unwrap()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let n: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    n / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

/// A one-line error on stderr, non-zero status, mentioning each of `parts`.
fn fails(args: &[&str], code: i32, parts: &[&str]) {
    let (c, out, err) = run(args);
    assert_eq!(c, code, "curvops {args:?}: status {c}, stderr {err}");
    assert!(out.is_empty(), "no stdout on error: {out}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for p in parts {
        assert!(err.contains(p), "error '{err}' should mention '{p}'");
    }
}

#[test]
fn commands_match_the_reference() {
    let p = reference("cnn_relu_maxpool_ce");
    let ps = p.to_str().unwrap();
    let t = Tmp::new("ref");
    let info = ok_json(&["info", "--problem", ps, "--json"]);
    assert_eq!(info["D"], 119);
    assert_eq!(info["N"], 6);
    assert_eq!(info["C"], 3);
    assert_eq!(info["param_order"][2]["name"], "4.weight");
    assert_eq!(info["param_order"][2]["offset"], 20);

    let g = t.path("g.npy");
    let lg = ok_json(&["loss-grad", "--problem", ps, "--out", g.to_str().unwrap(), "--json"]);
    let (_, loss) = npy(&p.join("ref/loss.npy"));
    assert!((lg["loss"].as_f64().unwrap() - loss[0]).abs() < 1e-10 * loss[0]);
    assert!(rel(&npy(&g).1, &npy(&p.join("ref/grad.npy")).1) < 1e-10);

    for (curv, key) in [("hessian", "hessian"), ("ggn", "ggn"), ("ef", "ef"), ("jacobian", "jacobian")] {
        let out = t.path(&format!("{curv}.npy"));
        ok_json(&["dense", curv, "--problem", ps, "--batch-size", "4", "--out", out.to_str().unwrap(), "--json"]);
        let (s, m) = npy(&out);
        let (rs, r) = npy(&p.join(format!("ref/{key}.npy")));
        assert_eq!(s, rs);
        assert!(rel(&m, &r) < 1e-10, "{curv}");
    }
    // matvec with a [D, K] block and a [D] vector
    let v: Vec<f64> = (0..119 * 2).map(|i| (i as f64 * 0.3).sin()).collect();
    let vp = t.path("v.npy");
    curvops_nn::io::write_npy(&vp, &[119, 2], &v).unwrap();
    let w = t.path("w.npy");
    ok_json(&[
        "matvec",
        "ggn",
        "--problem",
        ps,
        "--vectors",
        vp.to_str().unwrap(),
        "--out",
        w.to_str().unwrap(),
        "--json",
    ]);
    let (ws, wv) = npy(&w);
    assert_eq!(ws, vec![119, 2]);
    let (_, gm) = npy(&p.join("ref/ggn.npy"));
    let want: Vec<f64> = (0..119)
        .flat_map(|i| (0..2).map(move |k| (i, k)))
        .map(|(i, k)| (0..119).map(|j| gm[i * 119 + j] * v[j * 2 + k]).sum())
        .collect();
    assert!(rel(&wv, &want) < 1e-10);
    // per-sample gradients
    let ps_out = t.path("ps.npy");
    ok_json(&["per-sample", "--problem", ps, "--quantity", "grad", "--out", ps_out.to_str().unwrap(), "--json"]);
    assert!(rel(&npy(&ps_out).1, &npy(&p.join("ref/per_sample_loss_grads.npy")).1) < 1e-10);
    // eigenvalues
    let e = ok_json(&["eigs", "ggn", "--problem", ps, "--k", "3", "--json"]);
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p.join("meta.json")).unwrap()).unwrap();
    for i in 0..3 {
        let want = meta["scalars"]["ggn"]["top5"][i].as_f64().unwrap();
        let got = e["eigenvalues"][i].as_f64().unwrap();
        assert!((got - want).abs() < 1e-8 * want.abs(), "eig {i}: {got} vs {want}");
    }
    // f32 compute dtype
    let lg32 = ok_json(&["loss-grad", "--problem", ps, "--dtype", "f32", "--json"]);
    assert!((lg32["loss"].as_f64().unwrap() - loss[0]).abs() < 1e-5 * loss[0]);
}

#[test]
fn demo_runs() {
    let d = ok_json(&["demo", "--json"]);
    assert_eq!(d["D"], 371);
    assert!(d["loss"].as_f64().unwrap() < d["loss_initial"].as_f64().unwrap());
    assert!(d["hessian_top5"][0].as_f64().unwrap() > 0.0);
    assert!(d["ggn_min"].as_f64().unwrap() > -1e-8);
}

#[test]
fn bad_input_gives_one_line_errors() {
    let p = reference("mlp_relu_ce_batches");
    let ps = p.to_str().unwrap();
    let t = Tmp::new("bad");
    fails(&["info", "--problem", "/nonexistent/dir"], 1, &["/nonexistent/dir/", "No such file"]);
    fails(&["info", "--problem", "/nonexistent/dir", "--dtype", "f64"], 1, &["/nonexistent/dir/model.json"]);
    fails(&["info", "--model", ps], 1, &["--weights"]);
    fails(&["info", "--problem", ps, "--bogus"], 2, &["--bogus"]);
    fails(&["dense", "hessian2", "--problem", ps, "--out", "x.npy"], 2, &["hessian2"]);
    fails(&["info", "--problem", ps, "--params", "9.weight"], 1, &["--params", "9.weight"]);
    fails(&["loss-grad", "--problem", ps, "--batch-size", "0"], 1, &["--batch-size"]);
    let vp = t.path("v.npy");
    curvops_nn::io::write_npy(&vp, &[5], &[1.0f64; 5]).unwrap();
    fails(
        &["matvec", "ggn", "--problem", ps, "--vectors", vp.to_str().unwrap(), "--out", "o.npy"],
        1,
        &["v.npy", "[5]", "73"],
    );
    std::fs::write(t.path("bad.npy"), b"garbage").unwrap();
    fails(
        &["matvec", "ggn", "--problem", ps, "--vectors", t.path("bad.npy").to_str().unwrap(), "--out", "o.npy"],
        1,
        &["bad.npy"],
    );
    // a model file with an unknown layer
    std::fs::copy(p.join("weights.safetensors"), t.path("weights.safetensors")).unwrap();
    std::fs::copy(p.join("data.safetensors"), t.path("data.safetensors")).unwrap();
    let m = std::fs::read_to_string(p.join("model.json")).unwrap().replace("\"relu\"", "\"relux\"");
    std::fs::write(t.path("model.json"), m).unwrap();
    fails(&["loss-grad", "--problem", t.0.to_str().unwrap()], 1, &["model.json", "layer 1", "relux"]);
    fails(&["eigs", "ggn", "--problem", ps, "--k", "500"], 1, &["eigs"]);
    fails(&["solve", "ggn", "--problem", ps, "--rhs", "/nonexistent.npy", "--out", "x.npy"], 1, &["/nonexistent.npy"]);
}

fn graph_reference(name: &str) -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference-graph").join(name);
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference-graph").join(name)
}

/// `info`, `loss-grad`, `dense` and `matvec` of every curvature, `per-sample` on the graph
/// references, unbatched and at meta.json's batch size.
#[test]
fn graph_problems_through_the_cli() {
    let t = Tmp::new("graph");
    for name in ["resnet_block_ce", "layernorm_mlp_mse", "tiny_gpt_ce"] {
        let dir = graph_reference(name);
        let d = dir.to_str().unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
        let bs = meta["batch_size"].to_string();
        let info = ok_json(&["info", "--problem", d, "--json"]);
        assert_eq!(info["D"], meta["D"], "{name}: D");
        assert_eq!(info["C"], meta["C"], "{name}: C");
        assert_eq!(info["output_shape"], meta["output_shape"], "{name}: output_shape");
        let g = t.path("g.npy");
        let lg = ok_json(&["loss-grad", "--problem", d, "--json", "--out", g.to_str().unwrap()]);
        let (_, loss) = npy(&dir.join("ref/loss.npy"));
        assert!((lg["loss"].as_f64().unwrap() - loss[0]).abs() < 1e-10 * loss[0].abs(), "{name}: loss");
        assert!(rel(&npy(&g).1, &npy(&dir.join("ref/grad.npy")).1) < 1e-10, "{name}: grad");
        for curv in ["hessian", "ggn", "ef", "jacobian"] {
            for extra in [vec![], vec!["--batch-size", bs.as_str()]] {
                let m = t.path("m.npy");
                let mut args = vec!["dense", curv, "--problem", d, "--out", m.to_str().unwrap()];
                args.extend(&extra);
                ok_json(&[args.as_slice(), &["--json"]].concat());
                let want = npy(&dir.join(format!("ref/{curv}.npy"))).1;
                assert!(rel(&npy(&m).1, &want) < 1e-10, "{name}: dense {curv} {extra:?}");
            }
        }
        let ps = t.path("ps.npy");
        ok_json(&["per-sample", "--quantity", "grad", "--problem", d, "--json", "--out", ps.to_str().unwrap()]);
        assert!(rel(&npy(&ps).1, &npy(&dir.join("ref/per_sample_loss_grads.npy")).1) < 1e-10, "{name}: per-sample");
        let eig = ok_json(&["eigs", "ggn", "--k", "5", "--problem", d, "--json"]);
        let want: Vec<f64> = meta["scalars"]["ggn"]["top5"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        if !want.is_empty() {
            let got: Vec<f64> = eig["eigenvalues"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert!(rel(&got, &want) < 1e-8, "{name}: eigs ggn {got:?} vs {want:?}");
        }
    }
}

/// Bad graph files: one line naming the node and field, exit status 1.
#[test]
fn graph_errors_are_one_line() {
    let t = Tmp::new("graph-errors");
    let src = graph_reference("tiny_gpt_ce");
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("model.json")).unwrap()).unwrap();
    let w = src.join("weights.safetensors");
    let dpath = src.join("data.safetensors");
    let try_model = |edit: &dyn Fn(&mut serde_json::Value), parts: &[&str]| {
        let mut m = model.clone();
        edit(&mut m);
        let p = t.path("model.json");
        std::fs::write(&p, serde_json::to_string(&m).unwrap()).unwrap();
        fails(
            &[
                "info",
                "--model",
                p.to_str().unwrap(),
                "--weights",
                w.to_str().unwrap(),
                "--data",
                dpath.to_str().unwrap(),
            ],
            1,
            parts,
        );
    };
    let nodes = |m: &mut serde_json::Value| -> Vec<serde_json::Value> { m["nodes"].as_array().unwrap().clone() };
    // unknown input name
    try_model(
        &|m| {
            let mut n = nodes(m);
            n[2]["inputs"] = serde_json::json!(["wte", "nope"]);
            m["nodes"] = n.into();
        },
        &["unknown input 'nope'"],
    );
    // input used before it is defined
    try_model(
        &|m| {
            let mut n = nodes(m);
            let last = n.last().unwrap()["name"].as_str().unwrap().to_string();
            n[2]["inputs"] = serde_json::json!(["wte", last]);
            m["nodes"] = n.into();
        },
        &["before it is defined"],
    );
    // shapes that do not match at an add: both inputs named
    try_model(
        &|m| {
            let mut n = nodes(m);
            n[1]["shape"] = serde_json::json!([4, 8]);
            m["nodes"] = n.into();
        },
        &["(add)", "'wpe'", "'wte'"],
    );
    // unknown field and unknown role
    try_model(
        &|m| {
            let mut n = nodes(m);
            n[0]["padding_idxx"] = serde_json::json!(0);
            m["nodes"] = n.into();
        },
        &["node 'wte'", "padding_idxx"],
    );
    // a tie whose shapes differ
    try_model(
        &|m| {
            let mut n = nodes(m);
            let l = n.len() - 1;
            n[l]["out_features"] = serde_json::json!(12);
            m["nodes"] = n.into();
        },
        &["wte.weight"],
    );
    // token id out of range: names the sample
    let data = curvops_nn::io::read_bytes(&dpath).unwrap();
    let st = safetensors::SafeTensors::deserialize(&data).unwrap();
    let x = st.tensor("x").unwrap();
    let mut ids: Vec<i64> = x.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    ids[7] = 99;
    let y = st.tensor("y").unwrap();
    let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        ("x", safetensors::tensor::TensorView::new(safetensors::Dtype::I64, x.shape().to_vec(), &bytes).unwrap()),
        ("y", safetensors::tensor::TensorView::new(y.dtype(), y.shape().to_vec(), y.data()).unwrap()),
    ];
    let bad = t.path("data.safetensors");
    safetensors::tensor::serialize_to_file(views, None, &bad).unwrap();
    let m = src.join("model.json");
    fails(
        &["info", "--model", m.to_str().unwrap(), "--weights", w.to_str().unwrap(), "--data", bad.to_str().unwrap()],
        1,
        &["token id 99", "sample 1", "wte"],
    );
}
