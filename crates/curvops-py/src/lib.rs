//! Python bindings of curvops: the extension module `curvops._curvops`.
//!
//! The Python package (`python/curvops`) converts a PyTorch model into a graph model
//! (`../shared/SPEC.md` §1) and calls this module with the model's JSON text, its parameters
//! and the data as numpy arrays. Everything numerical happens here, in the library, with the GIL
//! released:
//!
//! * [`problem::PyProblem`] (`_curvops.Problem`): a network, its parameters `θ` and a data set;
//!   gradient, per-sample gradients, exact diagonals, model outputs, and operators;
//! * [`operator::PyOperator`] (`_curvops.Operator`): any operator of the library's registry
//!   (Hessian, GGN, EF, MC Fisher, Jacobian and its transpose, KFAC, EKFAC, block-diagonal
//!   restrictions, damping, inverses), applied to blocks of columns, with the library's
//!   eigensolver, trace and diagonal estimators and solvers.
//!
//! Every error becomes a Python `ValueError` carrying the library's one-line message.

// PyO3's generated code trips the first lint; keyword-argument methods mirror Python signatures.
#![allow(clippy::useless_conversion, clippy::too_many_arguments)]

mod arrays;
mod laplace;
mod operator;
mod problem;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A `ValueError` with `msg`.
pub(crate) fn value_error(msg: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(msg.to_string())
}

/// Sets the number of threads of GEMMs and parallel loops (results do not depend on it).
#[pyfunction]
fn set_threads(n: usize) -> PyResult<()> {
    if n == 0 {
        return Err(value_error("threads: must be positive"));
    }
    curvops_tensor::threads::set_threads(n);
    Ok(())
}

/// The current number of threads.
#[pyfunction]
fn threads() -> usize {
    curvops_tensor::threads::threads()
}

/// The extension module.
#[pymodule]
fn _curvops(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // keep freed buffers (up to 256 MiB at the heap's top) for reuse instead of paying page
    // faults on every product (curvops_tensor::alloc); CURVOPS_MALLOC_TUNING=0 leaves glibc's
    // defaults
    if std::env::var("CURVOPS_MALLOC_TUNING").map_or(true, |v| v != "0") {
        curvops_tensor::alloc::retain_freed_memory(32 << 20, 256 << 20);
    }
    m.add_class::<problem::PyProblem>()?;
    m.add_class::<operator::PyOperator>()?;
    m.add_class::<laplace::PyLaplace>()?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
