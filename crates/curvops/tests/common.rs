//! Shared helpers for the integration tests: loading the reference problems of
//! `testdata/reference` (dense float64 ground truth from PyTorch and curvlinops).

#![allow(dead_code)]

use curvops::Problem;
use curvops_nn::io::{load_problem, read_npy};
use std::path::PathBuf;

pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/reference")
}

pub const PROBLEMS: [&str; 6] = [
    "mlp_tanh_mse",
    "mlp_relu_ce_batches",
    "mlp_sigmoid_bce_sum",
    "cnn_relu_maxpool_ce",
    "deep_linear_mse",
    "cnn_batchnorm_softlabel_ce",
];

pub struct Reference {
    pub dir: PathBuf,
    pub meta: serde_json::Value,
}

impl Reference {
    pub fn load(name: &str) -> (Problem<f64>, Reference) {
        let dir = reference_dir().join(name);
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

/// ‖a − b‖_F / ‖b‖_F.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// Sub-block `rows × cols` (index lists) of a row-major `[n, m]` matrix.
pub fn sub_block(a: &[f64], m: usize, rows: &[usize], cols: &[usize]) -> Vec<f64> {
    rows.iter()
        .flat_map(|&i| cols.iter().map(move |&j| a[i * m + j]))
        .collect()
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
