//! `_curvops.Operator`: an operator of the library (`curvops::registry`, KFAC, EKFAC, and the
//! operators built from them: transposes, damped inverses), owned together with its problem.

use crate::arrays::{block_from, block_to_py, vec_to_py};
use crate::problem::{active_of, with_problem, AnyProblem};
use crate::value_error;
use curvops::kfac::{DampingMode, Ekfac, FisherType, Kfac, KfacApprox, KfacInverse, KfacOptions};
use curvops::registry::{self, Blocks, OperatorKind, OperatorSpec};
use curvops::walk::DataWalk;
use curvops::{Curvature, Problem};
use curvops_linalg::eigen::{eigsh, EigshOptions, Which};
use curvops_linalg::estimators::{
    diag_exact, diag_hutchinson, diag_xdiag, trace_exact, trace_hutchinson, trace_hutchpp, trace_xtrace,
    EstimatorOptions, Probe,
};
use curvops_linalg::slq::{lanczos_quadrature, DensityOptions, SlqOptions};
use curvops_linalg::solvers::{solve_with, CgOptions, InverseOp, MinresOptions, SolveMethod};
use curvops_linalg::{DampedOp, Eigh, LinalgError, LinearOperator, Structure, TransposeOp};
use curvops_tensor::Float;
use faer::{Mat, MatMut, MatRef};
use numpy::Element;
use pyo3::prelude::*;
use std::sync::Arc;

/// Keyword arguments of `Problem.operator`.
pub(crate) struct OperatorArgs {
    pub kind: String,
    pub params: Option<Vec<String>>,
    pub blocks: Option<String>,
    pub batch_size: usize,
    pub subset: Option<Vec<usize>>,
    pub cache_bytes: usize,
    pub damping: f64,
    pub samples: usize,
    pub seed: u64,
    pub fisher_type: String,
    pub kfac_approx: String,
    pub joint_bias: bool,
    pub damping_mode: String,
}

/// An operator with what it borrows: `op` may point into `problem` or `base`, which this
/// struct keeps alive. Fields drop in declaration order, so `op` goes first.
pub(crate) struct Held<T: Float> {
    op: Box<dyn LinearOperator<T> + 'static>,
    kfac: Option<Arc<Kfac<T>>>,
    ekfac: Option<Arc<Ekfac<T>>>,
    /// How `inverse()` damps KFAC by default (`Problem.operator(..., damping_mode=…)`).
    damping_mode: DampingMode,
    _problem: Option<Arc<Problem<T>>>,
}

impl<T: Float> Held<T> {
    fn plain(op: Box<dyn LinearOperator<T> + 'static>) -> Self {
        Self { op, kfac: None, ekfac: None, damping_mode: DampingMode::Exact, _problem: None }
    }
}

/// The methods of `LinearOperator`, each forwarding to `self.$inner`.
macro_rules! forward_operator {
    ($($inner:tt)+) => {
        fn nrows(&self) -> usize {
            self.$($inner)+.nrows()
        }
        fn ncols(&self) -> usize {
            self.$($inner)+.ncols()
        }
        fn structure(&self) -> Structure {
            self.$($inner)+.structure()
        }
        fn describe(&self) -> String {
            self.$($inner)+.describe()
        }
        fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
            self.$($inner)+.apply(out, rhs)
        }
        fn has_transpose(&self) -> bool {
            self.$($inner)+.has_transpose()
        }
        fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
            self.$($inner)+.apply_transpose(out, rhs)
        }
        fn trace(&self) -> Result<T, LinalgError> {
            self.$($inner)+.trace()
        }
        fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
            self.$($inner)+.diagonal()
        }
        fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
            self.$($inner)+.logdet_shifted(shift)
        }
        fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
            self.$($inner)+.solve_shifted(shift, out, rhs)
        }
        fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
            self.$($inner)+.eigh()
        }
    };
}

/// Shares an operator: every method forwards to the inner one.
struct Shared<O>(Arc<O>);

impl<T: Float, O: LinearOperator<T>> LinearOperator<T> for Shared<O> {
    forward_operator!(0);
}

impl<T: Float> LinearOperator<T> for Held<T> {
    forward_operator!(op);
}

/// An operator of either float type.
#[derive(Clone)]
pub(crate) enum AnyOp {
    F32(Arc<Held<f32>>),
    F64(Arc<Held<f64>>),
}

macro_rules! with_op {
    ($e:expr, $o:ident => $body:expr) => {
        match $e {
            AnyOp::F32($o) => $body,
            AnyOp::F64($o) => $body,
        }
    };
}

/// A linear operator of the library, applied to numpy blocks (see `curvops.LinearOperator`).
#[pyclass(name = "Operator", module = "curvops._curvops", frozen)]
pub struct PyOperator {
    inner: AnyOp,
}

fn parse_fisher(a: &OperatorArgs) -> Result<FisherType, String> {
    Ok(match a.fisher_type.as_str() {
        "type-2" | "type2" => FisherType::Type2,
        "mc" => {
            if a.samples == 0 {
                return Err("samples: the Monte-Carlo Fisher needs at least one sample".into());
            }
            FisherType::Mc { samples: a.samples, seed: a.seed }
        }
        "empirical" => FisherType::Empirical,
        "forward-only" => FisherType::ForwardOnly,
        f => return Err(format!("fisher_type: unknown '{f}' (type-2, mc, empirical, forward-only)")),
    })
}

fn parse_damping_mode(s: &str) -> Result<DampingMode, String> {
    Ok(match s {
        "exact" => DampingMode::Exact,
        "same" => DampingMode::Same,
        "pi" => DampingMode::Pi,
        m => return Err(format!("damping_mode: unknown '{m}' (exact, same, pi)")),
    })
}

fn build_t<T: Float>(p: &Arc<Problem<T>>, a: &OperatorArgs) -> Result<Held<T>, String> {
    // SAFETY: the problem lives in an `Arc` whose allocation neither moves nor changes while any
    // clone exists; the returned `Held` keeps a clone in `_problem` and drops `op` (which
    // borrows it) first.
    let pr: &'static Problem<T> = unsafe { &*Arc::as_ptr(p) };
    let kind = match a.kind.as_str() {
        "hessian" => OperatorKind::Curvature(Curvature::Hessian),
        "ggn" => OperatorKind::Curvature(Curvature::Ggn),
        "ef" => OperatorKind::Curvature(Curvature::Ef),
        "fisher-mc" => OperatorKind::Curvature(Curvature::FisherMc { samples: a.samples, seed: a.seed }),
        "jacobian" => OperatorKind::Jacobian,
        "jacobian-t" => OperatorKind::JacobianT,
        "kfac" | "ekfac" => return build_kfac(p, pr, a),
        k => {
            return Err(format!(
                "kind: unknown operator '{k}' (hessian, ggn, ef, fisher-mc, jacobian, jacobian-t, kfac, ekfac)"
            ))
        }
    };
    let blocks = match a.blocks.as_deref() {
        None => None,
        Some("layer") => Some(Blocks::Layer),
        Some("param") => Some(Blocks::Param),
        Some(b) => return Err(format!("blocks: unknown '{b}' (layer or param)")),
    };
    let spec = OperatorSpec {
        kind,
        params: a.params.clone(),
        blocks,
        batch_size: a.batch_size,
        subset: a.subset.clone(),
        cache_bytes: a.cache_bytes,
        damping: a.damping,
    };
    let op = registry::build(pr, &spec).map_err(|e| e.to_string())?;
    Ok(Held { op, kfac: None, ekfac: None, damping_mode: DampingMode::Exact, _problem: Some(p.clone()) })
}

fn build_kfac<T: Float>(p: &Arc<Problem<T>>, pr: &'static Problem<T>, a: &OperatorArgs) -> Result<Held<T>, String> {
    if a.blocks.is_some() {
        return Err("blocks: KFAC and EKFAC are block-diagonal already".into());
    }
    let active = active_of(pr, &a.params).map_err(|e| e.to_string())?;
    let walk = match &a.subset {
        None => DataWalk::new(&pr.data, a.batch_size),
        Some(idx) => DataWalk::subset(&pr.data, idx, a.batch_size).map_err(|e| format!("subset: {e}"))?,
    };
    let approx = match a.kfac_approx.as_str() {
        "expand" => KfacApprox::Expand,
        "reduce" => KfacApprox::Reduce,
        x => return Err(format!("kfac_approx: unknown '{x}' (expand or reduce)")),
    };
    let opts = KfacOptions { fisher: parse_fisher(a)?, approx, joint_bias: a.joint_bias, batch_size: a.batch_size };
    let mode = parse_damping_mode(&a.damping_mode)?;
    let (op, kfac, ekfac): (Box<dyn LinearOperator<T>>, _, _) = if a.kind == "kfac" {
        let k = Arc::new(Kfac::fit_on(pr, &walk, &active, &opts).map_err(|e| e.to_string())?);
        (Box::new(Shared(k.clone())), Some(k), None)
    } else {
        let e = Arc::new(Ekfac::fit_on(pr, &walk, &active, &opts).map_err(|e| e.to_string())?);
        (Box::new(Shared(e.clone())), None, Some(e))
    };
    let op: Box<dyn LinearOperator<T>> =
        if a.damping != 0.0 { Box::new(DampedOp::new(op, T::of(a.damping)).map_err(|e| e.to_string())?) } else { op };
    Ok(Held { op, kfac, ekfac, damping_mode: mode, _problem: Some(p.clone()) })
}

/// Builds the operator `args` describes on `p` (GIL released by the caller).
pub(crate) fn build_operator(p: &AnyProblem, args: &OperatorArgs) -> Result<PyOperator, String> {
    let inner = match p {
        AnyProblem::F32(p) => AnyOp::F32(Arc::new(build_t(p, args)?)),
        AnyProblem::F64(p) => AnyOp::F64(Arc::new(build_t(p, args)?)),
    };
    let _ = with_problem!(p, q => q.data.n);
    Ok(PyOperator { inner })
}

fn err(e: LinalgError) -> PyErr {
    value_error(e)
}

fn matmat_t<'py, T: Float + Element>(
    py: Python<'py>,
    h: &Arc<Held<T>>,
    x: &Bound<'py, PyAny>,
    transpose: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (rows_in, rows_out) = if transpose { (h.nrows(), h.ncols()) } else { (h.ncols(), h.nrows()) };
    let (b, vector) = block_from::<T>(x, rows_in, "x")?;
    let out = py
        .detach(|| {
            let mut out = Mat::<T>::zeros(rows_out, b.ncols());
            if transpose {
                if !h.has_transpose() {
                    return Err(LinalgError::Unsupported { op: "transpose", operator: h.describe() });
                }
                h.apply_transpose(out.as_mut(), b.as_ref())?;
            } else {
                h.apply(out.as_mut(), b.as_ref())?;
            }
            Ok(out)
        })
        .map_err(err)?;
    block_to_py(py, &out, vector)
}

fn which_of(s: &str) -> PyResult<Which> {
    Ok(match s {
        "largest" | "LA" => Which::Largest,
        "smallest" | "SA" => Which::Smallest,
        "magnitude" | "LM" => Which::Magnitude,
        w => return Err(value_error(format!("which: unknown '{w}' (largest, smallest, magnitude)"))),
    })
}

fn probe_of(s: &str) -> PyResult<Probe> {
    Ok(match s {
        "rademacher" => Probe::Rademacher,
        "normal" | "gaussian" => Probe::Gaussian,
        d => return Err(value_error(format!("distribution: unknown '{d}' (rademacher or normal)"))),
    })
}

fn method_of(method: &str, tol: f64, max_iters: Option<usize>) -> PyResult<SolveMethod> {
    Ok(match method {
        "auto" => SolveMethod::Auto,
        "exact" => SolveMethod::Exact,
        "cg" => SolveMethod::Cg(CgOptions { tol, max_iters }),
        "minres" => SolveMethod::Minres(MinresOptions { tol, max_iters }),
        m => return Err(value_error(format!("method: unknown solver '{m}' (auto, exact, cg, minres)"))),
    })
}

fn inverse_t<T: Float>(
    h: &Arc<Held<T>>,
    damping: f64,
    mode: Option<&str>,
    method: &SolveMethod,
) -> Result<Held<T>, String> {
    let mode = match mode {
        Some(m) => parse_damping_mode(m)?,
        None => h.damping_mode,
    };
    if let Some(k) = &h.kfac {
        let inv = KfacInverse::of_kfac(k, damping, mode).map_err(|e| e.to_string())?;
        return Ok(Held::plain(Box::new(inv)));
    }
    if let Some(e) = &h.ekfac {
        let inv = KfacInverse::of_ekfac(e, damping, mode).map_err(|e| e.to_string())?;
        return Ok(Held::plain(Box::new(inv)));
    }
    let base = Shared(h.clone());
    let op: Box<dyn LinearOperator<T>> = if damping != 0.0 {
        let d = DampedOp::new(base, T::of(damping)).map_err(|e| e.to_string())?;
        Box::new(InverseOp::new(d, method.clone()).map_err(|e| e.to_string())?)
    } else {
        Box::new(InverseOp::new(base, method.clone()).map_err(|e| e.to_string())?)
    };
    Ok(Held::plain(op))
}

fn solve_t<'py, T: Float + Element>(
    py: Python<'py>,
    h: &Arc<Held<T>>,
    b: &Bound<'py, PyAny>,
    damping: f64,
    m: &SolveMethod,
    precond: Option<&Arc<Held<T>>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (rhs, vector) = block_from(b, h.nrows(), "b")?;
    let pre = precond.map(|p| p.as_ref() as &dyn LinearOperator<T>);
    let x = py
        .detach(|| {
            if damping != 0.0 {
                let d = DampedOp::new(Shared(h.clone()), T::of(damping))?;
                solve_with(&d, rhs.as_ref(), m, pre)
            } else {
                solve_with(h.as_ref(), rhs.as_ref(), m, pre)
            }
        })
        .map_err(err)?
        .0;
    block_to_py(py, &x, vector)
}

#[pymethods]
impl PyOperator {
    /// `(rows, cols)`.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        with_op!(&self.inner, h => (h.nrows(), h.ncols()))
    }

    /// `"float32"` or `"float64"`.
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.inner {
            AnyOp::F32(_) => "float32",
            AnyOp::F64(_) => "float64",
        }
    }

    /// Whether the operator is symmetric.
    #[getter]
    fn symmetric(&self) -> bool {
        with_op!(&self.inner, h => h.structure().symmetric)
    }

    /// Whether the operator is positive semi-definite.
    #[getter]
    fn psd(&self) -> bool {
        with_op!(&self.inner, h => h.structure().psd)
    }

    fn __repr__(&self) -> String {
        with_op!(&self.inner, h => format!("curvops operator: {}", h.describe()))
    }

    /// `A @ x` for `x` of shape `[ncols]` or `[ncols, K]` (the operator's dtype).
    fn matmat<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        with_op!(&self.inner, h => matmat_t(py, h, x, false))
    }

    /// `Aᵀ @ x` for `x` of shape `[nrows]` or `[nrows, K]`.
    fn rmatmat<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        with_op!(&self.inner, h => matmat_t(py, h, x, true))
    }

    /// The transpose as an operator.
    fn transpose(&self) -> PyResult<PyOperator> {
        Ok(PyOperator {
            inner: match &self.inner {
                AnyOp::F32(h) => {
                    AnyOp::F32(Arc::new(Held::plain(Box::new(TransposeOp::new(Shared(h.clone())).map_err(err)?))))
                }
                AnyOp::F64(h) => {
                    AnyOp::F64(Arc::new(Held::plain(Box::new(TransposeOp::new(Shared(h.clone())).map_err(err)?))))
                }
            },
        })
    }

    /// The dense matrix (applies the operator to blocks of unit vectors).
    #[pyo3(signature = (block = 64))]
    fn dense<'py>(&self, py: Python<'py>, block: usize) -> PyResult<Bound<'py, PyAny>> {
        with_op!(&self.inner, h => {
            let m = py.detach(|| h.to_dense_blocked(block)).map_err(err)?;
            block_to_py(py, &m, false)
        })
    }

    /// The exact trace from the operator's structure (KFAC, EKFAC, …); otherwise an error
    /// (use `trace_estimate(method="exact")` for `n` matvecs).
    fn trace(&self, py: Python<'_>) -> PyResult<f64> {
        with_op!(&self.inner, h => py.detach(|| h.trace().map(|t| t.as_f64())).map_err(err))
    }

    /// `log |det(A + shift·I)|` from the operator's structure.
    #[pyo3(signature = (shift = 0.0))]
    fn logdet(&self, py: Python<'_>, shift: f64) -> PyResult<f64> {
        with_op!(&self.inner, h => py.detach(|| h.logdet_shifted(Float::of(shift)).map(|t| t.as_f64())).map_err(err))
    }

    /// The Frobenius norm `‖A‖_F` of a KFAC or EKFAC operator (from its factors).
    fn frobenius_norm(&self) -> PyResult<f64> {
        with_op!(&self.inner, h => {
            if let Some(k) = &h.kfac {
                return Ok(k.frobenius_norm().as_f64());
            }
            if let Some(e) = &h.ekfac {
                return Ok(e.frobenius_norm().as_f64());
            }
            Err(value_error(format!("frobenius_norm: only for KFAC and EKFAC, not {}", h.describe())))
        })
    }

    /// `(A + damping·I)⁻¹` as an operator. KFAC/EKFAC: exact Kronecker inverse in `mode`
    /// (`exact`, `same`, `pi`); others: `method` (`auto`, `cg`, `minres`, `exact`) per apply.
    #[pyo3(signature = (damping = 0.0, mode = None, method = "auto", tol = 1e-10, max_iters = None))]
    fn inverse(
        &self,
        py: Python<'_>,
        damping: f64,
        mode: Option<&str>,
        method: &str,
        tol: f64,
        max_iters: Option<usize>,
    ) -> PyResult<PyOperator> {
        let m = method_of(method, tol, max_iters)?;
        let inner = match &self.inner {
            AnyOp::F32(h) => AnyOp::F32(Arc::new(py.detach(|| inverse_t(h, damping, mode, &m)).map_err(value_error)?)),
            AnyOp::F64(h) => AnyOp::F64(Arc::new(py.detach(|| inverse_t(h, damping, mode, &m)).map_err(value_error)?)),
        };
        Ok(PyOperator { inner })
    }

    /// Solves `(A + damping·I) X = B` with `method`; returns `X` (shape of `B`). `precond` is an
    /// operator `M ≈ (A + damping·I)⁻¹` of the same size and dtype (e.g. a KFAC inverse) for CG
    /// (`method="auto"` with a preconditioner means CG).
    #[pyo3(signature = (b, damping = 0.0, method = "auto", tol = 1e-10, max_iters = None, precond = None))]
    #[allow(clippy::too_many_arguments)]
    fn solve<'py>(
        &self,
        py: Python<'py>,
        b: &Bound<'py, PyAny>,
        damping: f64,
        method: &str,
        tol: f64,
        max_iters: Option<usize>,
        precond: Option<PyRef<'py, PyOperator>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let method = if precond.is_some() && method == "auto" { "cg" } else { method };
        let m = method_of(method, tol, max_iters)?;
        match (&self.inner, precond.as_ref().map(|p| &p.inner)) {
            (AnyOp::F32(h), None) => solve_t(py, h, b, damping, &m, None),
            (AnyOp::F64(h), None) => solve_t(py, h, b, damping, &m, None),
            (AnyOp::F32(h), Some(AnyOp::F32(p))) => solve_t(py, h, b, damping, &m, Some(p)),
            (AnyOp::F64(h), Some(AnyOp::F64(p))) => solve_t(py, h, b, damping, &m, Some(p)),
            _ => Err(value_error("precond: its dtype differs from the operator's")),
        }
    }

    /// A stochastic Lanczos quadrature estimate of the spectral density: `starts` random starts
    /// of `steps` Lanczos steps each; returns `(grid, density, nodes, weights)` with the
    /// Gaussian-smoothed density `ρ(t) = (1/L) Σₗ Σⱼ τⱼˡ N(t; θⱼˡ, σ²)` on `grid_points` points
    /// (`σ = sigma`, or `sigma_rel` times the estimated range), of `log|λ|` when `log`, and the
    /// quadrature nodes `θ` `[L, m]` and weights `τ` `[L, m]`.
    #[pyo3(signature = (starts = 10, steps = 80, seed = 0, grid_points = 1000, sigma = None, sigma_rel = 0.01, log = false))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn spectrum<'py>(
        &self,
        py: Python<'py>,
        starts: usize,
        steps: usize,
        seed: u64,
        grid_points: usize,
        sigma: Option<f64>,
        sigma_rel: f64,
        log: bool,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let opts = SlqOptions { starts, steps, seed, ..SlqOptions::default() };
        let dens = DensityOptions { grid_points, sigma, sigma_rel, ..DensityOptions::default() };
        let q = with_op!(&self.inner, h => py.detach(|| lanczos_quadrature(h.as_ref(), &opts)).map_err(err)?);
        let d = if log { q.log_density(&dens) } else { q.density(&dens) };
        let m = q.nodes.iter().map(Vec::len).max().unwrap_or(0);
        // every start has the same number of nodes unless a Lanczos run broke down early: pad
        // those with weight 0 so that the arrays are rectangular
        let pad = |rows: &[Vec<f64>]| -> Vec<f64> {
            rows.iter().flat_map(|r| r.iter().copied().chain(std::iter::repeat(0.0)).take(m)).collect()
        };
        let (nodes, weights) = (pad(&q.nodes), pad(&q.weights));
        let l = q.nodes.len();
        let g = d.grid.len();
        Ok((
            vec_to_py(py, d.grid, &[g])?,
            vec_to_py(py, d.density, &[g])?,
            vec_to_py(py, nodes, &[l, m])?,
            vec_to_py(py, weights, &[l, m])?,
        ))
    }

    /// The `k` extreme eigenpairs (thick-restart Lanczos): `(values [k], vectors [n, k])`,
    /// values descending (by magnitude for `which="magnitude"`).
    #[pyo3(signature = (k, which = "largest", tol = 1e-8, seed = 0, max_restarts = 1000))]
    fn eigsh<'py>(
        &self,
        py: Python<'py>,
        k: usize,
        which: &str,
        tol: f64,
        seed: u64,
        max_restarts: usize,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let w = which_of(which)?;
        let opts = EigshOptions { tol, max_dim: None, max_restarts, seed };
        with_op!(&self.inner, h => {
            let r = py.detach(|| eigsh(h.as_ref(), k, w, &opts)).map_err(err)?;
            let n = r.values.len();
            Ok((vec_to_py(py, r.values, &[n])?, block_to_py(py, &r.vectors, false)?))
        })
    }

    /// A trace estimate `(value, std_err or None, matvecs)`: `method` is `hutchinson`
    /// (`matvecs` probes), `hutchpp`, `xtrace` (a budget of `matvecs`) or `exact`.
    #[pyo3(signature = (method = "hutchinson", matvecs = 100, seed = 0, distribution = "rademacher", block_size = 64))]
    fn trace_estimate(
        &self,
        py: Python<'_>,
        method: &str,
        matvecs: usize,
        seed: u64,
        distribution: &str,
        block_size: usize,
    ) -> PyResult<(f64, Option<f64>, usize)> {
        let opts = EstimatorOptions { probe: probe_of(distribution)?, seed, block_size: block_size.max(1) };
        let method = method.to_string();
        with_op!(&self.inner, h => {
            let r = py
                .detach(|| match method.as_str() {
                    "hutchinson" => trace_hutchinson(h.as_ref(), matvecs, &opts).map(Some),
                    "hutchpp" => trace_hutchpp(h.as_ref(), matvecs, &opts).map(Some),
                    "xtrace" => trace_xtrace(h.as_ref(), matvecs, &opts).map(Some),
                    "exact" => trace_exact(h.as_ref(), opts.block_size).map(Some),
                    _ => Ok(None),
                })
                .map_err(err)?
                .ok_or_else(|| value_error(format!("method: unknown '{method}' (hutchinson, hutchpp, xtrace, exact)")))?;
            Ok((r.value, r.std_err, r.matvecs))
        })
    }

    /// A diagonal estimate `(values [n], std_err [n] or None)`: `method` is `hutchinson`,
    /// `xdiag` or `exact`.
    #[pyo3(signature = (method = "hutchinson", matvecs = 100, seed = 0, distribution = "rademacher", block_size = 64))]
    fn diag_estimate<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        matvecs: usize,
        seed: u64,
        distribution: &str,
        block_size: usize,
    ) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
        let opts = EstimatorOptions { probe: probe_of(distribution)?, seed, block_size: block_size.max(1) };
        let method = method.to_string();
        with_op!(&self.inner, h => {
            let r = py
                .detach(|| match method.as_str() {
                    "hutchinson" => diag_hutchinson(h.as_ref(), matvecs, &opts).map(Some),
                    "xdiag" => diag_xdiag(h.as_ref(), matvecs, &opts).map(Some),
                    "exact" => diag_exact(h.as_ref(), opts.block_size).map(Some),
                    _ => Ok(None),
                })
                .map_err(err)?
                .ok_or_else(|| value_error(format!("method: unknown '{method}' (hutchinson, xdiag, exact)")))?;
            let n = r.values.len();
            let se = match r.std_err {
                Some(s) => Some(vec_to_py(py, s, &[n])?),
                None => None,
            };
            Ok((vec_to_py(py, r.values, &[n])?, se))
        })
    }
}
