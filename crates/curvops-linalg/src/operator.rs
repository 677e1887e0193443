//! The linear-operator trait, structure tags, errors and the faer adapter.

use crate::decomp::Eigh;
use curvops_tensor::Float;
use faer::dyn_stack::{MemStack, StackReq};
use faer::{Mat, MatMut, MatRef, Par};
use std::sync::{Arc, Mutex};

/// Structure an operator guarantees; algorithms that need it (Lanczos, CG) check these tags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Structure {
    /// `A = Aᵀ` (square).
    pub symmetric: bool,
    /// `xᵀ A x ≥ 0` for all `x` (implies `symmetric`).
    pub psd: bool,
}

impl Structure {
    /// No structure known.
    pub const GENERAL: Self = Self { symmetric: false, psd: false };
    /// Symmetric, possibly indefinite (e.g. a Hessian).
    pub const SYMMETRIC: Self = Self { symmetric: true, psd: false };
    /// Symmetric positive semi-definite (e.g. a GGN or Fisher).
    pub const PSD: Self = Self { symmetric: true, psd: true };
}

/// Errors of operators and of the algorithms on them.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum LinalgError {
    /// The operation needs structure the operator does not declare.
    #[error("operator is not {needed} (structure tags: {structure:?})")]
    Structure {
        /// What was needed, e.g. "symmetric".
        needed: &'static str,
        /// The operator's tags.
        structure: Structure,
    },
    /// The operator does not offer this operation (e.g. an exact log-determinant).
    #[error("{op} is not available for {operator}")]
    Unsupported {
        /// The operation, e.g. "logdet".
        op: &'static str,
        /// The operator's description.
        operator: String,
    },
    /// Dimensions do not match.
    #[error("dimension mismatch: {0}")]
    Dimension(String),
    /// A matrix that should be positive definite is not.
    #[error("not positive definite: {0}")]
    NotPositiveDefinite(String),
    /// A matrix that should be positive definite is not, located: the Cholesky pivot of a
    /// column, or the curvature `pᵀAp` of a conjugate-gradient column at an iteration.
    #[error(
        "{operator} is not positive definite at column {column}{}: {quantity} = {value:.6e} <= 0",
        .iteration.map(|i| format!(" (iteration {i})")).unwrap_or_default()
    )]
    NotPositiveDefiniteAt {
        /// The operator (or the algorithm and operator) that failed.
        operator: String,
        /// Column (0-based): the pivot column of a factorization or the right-hand-side column.
        column: usize,
        /// Iteration (0-based) of an iterative method; `None` for factorizations.
        iteration: Option<usize>,
        /// What was found non-positive, e.g. "Cholesky pivot" or "pᵀAp".
        quantity: &'static str,
        /// Its value.
        value: f64,
    },
    /// The matrix is (numerically) singular.
    #[error("singular: {0}")]
    Singular(String),
    /// An iterative method did not converge.
    #[error("no convergence: {0}")]
    NoConvergence(String),
    /// An iterative method diverged (its residual grew).
    #[error("diverged: {0}")]
    Diverged(String),
    /// An inner computation of an operator's application failed: an inner solve that did not
    /// converge, a non-positive-definite inner factorization, a failed data batch, …
    #[error("{operator}: {source}")]
    Inner {
        /// The operator whose application failed.
        operator: String,
        /// The inner error.
        #[source]
        source: ErrorSource,
    },
    /// Anything else, with a message.
    #[error("{0}")]
    Other(String),
}

impl LinalgError {
    /// `Unsupported { op, operator: describe() }`.
    pub fn unsupported(op: &'static str, operator: impl Into<String>) -> Self {
        Self::Unsupported { op, operator: operator.into() }
    }
    /// `Inner { operator, source }`: the application of `operator` failed because of `source`.
    pub fn inner(operator: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Inner { operator: operator.into(), source: ErrorSource::new(source) }
    }
}

/// The source of a [`LinalgError::Inner`]: any error, shared so that [`LinalgError`] stays
/// `Clone`. It displays as the inner error and forwards its `source`; `==` compares the
/// messages. [`ErrorSource::get`] gives the inner error (e.g. to `downcast_ref` it).
#[derive(Clone)]
pub struct ErrorSource(Arc<dyn std::error::Error + Send + Sync>);

impl ErrorSource {
    /// Wraps `e`.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(Arc::from(e.into()))
    }
    /// The inner error.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Debug for ErrorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for ErrorSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ErrorSource {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

/// A matrix that can be applied to a block of columns.
///
/// `apply` computes `out = A · rhs` for an `ncols × K` block `rhs` into an `nrows × K` block
/// `out` (whose previous content is overwritten). Implementations apply all `K` columns in one
/// pass (one GEMM per layer for curvature operators), so callers should batch columns.
///
/// `apply` (and everything built on it: [`Self::apply_vec`], [`Self::to_dense`], the solvers,
/// eigensolvers and estimators of this crate) is fallible: when an inner computation fails — an
/// inner iterative solve that does not converge, an inner factorization of a matrix that is not
/// positive definite, a failed data batch — it returns an error (e.g. [`LinalgError::Inner`]
/// with the cause as its source) rather than writing NaN into `out` or panicking. The content
/// of `out` after an error is unspecified.
pub trait LinearOperator<T: Float>: Send + Sync {
    /// Rows of `A`.
    fn nrows(&self) -> usize;
    /// Columns of `A`.
    fn ncols(&self) -> usize;
    /// Structure guaranteed by the operator.
    fn structure(&self) -> Structure {
        Structure::GENERAL
    }
    /// A short description for messages, e.g. `"ggn (D=73)"`.
    fn describe(&self) -> String {
        format!("operator {}x{}", self.nrows(), self.ncols())
    }
    /// `out ← A · rhs`. Errors when an inner computation fails (see the trait docs).
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError>;
    /// Whether [`Self::apply_transpose`] is available.
    fn has_transpose(&self) -> bool {
        self.structure().symmetric
    }
    /// `out ← Aᵀ · rhs`. The default serves symmetric operators and errors otherwise.
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        if self.structure().symmetric {
            self.apply(out, rhs)
        } else {
            Err(LinalgError::Unsupported { op: "transpose", operator: self.describe() })
        }
    }
    /// `A · x` for one vector.
    fn apply_vec(&self, x: &[T]) -> Result<Vec<T>, LinalgError> {
        assert_eq!(x.len(), self.ncols(), "apply_vec: length");
        let mut out = Mat::<T>::zeros(self.nrows(), 1);
        self.apply(out.as_mut(), MatRef::from_column_major_slice(x, x.len(), 1))?;
        Ok((0..self.nrows()).map(|i| out[(i, 0)]).collect())
    }
    /// The dense matrix, built by applying `A` to blocks of unit vectors of `block` columns.
    fn to_dense_blocked(&self, block: usize) -> Result<Mat<T>, LinalgError> {
        let (m, n) = (self.nrows(), self.ncols());
        let block = block.max(1);
        let mut out = Mat::<T>::zeros(m, n);
        let mut start = 0;
        while start < n {
            let k = block.min(n - start);
            let mut e = Mat::<T>::zeros(n, k);
            for j in 0..k {
                e[(start + j, j)] = T::one();
            }
            self.apply(out.as_mut().subcols_mut(start, k), e.as_ref())?;
            start += k;
        }
        Ok(out)
    }
    /// The dense matrix (blocks of 64 unit vectors).
    fn to_dense(&self) -> Result<Mat<T>, LinalgError> {
        self.to_dense_blocked(64)
    }

    // ----- exact structured operations (structured operators override these) -----

    /// The exact trace `tr(A) = Σᵢ Aᵢᵢ` (square operators), from the structure.
    ///
    /// The default returns [`LinalgError::Unsupported`]; see `estimators::trace_exact` for the
    /// trace by unit-vector blocks and the randomized estimators.
    fn trace(&self) -> Result<T, LinalgError> {
        Err(LinalgError::unsupported("trace", self.describe()))
    }
    /// The exact diagonal `(A₀₀, …, A_{n-1,n-1})` (square operators), from the structure.
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        Err(LinalgError::unsupported("diagonal", self.describe()))
    }
    /// `log |det A|`, exact (square operators). For positive-definite operators this is
    /// `log det A`. The default is [`Self::logdet_shifted`] with shift 0.
    fn logdet(&self) -> Result<T, LinalgError> {
        self.logdet_shifted(T::zero())
    }
    /// `log |det(A + s·I)|`, exact (square operators). The default returns
    /// [`LinalgError::Unsupported`]; operators whose structure gives it override it
    /// (diagonal, low rank, Kronecker, block diagonal, dense, …).
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        let op = if shift == T::zero() { "logdet" } else { "logdet of A + λI" };
        Err(LinalgError::unsupported(op, self.describe()))
    }
    /// `out ← A⁻¹ · rhs` for a block of columns, exact (direct, not iterative). The default is
    /// [`Self::solve_shifted`] with shift 0.
    fn solve(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.solve_shifted(T::zero(), out, rhs)
    }
    /// `out ← (A + s·I)⁻¹ · rhs`, exact. The default returns [`LinalgError::Unsupported`].
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let _ = (out, rhs);
        let op = if shift == T::zero() { "solve" } else { "solve with A + λI" };
        Err(LinalgError::unsupported(op, self.describe()))
    }
    /// The exact symmetric eigendecomposition `A = V diag(λ) Vᵀ + c·(I − V Vᵀ)` (see [`Eigh`]),
    /// for symmetric operators whose structure gives it. The default returns
    /// [`LinalgError::Unsupported`]; see `eigen::eigsh` for extreme eigenpairs of any symmetric
    /// operator.
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        Err(LinalgError::unsupported("eigh", self.describe()))
    }
}

impl<T: Float, O: LinearOperator<T> + ?Sized> LinearOperator<T> for &O {
    fn nrows(&self) -> usize {
        (**self).nrows()
    }
    fn ncols(&self) -> usize {
        (**self).ncols()
    }
    fn structure(&self) -> Structure {
        (**self).structure()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        (**self).apply(out, rhs)
    }
    fn has_transpose(&self) -> bool {
        (**self).has_transpose()
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        (**self).apply_transpose(out, rhs)
    }
    fn trace(&self) -> Result<T, LinalgError> {
        (**self).trace()
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        (**self).diagonal()
    }
    fn logdet(&self) -> Result<T, LinalgError> {
        (**self).logdet()
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        (**self).logdet_shifted(shift)
    }
    fn solve(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        (**self).solve(out, rhs)
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        (**self).solve_shifted(shift, out, rhs)
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        (**self).eigh()
    }
}

impl<T: Float, O: LinearOperator<T> + ?Sized> LinearOperator<T> for Box<O>
where
    Box<O>: Sync,
{
    fn nrows(&self) -> usize {
        (**self).nrows()
    }
    fn ncols(&self) -> usize {
        (**self).ncols()
    }
    fn structure(&self) -> Structure {
        (**self).structure()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        (**self).apply(out, rhs)
    }
    fn has_transpose(&self) -> bool {
        (**self).has_transpose()
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        (**self).apply_transpose(out, rhs)
    }
    fn trace(&self) -> Result<T, LinalgError> {
        (**self).trace()
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        (**self).diagonal()
    }
    fn logdet(&self) -> Result<T, LinalgError> {
        (**self).logdet()
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        (**self).logdet_shifted(shift)
    }
    fn solve(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        (**self).solve(out, rhs)
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        (**self).solve_shifted(shift, out, rhs)
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        (**self).eigh()
    }
}

/// Adapter that lets faer's matrix-free algorithms (CG, LSMR, BiCGSTAB, Krylov–Schur) use a
/// [`LinearOperator`].
///
/// faer's `LinOp::apply` cannot fail, so an error of the operator's `apply` (or
/// `apply_transpose`, e.g. for an operator without a transpose) is kept — the first one — and
/// the output is zero-filled; callers check [`FaerOp::take_error`] after the faer algorithm
/// returns and report that error instead of its result.
pub struct FaerOp<'a, T: Float, O: LinearOperator<T> + ?Sized> {
    op: &'a O,
    error: Mutex<Option<LinalgError>>,
    _t: std::marker::PhantomData<T>,
}

impl<'a, T: Float, O: LinearOperator<T> + ?Sized> FaerOp<'a, T, O> {
    /// Wraps `op`.
    pub fn new(op: &'a O) -> Self {
        Self { op, error: Mutex::new(None), _t: std::marker::PhantomData }
    }
    /// The first error of an application since the last call, if any (cleared).
    pub fn take_error(&self) -> Option<LinalgError> {
        self.error.lock().map(|mut e| e.take()).unwrap_or_else(|p| p.into_inner().take())
    }
    fn keep(&self, r: Result<(), LinalgError>, mut out: MatMut<'_, T>) {
        if let Err(e) = r {
            out.fill(T::zero());
            let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
            g.get_or_insert(e);
        }
    }
}

impl<T: Float, O: LinearOperator<T> + ?Sized> std::fmt::Debug for FaerOp<'_, T, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaerOp({})", self.op.describe())
    }
}

impl<T: Float, O: LinearOperator<T> + ?Sized> faer::matrix_free::LinOp<T> for FaerOp<'_, T, O> {
    fn apply_scratch(&self, _rhs_ncols: usize, _par: Par) -> StackReq {
        StackReq::EMPTY
    }
    fn nrows(&self) -> usize {
        self.op.nrows()
    }
    fn ncols(&self) -> usize {
        self.op.ncols()
    }
    fn apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, _par: Par, _stack: &mut MemStack) {
        let r = self.op.apply(out.as_mut(), rhs);
        self.keep(r, out);
    }
    fn conj_apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, _par: Par, _stack: &mut MemStack) {
        // real scalars: conj(A) = A
        let r = self.op.apply(out.as_mut(), rhs);
        self.keep(r, out);
    }
}

impl<T: Float, O: LinearOperator<T> + ?Sized> faer::matrix_free::BiLinOp<T> for FaerOp<'_, T, O> {
    fn transpose_apply_scratch(&self, _rhs_ncols: usize, _par: Par) -> StackReq {
        StackReq::EMPTY
    }
    fn transpose_apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, _par: Par, _stack: &mut MemStack) {
        let r = self.op.apply_transpose(out.as_mut(), rhs);
        self.keep(r, out);
    }
    fn adjoint_apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>, _par: Par, _stack: &mut MemStack) {
        let r = self.op.apply_transpose(out.as_mut(), rhs);
        self.keep(r, out);
    }
}
