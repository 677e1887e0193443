//! Every data format reads the same 20 digits as the safetensors reference
//! (`testdata/formats/gen_formats.py`): `.npz` stored and deflated, `.npy` pairs (Fortran
//! order, int32 labels), CSV with a header, gzipped IDX; row slices and seeded permutations.

use curvops_nn::data_formats::{load_dataset, LoadOptions};
use curvops_nn::io::{load_data, load_weights, read_model};
use curvops_nn::{Dataset, Network};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

fn net() -> Network<f64> {
    let m = root().join("laplace/model.json");
    let spec = read_model(&m).unwrap();
    load_weights::<f64>(&spec, "model.json", &root().join("laplace/trained.safetensors")).unwrap().0
}

fn path(f: &str) -> String {
    root().join("formats").join(f).display().to_string()
}

fn same(a: &Dataset<f64>, b: &Dataset<f64>, what: &str) {
    assert_eq!(a.n, b.n, "{what}");
    assert_eq!(a.y, b.y, "{what}: targets");
    assert_eq!(a.x, b.x, "{what}: inputs");
}

#[test]
fn all_formats_agree() {
    let net = net();
    let want = load_data(&net, &root().join("formats/digits20.safetensors")).unwrap();
    let d = LoadOptions::default();
    same(&load_dataset(&net, &path("digits20.safetensors"), &d).unwrap(), &want, "safetensors");
    same(&load_dataset(&net, &path("digits20.npz"), &d).unwrap(), &want, "npz");
    same(&load_dataset(&net, &path("digits20_compressed.npz"), &d).unwrap(), &want, "npz (deflate)");
    let npy = LoadOptions { labels: Some(root().join("formats/digits20_y.npy")), ..Default::default() };
    same(&load_dataset(&net, &path("digits20_x.npy"), &npy).unwrap(), &want, "npy (Fortran order, [N, 8, 8])");
    let csv = LoadOptions { x_scale: Some(16.0), ..Default::default() };
    same(&load_dataset(&net, &path("digits20.csv"), &csv).unwrap(), &want, "csv");
    let csv_named = LoadOptions { x_scale: Some(16.0), label_column: Some("64".into()), ..Default::default() };
    same(&load_dataset(&net, &path("digits20.csv"), &csv_named).unwrap(), &want, "csv by index");
    same(&load_dataset(&net, &path("digits20-images-idx3-ubyte.gz"), &csv).unwrap(), &want, "idx (gzip)");
}

#[test]
fn slices_and_permutations() {
    let net = net();
    let d = LoadOptions::default();
    let all = load_dataset(&net, &path("digits20.npz"), &d).unwrap();
    let head = load_dataset(&net, &format!("{}@:0.75", path("digits20.npz")), &d).unwrap();
    let tail = load_dataset(&net, &format!("{}@15:", path("digits20.npz")), &d).unwrap();
    assert_eq!((head.n, tail.n), (15, 5));
    same(&head, &all.select(&(0..15).collect::<Vec<_>>()), "head");
    same(&tail, &all.select(&(15..20).collect::<Vec<_>>()), "tail");
    let p = LoadOptions { permute_seed: Some(3), ..Default::default() };
    let a = load_dataset(&net, &format!("{}@:10", path("digits20.npz")), &p).unwrap();
    let b = load_dataset(&net, &format!("{}@10:", path("digits20.npz")), &p).unwrap();
    let mut seen: Vec<Vec<f64>> = a.x.chunks(64).chain(b.x.chunks(64)).map(|r| r.to_vec()).collect();
    let mut orig: Vec<Vec<f64>> = all.x.chunks(64).map(|r| r.to_vec()).collect();
    seen.sort_by(|x, y| x.partial_cmp(y).unwrap());
    orig.sort_by(|x, y| x.partial_cmp(y).unwrap());
    assert_eq!(seen, orig, "the two halves of a permutation partition the data");
    assert!(load_dataset(&net, &format!("{}@12:3", path("digits20.npz")), &d).is_err());
}

#[test]
fn errors_name_the_file() {
    let net = net();
    let d = LoadOptions::default();
    let e = load_dataset(&net, &path("digits20_x.npy"), &d).unwrap_err().to_string();
    assert!(e.contains("digits20_x.npy") && e.contains("--labels"), "{e}");
    let e = load_dataset(&net, &path("gen_formats.py"), &d).unwrap_err().to_string();
    assert!(e.contains("unknown data format"), "{e}");
    let bad = LoadOptions { label_column: Some("nope".into()), ..Default::default() };
    let e = load_dataset(&net, &path("digits20.csv"), &bad).unwrap_err().to_string();
    assert!(e.contains("no column 'nope'"), "{e}");
}
