//! Bad input gives a one-line error naming the file, key, layer or field — never a panic and
//! never a wrong number.

use curvops_nn::io::{load_problem, read_npy, write_npy};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::{Path, PathBuf};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("curvops-loading-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

enum Val {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

fn write_st(path: &Path, tensors: Vec<(&str, Vec<usize>, Val)>) {
    let bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| {
            let (d, b) = match v {
                Val::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Val::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Val::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            (n.to_string(), s, d, b)
        })
        .collect();
    let views: Vec<(String, TensorView)> =
        bytes.iter().map(|(n, s, d, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}

const MODEL: &str = r#"{"input_shape": [3], "layers": [
  {"type": "linear", "in_features": 3, "out_features": 4},
  {"type": "relu"},
  {"type": "linear", "in_features": 4, "out_features": 2, "bias": false}],
  "loss": {"type": "cross_entropy", "reduction": "mean"}}"#;

fn good_weights() -> Vec<(&'static str, Vec<usize>, Val)> {
    vec![
        ("0.weight", vec![4, 3], Val::F32(vec![0.1; 12])),
        ("0.bias", vec![4], Val::F32(vec![0.0; 4])),
        ("2.weight", vec![2, 4], Val::F32(vec![0.2; 8])),
    ]
}

fn good_data() -> Vec<(&'static str, Vec<usize>, Val)> {
    vec![("x", vec![3, 3], Val::F32(vec![0.5; 9])), ("y", vec![3], Val::I64(vec![0, 1, 1]))]
}

/// Loads with the given files and returns the error message (the load must fail).
fn fail(tag: &str, model: &str, weights: Vec<(&str, Vec<usize>, Val)>, data: Vec<(&str, Vec<usize>, Val)>) -> String {
    let d = Dir::new(tag);
    std::fs::write(d.path("model.json"), model).unwrap();
    write_st(&d.path("w.safetensors"), weights);
    write_st(&d.path("d.safetensors"), data);
    let e = load_problem::<f64>(&d.path("model.json"), &d.path("w.safetensors"), &d.path("d.safetensors"))
        .expect_err("load must fail")
        .to_string();
    assert!(!e.contains('\n'), "error must be one line: {e}");
    e
}

fn has(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "error '{e}' should mention '{p}'");
    }
}

#[test]
fn good_files_load() {
    let d = Dir::new("good");
    std::fs::write(d.path("model.json"), MODEL).unwrap();
    write_st(&d.path("w.safetensors"), good_weights());
    write_st(&d.path("d.safetensors"), good_data());
    let p = load_problem::<f64>(&d.path("model.json"), &d.path("w.safetensors"), &d.path("d.safetensors")).unwrap();
    assert_eq!(p.net.num_params(), 12 + 4 + 8);
    assert_eq!(p.data.n, 3);
    assert_eq!(p.theta[0], 0.1f32 as f64);
}

#[test]
fn weights_errors_name_the_key() {
    let mut w = good_weights();
    w.remove(1);
    has(&fail("missing", MODEL, w, good_data()), &["w.safetensors", "missing tensor '0.bias'"]);

    let mut w = good_weights();
    w.push(("2.bias", vec![2], Val::F32(vec![0.0; 2])));
    has(&fail("extra", MODEL, w, good_data()), &["w.safetensors", "unexpected tensor '2.bias'"]);

    let mut w = good_weights();
    w[0] = ("0.weight", vec![3, 4], Val::F32(vec![0.1; 12]));
    has(&fail("shape", MODEL, w, good_data()), &["'0.weight'", "[3, 4]", "[4, 3]"]);

    let mut w = good_weights();
    w[1] = ("0.bias", vec![4], Val::I64(vec![0; 4]));
    has(&fail("dtype", MODEL, w, good_data()), &["'0.bias'", "dtype i64"]);

    let mut w = good_weights();
    w[2] = ("2.weight", vec![2, 4], Val::F64(vec![0.2, f64::NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]));
    has(&fail("nanw", MODEL, w, good_data()), &["'2.weight'", "non-finite", "index 1"]);
}

#[test]
fn spec_errors_name_the_layer_and_field() {
    let m = MODEL.replace("\"relu\"", "\"swish\"");
    has(&fail("type", &m, good_weights(), good_data()), &["model.json", "layer 1", "unknown layer type 'swish'"]);
    let m = MODEL.replace("\"out_features\": 4}", "\"out_features\": 4, \"bais\": true}");
    has(&fail("field", &m, good_weights(), good_data()), &["layer 0 (linear)", "unknown field 'bais'"]);
    let m = MODEL.replace("\"in_features\": 4", "\"in_features\": 5");
    has(&fail("chain", &m, good_weights(), good_data()), &["layer 2 (linear)", "in_features 5", "[4]"]);
    let m = MODEL.replace("\"in_features\": 3", "\"in_features\": \"three\"");
    has(&fail("typ", &m, good_weights(), good_data()), &["layer 0 (linear)", "'in_features'"]);
    let m = MODEL.replace("cross_entropy", "hinge");
    has(&fail("loss", &m, good_weights(), good_data()), &["loss", "unknown loss type 'hinge'"]);
    has(&fail("json", "{not json", good_weights(), good_data()), &["model.json", "invalid JSON"]);
    let m = r#"{"input_shape": [1, 4, 4], "layers": [{"type": "linear", "in_features": 16, "out_features": 2}],
                "loss": {"type": "mse"}}"#;
    has(&fail("flat", m, good_weights(), good_data()), &["layer 0 (linear)", "add a flatten layer"]);
    let m = r#"{"input_shape": [1, 4, 4], "layers": [{"type": "conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 5}],
                "loss": {"type": "mse"}}"#;
    has(&fail("fit", m, good_weights(), good_data()), &["layer 0 (conv2d)", "does not fit"]);
    let m = r#"{"input_shape": [2, 4, 4], "layers": [{"type": "conv2d", "in_channels": 2, "out_channels": 3, "kernel_size": 1, "groups": 2}],
                "loss": {"type": "mse"}}"#;
    has(&fail("groups", m, good_weights(), good_data()), &["layer 0 (conv2d)", "divisible by groups"]);
    let m = r#"{"input_shape": [1, 4, 4], "layers": [{"type": "maxpool2d", "kernel_size": 2, "ceil_mode": true}, {"type": "flatten"}],
                "loss": {"type": "mse"}}"#;
    has(&fail("ceil", m, good_weights(), good_data()), &["layer 0 (maxpool2d)", "ceil_mode"]);
}

#[test]
fn data_errors_name_the_key() {
    let mut d = good_data();
    d[1] = ("y", vec![3], Val::I64(vec![0, 2, 1]));
    has(&fail("range", MODEL, good_weights(), d), &["d.safetensors", "'y'", "label 2 of sample 1", "[0, 2)"]);
    let mut d = good_data();
    d[1] = ("y", vec![3], Val::I64(vec![0, -1, 1]));
    has(&fail("neg", MODEL, good_weights(), d), &["label -1"]);
    let mut d = good_data();
    d[0] = ("x", vec![3, 3], Val::F32(vec![0.5, 0.5, f32::INFINITY, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]));
    has(&fail("inf", MODEL, good_weights(), d), &["'x'", "non-finite", "index 2"]);
    let d = vec![("x", vec![0, 3], Val::F32(vec![])), ("y", vec![0], Val::I64(vec![]))];
    has(&fail("empty", MODEL, good_weights(), d), &["'x'", "empty"]);
    let mut d = good_data();
    d[0] = ("x", vec![3, 4], Val::F32(vec![0.5; 12]));
    has(&fail("xshape", MODEL, good_weights(), d), &["'x'", "[3, 4]", "expected [N, 3]"]);
    let mut d = good_data();
    d.pop();
    has(&fail("noy", MODEL, good_weights(), d), &["missing tensor 'y'"]);
    let mut d = good_data();
    d.push(("z", vec![1], Val::F32(vec![0.0])));
    has(&fail("extra", MODEL, good_weights(), d), &["unexpected tensor 'z'"]);
    let m = MODEL.replace("cross_entropy", "mse");
    has(&fail("msey", &m, good_weights(), good_data()), &["'y'", "expected [3, 2]"]);
    let m = MODEL.replace("cross_entropy", "bce_with_logits");
    let d = vec![
        ("x", vec![3, 3], Val::F32(vec![0.5; 9])),
        ("y", vec![3, 2], Val::F32(vec![0.0, 1.0, 1.5, 0.0, 0.0, 1.0])),
    ];
    has(&fail("bce", &m, good_weights(), d), &["'y'", "outside [0, 1]"]);
}

#[test]
fn missing_files_are_named() {
    let e = load_problem::<f32>(Path::new("/nonexistent/model.json"), Path::new("w"), Path::new("d"))
        .unwrap_err()
        .to_string();
    has(&e, &["/nonexistent/model.json"]);
}

#[test]
fn batchnorm_affine_false_with_affine_weights_uses_them_and_warns() {
    let m = r#"{"input_shape": [3], "layers": [{"type": "batchnorm1d", "num_features": 3, "affine": false},
                {"type": "linear", "in_features": 3, "out_features": 2}], "loss": {"type": "mse", "reduction": "sum"}}"#;
    let d = Dir::new("bn");
    std::fs::write(d.path("model.json"), m).unwrap();
    let bn = vec![
        ("0.running_mean", vec![3], Val::F32(vec![0.1; 3])),
        ("0.running_var", vec![3], Val::F32(vec![1.0; 3])),
        ("0.num_batches_tracked", vec![], Val::I64(vec![3])),
        ("1.weight", vec![2, 3], Val::F32(vec![0.3; 6])),
        ("1.bias", vec![2], Val::F32(vec![0.0; 2])),
    ];
    let mut with_affine = bn;
    with_affine.push(("0.weight", vec![3], Val::F32(vec![2.0; 3])));
    with_affine.push(("0.bias", vec![3], Val::F32(vec![0.5; 3])));
    write_st(&d.path("w.safetensors"), with_affine);
    write_st(
        &d.path("d.safetensors"),
        vec![("x", vec![2, 3], Val::F32(vec![1.0; 6])), ("y", vec![2, 2], Val::F32(vec![0.0; 4]))],
    );
    let p = load_problem::<f64>(&d.path("model.json"), &d.path("w.safetensors"), &d.path("d.safetensors")).unwrap();
    assert_eq!(p.net.num_params(), 3 + 3 + 6 + 2);
    assert_eq!(p.net.warnings.len(), 1);
}

#[test]
fn npy_roundtrip_and_errors() {
    let d = Dir::new("npy");
    let v: Vec<f64> = (0..6).map(|i| i as f64 * 0.5).collect();
    write_npy(&d.path("a.npy"), &[2, 3], &v).unwrap();
    let (s, r) = read_npy::<f64>(&d.path("a.npy")).unwrap();
    assert_eq!((s, r), (vec![2, 3], v.clone()));
    let (_, r32) = read_npy::<f32>(&d.path("a.npy")).unwrap();
    assert_eq!(r32[5], 2.5f32);
    std::fs::write(d.path("bad.npy"), b"hello").unwrap();
    assert!(read_npy::<f64>(&d.path("bad.npy")).unwrap_err().to_string().contains("bad.npy"));
}
