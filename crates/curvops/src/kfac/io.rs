//! Saving fitted KFAC / EKFAC factors to safetensors and loading them, so a fitted operator is
//! reused without a data pass.
//!
//! # File format
//! A safetensors file (dtype of the computation, f32 or f64) with, for each network layer `l`
//! that has an active parameter (`l` = the layer's index in `model.json`, as in the state-dict
//! keys `"{l}.weight"`):
//!
//! | key | shape | meaning |
//! |---|---|---|
//! | `{l}.A` | `[in, in]` (`[in+1, in+1]` joint) | input factor; absent without an active weight |
//! | `{l}.B` | `[out, out]` | gradient factor |
//! | `{l}.U_A`, `{l}.U_B` | `[r, dim]` | optional low-rank factors with `A = U_Aᵀ U_A`, `B = U_Bᵀ U_B` (written when the fit kept them: fewer data rows than half the dimension; used for faster products) |
//! | `{l}.Q_A`, `{l}.Q_B` | as `A`, `B` | EKFAC only: eigenvectors (columns) of `A`, `B` |
//! | `{l}.E_weight` / `{l}.E_bias` / `{l}.E_joint` | `[out, in]` / `[out]` / `[out, in+1]` | EKFAC only: corrected eigenvalues |
//!
//! and string metadata: `format = "curvops-kfac"`, `version = "1"`, `kind` (`kfac` | `ekfac`),
//! `fisher`, `mc_samples`, `seed`, `kfac_approx`, `joint_bias` (`true` | `false`),
//! `params` (the active parameters' state-dict names, comma separated), `n_data`, `dim`.
//! Loading checks that the file fits the problem and the active parameters.

use super::ekfac::{Ekfac, LayerBases};
use super::factors::{plan_layers, KfacFactors, LayerFactors};
use super::kernels::{mat_from_rows, mat_to_rows};
use super::operator::Kfac;
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
    let mut v = Vec::new();
    for l in &f.layers {
        v.extend(l.weight.iter().map(|p| p.name.clone()));
        v.extend(l.bias.iter().map(|p| p.name.clone()));
    }
    v
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
            t.push((format!("{}.A", l.layer), vec![a.nrows(), a.ncols()], mat_to_rows(a.as_ref())));
        }
        t.push((format!("{}.B", l.layer), vec![l.out, l.out], mat_to_rows(l.b.as_ref())));
        for (key, rows) in [("U_A", &l.a_rows), ("U_B", &l.b_rows)] {
            if let Some(u) = rows {
                t.push((format!("{}.{key}", l.layer), vec![u.nrows(), u.ncols()], mat_to_rows(u.as_ref())));
            }
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
    for (l, (qa, qb)) in f.layers.iter().zip(e.bases()) {
        if let Some(qa) = qa {
            t.push((format!("{}.Q_A", l.layer), vec![qa.nrows(), qa.ncols()], mat_to_rows(qa.as_ref().as_ref())));
        }
        t.push((format!("{}.Q_B", l.layer), vec![qb.nrows(), qb.ncols()], mat_to_rows(qb.as_ref().as_ref())));
    }
    for (s, v) in slots_of(&f.layers).iter().zip(e.eigenvalues()) {
        let l = f.layers[s.layer].layer;
        let (key, shape) = match (s.w_off, s.b_off) {
            (Some(_), Some(_)) => ("E_joint", vec![s.out, s.cols()]),
            (Some(_), None) => ("E_weight", vec![s.out, s.cols()]),
            _ => ("E_bias", vec![s.out]),
        };
        t.push((format!("{l}.{key}"), shape, v.to_vec()));
    }
    write(path, t, metadata("ekfac", f, &names_of(f)))
}

/// Reads a factors file written by [`save_kfac`] / [`save_ekfac`] for the problem's network and
/// the active parameters (which must be the ones the file was fitted for).
pub fn load_factors<T: Float>(path: &Path, p: &Problem<T>, active: &ActiveSet) -> Result<LoadedFactors<T>, KfacError> {
    let ps = path.display().to_string();
    let err = |m: String| KfacError::File(format!("{ps}: {m}"));
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
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
            "fitted for parameters [{file_params}], but the operator is over [{}] (match --params)",
            want.join(",")
        )));
    }
    let plans = plan_layers(p, active, joint_bias)?;
    let tensor = |key: &str, shape: &[usize]| -> Result<Vec<T>, KfacError> {
        let t = st.tensor(key).map_err(|_| err(format!("tensor '{key}' missing")))?;
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
    let mut layers = Vec::with_capacity(plans.len());
    for pl in &plans {
        let l = pl.layer;
        let d = pl.a_dim();
        let a = match pl.weight {
            Some(_) => Some(mat_from_rows(&tensor(&format!("{l}.A"), &[d, d])?, d, d)),
            None => None,
        };
        let b = mat_from_rows(&tensor(&format!("{l}.B"), &[pl.out, pl.out])?, pl.out, pl.out);
        // optional low-rank factors `[r, dim]`
        let rows = |key: &str, dim: usize| -> Result<Option<Mat<T>>, KfacError> {
            match st.tensor(key) {
                Err(_) => Ok(None),
                Ok(t) => {
                    let r = t.shape().first().copied().unwrap_or(0);
                    Ok(Some(mat_from_rows(&tensor(key, &[r, dim])?, r, dim)))
                }
            }
        };
        let a_rows = if pl.weight.is_some() { rows(&format!("{l}.U_A"), d)? } else { None };
        let b_rows = rows(&format!("{l}.U_B"), pl.out)?;
        layers.push(LayerFactors {
            layer: l,
            kind: pl.kind,
            out: pl.out,
            inp: pl.inp,
            weight: pl.weight.clone(),
            bias: pl.bias.clone(),
            joint: pl.joint,
            a,
            b,
            a_rows,
            b_rows,
        });
    }
    let options = KfacOptions { fisher, approx, joint_bias, batch_size: 0 };
    let factors = KfacFactors { layers, dim: active.dim, options, n_data: parse_usize("n_data")? };
    match kind.as_str() {
        "kfac" => Ok(LoadedFactors::Kfac(Kfac::new(factors))),
        "ekfac" => {
            let mut bases: Vec<LayerBases<T>> = Vec::with_capacity(plans.len());
            for pl in &plans {
                let l = pl.layer;
                let d = pl.a_dim();
                let qa = match pl.weight {
                    Some(_) => Some(Arc::new(mat_from_rows(&tensor(&format!("{l}.Q_A"), &[d, d])?, d, d))),
                    None => None,
                };
                let qb: Mat<T> = mat_from_rows(&tensor(&format!("{l}.Q_B"), &[pl.out, pl.out])?, pl.out, pl.out);
                bases.push((qa, Arc::new(qb)));
            }
            let mut values = Vec::new();
            for s in slots_of(&factors.layers) {
                let l = factors.layers[s.layer].layer;
                let (key, shape) = match (s.w_off, s.b_off) {
                    (Some(_), Some(_)) => ("E_joint", vec![s.out, s.cols()]),
                    (Some(_), None) => ("E_weight", vec![s.out, s.cols()]),
                    _ => ("E_bias", vec![s.out]),
                };
                values.push(tensor(&format!("{l}.{key}"), &shape)?);
            }
            Ok(LoadedFactors::Ekfac(Ekfac::from_parts(factors, bases, values)?))
        }
        other => Err(err(format!("unknown kind '{other}' (expected kfac or ekfac)"))),
    }
}
