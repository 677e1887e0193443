//! Shared helpers for the integration tests: loading the reference problems of
//! `testdata/reference` and `testdata/extra` (dense float64 ground truth from PyTorch and
//! curvlinops; `testdata/gen_extra.py` makes the extra ones).

#![allow(dead_code)]

use curvops::Problem;
use curvops_nn::io::{load_problem, read_npy};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference")
}

/// The graph reference problems (`../shared/reference-graph`: ResNet block, LayerNorm MLP,
/// tiny GPT with a tied embedding), read from the shared folder beside the checkout.
pub fn graph_dir() -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference-graph");
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference-graph")
}

pub const GRAPH_PROBLEMS: [&str; 3] = ["resnet_block_ce", "layernorm_mlp_mse", "tiny_gpt_ce"];

/// Problems made by `testdata/gen_extra.py`: layer and loss options the visible ones lack.
pub fn extra_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/extra")
}

pub const PROBLEMS: [&str; 6] = [
    "mlp_tanh_mse",
    "mlp_relu_ce_batches",
    "mlp_sigmoid_bce_sum",
    "cnn_relu_maxpool_ce",
    "deep_linear_mse",
    "cnn_batchnorm_softlabel_ce",
];

/// The problems of `testdata/extra` (`gen_extra.py`'s `EXTRA`).
pub const EXTRA: [&str; 12] = [
    "cnn_stride_dil_groups_ce",
    "cnn_depthwise_maxpool_pad_bce",
    "cnn_rectpool_avgpool_mse1",
    "cnn_bn2d_noaffine_silu_softce_sum",
    "cnn_bn2d_affine_maxpool_ce",
    "mlp_bn1d_gelu_dropout_ce_sum",
    "mlp_bn1d_noaffine_silu_mse_sum",
    "mlp_leaky_sigmoid_bce_mean",
    "mlp_leaky_default_softbce_sum",
    "mlp_nobias_tanh_sigmoid_mse",
    "deep_mlp_mixed_softce",
    "deep_cnn_nobias_bce_sum",
];

pub struct Reference {
    pub dir: PathBuf,
    pub meta: serde_json::Value,
}

impl Reference {
    /// A problem of `testdata/reference`.
    pub fn load(name: &str) -> (Problem<f64>, Reference) {
        Self::load_from(&reference_dir(), name)
    }
    /// A graph problem of `../shared/reference-graph`.
    pub fn load_graph(name: &str) -> (Problem<f64>, Reference) {
        Self::load_from(&graph_dir(), name)
    }
    /// A problem of `testdata/extra`.
    pub fn load_extra(name: &str) -> (Problem<f64>, Reference) {
        Self::load_from(&extra_dir(), name)
    }
    /// Problem `name` under `root`.
    pub fn load_from(root: &Path, name: &str) -> (Problem<f64>, Reference) {
        let dir = root.join(name);
        let p = load_problem::<f64>(
            &dir.join("model.json"),
            &dir.join("weights.safetensors"),
            &dir.join("data.safetensors"),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
        (p, Reference { dir, meta })
    }
    pub fn has(&self, key: &str) -> bool {
        self.dir.join("ref").join(format!("{key}.npy")).exists()
    }
    pub fn array(&self, key: &str) -> (Vec<usize>, Vec<f64>) {
        read_npy::<f64>(&self.dir.join("ref").join(format!("{key}.npy"))).unwrap()
    }
    pub fn batch_size(&self) -> usize {
        self.meta["batch_size"].as_u64().unwrap() as usize
    }
}

/// Relative errors per quantity over many problems: records every check, keeps the largest
/// error of each quantity, and fails at the end with every check over the tolerance (so one
/// run shows all problems and quantities that disagree, not just the first).
pub struct ErrorLog {
    pub tol: f64,
    max: BTreeMap<String, (f64, String)>,
    failures: Vec<String>,
}

impl ErrorLog {
    pub fn new(tol: f64) -> Self {
        Self { tol, max: BTreeMap::new(), failures: Vec::new() }
    }
    /// Records relative error `err` of `quantity` in case `what` (problem, batch size, …).
    pub fn check(&mut self, quantity: &str, what: impl std::fmt::Display, err: f64) {
        let what = what.to_string();
        // NaN counts as a failure
        if err.is_nan() || err >= self.tol {
            self.failures.push(format!("{quantity} [{what}]: rel err {err:.3e}"));
        }
        let e = self.max.entry(quantity.to_string()).or_insert((0.0, String::new()));
        if err.is_nan() || err > e.0 {
            *e = (err, what);
        }
    }
    /// `rel(got, want)` recorded under `quantity`.
    pub fn rel(&mut self, quantity: &str, what: impl std::fmt::Display, got: &[f64], want: &[f64]) {
        self.check(quantity, what, rel(got, want));
    }
    /// Prints the largest error per quantity (visible with `--nocapture`) and panics listing
    /// every failed check.
    pub fn finish(self) {
        for (q, (e, what)) in &self.max {
            println!("max rel err {q:<40} {e:.2e}  ({what})");
        }
        assert!(
            self.failures.is_empty(),
            "{} check(s) over tolerance {:e}:\n  {}",
            self.failures.len(),
            self.tol,
            self.failures.join("\n  ")
        );
    }
}

/// ‖a − b‖_F / ‖b‖_F.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// Sub-block `rows × cols` (index lists) of a row-major `[n, m]` matrix.
pub fn sub_block(a: &[f64], m: usize, rows: &[usize], cols: &[usize]) -> Vec<f64> {
    rows.iter().flat_map(|&i| cols.iter().map(move |&j| a[i * m + j])).collect()
}

/// `A · V` for row-major `A` `[n, m]` and `V` given as `K` vectors `[K, m]`: result `[K, n]`.
pub fn matmul_block(a: &[f64], n: usize, m: usize, v: &[f64], k: usize) -> Vec<f64> {
    let mut out = vec![0.0; k * n];
    for kk in 0..k {
        for i in 0..n {
            out[kk * n + i] = (0..m).map(|j| a[i * m + j] * v[kk * m + j]).sum();
        }
    }
    out
}
