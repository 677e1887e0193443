//! `curvops vivit` end to end on reference problems (float64) against the dense GGN, and its
//! one-line errors.

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
        let p = std::env::temp_dir().join(format!("curvops-vivit-{tag}-{}", std::process::id()));
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

fn meta(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(reference(name).join("meta.json")).unwrap()).unwrap()
}

/// Eigenvalues (descending) of the dense symmetric `[d, d]` matrix restricted to `idx`.
fn eigs(g: &[f64], d: usize, idx: &[usize]) -> Vec<f64> {
    let m = faer::Mat::from_fn(idx.len(), idx.len(), |i, j| g[idx[i] * d + idx[j]]);
    curvops_linalg::Eigh::from_dense(m.as_ref()).unwrap().values
}

fn values(v: &serde_json::Value) -> Vec<f64> {
    v["eigenvalues"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn vivit_matches_dense_ggn_and_writes_its_files() {
    for name in ["mlp_relu_ce_batches", "cnn_relu_maxpool_ce", "mlp_tanh_mse"] {
        let dir = reference(name);
        let m = meta(name);
        let (n, d) = (m["N"].as_u64().unwrap() as usize, m["D"].as_u64().unwrap() as usize);
        let bs = m["batch_size"].to_string();
        let tmp = Tmp::new(name);
        let out = tmp.0.to_str().unwrap();
        let k = 4;
        let j = ok_json(&[
            "vivit",
            "--problem",
            dir.to_str().unwrap(),
            "--dtype",
            "f64",
            "--batch-size",
            &bs,
            "--k",
            "4",
            "--out-dir",
            out,
            "--json",
        ]);
        let lam = values(&j);
        assert_eq!(lam.len(), k, "{name}");
        let g = npy(&dir.join("ref/ggn.npy")).1;
        let all: Vec<usize> = (0..d).collect();
        let mu = eigs(&g, d, &all);
        for i in 0..k {
            assert!((lam[i] - mu[i]).abs() <= 1e-8 * mu[0], "{name}: λ_{i} {} vs {}", lam[i], mu[i]);
        }
        let rank = j["rank"].as_u64().unwrap() as usize;
        assert!(rank <= n * m["C"].as_u64().unwrap() as usize && mu[rank - 1] > 1e-9 * mu[0], "{name}: rank {rank}");
        // files and shapes
        let (s, ev) = npy(&tmp.path("eigenvalues.npy"));
        assert_eq!(s, vec![k]);
        assert!(ev.iter().zip(&lam).all(|(a, b)| (a - b).abs() <= 1e-14 * b.abs()), "{name}: {ev:?} vs {lam:?}");
        let (s, vecs) = npy(&tmp.path("eigenvectors.npy"));
        assert_eq!(s, vec![d, k]);
        let (s, gamma) = npy(&tmp.path("gamma.npy"));
        assert_eq!(s, vec![n, k]);
        let (s, lambda) = npy(&tmp.path("lambda.npy"));
        assert_eq!(s, vec![n, k]);
        let (s, step) = npy(&tmp.path("newton_step.npy"));
        assert_eq!(s, vec![d]);
        assert!(step.iter().all(|x| x.is_finite()));
        assert_eq!(npy(&tmp.path("newton_damping.npy")).0, vec![k]);
        // G e_k = λ_k e_k; γ_nk = e_kᵀ ∇ℓ_n; c Σ_n λ_nk = λ_k
        let psg = npy(&dir.join("ref/per_sample_loss_grads.npy")).1;
        let grad = npy(&dir.join("ref/grad.npy")).1;
        let gsum: f64 = psg.iter().map(|x| x.abs()).fold(0.0, f64::max);
        // c from ∇L = c Σ_n ∇ℓ_n
        let num: f64 = (0..d).map(|i| grad[i] * (0..n).map(|s| psg[s * d + i]).sum::<f64>()).sum();
        let den: f64 = (0..d).map(|i| (0..n).map(|s| psg[s * d + i]).sum::<f64>().powi(2)).sum();
        let c = num / den;
        for kk in 0..k {
            let e: Vec<f64> = (0..d).map(|i| vecs[i * k + kk]).collect();
            let res: f64 =
                (0..d).map(|i| ((0..d).map(|jj| g[i * d + jj] * e[jj]).sum::<f64>() - lam[kk] * e[i]).powi(2)).sum();
            assert!(res.sqrt() <= 1e-8 * mu[0], "{name}: residual");
            for s in 0..n {
                let want: f64 = (0..d).map(|i| e[i] * psg[s * d + i]).sum();
                assert!((gamma[s * k + kk] - want).abs() <= 1e-10 * gsum, "{name}: γ");
            }
            let sl: f64 = (0..n).map(|s| lambda[s * k + kk]).sum();
            assert!((c * sl - lam[kk]).abs() <= 1e-10 * mu[0], "{name}: c Σ λ_nk = {} vs λ = {}", c * sl, lam[kk]);
        }
        // all nonzero directions with a constant damping: −P(G + δI)⁻¹P∇L
        let delta = 0.01 * mu[0];
        let ds = delta.to_string();
        ok_json(&[
            "vivit",
            "--problem",
            dir.to_str().unwrap(),
            "--dtype",
            "f64",
            "--batch-size",
            &bs,
            "--k",
            "100000",
            "--damping",
            &ds,
            "--out-dir",
            out,
            "--json",
        ]);
        let step = npy(&tmp.path("newton_step.npy")).1;
        let ge = curvops_linalg::Eigh::from_dense(faer::Mat::from_fn(d, d, |i, j| g[i * d + j]).as_ref()).unwrap();
        let mut want = vec![0.0; d];
        for t in 0..rank {
            let u: Vec<f64> = (0..d).map(|i| ge.vectors[(i, t)]).collect();
            let a: f64 = u.iter().zip(&grad).map(|(x, y)| x * y).sum::<f64>() / (ge.values[t] + delta);
            for i in 0..d {
                want[i] -= a * u[i];
            }
        }
        let err: f64 = step.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt()
            / want.iter().map(|b| b * b).sum::<f64>().sqrt();
        assert!(err < 1e-8, "{name}: damped step rel err {err:.3e}");
    }
}

#[test]
fn vivit_blocks_mc_subsample_and_f32() {
    let name = "cnn_relu_maxpool_ce";
    let dir = reference(name);
    let p = dir.to_str().unwrap();
    let m = meta(name);
    let (n, d) = (m["N"].as_u64().unwrap() as usize, m["D"].as_u64().unwrap() as usize);
    let bs = m["batch_size"].to_string();
    // layer blocks: the union of the dense diagonal blocks' spectra
    let j = ok_json(&[
        "vivit",
        "--problem",
        p,
        "--dtype",
        "f64",
        "--batch-size",
        &bs,
        "--k",
        "6",
        "--blocks",
        "layer",
        "--json",
    ]);
    let g = npy(&dir.join("ref/ggn.npy")).1;
    let mut want = Vec::new();
    let order = m["param_order"].as_array().unwrap();
    let mut layers: Vec<(String, Vec<usize>)> = Vec::new();
    for e in order {
        let name = e["name"].as_str().unwrap();
        let layer = name.split('.').next().unwrap().to_string();
        let off = e["offset"].as_u64().unwrap() as usize;
        let len: usize = e["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).product();
        match layers.iter_mut().find(|l| l.0 == layer) {
            Some(l) => l.1.extend(off..off + len),
            None => layers.push((layer, (off..off + len).collect())),
        }
    }
    for (_, idx) in &layers {
        want.extend(eigs(&g, d, idx));
    }
    want.sort_by(|a, b| b.partial_cmp(a).unwrap());
    for (i, l) in values(&j).iter().enumerate() {
        assert!((l - want[i]).abs() <= 1e-8 * want[0], "block λ_{i}: {l} vs {}", want[i]);
    }
    // MC factor on a subsample; files for all samples
    let tmp = Tmp::new("mc");
    let out = tmp.0.to_str().unwrap();
    let j = ok_json(&[
        "vivit",
        "--problem",
        p,
        "--dtype",
        "f64",
        "--k",
        "3",
        "--mc-samples",
        "2",
        "--subsample",
        "3",
        "--seed",
        "4",
        "--out-dir",
        out,
        "--json",
    ]);
    assert_eq!(values(&j).len(), 3);
    assert_eq!(npy(&tmp.path("gamma.npy")).0, vec![n, 3]);
    assert_eq!(npy(&tmp.path("lambda.npy")).0, vec![n, 3]);
    assert_eq!(npy(&tmp.path("eigenvectors.npy")).0, vec![d, 3]);
    // seeded: the same command gives the same result; another seed another one
    let again = ok_json(&[
        "vivit",
        "--problem",
        p,
        "--dtype",
        "f64",
        "--k",
        "3",
        "--mc-samples",
        "2",
        "--subsample",
        "3",
        "--seed",
        "4",
        "--json",
    ]);
    assert_eq!(values(&j), values(&again));
    let other = ok_json(&[
        "vivit",
        "--problem",
        p,
        "--dtype",
        "f64",
        "--k",
        "3",
        "--mc-samples",
        "2",
        "--subsample",
        "3",
        "--seed",
        "5",
        "--json",
    ]);
    assert_ne!(values(&j), values(&other));
    // f32 agrees with f64 to f32 accuracy
    let j64 = ok_json(&["vivit", "--problem", p, "--dtype", "f64", "--k", "3", "--json"]);
    let j32 = ok_json(&["vivit", "--problem", p, "--dtype", "f32", "--k", "3", "--json"]);
    for (a, b) in values(&j32).iter().zip(values(&j64)) {
        assert!((a - b).abs() <= 1e-4 * values(&j64)[0], "f32 {a} vs f64 {b}");
    }
    // the memory formula and the benchmark mode
    let j = ok_json(&["vivit", "--problem", p, "--memory-budget-gb", "8", "--json"]);
    assert!(j["critical_batch_size"].as_u64().unwrap() > 1000);
    let j = ok_json(&["vivit", "--problem", p, "--k", "3", "--bench", "1", "--json"]);
    assert!(j["vivit_ms"].as_f64().unwrap() > 0.0 && j["max_rel_diff"].as_f64().unwrap() < 1e-3);
}

#[test]
fn vivit_errors_are_one_line() {
    let p = reference("mlp_tanh_mse");
    let p = p.to_str().unwrap();
    for (args, flag) in [
        (vec!["--k", "0"], "--k"),
        (vec!["--subsample", "0"], "--subsample"),
        (vec!["--subsample", "100000"], "--subsample"),
        (vec!["--damping=-1"], "--damping"),
        (vec!["--mc-samples", "0"], "--mc-samples"),
        (vec!["--memory-budget-gb", "0"], "--memory-budget-gb"),
    ] {
        let mut a = vec!["vivit", "--problem", p];
        a.extend(args.iter());
        let (code, _, err) = run(&a);
        assert_eq!(code, 1, "{a:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{a:?}: {err}");
        assert!(err.contains(flag), "{a:?}: {err}");
    }
}

fn graph_reference(name: &str) -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference-graph").join(name);
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference-graph").join(name)
}

/// `curvops vivit --k 5` on the graph references (residual block, LayerNorm MLP, tiny GPT with
/// a tied embedding and sequence outputs): the top-5 eigenvalues of `meta.json`, the layer and
/// tensor blocks against the dense GGN's diagonal blocks, and the MC factor runs.
#[test]
fn vivit_on_graph_references() {
    for name in ["resnet_block_ce", "layernorm_mlp_mse", "tiny_gpt_ce"] {
        let dir = graph_reference(name);
        let ds = dir.to_str().unwrap();
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
        let want: Vec<f64> =
            m["scalars"]["ggn"]["top5"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let bs = m["batch_size"].to_string();
        let tmp = Tmp::new(&format!("graph-{name}"));
        let out = tmp.0.to_str().unwrap();
        let j = ok_json(&["vivit", "--problem", ds, "--batch-size", &bs, "--k", "5", "--out-dir", out, "--json"]);
        let lam = values(&j);
        assert_eq!(lam.len(), 5, "{name}");
        for i in 0..5 {
            assert!((lam[i] - want[i]).abs() <= 1e-10 * want[0], "{name}: λ_{i} {} vs {}", lam[i], want[i]);
        }
        let d = m["D"].as_u64().unwrap() as usize;
        assert_eq!(npy(&tmp.path("eigenvectors.npy")).0, vec![d, 5]);
        // blocks: per node (a tied tensor belongs to its first user) and per tensor
        let p = curvops_nn::io::load_problem::<f64>(
            &dir.join("model.json"),
            &dir.join("weights.safetensors"),
            &dir.join("data.safetensors"),
        )
        .unwrap();
        let g = npy(&dir.join("ref/ggn.npy")).1;
        let entries = &p.net.layout.entries;
        for (blocks, by_node) in [("layer", true), ("param", false)] {
            let j = ok_json(&["vivit", "--problem", ds, "--k", "5", "--blocks", blocks, "--json"]);
            let lam = values(&j);
            let mut groups: Vec<Vec<usize>> = Vec::new();
            let mut names: Vec<String> = Vec::new();
            for e in entries {
                let gname = if by_node { e.layer.to_string() } else { e.name.clone() };
                let gi = names.iter().position(|x| *x == gname).unwrap_or_else(|| {
                    names.push(gname);
                    groups.push(Vec::new());
                    names.len() - 1
                });
                groups[gi].extend(e.offset..e.offset + e.len);
            }
            let mut mu: Vec<f64> = groups.iter().flat_map(|idx| eigs(&g, d, idx)).collect();
            mu.sort_by(|a, b| b.partial_cmp(a).unwrap());
            for i in 0..5 {
                assert!(
                    (lam[i] - mu[i]).abs() <= 1e-9 * mu[0],
                    "{name} --blocks {blocks}: λ_{i} {} vs {}",
                    lam[i],
                    mu[i]
                );
            }
        }
        // the MC factor (one draw per token for the language model)
        let j = ok_json(&["vivit", "--problem", ds, "--k", "3", "--mc-samples", "2", "--seed", "4", "--json"]);
        let lam = values(&j);
        assert!(lam.len() == 3 && lam.iter().all(|x| x.is_finite() && *x > 0.0), "{name}: MC {lam:?}");
    }
}
