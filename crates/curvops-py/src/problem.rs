//! `_curvops.Problem`: a network, its parameters `θ` and a data set (`curvops::Problem`).

use crate::arrays::{block_from, vec_to_py, Buf};
use crate::operator::{build_operator, OperatorArgs, PyOperator};
use crate::value_error;
use curvops::diag::{curvature_diag_on, DiagKind};
use curvops::walk::DataWalk;
use curvops::{ActiveSet, Problem};
use curvops_nn::io::{load_data_from, load_weights_from, Tensors};
use curvops_nn::spec::parse_model;
use curvops_tensor::Float;
use numpy::Element;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::sync::Arc;

/// A problem of either float type.
#[derive(Clone)]
pub(crate) enum AnyProblem {
    F32(Arc<Problem<f32>>),
    F64(Arc<Problem<f64>>),
}

/// Runs `$body` with `$p` bound to the `Arc<Problem<T>>` of either float type.
macro_rules! with_problem {
    ($e:expr, $p:ident => $body:expr) => {
        match $e {
            $crate::problem::AnyProblem::F32($p) => $body,
            $crate::problem::AnyProblem::F64($p) => $body,
        }
    };
}
pub(crate) use with_problem;

/// A network with its parameters and a data set.
///
/// `Problem(model_json, weights, x, y, dtype="float64")`: `model_json` is a model in the form of
/// SPEC.md §1 (chain or graph), `weights` maps each parameter (and buffer) key to a numpy array,
/// `x` and `y` are the data (`y`: class ids as int64, or float targets). The arrays are read
/// without copying and converted once into the problem's own `θ` and data set.
#[pyclass(name = "Problem", module = "curvops._curvops", frozen)]
pub struct PyProblem {
    pub(crate) inner: AnyProblem,
}

fn load<T: Float>(model: &str, weights: &Tensors<'_>, data: &Tensors<'_>) -> Result<Problem<T>, String> {
    let spec = parse_model(model, "model").map_err(|e| e.to_string())?;
    let (net, theta) = load_weights_from::<T>(&spec, "model", weights, "weights").map_err(|e| e.to_string())?;
    let data = load_data_from(&net, data, "data").map_err(|e| e.to_string())?;
    Ok(Problem { net, theta, data })
}

/// The active set of `params` (names of parameter keys or nodes; `None`: all).
pub(crate) fn active_of<T: Float>(p: &Problem<T>, params: &Option<Vec<String>>) -> PyResult<ActiveSet> {
    match params {
        None => Ok(ActiveSet::all(&p.net.layout)),
        Some(names) => ActiveSet::from_names(&p.net.layout, names).map_err(|e| value_error(format!("params: {e}"))),
    }
}

fn walk_of<'a, T: Float>(
    p: &'a Problem<T>,
    batch_size: usize,
    subset: &Option<Vec<usize>>,
) -> PyResult<DataWalk<'a, T>> {
    Ok(match subset {
        None => DataWalk::new(&p.data, batch_size),
        Some(idx) => DataWalk::subset(&p.data, idx, batch_size).map_err(|e| value_error(format!("subset: {e}")))?,
    })
}

fn diag_kind(kind: &str, samples: usize, seed: u64) -> PyResult<DiagKind> {
    Ok(match kind {
        "ggn" => DiagKind::Ggn,
        "fisher-mc" | "ggn-mc" => {
            if samples == 0 {
                return Err(value_error("samples: the Monte-Carlo diagonal needs at least one sample"));
            }
            DiagKind::GgnMc { samples, seed }
        }
        "ef" => DiagKind::Ef,
        "hessian" => DiagKind::Hessian,
        k => return Err(value_error(format!("kind: unknown diagonal '{k}' (ggn, fisher-mc, ef, hessian)"))),
    })
}

/// The outputs `f(x)` (`[n, C]` flat) for inputs `x` of `n` samples, in batches.
fn outputs_of<T: Float>(p: &Problem<T>, x: &[T], n: usize, batch_size: usize) -> Vec<T> {
    let s: usize = p.net.input_shape.iter().product();
    let c = p.net.out_size();
    let bs = if batch_size == 0 { n.max(1) } else { batch_size };
    let mut out = Vec::with_capacity(n * c);
    let mut start = 0;
    while start < n {
        let m = bs.min(n - start);
        let tape = p.net.forward(&p.theta, &x[start * s..(start + m) * s], m);
        out.extend_from_slice(tape.output());
        start += m;
    }
    out
}

pub(crate) fn read_inputs<T: Float + Element>(p: &Problem<T>, x: &Bound<'_, PyAny>) -> PyResult<(Vec<T>, usize)> {
    let shape: Vec<usize> = x.getattr("shape")?.extract()?;
    if shape.len() != p.net.input_shape.len() + 1 || shape[1..] != p.net.input_shape[..] {
        return Err(value_error(format!(
            "x: shape {shape:?}, expected [N, {}]",
            p.net.input_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let n = shape[0];
    let flat = x.call_method1("reshape", ((n, p.net.input_shape.iter().product::<usize>()),))?;
    let flat = flat.call_method1("astype", (if T::BYTES == 4 { "float32" } else { "float64" },))?;
    let (m, _) = block_from::<T>(&flat.call_method0("ravel")?, n * p.net.input_shape.iter().product::<usize>(), "x")?;
    let v: Vec<T> = (0..m.nrows()).map(|i| m[(i, 0)]).collect();
    if p.net.input_int {
        let bounds: Vec<usize> = p.net.layers.iter().filter_map(|l| l.int_input_bound()).collect();
        if let Some(b) = bounds.iter().min() {
            if let Some((i, t)) = v.iter().enumerate().find(|(_, t)| t.as_f64() < 0.0 || t.as_f64() >= *b as f64) {
                let s: usize = p.net.input_shape.iter().product();
                return Err(value_error(format!(
                    "x: token id {} of sample {} is out of range [0, {b})",
                    t.as_f64(),
                    i / s
                )));
            }
        }
    }
    Ok((v, n))
}

#[pymethods]
impl PyProblem {
    #[new]
    #[pyo3(signature = (model_json, weights, x, y, dtype = "float64"))]
    fn new(
        py: Python<'_>,
        model_json: &str,
        weights: &Bound<'_, PyDict>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        dtype: &str,
    ) -> PyResult<Self> {
        let mut bufs = Vec::new();
        for (k, v) in weights.iter() {
            let name: String = k.extract()?;
            let b = Buf::of(&v, &format!("weights['{name}']"))?;
            bufs.push((name, b));
        }
        let xb = Buf::of(x, "x")?;
        let yb = Buf::of(y, "y")?;
        let mut wt = Tensors::new();
        for (name, b) in &bufs {
            b.add_to(&mut wt, "weights", name)?;
        }
        let mut dt = Tensors::new();
        xb.add_to(&mut dt, "data", "x")?;
        yb.add_to(&mut dt, "data", "y")?;
        let inner = match dtype {
            "float32" | "f32" => AnyProblem::F32(Arc::new(load::<f32>(model_json, &wt, &dt).map_err(value_error)?)),
            "float64" | "f64" => AnyProblem::F64(Arc::new(load::<f64>(model_json, &wt, &dt).map_err(value_error)?)),
            d => return Err(value_error(format!("dtype: '{d}' (float32 or float64)"))),
        };
        let _ = py;
        Ok(Self { inner })
    }

    /// The number of parameters `D`.
    #[getter]
    fn dim(&self) -> usize {
        with_problem!(&self.inner, p => p.net.num_params())
    }

    /// The number of samples `N`.
    #[getter]
    fn n(&self) -> usize {
        with_problem!(&self.inner, p => p.data.n)
    }

    /// `"float32"` or `"float64"`.
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.inner {
            AnyProblem::F32(_) => "float32",
            AnyProblem::F64(_) => "float64",
        }
    }

    /// The per-sample output shape.
    #[getter]
    fn output_shape(&self) -> Vec<usize> {
        with_problem!(&self.inner, p => p.net.output_shape())
    }

    /// The flat parameter order: a list of `(name, shape, offset)` (SPEC.md §2).
    fn param_order<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let rows: Vec<(String, Vec<usize>, usize)> = with_problem!(&self.inner, p => p
            .net
            .layout
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone(), e.offset))
            .collect());
        PyList::new(py, rows)
    }

    /// `(L, ∇L)` over the data (or `subset`), with respect to `params` (all when `None`).
    #[pyo3(signature = (params = None, batch_size = 0, subset = None))]
    fn loss_and_grad<'py>(
        &self,
        py: Python<'py>,
        params: Option<Vec<String>>,
        batch_size: usize,
        subset: Option<Vec<usize>>,
    ) -> PyResult<(f64, Bound<'py, PyAny>)> {
        with_problem!(&self.inner, p => {
            let active = active_of(p, &params)?;
            let walk = walk_of(p, batch_size, &subset)?;
            let (l, g) = py.detach(|| curvops::gradient::loss_and_grad_on(p, &walk, &active));
            let d = g.len();
            Ok((l, vec_to_py(py, g, &[d])?))
        })
    }

    /// Per-sample gradients `∇ℓ_n` (sample `n`'s loss summed over its outputs): `[N, D_S]`.
    #[pyo3(signature = (params = None, batch_size = 0))]
    fn per_sample_grads<'py>(
        &self,
        py: Python<'py>,
        params: Option<Vec<String>>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        with_problem!(&self.inner, p => {
            let active = active_of(p, &params)?;
            let d = active.dim;
            let g = py.detach(|| curvops::gradient::per_sample_grads(p, &active, batch_size));
            vec_to_py(py, g, &[p.data.n, d])
        })
    }

    /// The exact diagonal of `kind` (`ggn`, `fisher-mc`, `ef`, `hessian`) over `params`.
    #[pyo3(signature = (kind, params = None, batch_size = 0, samples = 1, seed = 0, subset = None))]
    fn diag<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        params: Option<Vec<String>>,
        batch_size: usize,
        samples: usize,
        seed: u64,
        subset: Option<Vec<usize>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let k = diag_kind(kind, samples, seed)?;
        with_problem!(&self.inner, p => {
            let active = active_of(p, &params)?;
            let walk = walk_of(p, batch_size, &subset)?;
            let (d, _) = py.detach(|| curvature_diag_on(p, k, &active, &walk, &|_, _| {}));
            let n = d.len();
            vec_to_py(py, d, &[n])
        })
    }

    /// The network's outputs for inputs `x` (`[N, *input_shape]`; `None`: the problem's data),
    /// as `[N, *output_shape]`.
    #[pyo3(signature = (x = None, batch_size = 0))]
    fn outputs<'py>(
        &self,
        py: Python<'py>,
        x: Option<&Bound<'py, PyAny>>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        with_problem!(&self.inner, p => {
            let (xs, n) = match x {
                Some(x) => read_inputs(p.as_ref(), x)?,
                None => (p.data.x.clone(), p.data.n),
            };
            let out = py.detach(|| outputs_of(p, &xs, n, batch_size));
            let mut shape = vec![n];
            shape.extend(p.net.output_shape());
            vec_to_py(py, out, &shape)
        })
    }

    /// ViViT: the top-`k` eigenpairs of the GGN (or its MC-Fisher factor, `mc_samples`) from
    /// the Gram matrix `VᵀV` of its factor `V = √c Jᵀ S` (`GGN = V Vᵀ`), per `blocks` group
    /// (`None`/`"full"`, `"layer"`, `"param"`), over `params`, optionally on a random `subsample`
    /// of the samples (rescaled by `√(N/N')`). Returns `(values [K], vectors [K, D_S], groups [K])`
    /// (descending within the whole set; `groups` names each pair's group) and all nonzero
    /// eigenvalues found (`nonzero`).
    #[pyo3(signature = (k, params = None, blocks = None, mc_samples = None, seed = 0, subsample = None, batch_size = 0))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn vivit<'py>(
        &self,
        py: Python<'py>,
        k: usize,
        params: Option<Vec<String>>,
        blocks: Option<&str>,
        mc_samples: Option<usize>,
        seed: u64,
        subsample: Option<usize>,
        batch_size: usize,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Vec<String>, Bound<'py, PyAny>)> {
        use curvops::vivit::{FactorKind, Grouping, Vivit, VivitOptions};
        let grouping = match blocks {
            None | Some("full") => Grouping::Full,
            Some("layer") => Grouping::Layer,
            Some("param") => Grouping::Param,
            Some(b) => return Err(value_error(format!("blocks: unknown '{b}' (full, layer, param)"))),
        };
        let factor = match mc_samples {
            None => FactorKind::Exact,
            Some(m) => FactorKind::MonteCarlo { samples: m, seed },
        };
        let opts = VivitOptions {
            factor,
            grouping,
            batch_size,
            subsample: subsample.map(|m| (m, seed)),
            ..VivitOptions::default()
        };
        with_problem!(&self.inner, p => {
            let active = active_of(p, &params)?;
            let (e, names) = py
                .detach(|| {
                    let v = Vivit::new(p.as_ref(), active, opts)?;
                    let names: Vec<String> = v.groups().iter().map(|g| g.name.clone()).collect();
                    v.eigen(k).map(|e| (e, names))
                })
                .map_err(value_error)?;
            let kk = e.values.len();
            let groups = e.group.iter().map(|&g| names[g].clone()).collect();
            let nz = e.nonzero.len();
            Ok((vec_to_py(py, e.values, &[kk])?, vec_to_py(py, e.vectors, &[kk, e.dim])?, groups, vec_to_py(py, e.nonzero, &[nz])?))
        })
    }

    /// An operator of the library's registry; see `curvops.Problem.operator` in Python.
    #[pyo3(signature = (kind, params = None, blocks = None, batch_size = 0, subset = None, cache_bytes = 0,
                        damping = 0.0, samples = 1, seed = 0, fisher_type = "type-2", kfac_approx = "expand",
                        joint_bias = false, damping_mode = "exact"))]
    fn operator(
        &self,
        py: Python<'_>,
        kind: &str,
        params: Option<Vec<String>>,
        blocks: Option<&str>,
        batch_size: usize,
        subset: Option<Vec<usize>>,
        cache_bytes: usize,
        damping: f64,
        samples: usize,
        seed: u64,
        fisher_type: &str,
        kfac_approx: &str,
        joint_bias: bool,
        damping_mode: &str,
    ) -> PyResult<PyOperator> {
        let args = OperatorArgs {
            kind: kind.to_string(),
            params,
            blocks: blocks.map(str::to_string),
            batch_size,
            subset,
            cache_bytes,
            damping,
            samples,
            seed,
            fisher_type: fisher_type.to_string(),
            kfac_approx: kfac_approx.to_string(),
            joint_bias,
            damping_mode: damping_mode.to_string(),
        };
        let inner = self.inner.clone();
        py.detach(|| build_operator(&inner, &args)).map_err(value_error)
    }
}
