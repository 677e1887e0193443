//! Saving fitted KFAC / EKFAC factors to safetensors and loading them, so a fitted operator is
//! reused without a data pass.
//!
//! # File format
//! A safetensors file (dtype of the computation, f32 or f64) with, for each block of
//! [`KfacFactors::layers`] (`{key}` = [`super::LayerFactors::key`]: the node's name, e.g. `3` in
//! a `layers` chain or `blocks.0.mlp.fc`, with `.in_proj` / `.out_proj` for attention; the
//! tensor's name for a dense block):
//!
//! | key | shape | meaning |
//! |---|---|---|
//! | `{key}.A` | `[in, in]` (`[in+1, in+1]` joint) | input factor; absent without an active weight |
//! | `{key}.B` | `[out, out]` | gradient factor (a dense block: the `D_t × D_t` block) |
//! | `{key}.U_A`, `{key}.U_B` | `[r, dim]` | optional low-rank factors with `A = U_Aᵀ U_A`, `B = U_Bᵀ U_B` (written when the fit kept them: fewer data rows than half the dimension; used for faster products) |
//! | `{key}.Q_A`, `{key}.Q_B` | as `A`, `B` | EKFAC only: eigenvectors (columns) of `A`, `B` |
//! | `{key}.E_weight` / `{key}.E_bias` / `{key}.E_joint` | `[out, in]` / `[out]` / `[out, in+1]` | EKFAC only: corrected eigenvalues (a dense block: its eigenvalues, `E_bias`) |
//!
//! and for each tied tensor `{name}` its uses `{name}.use{u}.A` (absent for a bias) and
//! `{name}.use{u}.B`, in node order, and for EKFAC `{name}.Q` and `{name}.E` (the
//! eigendecomposition of the summed block). String metadata: `format = "curvops-kfac"`,
//! `version = "1"`, `kind` (`kfac` | `ekfac`), `fisher`, `mc_samples`, `seed`, `kfac_approx`,
//! `joint_bias` (`true` | `false`), `params` (the active parameters' state-dict names, comma
//! separated), `n_data`, `dim`. Loading checks that the file fits the problem and the active
//! parameters.

use super::ekfac::{Ekfac, LayerBases};
use super::factors::{dense_layer, KfacFactors, LayerFactors, TiedFactors, TiedUse};
use super::kernels::{mat_from_rows, mat_to_rows};
use super::operator::Kfac;
use super::plan::{structure, Block};
use super::slots::slots_of;
use super::{FisherType, KfacApprox, KfacError, KfacOptions};
use crate::Problem;
use curvops_nn::ActiveSet;
use curvops_tensor::Float;
use faer::Mat;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A loaded operator: KFAC or EKFAC, as the file says.
#[derive(Debug)]
pub enum LoadedFactors<T: Float> {
    /// KFAC factors.
    Kfac(Kfac<T>),
    /// EKFAC (factors, eigenbases and corrected eigenvalues).
    Ekfac(Ekfac<T>),
}

fn metadata<T: Float>(kind: &str, f: &KfacFactors<T>, active_names: &[String]) -> HashMap<String, String> {
    let o = &f.options;
    let (samples, seed) = match o.fisher {
        FisherType::Mc { samples, seed } => (samples, seed),
        _ => (1, 0),
    };
    [
        ("format", "curvops-kfac".to_string()),
        ("version", "1".to_string()),
        ("kind", kind.to_string()),
        ("fisher", o.fisher.name().to_string()),
        ("mc_samples", samples.to_string()),
        ("seed", seed.to_string()),
        ("kfac_approx", o.approx.name().to_string()),
        ("joint_bias", o.joint_bias.to_string()),
        ("params", active_names.join(",")),
        ("n_data", f.n_data.to_string()),
        ("dim", f.dim.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn names_of<T: Float>(f: &KfacFactors<T>) -> Vec<String> {
    let mut v: Vec<(usize, String)> = Vec::new();
    for l in &f.layers {
        v.extend(l.weight.iter().map(|p| (p.offset, p.name.clone())));
        v.extend(l.bias.iter().map(|p| (p.offset, p.name.clone())));
    }
    v.extend(f.tied.iter().map(|t| (t.param.offset, t.param.name.clone())));
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

fn write<T: Float>(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, Vec<T>)>,
    meta: HashMap<String, String>,
) -> Result<(), KfacError> {
    let dtype = if T::BYTES == 4 { Dtype::F32 } else { Dtype::F64 };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| {
            let mut b = Vec::with_capacity(d.len() * T::BYTES);
            for v in d {
                v.write_le_bytes(&mut b);
            }
            b
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            TensorView::new(dtype, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| KfacError::File(format!("{}: tensor '{name}': {e}", path.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::tensor::serialize_to_file(views, Some(meta), path)
        .map_err(|e| KfacError::File(format!("{}: {e}", path.display())))
}

fn factor_tensors<T: Float>(f: &KfacFactors<T>) -> Vec<(String, Vec<usize>, Vec<T>)> {
    let mut t = Vec::new();
    for l in &f.layers {
        if let Some(a) = &l.a {
            t.push((format!("{}.A", l.key), vec![a.nrows(), a.ncols()], mat_to_rows(Mat::as_ref(a))));
        }
        t.push((format!("{}.B", l.key), vec![l.out, l.out], mat_to_rows(Mat::as_ref(&l.b))));
        for (key, rows) in [("U_A", &l.a_rows), ("U_B", &l.b_rows)] {
            if let Some(u) = rows {
                t.push((format!("{}.{key}", l.key), vec![u.nrows(), u.ncols()], mat_to_rows(Mat::as_ref(u))));
            }
        }
    }
    for tf in &f.tied {
        for (u, us) in tf.uses.iter().enumerate() {
            let name = &tf.param.name;
            if let Some(a) = &us.a {
                t.push((format!("{name}.use{u}.A"), vec![a.nrows(), a.ncols()], mat_to_rows(Mat::as_ref(a))));
            }
            t.push((format!("{name}.use{u}.B"), vec![us.b.nrows(), us.b.ncols()], mat_to_rows(us.b.as_ref())));
        }
    }
    t
}

/// Writes KFAC's factors (see the module docs for the keys).
pub fn save_kfac<T: Float>(path: &Path, k: &Kfac<T>) -> Result<(), KfacError> {
    let f = k.factors();
    write(path, factor_tensors(f), metadata("kfac", f, &names_of(f)))
}

/// Writes EKFAC: KFAC's factors, their eigenvectors and the corrected eigenvalues.
pub fn save_ekfac<T: Float>(path: &Path, e: &Ekfac<T>) -> Result<(), KfacError> {
    let f = e.factors();
    let mut t = factor_tensors(f);
    let nl = f.layers.len();
    for (i, (qa, qb)) in e.bases().iter().enumerate() {
        let q = |m: &Mat<T>| (vec![m.nrows(), m.ncols()], mat_to_rows(m.as_ref()));
        match f.layers.get(i) {
            Some(l) => {
                if let Some(qa) = qa {
                    let (sh, v) = q(qa);
                    t.push((format!("{}.Q_A", l.key), sh, v));
                }
                let (sh, v) = q(qb);
                t.push((format!("{}.Q_B", l.key), sh, v));
            }
            None => {
                let (sh, v) = q(qb);
                t.push((format!("{}.Q", f.tied[i - nl].param.name), sh, v));
            }
        }
    }
    for (s, v) in slots_of(f).iter().zip(e.eigenvalues()) {
        let (name, shape) = eigenvalue_key(f, s);
        t.push((name, shape, v.to_vec()));
    }
    write(path, t, metadata("ekfac", f, &names_of(f)))
}

/// The key and shape of a slot's EKFAC eigenvalues.
fn eigenvalue_key<T: Float>(f: &KfacFactors<T>, s: &super::slots::Slot) -> (String, Vec<usize>) {
    match f.layers.get(s.layer) {
        None => (format!("{}.E", f.tied[s.layer - f.layers.len()].param.name), vec![s.out]),
        Some(l) => {
            let (key, shape) = match (s.w_off, s.b_off) {
                (Some(_), Some(_)) => ("E_joint", vec![s.out, s.cols()]),
                (Some(_), None) => ("E_weight", vec![s.out, s.cols()]),
                _ => ("E_bias", vec![s.out]),
            };
            (format!("{}.{key}", l.key), shape)
        }
    }
}

/// Reads a factors file written by [`save_kfac`] / [`save_ekfac`] for the problem's network and
/// the active parameters (which must be the ones the file was fitted for).
pub fn load_factors<T: Float>(path: &Path, p: &Problem<T>, active: &ActiveSet) -> Result<LoadedFactors<T>, KfacError> {
    let ps = path.display().to_string();
    let err = |m: String| KfacError::File(format!("{ps}: {m}"));
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let st_file = SafeTensors::deserialize(&bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let get = |k: &str| {
        meta.get(k).cloned().ok_or_else(|| err(format!("metadata '{k}' missing (not a curvops KFAC factors file?)")))
    };
    if get("format")? != "curvops-kfac" {
        return Err(err("metadata 'format' is not 'curvops-kfac'".into()));
    }
    let kind = get("kind")?;
    let parse_usize = |k: &str| -> Result<usize, KfacError> {
        get(k)?.parse::<usize>().map_err(|_| err(format!("metadata '{k}' is not an integer")))
    };
    let fisher = match get("fisher")?.as_str() {
        "type-2" => FisherType::Type2,
        "mc" => FisherType::Mc {
            samples: parse_usize("mc_samples")?,
            seed: get("seed")?.parse().map_err(|_| err("metadata 'seed' is not an integer".into()))?,
        },
        "empirical" => FisherType::Empirical,
        "forward-only" => FisherType::ForwardOnly,
        other => return Err(err(format!("unknown fisher type '{other}'"))),
    };
    let approx = match get("kfac_approx")?.as_str() {
        "expand" => KfacApprox::Expand,
        "reduce" => KfacApprox::Reduce,
        other => return Err(err(format!("unknown kfac_approx '{other}'"))),
    };
    let joint_bias = get("joint_bias")? == "true";
    let file_params = get("params")?;
    let want: Vec<String> = active.names(&p.net.layout).iter().map(|(e, _)| e.name.clone()).collect();
    if file_params != want.join(",") {
        return Err(err(format!(
            "fitted for parameters [{file_params}], but the operator is over [{}] (use the operator on the parameters the factors were fitted for)",
            want.join(",")
        )));
    }
    let options = KfacOptions { fisher, approx, joint_bias, batch_size: 0 };
    let st = structure(p, active, &options)?;
    let tensor = |key: &str, shape: &[usize]| -> Result<Vec<T>, KfacError> {
        let t = st_file.tensor(key).map_err(|_| err(format!("tensor '{key}' missing")))?;
        if t.shape() != shape {
            return Err(err(format!("tensor '{key}' has shape {:?}, expected {shape:?}", t.shape())));
        }
        let d = t.data();
        let v: Vec<T> = match t.dtype() {
            Dtype::F32 => {
                d.chunks_exact(4).map(|b| T::of(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)).collect()
            }
            Dtype::F64 => d.chunks_exact(8).map(|b| T::of(<f64 as Float>::from_le_bytes(b))).collect(),
            other => return Err(err(format!("tensor '{key}' has dtype {other:?}, expected F32 or F64"))),
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(err(format!("tensor '{key}' has a non-finite value at flat index {i}")));
        }
        Ok(v)
    };
    let square = |key: &str, d: usize| -> Result<Mat<T>, KfacError> { Ok(mat_from_rows(&tensor(key, &[d, d])?, d, d)) };
    let mut layers = Vec::with_capacity(st.order.len());
    for blk in &st.order {
        match *blk {
            Block::Plan(pi) => {
                let pl = &st.plans[pi];
                let key = &pl.key;
                let d = pl.a_dim();
                let weight = pl.own_weight().cloned();
                let a = match weight {
                    Some(_) => Some(square(&format!("{key}.A"), d)?),
                    None => None,
                };
                let b = square(&format!("{key}.B"), pl.out())?;
                // optional low-rank factors `[r, dim]`
                let rows = |k: &str, dim: usize| -> Result<Option<Mat<T>>, KfacError> {
                    match st_file.tensor(k) {
                        Err(_) => Ok(None),
                        Ok(t) => {
                            let r = t.shape().first().copied().unwrap_or(0);
                            Ok(Some(mat_from_rows(&tensor(k, &[r, dim])?, r, dim)))
                        }
                    }
                };
                let a_rows = if weight.is_some() { rows(&format!("{key}.U_A"), d)? } else { None };
                let b_rows = rows(&format!("{key}.U_B"), pl.out())?;
                layers.push(LayerFactors {
                    layer: pl.layer,
                    kind: pl.kind,
                    key: key.clone(),
                    out: pl.out(),
                    inp: pl.inp(),
                    transposed: pl.info.transposed,
                    weight,
                    bias: pl.own_bias().cloned(),
                    joint: pl.joint,
                    a: a.map(Arc::new),
                    b: Arc::new(b),
                    a_rows: a_rows.map(Arc::new),
                    b_rows: b_rows.map(Arc::new),
                });
            }
            Block::Dense(di) => {
                let dp = &st.dense[di];
                let m = square(&format!("{}.B", dp.param.name), dp.len)?;
                layers.push(dense_layer(dp.uses[0].0, &dp.param, dp.len, m));
            }
        }
    }
    let mut tied = Vec::with_capacity(st.tied.len());
    for t in &st.tied {
        let mut uses = Vec::with_capacity(t.uses.len());
        for (u, &(pi, is_weight)) in t.uses.iter().enumerate() {
            let pl = &st.plans[pi];
            let name = &t.param.name;
            let a = if is_weight { Some(square(&format!("{name}.use{u}.A"), pl.inp())?) } else { None };
            let b = square(&format!("{name}.use{u}.B"), pl.out())?;
            uses.push(TiedUse { layer: pl.layer, key: pl.key.clone(), transposed: pl.info.transposed, a, b });
        }
        tied.push(TiedFactors { param: t.param.clone(), rows: t.rows, cols: t.cols, uses });
    }
    let factors = KfacFactors { layers, tied, dim: active.dim, options, n_data: parse_usize("n_data")? };
    match kind.as_str() {
        "kfac" => Ok(LoadedFactors::Kfac(Kfac::new(factors))),
        "ekfac" => {
            let mut bases: Vec<LayerBases<T>> = Vec::with_capacity(factors.layers.len() + factors.tied.len());
            for l in &factors.layers {
                let qa = match &l.a {
                    Some(a) => Some(Arc::new(square(&format!("{}.Q_A", l.key), a.nrows())?)),
                    None => None,
                };
                bases.push((qa, Arc::new(square(&format!("{}.Q_B", l.key), l.out)?)));
            }
            for t in &factors.tied {
                bases.push((None, Arc::new(square(&format!("{}.Q", t.param.name), t.rows * t.cols)?)));
            }
            let mut values = Vec::new();
            for s in slots_of(&factors) {
                let (key, shape) = eigenvalue_key(&factors, &s);
                values.push(tensor(&key, &shape)?);
            }
            Ok(LoadedFactors::Ekfac(Ekfac::from_parts(factors, bases, values)?))
        }
        other => Err(err(format!("unknown kind '{other}' (expected kfac or ekfac)"))),
    }
}
