//! Reading a problem (`model.json` + weights + data, SPEC.md §1) and `.npy` files.
//!
//! Every error names the file and the key (tensor) or field at fault: missing or extra
//! tensors, wrong shapes or dtypes, labels out of range, non-finite values, empty data.

use crate::data::{Dataset, Targets};
use crate::loss::LossKind;
use crate::network::Network;
use crate::spec::{parse_model, BnBuffers, GraphSpec};
use crate::NnError;
use curvops_tensor::Float;
use safetensors::tensor::TensorView;
pub use safetensors::Dtype;
use safetensors::SafeTensors;
use std::collections::BTreeSet;
use std::path::Path;

/// A network with its parameters and a data set: everything the curvature operators need.
#[derive(Debug)]
pub struct Problem<T: Float> {
    /// The network (layers, loss, parameter layout).
    pub net: Network<T>,
    /// The parameters `θ` in the flat state-dict order.
    pub theta: Vec<T>,
    /// The data.
    pub data: Dataset<T>,
}

/// Reads a whole file, with an error naming it.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, NnError> {
    std::fs::read(path).map_err(|e| NnError::io(&path.display().to_string(), e.to_string()))
}

/// Parses `model.json` from a file.
pub fn read_model(path: &Path) -> Result<GraphSpec, NnError> {
    let p = path.display().to_string();
    let text = String::from_utf8(read_bytes(path)?).map_err(|_| NnError::spec(&p, "not UTF-8 text"))?;
    parse_model(&text, &p)
}

fn open_st<'a>(bytes: &'a [u8], path: &str) -> Result<SafeTensors<'a>, NnError> {
    SafeTensors::deserialize(bytes).map_err(|e| NnError::tensor(path, format!("not a valid safetensors file: {e}")))
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}").to_lowercase()
}

/// The float dtype (`"f32"` or `"f64"`) of a weights file: that of its first float tensor.
pub fn peek_float_dtype(path: &Path) -> Result<&'static str, NnError> {
    let p = path.display().to_string();
    let bytes = read_bytes(path)?;
    let st = open_st(&bytes, &p)?;
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    for n in names {
        match st.tensor(&n).map(|t| t.dtype()) {
            Ok(Dtype::F32) => return Ok("f32"),
            Ok(Dtype::F64) => return Ok("f64"),
            _ => {}
        }
    }
    Err(NnError::tensor(&p, "no f32 or f64 tensor in the file"))
}

/// Converts a float tensor to `T`, checking dtype, shape and finiteness.
fn float_tensor<T: Float>(path: &str, key: &str, t: &TensorView, shape: Option<&[usize]>) -> Result<Vec<T>, NnError> {
    if let Some(s) = shape {
        if t.shape() != s {
            return Err(NnError::tensor(path, format!("tensor '{key}' has shape {:?}, expected {s:?}", t.shape())));
        }
    }
    let data = t.data();
    let out: Vec<T> = match t.dtype() {
        Dtype::F32 => {
            data.chunks_exact(4).map(|b| T::of(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)).collect()
        }
        Dtype::F64 => data.chunks_exact(8).map(|b| T::of(<f64 as Float>::from_le_bytes(b))).collect(),
        d => {
            return Err(NnError::tensor(
                path,
                format!("tensor '{key}' has dtype {}, expected f32 or f64", dtype_name(d)),
            ))
        }
    };
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        return Err(NnError::tensor(
            path,
            format!("tensor '{key}' has a non-finite value (NaN or Inf) at flat index {i}"),
        ));
    }
    Ok(out)
}

/// Integer tensor as `i64`.
fn int_tensor(path: &str, key: &str, t: &TensorView) -> Result<Vec<i64>, NnError> {
    let d = t.data();
    Ok(match t.dtype() {
        Dtype::I64 => d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
        Dtype::I32 => d.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
        Dtype::I16 => d.chunks_exact(2).map(|b| i16::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
        Dtype::I8 => d.iter().map(|&b| b as i8 as i64).collect(),
        Dtype::U8 => d.iter().map(|&b| b as i64).collect(),
        other => {
            return Err(NnError::tensor(
                path,
                format!("tensor '{key}' has dtype {}, expected an integer type", dtype_name(other)),
            ))
        }
    })
}

/// Builds the network of `spec` with the parameters and buffers of a weights file. A tied
/// tensor may be stored under any of its names (the key, or `"{node}.{role}"` of a use), and
/// under several only if they are bitwise equal; a `parameter` node's tensor may carry a
/// leading axis of size 1 (`[1, *shape]`, as PyTorch often stores it).
pub fn load_weights<T: Float>(
    spec: &GraphSpec,
    model_path: &str,
    weights: &Path,
) -> Result<(Network<T>, Vec<T>), NnError> {
    let wp = weights.display().to_string();
    let bytes = read_bytes(weights)?;
    let st = open_st(&bytes, &wp)?;
    load_weights_from(spec, model_path, &Tensors::of(&st), &wp)
}

/// Named tensors in memory: a deserialized safetensors file, or views of arrays that a caller
/// owns (the Python package passes numpy buffers without copying them).
#[derive(Debug, Default)]
pub struct Tensors<'a> {
    map: std::collections::BTreeMap<String, TensorView<'a>>,
}

impl<'a> Tensors<'a> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }
    /// The tensors of a safetensors file.
    pub fn of(st: &SafeTensors<'a>) -> Self {
        Self { map: st.tensors().into_iter().collect() }
    }
    /// Adds `name` with its little-endian bytes; errors (naming `name` and `label`) when the byte
    /// count does not match the dtype and shape.
    pub fn insert(
        &mut self,
        label: &str,
        name: &str,
        dtype: Dtype,
        shape: Vec<usize>,
        data: &'a [u8],
    ) -> Result<(), NnError> {
        let t = TensorView::new(dtype, shape, data)
            .map_err(|e| NnError::tensor(label, format!("tensor '{name}': {e:?}")))?;
        self.map.insert(name.to_string(), t);
        Ok(())
    }
    fn tensor(&self, name: &str) -> Result<&TensorView<'a>, ()> {
        self.map.get(name).ok_or(())
    }
    fn names(&self) -> Vec<&String> {
        self.map.keys().collect()
    }
}

/// [`load_weights`] from tensors in memory; `wp` names their source in messages.
pub fn load_weights_from<T: Float>(
    spec: &GraphSpec,
    model_path: &str,
    st: &Tensors<'_>,
    wp: &str,
) -> Result<(Network<T>, Vec<T>), NnError> {
    let wp = wp.to_string();
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let get = |key: &str| -> Result<&TensorView, NnError> {
        st.tensor(key).map_err(|_| NnError::tensor(&wp, format!("missing tensor '{key}'")))
    };
    let used = std::cell::RefCell::new(BTreeSet::<String>::new());
    let bn = |i: &str, c: usize| -> Result<BnBuffers, NnError> {
        let mk = format!("{i}.running_mean");
        let vk = format!("{i}.running_var");
        let mean: Vec<f64> = float_tensor(&wp, &mk, get(&mk)?, Some(&[c]))?;
        let var: Vec<f64> = float_tensor(&wp, &vk, get(&vk)?, Some(&[c]))?;
        if let Some(j) = var.iter().position(|&v| v < 0.0) {
            return Err(NnError::tensor(&wp, format!("tensor '{vk}' has a negative variance at index {j}")));
        }
        let mut u = used.borrow_mut();
        u.insert(mk);
        u.insert(vk);
        u.insert(format!("{i}.num_batches_tracked"));
        let has_affine = st.tensor(&format!("{i}.weight")).is_ok() && st.tensor(&format!("{i}.bias")).is_ok();
        Ok(BnBuffers { mean, var, has_affine })
    };
    let net: Network<T> = spec.build(model_path, &bn)?;
    let mut theta = vec![T::zero(); net.num_params()];
    for e in &net.layout.entries {
        let names: Vec<&String> = std::iter::once(&e.name).chain(&e.aliases).collect();
        let present: Vec<&String> = names.iter().copied().filter(|n| st.tensor(n).is_ok()).collect();
        let Some(first) = present.first() else {
            let also = if e.aliases.is_empty() {
                String::new()
            } else {
                format!(
                    " (or its tied name {})",
                    e.aliases.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ")
                )
            };
            return Err(NnError::tensor(&wp, format!("missing tensor '{}'{also}", e.name)));
        };
        let is_param_node = net.layers[e.layer].kind() == "parameter";
        let read = |key: &str| -> Result<Vec<T>, NnError> {
            let t = get(key)?;
            let mut lead = vec![1];
            lead.extend_from_slice(&e.shape);
            let shape: &[usize] = if is_param_node && t.shape() == lead.as_slice() { &lead } else { &e.shape };
            float_tensor(&wp, key, t, Some(shape))
        };
        let v: Vec<T> = read(first)?;
        for other in &present[1..] {
            let w: Vec<T> = read(other)?;
            if w.iter().zip(&v).any(|(a, b)| a.as_f64().to_bits() != b.as_f64().to_bits()) {
                return Err(NnError::tensor(
                    &wp,
                    format!("tensors '{first}' and '{other}' are tied in model.json but differ in the file"),
                ));
            }
        }
        theta[e.offset..e.offset + e.len].copy_from_slice(&v);
        for n in present {
            expected.insert(n.clone());
        }
    }
    expected.extend(used.into_inner());
    let mut extra: Vec<String> = st.names().into_iter().filter(|n| !expected.contains(*n)).cloned().collect();
    extra.sort();
    if let Some(x) = extra.first() {
        return Err(NnError::tensor(
            &wp,
            format!(
                "unexpected tensor '{x}' (the model has no such parameter or buffer{})",
                if extra.len() > 1 { format!("; {} more", extra.len() - 1) } else { String::new() }
            ),
        ));
    }
    Ok((net, theta))
}

/// Reads a data set (`"x"`, `"y"`) for `net`, validating shapes and labels against the loss.
pub fn load_data<T: Float>(net: &Network<T>, path: &Path) -> Result<Dataset<T>, NnError> {
    let dp = path.display().to_string();
    let bytes = read_bytes(path)?;
    let st = open_st(&bytes, &dp)?;
    load_data_from(net, &Tensors::of(&st), &dp)
}

/// [`load_data`] from tensors in memory (`"x"` and `"y"`); `dp` names their source in messages.
pub fn load_data_from<T: Float>(net: &Network<T>, st: &Tensors<'_>, dp: &str) -> Result<Dataset<T>, NnError> {
    let dp = dp.to_string();
    for name in st.names() {
        if name != "x" && name != "y" {
            return Err(NnError::tensor(&dp, format!("unexpected tensor '{name}' (a data file holds 'x' and 'y')")));
        }
    }
    let xt = st.tensor("x").map_err(|_| NnError::tensor(&dp, "missing tensor 'x'"))?;
    let yt = st.tensor("y").map_err(|_| NnError::tensor(&dp, "missing tensor 'y'"))?;
    let xs = xt.shape().to_vec();
    if xs.len() != net.input_shape.len() + 1 || xs[1..] != net.input_shape[..] {
        return Err(NnError::tensor(
            &dp,
            format!(
                "tensor 'x' has shape {xs:?}, expected [N, {}]",
                net.input_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let n = xs[0];
    if n == 0 {
        return Err(NnError::tensor(&dp, "tensor 'x' is empty (N = 0): no data"));
    }
    let x: Vec<T> = if net.input_int {
        let ids = int_tensor(&dp, "x", xt)?;
        let s: usize = net.input_shape.iter().product();
        // the bound of every node that reads the ids
        for (l, layer) in net.layers.iter().enumerate() {
            let Some(bound) = layer.int_input_bound() else { continue };
            if !net.inputs_of(l).contains(&0) {
                continue;
            }
            if let Some((i, &v)) = ids.iter().enumerate().find(|(_, &v)| v < 0 || v as usize >= bound) {
                return Err(NnError::tensor(
                    &dp,
                    format!(
                        "tensor 'x': token id {v} of sample {} (position {}) is out of range [0, {bound}) of node '{}'",
                        i / s,
                        i % s,
                        net.node_name(l)
                    ),
                ));
            }
        }
        if let Some(&v) = ids.iter().find(|&&v| v.unsigned_abs() > (1u64 << 24)) {
            return Err(NnError::tensor(&dp, format!("tensor 'x': token id {v} is too large")));
        }
        ids.into_iter().map(|v| T::of(v as f64)).collect()
    } else {
        if matches!(xt.dtype(), Dtype::I64 | Dtype::I32 | Dtype::I16 | Dtype::I8 | Dtype::U8) {
            return Err(NnError::tensor(
                &dp,
                "tensor 'x' holds integers, but model.json declares a float input (use \"inputs\": {\"x\": {\"shape\": …, \"dtype\": \"int\"}} for token ids)",
            ));
        }
        float_tensor(&dp, "x", xt, None)?
    };
    let c = net.out_size();
    let out_shape = net.output_shape();
    let positions = net.loss.positions;
    let ys = yt.shape().to_vec();
    let (y, width) = match net.loss.kind {
        LossKind::CrossEntropy if ys.len() == out_shape.len() => {
            let want: Vec<usize> = std::iter::once(n).chain(out_shape[..out_shape.len() - 1].iter().copied()).collect();
            if ys != want {
                let dense: Vec<usize> = std::iter::once(n).chain(out_shape.iter().copied()).collect();
                return Err(NnError::tensor(
                    &dp,
                    format!("tensor 'y' has shape {ys:?}, expected {want:?} (class indices) or {dense:?}"),
                ));
            }
            if !matches!(yt.dtype(), Dtype::I64 | Dtype::I32 | Dtype::I16 | Dtype::I8 | Dtype::U8) {
                return Err(NnError::tensor(&dp, format!("tensor 'y' of shape {ys:?} must hold integer class ids")));
            }
            let classes = c / positions;
            let lab = int_tensor(&dp, "y", yt)?;
            if let Some((i, &v)) = lab.iter().enumerate().find(|(_, &v)| v < 0 || v as usize >= classes) {
                let at = if positions > 1 { format!(" (position {})", i % positions) } else { String::new() };
                return Err(NnError::tensor(
                    &dp,
                    format!("tensor 'y': label {v} of sample {}{at} is out of range [0, {classes})", i / positions),
                ));
            }
            (Targets::Classes(lab.into_iter().map(|v| v as usize).collect()), if positions > 1 { positions } else { 0 })
        }
        kind => {
            let want: Vec<usize> = std::iter::once(n).chain(out_shape.iter().copied()).collect();
            if ys != [n, c] && ys != want {
                let alt =
                    if kind == LossKind::CrossEntropy { format!(" or [{n}] (class indices)") } else { String::new() };
                return Err(NnError::tensor(&dp, format!("tensor 'y' has shape {ys:?}, expected [{n}, {c}]{alt}")));
            }
            let v: Vec<T> = float_tensor(&dp, "y", yt, None)?;
            if kind == LossKind::BceWithLogits {
                if let Some(i) = v.iter().position(|t| *t < T::zero() || *t > T::one()) {
                    return Err(NnError::tensor(
                        &dp,
                        format!("tensor 'y': target {} at flat index {i} is outside [0, 1]", v[i]),
                    ));
                }
            }
            if kind == LossKind::CrossEntropy {
                if let Some(i) = v.iter().position(|t| *t < T::zero()) {
                    return Err(NnError::tensor(
                        &dp,
                        format!("tensor 'y': class probability {} at flat index {i} is negative", v[i]),
                    ));
                }
            }
            (Targets::Dense(v), c)
        }
    };
    Ok(Dataset { x, sample_shape: net.input_shape.clone(), n, y, target_width: width })
}

/// Loads `model.json`, weights and data.
pub fn load_problem<T: Float>(model: &Path, weights: &Path, data: &Path) -> Result<Problem<T>, NnError> {
    let spec = read_model(model)?;
    let (net, theta) = load_weights::<T>(&spec, &model.display().to_string(), weights)?;
    let data = load_data(&net, data)?;
    Ok(Problem { net, theta, data })
}

/// Writes a float array as `.npy` (little-endian, C order) in the dtype of `T`.
pub fn write_npy<T: Float>(path: &Path, shape: &[usize], data: &[T]) -> Result<(), NnError> {
    let p = path.display().to_string();
    assert_eq!(shape.iter().product::<usize>(), data.len(), "write_npy: shape and data disagree");
    let descr = if T::BYTES == 4 { "<f4" } else { "<f8" };
    let shape_s = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * T::BYTES);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        v.write_le_bytes(&mut out);
    }
    std::fs::write(path, out).map_err(|e| NnError::io(&p, e.to_string()))
}

/// Reads a float `.npy` file (`f4`/`f8`, either byte order flag `<`/`|`, C or Fortran order)
/// as `(shape, data in C order)`.
pub fn read_npy<T: Float>(path: &Path) -> Result<(Vec<usize>, Vec<T>), NnError> {
    let p = path.display().to_string();
    let b = read_bytes(path)?;
    let bad = |m: &str| NnError::tensor(&p, m.to_string());
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                return Err(bad("truncated .npy header"));
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => return Err(bad(&format!("unsupported .npy version {v}"))),
    };
    if b.len() < start + hlen {
        return Err(bad("truncated .npy header"));
    }
    let header = std::str::from_utf8(&b[start..start + hlen]).map_err(|_| bad("bad .npy header"))?;
    let field = |name: &str| -> Option<&str> {
        let i = header.find(&format!("'{name}'"))?;
        Some(header[i + name.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| bad("no descr in .npy header"))?;
    let fortran = field("fortran_order").map(|s| s.starts_with("True")).unwrap_or(false);
    let shape_s = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in .npy header"))?;
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("bad shape in .npy header"))?;
    let count: usize = shape.iter().product();
    let body = &b[start + hlen..];
    let vals: Vec<T> = match descr {
        "<f8" | "|f8" => {
            if body.len() < count * 8 {
                return Err(bad("truncated .npy data"));
            }
            body[..count * 8].chunks_exact(8).map(|c| T::of(<f64 as Float>::from_le_bytes(c))).collect()
        }
        "<f4" | "|f4" => {
            if body.len() < count * 4 {
                return Err(bad("truncated .npy data"));
            }
            body[..count * 4]
                .chunks_exact(4)
                .map(|c| T::of(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64))
                .collect()
        }
        d => return Err(bad(&format!("dtype '{d}' is not supported (use float32 or float64, little-endian)"))),
    };
    if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
        return Err(bad(&format!("non-finite value (NaN or Inf) at flat index {i}")));
    }
    if !fortran || shape.len() < 2 {
        return Ok((shape, vals));
    }
    let out = fortran_to_c(&shape, &vals);
    Ok((shape, out))
}

/// Reorders the values of an array stored in Fortran order (first index fastest) into C order
/// (last index fastest).
pub(crate) fn fortran_to_c<T: Copy>(shape: &[usize], vals: &[T]) -> Vec<T> {
    let nd = shape.len();
    let mut out = vals.to_vec();
    let mut idx = vec![0usize; nd];
    for &v in vals {
        let mut off = 0;
        for d in 0..nd {
            off = off * shape[d] + idx[d];
        }
        out[off] = v;
        for d in 0..nd {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// A tensor to write: name, shape and values.
pub struct NamedTensor<'a, T> {
    /// Key.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values (row-major).
    pub data: &'a [T],
}

/// Writes tensors to a safetensors file in the dtype of `T` (readable by
/// `safetensors.torch.load_file`).
pub fn write_safetensors<T: Float>(path: &Path, tensors: &[NamedTensor<T>]) -> Result<(), NnError> {
    let p = path.display().to_string();
    let dtype = if T::BYTES == 4 { Dtype::F32 } else { Dtype::F64 };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| {
            let mut b = Vec::with_capacity(t.data.len() * T::BYTES);
            for v in t.data {
                v.write_le_bytes(&mut b);
            }
            b
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(dtype, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| NnError::tensor(&p, format!("tensor '{}': {e}", t.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::tensor::serialize_to_file(views, None, path).map_err(|e| NnError::io(&p, e.to_string()))
}

/// Writes parameters `θ` (flat, state-dict order) and batch-norm buffers of `net` as a PyTorch
/// state dict.
pub fn write_weights<T: Float>(
    path: &Path,
    net: &Network<T>,
    theta: &[T],
    extra: &[NamedTensor<T>],
) -> Result<(), NnError> {
    let mut ts: Vec<NamedTensor<T>> = net
        .layout
        .entries
        .iter()
        .map(|e| NamedTensor { name: e.name.clone(), shape: e.shape.clone(), data: &theta[e.offset..e.offset + e.len] })
        .collect();
    ts.extend(extra.iter().map(|t| NamedTensor { name: t.name.clone(), shape: t.shape.clone(), data: t.data }));
    write_safetensors(path, &ts)
}
