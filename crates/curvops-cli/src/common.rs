//! Loading what the flags name, and small shared helpers.

use crate::args::{Common, Dtype};
use curvops::{ActiveSet, Problem};
use curvops_nn::io::{load_problem, peek_float_dtype};
use curvops_tensor::Float;
use std::path::PathBuf;

/// A one-line error message.
pub type CliResult<T> = Result<T, String>;

/// The three problem files, from `--problem DIR` or `--model/--weights/--data`.
pub fn problem_paths(c: &Common) -> CliResult<(PathBuf, PathBuf, PathBuf)> {
    let pick = |flag: &Option<PathBuf>, file: &str, name: &str| -> CliResult<PathBuf> {
        match (flag, &c.problem) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(dir)) => Ok(dir.join(file)),
            (None, None) => Err(format!("--{name} is required (or --problem DIR with {file})")),
        }
    };
    Ok((
        pick(&c.model, "model.json", "model")?,
        pick(&c.weights, "weights.safetensors", "weights")?,
        pick(&c.data, "data.safetensors", "data")?,
    ))
}

/// The compute dtype: `--dtype`, else the weights' dtype.
pub fn dtype_of(c: &Common) -> CliResult<Dtype> {
    if let Some(d) = c.dtype {
        return Ok(d);
    }
    let (_, w, _) = problem_paths(c)?;
    Ok(match peek_float_dtype(&w).map_err(|e| e.to_string())? {
        "f32" => Dtype::F32,
        _ => Dtype::F64,
    })
}

/// Loads the problem in dtype `T`.
pub fn load<T: Float>(c: &Common) -> CliResult<Problem<T>> {
    let (m, w, d) = problem_paths(c)?;
    let p = load_problem::<T>(&m, &w, &d).map_err(|e| e.to_string())?;
    for w in &p.net.warnings {
        eprintln!("warning: {w}");
    }
    Ok(p)
}

/// The active parameter set of `--params`.
pub fn active<T: Float>(c: &Common, p: &Problem<T>) -> CliResult<ActiveSet> {
    match &c.params {
        None => Ok(ActiveSet::all(&p.net.layout)),
        Some(names) => ActiveSet::from_names(&p.net.layout, names).map_err(|e| format!("--params: {e}")),
    }
}

/// `--batch-size` (0 = everything in one batch); errors on 0.
pub fn batch_size(c: &Common) -> CliResult<usize> {
    match c.batch_size {
        Some(0) => Err("--batch-size must be positive".into()),
        Some(b) => Ok(b),
        None => Ok(0),
    }
}

/// Applies `--threads`.
pub fn set_threads(c: &Common) -> CliResult<()> {
    match c.threads {
        Some(0) => Err("--threads must be positive".into()),
        Some(t) => {
            curvops_tensor::threads::set_threads(t);
            Ok(())
        }
        None => {
            curvops_tensor::threads::set_threads(1);
            Ok(())
        }
    }
}

/// A progress bar on standard error, shown only when it is a terminal.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar with `total` steps and a message.
    pub fn new(total: usize, msg: &str) -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed} elapsed, eta {eta})")
                    .expect("template")
                    .progress_chars("=> "),
            );
            b.set_message(msg.to_string());
            b
        });
        Self { bar }
    }
    /// Sets the position (`done` of `total`).
    pub fn set(&self, done: usize, total: usize) {
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// An operator wrapper that shows a progress spinner with the number of matrix-vector
/// products (on standard error, only when it is a terminal).
pub struct ProgressOp<'a, T: Float> {
    op: &'a dyn curvops_linalg::LinearOperator<T>,
    bar: Option<indicatif::ProgressBar>,
    count: std::sync::atomic::AtomicUsize,
}

impl<'a, T: Float> ProgressOp<'a, T> {
    /// Wraps `op`; `msg` labels the spinner.
    pub fn new(op: &'a dyn curvops_linalg::LinearOperator<T>, msg: &str) -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}: {pos} matvecs ({elapsed})")
                    .expect("template"),
            );
            b.set_message(msg.to_string());
            b
        });
        Self { op, bar, count: std::sync::atomic::AtomicUsize::new(0) }
    }
}

impl<T: Float> Drop for ProgressOp<'_, T> {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl<T: Float> curvops_linalg::LinearOperator<T> for ProgressOp<'_, T> {
    fn nrows(&self) -> usize {
        self.op.nrows()
    }
    fn ncols(&self) -> usize {
        self.op.ncols()
    }
    fn structure(&self) -> curvops_linalg::Structure {
        self.op.structure()
    }
    fn describe(&self) -> String {
        self.op.describe()
    }
    fn apply(&self, out: faer::MatMut<'_, T>, rhs: faer::MatRef<'_, T>) -> Result<(), curvops_linalg::LinalgError> {
        let n = self.count.fetch_add(rhs.ncols(), std::sync::atomic::Ordering::Relaxed) + rhs.ncols();
        if let Some(b) = &self.bar {
            b.set_position(n as u64);
        }
        self.op.apply(out, rhs)
    }
    fn has_transpose(&self) -> bool {
        self.op.has_transpose()
    }
    fn apply_transpose(
        &self,
        out: faer::MatMut<'_, T>,
        rhs: faer::MatRef<'_, T>,
    ) -> Result<(), curvops_linalg::LinalgError> {
        self.op.apply_transpose(out, rhs)
    }
    fn trace(&self) -> Result<T, curvops_linalg::LinalgError> {
        self.op.trace()
    }
    fn diagonal(&self) -> Result<Vec<T>, curvops_linalg::LinalgError> {
        self.op.diagonal()
    }
    fn logdet_shifted(&self, s: T) -> Result<T, curvops_linalg::LinalgError> {
        self.op.logdet_shifted(s)
    }
    fn solve_shifted(
        &self,
        s: T,
        out: faer::MatMut<'_, T>,
        rhs: faer::MatRef<'_, T>,
    ) -> Result<(), curvops_linalg::LinalgError> {
        self.op.solve_shifted(s, out, rhs)
    }
    fn eigh(&self) -> Result<curvops_linalg::Eigh<T>, curvops_linalg::LinalgError> {
        self.op.eigh()
    }
}
