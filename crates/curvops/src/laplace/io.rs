//! Saving and loading a fitted posterior as safetensors, so that predictions need no new pass
//! over the training data.
//!
//! Tensors (in the compute dtype): `theta` (all parameters, `[D_all]`), `mean` (`[D]`), the
//! curvature — `H` (`[D, D]`, full), `diag` (`[D]`), `kfac.{g}.B` and `kfac.{g}.A` (weight
//! blocks), `kfac.{g}.M` (dense blocks) or `kfac.{g}.QB`, `kfac.{g}.QA`, `kfac.{g}.E` (blocks
//! with corrected eigenvalues, `E` as `[rows, cols]`) per prior group `g`, `lowrank.U` (`[D, k]`) and
//! `lowrank.lambda` — `prior_precision` (`[1]`, `[G]` or `[D]`), and for a subnetwork given by
//! indices `selection` (int64). The header's metadata (`__metadata__`) holds `format =
//! "curvops-laplace"`, `version`, `likelihood`, `structure`, `curvature` (`mc_samples`, `seed`
//! for the MC Fisher), `params` (comma-separated tensor names), `groups`, `prior_kind`,
//! `sigma`, `temperature`, `loss`, `n_data`, `n_outputs`, `log_marginal_likelihood`, and for KFAC `kfac_sampling`
//! ([`super::KfacSampling::describe`]).

use super::fit::{HessianApprox, KronBlock, LaplaceFit, ParamGroup};
use super::{HessianStructure, LaplaceError, Likelihood, PriorPrecision};
use crate::Curvature;
use curvops_nn::{ActiveSet, Network};
use curvops_tensor::Float;
use faer::Mat;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// A posterior as stored: the fit and the chosen prior, noise and temperature.
pub struct SavedPosterior<T: Float> {
    /// The fit.
    pub fit: LaplaceFit<T>,
    /// Prior precision.
    pub prior: PriorPrecision,
    /// Noise `σ`.
    pub sigma: f64,
    /// Temperature.
    pub temperature: f64,
}

struct Out {
    name: String,
    shape: Vec<usize>,
    dtype: Dtype,
    bytes: Vec<u8>,
}

fn floats<T: Float>(name: impl Into<String>, shape: Vec<usize>, v: impl IntoIterator<Item = T>) -> Out {
    let mut bytes = Vec::new();
    for x in v {
        x.write_le_bytes(&mut bytes);
    }
    Out { name: name.into(), shape, dtype: if T::BYTES == 4 { Dtype::F32 } else { Dtype::F64 }, bytes }
}

fn mat<T: Float>(name: impl Into<String>, m: &Mat<T>) -> Out {
    let (r, c) = (m.nrows(), m.ncols());
    floats(name, vec![r, c], (0..r * c).map(|i| m[(i / c, i % c)]))
}

fn curvature_meta(c: Curvature, meta: &mut HashMap<String, String>) {
    meta.insert("curvature".into(), c.name().into());
    if let Curvature::FisherMc { samples, seed } = c {
        meta.insert("mc_samples".into(), samples.to_string());
        meta.insert("seed".into(), seed.to_string());
    }
}

/// Writes a posterior (its fit, prior precision, `σ`, temperature).
pub fn save<T: Float>(
    path: &Path,
    net: &Network<T>,
    fit: &LaplaceFit<T>,
    prior: &PriorPrecision,
    sigma: f64,
    temperature: f64,
    log_marginal_likelihood: f64,
) -> Result<(), LaplaceError> {
    let mut outs = vec![
        floats("theta", vec![fit.theta.len()], fit.theta.iter().copied()),
        floats("mean", vec![fit.dim()], fit.mean.iter().copied()),
    ];
    match &fit.h {
        HessianApprox::Full(h) => outs.push(mat("H", h)),
        HessianApprox::Diag(d) => outs.push(floats("diag", vec![d.len()], d.iter().copied())),
        HessianApprox::Kron(blocks) => {
            for (g, b) in blocks.iter().enumerate() {
                match b {
                    KronBlock::Kron { b, a } => {
                        outs.push(mat(format!("kfac.{g}.B"), b));
                        outs.push(mat(format!("kfac.{g}.A"), a));
                    }
                    KronBlock::Dense(m) => outs.push(mat(format!("kfac.{g}.M"), m)),
                    KronBlock::Eigen { qb, qa, values } => {
                        outs.push(mat(format!("kfac.{g}.QB"), qb));
                        outs.push(mat(format!("kfac.{g}.QA"), qa));
                        outs.push(floats(format!("kfac.{g}.E"), vec![qb.nrows(), qa.nrows()], values.iter().copied()));
                    }
                }
            }
        }
        HessianApprox::LowRank { u, lambda } => {
            outs.push(mat("lowrank.U", u));
            outs.push(floats("lowrank.lambda", vec![lambda.len()], lambda.iter().copied()));
        }
    }
    let (kind, pv) = match prior {
        PriorPrecision::Scalar(t) => ("scalar", vec![*t]),
        PriorPrecision::Layerwise(v) => ("layerwise", v.clone()),
        PriorPrecision::Diagonal(v) => ("diagonal", v.clone()),
    };
    outs.push(floats("prior_precision", vec![pv.len()], pv.iter().map(|&x| T::of(x))));
    if let Some(sel) = &fit.selection {
        let mut bytes = Vec::with_capacity(sel.len() * 8);
        for &i in sel {
            bytes.extend_from_slice(&(i as i64).to_le_bytes());
        }
        outs.push(Out { name: "selection".into(), shape: vec![sel.len()], dtype: Dtype::I64, bytes });
    }
    let mut meta = HashMap::new();
    meta.insert("format".into(), "curvops-laplace".into());
    meta.insert("version".into(), "1".into());
    meta.insert("likelihood".into(), fit.likelihood.name().into());
    meta.insert("structure".into(), fit.structure.name().into());
    if fit.structure == HessianStructure::Kron {
        meta.insert("kfac_sampling".into(), fit.sampling.describe());
    }
    if let HessianStructure::LowRank { rank } = fit.structure {
        meta.insert("rank".into(), rank.to_string());
    }
    curvature_meta(fit.curvature, &mut meta);
    let names: Vec<String> = fit.active.names(&net.layout).iter().map(|(e, _)| e.name.clone()).collect();
    meta.insert("params".into(), names.join(","));
    let groups: Vec<serde_json::Value> =
        fit.groups.iter().map(|g| serde_json::json!({"name": g.name, "offset": g.offset, "len": g.len})).collect();
    meta.insert("groups".into(), serde_json::Value::Array(groups).to_string());
    meta.insert("prior_kind".into(), kind.into());
    meta.insert("sigma".into(), format!("{sigma:e}"));
    meta.insert("temperature".into(), format!("{temperature:e}"));
    meta.insert("loss".into(), format!("{:e}", fit.loss));
    meta.insert("n_data".into(), fit.n_data.to_string());
    meta.insert("n_outputs".into(), fit.n_outputs.to_string());
    meta.insert("log_marginal_likelihood".into(), format!("{log_marginal_likelihood:e}"));
    let p = path.display().to_string();
    let views = outs
        .iter()
        .map(|o| {
            TensorView::new(o.dtype, o.shape.clone(), &o.bytes)
                .map(|v| (o.name.clone(), v))
                .map_err(|e| LaplaceError(format!("{p}: tensor '{}': {e}", o.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::tensor::serialize_to_file(views, Some(meta), path).map_err(|e| LaplaceError(format!("{p}: {e}")))
}

fn read_floats<T: Float>(st: &SafeTensors, p: &str, key: &str) -> Result<(Vec<usize>, Vec<T>), LaplaceError> {
    let t = st.tensor(key).map_err(|_| LaplaceError(format!("{p}: missing tensor '{key}'")))?;
    let d = t.data();
    let v: Vec<T> = match t.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|b| T::of(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)).collect(),
        Dtype::F64 => d.chunks_exact(8).map(|b| T::of(<f64 as Float>::from_le_bytes(b))).collect(),
        other => return Err(LaplaceError(format!("{p}: tensor '{key}' has dtype {other:?}, expected f32 or f64"))),
    };
    Ok((t.shape().to_vec(), v))
}

fn read_mat<T: Float>(st: &SafeTensors, p: &str, key: &str) -> Result<Mat<T>, LaplaceError> {
    let (s, v) = read_floats::<T>(st, p, key)?;
    if s.len() != 2 {
        return Err(LaplaceError(format!("{p}: tensor '{key}' must be a matrix, has shape {s:?}")));
    }
    Ok(Mat::from_fn(s[0], s[1], |i, j| v[i * s[1] + j]))
}

/// Reads a posterior written by [`save`] for the network `net` (whose parameter layout must
/// match).
pub fn load<T: Float>(path: &Path, net: &Network<T>) -> Result<SavedPosterior<T>, LaplaceError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| LaplaceError(format!("{p}: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| LaplaceError(format!("{p}: not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| LaplaceError(format!("{p}: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| -> Result<String, LaplaceError> {
        meta.get(k)
            .cloned()
            .ok_or_else(|| LaplaceError(format!("{p}: metadata '{k}' is missing (not a curvops Laplace posterior?)")))
    };
    if get("format")? != "curvops-laplace" {
        return Err(LaplaceError(format!("{p}: not a curvops Laplace posterior")));
    }
    let num = |k: &str| -> Result<f64, LaplaceError> {
        get(k)?.parse::<f64>().map_err(|_| LaplaceError(format!("{p}: metadata '{k}' is not a number")))
    };
    let likelihood = match get("likelihood")?.as_str() {
        "classification" => Likelihood::Classification,
        "regression" => Likelihood::Regression,
        "binary" => Likelihood::Binary,
        o => return Err(LaplaceError(format!("{p}: unknown likelihood '{o}'"))),
    };
    if likelihood != Likelihood::of(net.loss.kind) {
        return Err(LaplaceError(format!(
            "{p}: the posterior is for {} but the model's loss gives another likelihood",
            likelihood.name()
        )));
    }
    let structure = match get("structure")?.as_str() {
        "full" => HessianStructure::Full,
        "diag" => HessianStructure::Diag,
        "kfac" => HessianStructure::Kron,
        "lowrank" => HessianStructure::LowRank { rank: num("rank")? as usize },
        o => return Err(LaplaceError(format!("{p}: unknown structure '{o}'"))),
    };
    let curvature = match get("curvature")?.as_str() {
        "ggn" => Curvature::Ggn,
        "ef" => Curvature::Ef,
        "hessian" => Curvature::Hessian,
        "fisher-mc" => Curvature::FisherMc { samples: num("mc_samples")? as usize, seed: num("seed")? as u64 },
        o => return Err(LaplaceError(format!("{p}: unknown curvature '{o}'"))),
    };
    let names: Vec<String> = get("params")?.split(',').map(str::to_string).collect();
    let active = ActiveSet::from_names(&net.layout, &names).map_err(|e| LaplaceError(format!("{p}: {e}")))?;
    let groups_json: serde_json::Value =
        serde_json::from_str(&get("groups")?).map_err(|e| LaplaceError(format!("{p}: metadata 'groups': {e}")))?;
    let groups: Vec<ParamGroup> = groups_json
        .as_array()
        .ok_or_else(|| LaplaceError(format!("{p}: metadata 'groups' is not a list")))?
        .iter()
        .map(|g| ParamGroup {
            name: g["name"].as_str().unwrap_or_default().to_string(),
            offset: g["offset"].as_u64().unwrap_or(0) as usize,
            len: g["len"].as_u64().unwrap_or(0) as usize,
        })
        .collect();
    let (_, theta) = read_floats::<T>(&st, &p, "theta")?;
    if theta.len() != net.num_params() {
        return Err(LaplaceError(format!(
            "{p}: the posterior holds {} parameters but the model has {}",
            theta.len(),
            net.num_params()
        )));
    }
    let (_, mean) = read_floats::<T>(&st, &p, "mean")?;
    let selection = match st.tensor("selection") {
        Ok(t) => Some(t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize).collect()),
        Err(_) => None,
    };
    let h = match structure {
        HessianStructure::Full => HessianApprox::Full(read_mat(&st, &p, "H")?),
        HessianStructure::Diag => HessianApprox::Diag(read_floats(&st, &p, "diag")?.1),
        HessianStructure::Kron => {
            let mut blocks = Vec::new();
            for g in 0..groups.len() {
                if st.tensor(&format!("kfac.{g}.M")).is_ok() {
                    blocks.push(KronBlock::Dense(read_mat(&st, &p, &format!("kfac.{g}.M"))?));
                } else if st.tensor(&format!("kfac.{g}.E")).is_ok() {
                    let (qb, qa) =
                        (read_mat(&st, &p, &format!("kfac.{g}.QB"))?, read_mat(&st, &p, &format!("kfac.{g}.QA"))?);
                    let (_, values) = read_floats::<T>(&st, &p, &format!("kfac.{g}.E"))?;
                    if values.len() != qb.nrows() * qa.nrows() {
                        return Err(LaplaceError(format!(
                            "{p}: tensor 'kfac.{g}.E' has {} entries, expected {}",
                            values.len(),
                            qb.nrows() * qa.nrows()
                        )));
                    }
                    blocks.push(KronBlock::Eigen { qb, qa, values });
                } else {
                    blocks.push(KronBlock::Kron {
                        b: read_mat(&st, &p, &format!("kfac.{g}.B"))?,
                        a: read_mat(&st, &p, &format!("kfac.{g}.A"))?,
                    });
                }
            }
            HessianApprox::Kron(blocks)
        }
        HessianStructure::LowRank { .. } => HessianApprox::LowRank {
            u: read_mat(&st, &p, "lowrank.U")?,
            lambda: read_floats(&st, &p, "lowrank.lambda")?.1,
        },
    };
    let (_, pv) = read_floats::<f64>(&st, &p, "prior_precision")?;
    let prior = match get("prior_kind")?.as_str() {
        "scalar" => PriorPrecision::Scalar(pv[0]),
        "layerwise" => PriorPrecision::Layerwise(pv),
        _ => PriorPrecision::Diagonal(pv),
    };
    let mut fit = LaplaceFit::from_parts(
        likelihood,
        structure,
        curvature,
        active,
        selection,
        groups,
        theta,
        mean,
        num("loss")?,
        num("n_data")? as usize,
        num("n_outputs")? as usize,
        h,
    );
    if let Some(d) = meta.get("kfac_sampling") {
        fit.sampling = super::KfacSampling::parse(d)
            .ok_or_else(|| LaplaceError(format!("{p}: metadata 'kfac_sampling' is not understood: '{d}'")))?;
    }
    Ok(SavedPosterior { fit, prior, sigma: num("sigma")?, temperature: num("temperature")? })
}
