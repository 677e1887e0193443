//! Data sets in more formats than safetensors, and train/validation/test splits.
//!
//! [`load_dataset`] reads a data set for a network from a *data spec* `FILE[@A:B]`:
//!
//! | file | inputs | targets |
//! |---|---|---|
//! | `*.safetensors` | `"x"` | `"y"` (SPEC.md §1) |
//! | `*.npz` (`numpy.savez[_compressed]`) | `x` (or `arr_0`) | `y` (or `arr_1`) |
//! | `*.npy` | the array | `--labels FILE.npy` |
//! | `*.csv` (comma separated; header optional) | all other columns | the label column(s): `--label-column NAME\|INDEX[,…]`, default the column named `label`, `y` or `target`, else the last (the last `C` for dense targets) |
//! | IDX (`*-idx3-ubyte`, `*.idx`, optionally `.gz`; MNIST, Fashion-MNIST) | the image file | `--labels FILE`, default the file with `images-idx3` replaced by `labels-idx1` |
//!
//! Inputs are reshaped to `[N, *input_shape]` when the per-sample size matches (so `[N, 28,
//! 28]` images feed a `[1, 28, 28]` or `[784]` model) and divided by `--x-scale` (default 255
//! for 8-bit IDX images, as torchvision's `ToTensor`, else 1). Targets follow the loss as in
//! SPEC.md §1: class indices `[N]` (any integer dtype, or floats holding integers) or class
//! probabilities `[N, C]` for cross-entropy, `[N, C]` (or `[N]` when `C = 1`) floats otherwise.
//!
//! **Splits:** the suffix `@A:B` keeps rows `A..B` (end exclusive; either bound may be omitted;
//! a bound with a decimal point is a fraction of `N`, e.g. `@:0.8` and `@0.8:`), after
//! shuffling the rows with `permute_seed` when given — the same permutation for every spec of
//! the same file, so `@:0.7`, `@0.7:0.85` and `@0.85:` are disjoint train, validation and test
//! sets.

use crate::data::{Dataset, Targets};
use crate::inflate::{gunzip, unzip};
use crate::io::{load_data, read_bytes};
use crate::loss::LossKind;
use crate::network::Network;
use crate::NnError;
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use std::path::{Path, PathBuf};

/// How to read a data spec.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// CSV: the label column(s), by name or 0-based index, comma separated.
    pub label_column: Option<String>,
    /// Inputs are divided by this (default: 255 for 8-bit IDX images, else 1).
    pub x_scale: Option<f64>,
    /// Shuffle the rows with this seed before slicing.
    pub permute_seed: Option<u64>,
    /// Targets for `.npy` and IDX inputs.
    pub labels: Option<PathBuf>,
}

/// A numeric array read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: Vec<f64>,
    /// Whether the file's dtype was an integer (or boolean) type.
    pub integer: bool,
}

/// Splits `FILE@A:B` into the file and the slice text.
pub fn split_spec(spec: &str) -> (PathBuf, Option<String>) {
    match spec.rfind('@') {
        Some(i) if spec[i + 1..].contains(':') => (PathBuf::from(&spec[..i]), Some(spec[i + 1..].to_string())),
        _ => (PathBuf::from(spec), None),
    }
}

/// Rows `a..b` of `n` from a slice text `A:B`.
pub fn parse_slice(s: &str, n: usize, what: &str) -> Result<(usize, usize), NnError> {
    let bad = || NnError::Other(format!("{what}: bad row slice '@{s}' (use @A:B with row indices or fractions)"));
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let bound = |t: &str, default: usize| -> Result<usize, NnError> {
        let t = t.trim();
        if t.is_empty() {
            return Ok(default);
        }
        if t.contains('.') {
            let f: f64 = t.parse().map_err(|_| bad())?;
            if !(0.0..=1.0).contains(&f) {
                return Err(bad());
            }
            Ok((f * n as f64).round() as usize)
        } else {
            let i: usize = t.parse().map_err(|_| bad())?;
            Ok(i.min(n))
        }
    };
    let (a, b) = (bound(a, 0)?, bound(b, n)?);
    if a >= b {
        return Err(NnError::Other(format!("{what}: the row slice '@{s}' of {n} rows is empty")));
    }
    Ok((a, b))
}

fn npy_parse(b: &[u8], p: &str) -> Result<Array, NnError> {
    let bad = |m: &str| NnError::tensor(p, m.to_string());
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy array"));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        _ => {
            if b.len() < 12 {
                return Err(bad("truncated .npy header"));
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
    };
    let header = std::str::from_utf8(b.get(start..start + hlen).ok_or_else(|| bad("truncated .npy header"))?)
        .map_err(|_| bad("bad .npy header"))?;
    let field = |name: &str| -> Option<&str> {
        let i = header.find(&format!("'{name}'"))?;
        Some(header[i + name.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| bad("no descr in .npy header"))?;
    let fortran = field("fortran_order").map(|s| s.starts_with("True")).unwrap_or(false);
    let shape: Vec<usize> = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in .npy header"))?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("bad shape in .npy header"))?;
    let count: usize = shape.iter().product();
    let body = &b[start + hlen..];
    let (order, kind, size) = {
        let bytes = descr.as_bytes();
        if bytes.len() < 3 {
            return Err(bad(&format!("unsupported dtype '{descr}'")));
        }
        let size: usize = descr[2..].parse().map_err(|_| bad(&format!("unsupported dtype '{descr}'")))?;
        (bytes[0], bytes[1], size)
    };
    if body.len() < count * size {
        return Err(bad("truncated .npy data"));
    }
    let big = order == b'>';
    let word = |c: &[u8]| -> Vec<u8> {
        let mut v = c.to_vec();
        if big {
            v.reverse();
        }
        v
    };
    let mut integer = true;
    let vals: Vec<f64> = body[..count * size]
        .chunks_exact(size)
        .map(|c| {
            let w = word(c);
            match (kind, size) {
                (b'f', 8) => {
                    integer = false;
                    Ok(f64::from_le_bytes(w.try_into().unwrap()))
                }
                (b'f', 4) => {
                    integer = false;
                    Ok(f32::from_le_bytes(w.try_into().unwrap()) as f64)
                }
                (b'i', 1) => Ok(w[0] as i8 as f64),
                (b'i', 2) => Ok(i16::from_le_bytes(w.try_into().unwrap()) as f64),
                (b'i', 4) => Ok(i32::from_le_bytes(w.try_into().unwrap()) as f64),
                (b'i', 8) => Ok(i64::from_le_bytes(w.try_into().unwrap()) as f64),
                (b'u', 1) | (b'b', 1) => Ok(w[0] as f64),
                (b'u', 2) => Ok(u16::from_le_bytes(w.try_into().unwrap()) as f64),
                (b'u', 4) => Ok(u32::from_le_bytes(w.try_into().unwrap()) as f64),
                (b'u', 8) => Ok(u64::from_le_bytes(w.try_into().unwrap()) as f64),
                _ => Err(()),
            }
        })
        .collect::<Result<_, _>>()
        .map_err(|_| bad(&format!("dtype '{descr}' is not supported (use a float, integer or bool dtype)")))?;
    let data = if fortran && shape.len() > 1 { crate::io::fortran_to_c(&shape, &vals) } else { vals };
    Ok(Array { shape, data, integer })
}

/// Reads a `.npy` array of any float, integer or boolean dtype.
pub fn read_npy_array(path: &Path) -> Result<Array, NnError> {
    npy_parse(&read_bytes(path)?, &path.display().to_string())
}

/// Reads the arrays of an `.npz` archive: `(name without .npy, array)`.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Array)>, NnError> {
    let p = path.display().to_string();
    unzip(&read_bytes(path)?, &p)?
        .into_iter()
        .map(|(name, bytes)| {
            let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
            npy_parse(&bytes, &format!("{p}:{name}")).map(|a| (key, a))
        })
        .collect()
}

/// Reads an IDX file (optionally gzipped): the array and whether it holds bytes.
pub fn read_idx(path: &Path) -> Result<Array, NnError> {
    let p = path.display().to_string();
    let raw = read_bytes(path)?;
    let b = if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b { gunzip(&raw, &p)? } else { raw };
    let bad = |m: &str| NnError::tensor(&p, format!("IDX: {m}"));
    if b.len() < 4 || b[0] != 0 || b[1] != 0 {
        return Err(bad("bad magic number (not an IDX file)"));
    }
    let (ty, nd) = (b[2], b[3] as usize);
    let mut shape = Vec::with_capacity(nd);
    for d in 0..nd {
        let o = 4 + 4 * d;
        let s = b.get(o..o + 4).ok_or_else(|| bad("truncated header"))?;
        shape.push(u32::from_be_bytes(s.try_into().unwrap()) as usize);
    }
    let count: usize = shape.iter().product();
    let body = &b[4 + 4 * nd..];
    let (size, integer) = match ty {
        0x08 | 0x09 => (1, true),
        0x0B => (2, true),
        0x0C => (4, true),
        0x0D => (4, false),
        0x0E => (8, false),
        t => return Err(bad(&format!("unknown element type 0x{t:02x}"))),
    };
    if body.len() < count * size {
        return Err(bad("truncated data"));
    }
    let data = body[..count * size]
        .chunks_exact(size)
        .map(|c| match ty {
            0x08 => c[0] as f64,
            0x09 => c[0] as i8 as f64,
            0x0B => i16::from_be_bytes([c[0], c[1]]) as f64,
            0x0C => i32::from_be_bytes(c.try_into().unwrap()) as f64,
            0x0D => f32::from_be_bytes(c.try_into().unwrap()) as f64,
            _ => f64::from_be_bytes(c.try_into().unwrap()),
        })
        .collect();
    Ok(Array { shape, data, integer })
}

/// A parsed CSV file: the header names (if the first line is not numeric) and the numeric rows.
pub type CsvTable = (Option<Vec<String>>, Vec<Vec<f64>>);

/// Reads a CSV file: `(header names if any, rows of numbers)`.
pub fn read_csv(path: &Path) -> Result<CsvTable, NnError> {
    let p = path.display().to_string();
    let text = String::from_utf8(read_bytes(path)?).map_err(|_| NnError::tensor(&p, "CSV: not UTF-8 text"))?;
    let mut header = None;
    let mut rows = Vec::new();
    for (li, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(|f| f.trim().trim_matches('"')).collect();
        let nums: Result<Vec<f64>, _> = fields.iter().map(|f| f.parse::<f64>()).collect();
        match nums {
            Ok(v) => {
                if let Some(first) = rows.first() {
                    let first: &Vec<f64> = first;
                    if first.len() != v.len() {
                        return Err(NnError::tensor(
                            &p,
                            format!("CSV: line {} has {} fields, expected {}", li + 1, v.len(), first.len()),
                        ));
                    }
                }
                rows.push(v);
            }
            Err(_) if rows.is_empty() && header.is_none() => {
                header = Some(fields.iter().map(|s| s.to_string()).collect());
            }
            Err(_) => {
                let bad = fields.iter().find(|f| f.parse::<f64>().is_err()).unwrap_or(&"");
                return Err(NnError::tensor(&p, format!("CSV: line {}: '{bad}' is not a number", li + 1)));
            }
        }
    }
    if rows.is_empty() {
        return Err(NnError::tensor(&p, "CSV: no data rows"));
    }
    Ok((header, rows))
}

/// Splits CSV rows into an input array and a target array by the label column(s).
fn csv_arrays(
    path: &str,
    header: Option<Vec<String>>,
    rows: Vec<Vec<f64>>,
    label: Option<&str>,
    dense_width: Option<usize>,
) -> Result<(Array, Array), NnError> {
    let ncol = rows[0].len();
    let find = |name: &str| -> Result<usize, NnError> {
        if let Some(h) = &header {
            if let Some(i) = h.iter().position(|c| c == name) {
                return Ok(i);
            }
        }
        name.parse::<usize>().ok().filter(|&i| i < ncol).ok_or_else(|| {
            NnError::tensor(
                path,
                format!(
                    "CSV: no column '{name}'{}",
                    header.as_ref().map(|h| format!(" (columns: {})", h.join(", "))).unwrap_or_default()
                ),
            )
        })
    };
    let cols: Vec<usize> = match label {
        Some(l) => l.split(',').map(|s| find(s.trim())).collect::<Result<_, _>>()?,
        None => {
            let named = header
                .as_ref()
                .and_then(|h| h.iter().position(|c| ["label", "y", "target"].contains(&c.to_lowercase().as_str())));
            match (named, dense_width) {
                (Some(i), _) => vec![i],
                (None, Some(w)) if w <= ncol => (ncol - w..ncol).collect(),
                _ => vec![ncol - 1],
            }
        }
    };
    if cols.len() >= ncol {
        return Err(NnError::tensor(path, "CSV: no input columns left after the label columns"));
    }
    let n = rows.len();
    let feat: Vec<usize> = (0..ncol).filter(|c| !cols.contains(c)).collect();
    let x = Array {
        shape: vec![n, feat.len()],
        data: rows.iter().flat_map(|r| feat.iter().map(move |&c| r[c])).collect(),
        integer: false,
    };
    let ydata: Vec<f64> = rows.iter().flat_map(|r| cols.iter().map(move |&c| r[c])).collect();
    let integer = ydata.iter().all(|v| v.fract() == 0.0);
    let y = Array {
        shape: if cols.len() == 1 { vec![n] } else { vec![n, cols.len()] },
        data: ydata,
        integer: integer && cols.len() == 1,
    };
    Ok((x, y))
}

/// Builds a data set for `net` from input and target arrays (validated as SPEC.md §1).
pub fn dataset_from_arrays<T: Float>(
    net: &Network<T>,
    x: Array,
    y: Array,
    x_scale: f64,
    path: &str,
) -> Result<Dataset<T>, NnError> {
    let n = *x.shape.first().ok_or_else(|| NnError::tensor(path, "inputs have no sample axis"))?;
    if n == 0 {
        return Err(NnError::tensor(path, "no samples (N = 0)"));
    }
    let per: usize = x.shape[1..].iter().product();
    if per != net.in_size() {
        return Err(NnError::tensor(
            path,
            format!(
                "inputs have shape {:?} ({} values per sample) but the model takes {:?} ({} values)",
                x.shape,
                per,
                net.input_shape,
                net.in_size()
            ),
        ));
    }
    if y.shape.first() != Some(&n) {
        return Err(NnError::tensor(path, format!("targets have shape {:?}, expected {n} samples", y.shape)));
    }
    if let Some(i) = x.data.iter().position(|v| !v.is_finite()) {
        return Err(NnError::tensor(path, format!("input value at flat index {i} is not finite")));
    }
    let xs: Vec<T> = x.data.iter().map(|&v| T::of(v / x_scale)).collect();
    let c = net.out_size();
    let (targets, width) = match net.loss.kind {
        LossKind::CrossEntropy if y.shape.len() == 1 => {
            let mut cls = Vec::with_capacity(n);
            for (i, &v) in y.data.iter().enumerate() {
                if v.fract() != 0.0 || v < 0.0 || v >= c as f64 {
                    return Err(NnError::tensor(path, format!("label {v} of sample {i} is not a class in [0, {c})")));
                }
                cls.push(v as usize);
            }
            (Targets::Classes(cls), 0)
        }
        _ => {
            let w: usize = y.shape[1..].iter().product();
            if w != c {
                return Err(NnError::tensor(
                    path,
                    format!("targets have shape {:?}, expected [{n}, {c}] for the model's {c} outputs", y.shape),
                ));
            }
            if let Some(i) = y.data.iter().position(|v| !v.is_finite()) {
                return Err(NnError::tensor(path, format!("target at flat index {i} is not finite")));
            }
            (Targets::Dense(y.data.iter().map(|&v| T::of(v)).collect()), c)
        }
    };
    Ok(Dataset { x: xs, sample_shape: net.input_shape.clone(), n, y: targets, target_width: width })
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()
}

/// Whether a file looks like an IDX file (by name or magic number).
fn is_idx(p: &Path) -> bool {
    let name = file_name(p).to_lowercase();
    if name.contains("idx") {
        return true;
    }
    if let Ok(b) = std::fs::read(p).map(|b| b.into_iter().take(4).collect::<Vec<u8>>()) {
        return b.len() == 4 && b[0] == 0 && b[1] == 0 && matches!(b[2], 0x08 | 0x09 | 0x0B..=0x0E);
    }
    false
}

/// Loads a data set from a data spec `FILE[@A:B]` (see the module docs).
pub fn load_dataset<T: Float>(net: &Network<T>, spec: &str, opts: &LoadOptions) -> Result<Dataset<T>, NnError> {
    let (path, slice) = split_spec(spec);
    let p = path.display().to_string();
    let name = file_name(&path).to_lowercase();
    let dense_width = (net.loss.kind != LossKind::CrossEntropy).then(|| net.out_size());
    let labels_for = |what: &str| -> Result<PathBuf, NnError> {
        opts.labels
            .clone()
            .ok_or_else(|| NnError::Other(format!("{p}: {what} inputs need --labels FILE for the targets")))
    };
    let full = if name.ends_with(".safetensors") {
        let d = load_data(net, &path)?;
        match opts.x_scale {
            Some(s) if s != 1.0 => Dataset { x: d.x.iter().map(|&v| v / T::of(s)).collect(), ..d },
            _ => d,
        }
    } else {
        let (x, y, default_scale) = if name.ends_with(".npz") {
            let arrays = read_npz(&path)?;
            let pick = |keys: &[&str]| arrays.iter().find(|(k, _)| keys.contains(&k.as_str())).map(|(_, a)| a.clone());
            let x = pick(&["x", "X", "inputs", "arr_0"])
                .ok_or_else(|| NnError::tensor(&p, "no array 'x' (or 'arr_0') in the archive"))?;
            let y = pick(&["y", "Y", "targets", "labels", "arr_1"])
                .ok_or_else(|| NnError::tensor(&p, "no array 'y' (or 'arr_1') in the archive"))?;
            (x, y, 1.0)
        } else if name.ends_with(".npy") {
            let x = read_npy_array(&path)?;
            let lp = labels_for(".npy")?;
            (x, read_npy_array(&lp)?, 1.0)
        } else if name.ends_with(".csv") {
            let (h, rows) = read_csv(&path)?;
            let (x, y) = csv_arrays(&p, h, rows, opts.label_column.as_deref(), dense_width)?;
            (x, y, 1.0)
        } else if is_idx(&path) {
            let x = read_idx(&path)?;
            let lp = match &opts.labels {
                Some(l) => l.clone(),
                None => {
                    let guess =
                        file_name(&path).replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1");
                    if guess == file_name(&path) {
                        return Err(NnError::Other(format!("{p}: IDX images need --labels FILE for the targets")));
                    }
                    path.with_file_name(guess)
                }
            };
            let scale = if x.integer { 255.0 } else { 1.0 };
            (x, read_idx(&lp)?, scale)
        } else {
            return Err(NnError::Other(format!(
                "{p}: unknown data format (use .safetensors, .npz, .npy, .csv or an IDX file)"
            )));
        };
        dataset_from_arrays(net, x, y, opts.x_scale.unwrap_or(default_scale), &p)?
    };
    let n = full.n;
    let order: Option<Vec<usize>> = opts.permute_seed.map(|s| Rng::new(s).permutation(n));
    match (slice, order) {
        (None, None) => Ok(full),
        (None, Some(o)) => Ok(full.select(&o)),
        (Some(s), o) => {
            let (a, b) = parse_slice(&s, n, &p)?;
            let idx: Vec<usize> = match o {
                Some(o) => o[a..b].to_vec(),
                None => (a..b).collect(),
            };
            Ok(full.select(&idx))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices() {
        assert_eq!(parse_slice(":0.8", 10, "t").unwrap(), (0, 8));
        assert_eq!(parse_slice("0.8:", 10, "t").unwrap(), (8, 10));
        assert_eq!(parse_slice("2:5", 10, "t").unwrap(), (2, 5));
        assert!(parse_slice("5:2", 10, "t").is_err());
        assert_eq!(split_spec("a/b.csv@:100"), (PathBuf::from("a/b.csv"), Some(":100".into())));
        assert_eq!(split_spec("a@b/c.csv"), (PathBuf::from("a@b/c.csv"), None));
    }
}
