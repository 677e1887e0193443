//! `_curvops.Laplace`: a fitted Laplace approximation (`curvops::laplace`) with its posterior
//! for a prior precision, `σ` and temperature, and the linearized (GLM) predictive.

use crate::arrays::vec_to_py;
use crate::problem::{active_of, read_inputs, AnyProblem, PyProblem};
use crate::value_error;
use curvops::laplace::{
    fit, last_layer, optimize_marglik, HessianStructure, LaplaceFit, LaplaceOptions, Likelihood, Link, MarglikOptions,
    Posterior, PriorPrecision, PriorStructure,
};
use curvops::{Curvature, Problem};
use curvops_tensor::Float;
use numpy::Element;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex};

/// The posterior's settings: prior, `σ`, temperature.
type Settings = (PriorPrecision, f64, f64);

/// A fit with the posterior of its last settings. `post` borrows `fit`, which the struct keeps
/// alive (declared later, so dropped after `post`).
pub(crate) struct State<T: Float> {
    post: Mutex<Option<(Settings, Posterior<'static, T>)>>,
    fit: Arc<LaplaceFit<T>>,
    problem: Arc<Problem<T>>,
}

impl<T: Float> State<T> {
    fn with_posterior<R>(&self, s: &Settings, f: impl FnOnce(&Posterior<'static, T>) -> R) -> Result<R, String> {
        let mut g = self.post.lock().map_err(|_| "the posterior's lock is poisoned".to_string())?;
        let fresh = match &*g {
            Some((old, _)) => old != s,
            None => true,
        };
        if fresh {
            *g = None;
            // SAFETY: the fit lives in an `Arc` that this struct keeps (and never changes); the
            // posterior is dropped before it (`post` is declared first and reset here first).
            let fit: &'static LaplaceFit<T> = unsafe { &*Arc::as_ptr(&self.fit) };
            let p = Posterior::new(fit, s.0.clone(), s.1, s.2).map_err(|e| e.to_string())?;
            *g = Some((s.clone(), p));
        }
        Ok(f(&g.as_ref().expect("a posterior").1))
    }
}

#[derive(Clone)]
enum AnyState {
    F32(Arc<State<f32>>),
    F64(Arc<State<f64>>),
}

macro_rules! with_state {
    ($e:expr, $s:ident => $body:expr) => {
        match $e {
            AnyState::F32($s) => $body,
            AnyState::F64($s) => $body,
        }
    };
}

/// A Laplace approximation fitted on a problem's data: `Laplace(problem, structure, params=None,
/// last_layer=False, curvature="ggn", rank=10, batch_size=0)`.
#[pyclass(name = "Laplace", module = "curvops._curvops", frozen)]
pub struct PyLaplace {
    inner: AnyState,
}

fn prior_of(p: &Bound<'_, PyAny>) -> PyResult<PriorPrecision> {
    if let Ok(v) = p.extract::<f64>() {
        return Ok(PriorPrecision::Scalar(v));
    }
    let v: Vec<f64> = p.extract().map_err(|_| value_error("prior_precision: a number or a list of numbers"))?;
    Ok(PriorPrecision::Layerwise(v))
}

fn prior_to_vec(p: &PriorPrecision) -> Vec<f64> {
    match p {
        PriorPrecision::Scalar(v) => vec![*v],
        PriorPrecision::Layerwise(v) | PriorPrecision::Diagonal(v) => v.clone(),
    }
}

fn build<T: Float>(
    p: &Arc<Problem<T>>,
    structure: HessianStructure,
    params: &Option<Vec<String>>,
    last: bool,
    curvature: Curvature,
    batch_size: usize,
) -> Result<State<T>, String> {
    let active = if last {
        last_layer(&p.net).ok_or("last_layer: the model has no parameters")?
    } else {
        active_of(p, params).map_err(|e| e.to_string())?
    };
    let opts = LaplaceOptions { structure, curvature, batch_size, ..LaplaceOptions::default() };
    let f = fit(p, active, None, &opts, &|_, _| {}).map_err(|e| e.to_string())?;
    Ok(State { post: Mutex::new(None), fit: Arc::new(f), problem: p.clone() })
}

fn predict_t<'py, T: Float + Element>(
    py: Python<'py>,
    s: &Arc<State<T>>,
    x: &Bound<'py, PyAny>,
    set: &Settings,
    link: Link,
) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
    let (xs, n) = read_inputs(s.problem.as_ref(), x)?;
    let net = &s.problem.net;
    let lik = s.fit.likelihood;
    let (a, b) = py
        .detach(|| {
            s.with_posterior(set, |post| match lik {
                Likelihood::Regression => {
                    let (m, v) = post.predict_regression(net, &xs, n);
                    (m, Some(v))
                }
                _ => (post.predict_probs(net, &xs, n, link), None),
            })
        })
        .map_err(value_error)?;
    let mut shape = vec![n];
    shape.extend(net.output_shape());
    let var = match b {
        Some(v) => Some(vec_to_py(py, v, &shape)?),
        None => None,
    };
    Ok((vec_to_py(py, a, &shape)?, var))
}

#[pymethods]
impl PyLaplace {
    #[new]
    #[pyo3(signature = (problem, structure = "kron", params = None, last_layer = false, curvature = "ggn", rank = 10, batch_size = 0))]
    fn new(
        py: Python<'_>,
        problem: &PyProblem,
        structure: &str,
        params: Option<Vec<String>>,
        last_layer: bool,
        curvature: &str,
        rank: usize,
        batch_size: usize,
    ) -> PyResult<Self> {
        let st = match structure {
            "full" => HessianStructure::Full,
            "diag" => HessianStructure::Diag,
            "kron" | "kfac" => HessianStructure::Kron,
            "lowrank" => HessianStructure::LowRank { rank },
            s => return Err(value_error(format!("hessian_structure: unknown '{s}' (full, diag, kron, lowrank)"))),
        };
        let cv = match curvature {
            "ggn" => Curvature::Ggn,
            "ef" => Curvature::Ef,
            c => return Err(value_error(format!("curvature: '{c}' (ggn or ef)"))),
        };
        let inner = match &problem.inner {
            AnyProblem::F32(p) => AnyState::F32(Arc::new(
                py.detach(|| build(p, st, &params, last_layer, cv, batch_size)).map_err(value_error)?,
            )),
            AnyProblem::F64(p) => AnyState::F64(Arc::new(
                py.detach(|| build(p, st, &params, last_layer, cv, batch_size)).map_err(value_error)?,
            )),
        };
        Ok(Self { inner })
    }

    /// The number of posterior parameters.
    #[getter]
    fn dim(&self) -> usize {
        with_state!(&self.inner, s => s.fit.dim())
    }

    /// The number of prior groups (parameter tensors) of a layerwise prior.
    #[getter]
    fn groups(&self) -> usize {
        with_state!(&self.inner, s => s.fit.groups.len())
    }

    /// `Σ_n s·ℓ_n` on the training data (laplace-torch's `loss`).
    #[getter]
    fn loss(&self) -> f64 {
        with_state!(&self.inner, s => s.fit.loss)
    }

    /// The log marginal likelihood at `prior_precision` (a number or one per group), `sigma`,
    /// `temperature`.
    #[pyo3(signature = (prior_precision = None, sigma = 1.0, temperature = 1.0))]
    fn log_marginal_likelihood(
        &self,
        py: Python<'_>,
        prior_precision: Option<&Bound<'_, PyAny>>,
        sigma: f64,
        temperature: f64,
    ) -> PyResult<f64> {
        let prior = match prior_precision {
            Some(p) => prior_of(p)?,
            None => PriorPrecision::Scalar(1.0),
        };
        let set = (prior, sigma, temperature);
        with_state!(&self.inner, s => py.detach(|| s.with_posterior(&set, |p| p.log_marginal_likelihood())).map_err(value_error))
    }

    /// Maximizes the marginal likelihood over the prior (`scalar` or `layerwise`) and, for
    /// regression, `σ`: returns `(prior precision list, sigma, log marginal likelihood)`.
    #[pyo3(signature = (prior_structure = "scalar", optimize_sigma = false, sigma = 1.0, temperature = 1.0))]
    fn optimize(
        &self,
        py: Python<'_>,
        prior_structure: &str,
        optimize_sigma: bool,
        sigma: f64,
        temperature: f64,
    ) -> PyResult<(Vec<f64>, f64, f64)> {
        let ps = match prior_structure {
            "scalar" => PriorStructure::Scalar,
            "layerwise" => PriorStructure::Layerwise,
            p => return Err(value_error(format!("prior_structure: unknown '{p}' (scalar or layerwise)"))),
        };
        let opts =
            MarglikOptions { prior_structure: ps, optimize_sigma, sigma, temperature, ..MarglikOptions::default() };
        with_state!(&self.inner, s => {
            let r = py.detach(|| optimize_marglik(&s.fit, &opts)).map_err(value_error)?;
            Ok((prior_to_vec(&r.prior), r.sigma, r.log_marginal_likelihood))
        })
    }

    /// The linearized (GLM) predictive on inputs `x`: class probabilities (`link` `probit` or
    /// `mc` with `samples` draws) for classification, `(mean, variance)` for regression.
    #[pyo3(signature = (x, prior_precision = None, sigma = 1.0, temperature = 1.0, link = "probit", samples = 100, seed = 0))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        prior_precision: Option<&Bound<'py, PyAny>>,
        sigma: f64,
        temperature: f64,
        link: &str,
        samples: usize,
        seed: u64,
    ) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
        let prior = match prior_precision {
            Some(p) => prior_of(p)?,
            None => PriorPrecision::Scalar(1.0),
        };
        let link = match link {
            "probit" => Link::Probit,
            "mc" => Link::Mc { samples, seed },
            l => return Err(value_error(format!("link_approx: unknown '{l}' (probit or mc)"))),
        };
        let set = (prior, sigma, temperature);
        with_state!(&self.inner, s => predict_t(py, s, x, &set, link))
    }

    /// The diagonal of the posterior covariance.
    #[pyo3(signature = (prior_precision = None, sigma = 1.0, temperature = 1.0))]
    fn variance<'py>(
        &self,
        py: Python<'py>,
        prior_precision: Option<&Bound<'py, PyAny>>,
        sigma: f64,
        temperature: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let prior = match prior_precision {
            Some(p) => prior_of(p)?,
            None => PriorPrecision::Scalar(1.0),
        };
        let set = (prior, sigma, temperature);
        with_state!(&self.inner, s => {
            let v = py.detach(|| s.with_posterior(&set, |p| p.covariance_diagonal())).map_err(value_error)?;
            let n = v.len();
            vec_to_py(py, v, &[n])
        })
    }
}
