//! The linear-operator trait, structure tags, errors and the faer adapter.

use curvops_tensor::Float;
use faer::dyn_stack::{MemStack, StackReq};
use faer::{Mat, MatMut, MatRef, Par};

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
    /// An iterative method did not converge.
    #[error("no convergence: {0}")]
    NoConvergence(String),
    /// Anything else, with a message.
    #[error("{0}")]
    Other(String),
}

/// A matrix that can be applied to a block of columns.
///
/// `apply` computes `out = A · rhs` for an `ncols × K` block `rhs` into an `nrows × K` block
/// `out` (whose previous content is overwritten). Implementations apply all `K` columns in one
/// pass (one GEMM per layer for curvature operators), so callers should batch columns.
pub trait LinearOperator<T: Float>: Sync {
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
    /// `out ← A · rhs`.
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>);
    /// Whether [`Self::apply_transpose`] is available.
    fn has_transpose(&self) -> bool {
        self.structure().symmetric
    }
    /// `out ← Aᵀ · rhs`. The default serves symmetric operators and errors otherwise.
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        if self.structure().symmetric {
            self.apply(out, rhs);
            Ok(())
        } else {
            Err(LinalgError::Unsupported { op: "transpose", operator: self.describe() })
        }
    }
    /// `A · x` for one vector.
    fn apply_vec(&self, x: &[T]) -> Vec<T> {
        assert_eq!(x.len(), self.ncols(), "apply_vec: length");
        let mut out = Mat::<T>::zeros(self.nrows(), 1);
        self.apply(out.as_mut(), MatRef::from_column_major_slice(x, x.len(), 1));
        (0..self.nrows()).map(|i| out[(i, 0)]).collect()
    }
    /// The dense matrix, built by applying `A` to blocks of unit vectors of `block` columns.
    fn to_dense_blocked(&self, block: usize) -> Mat<T> {
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
            self.apply(out.as_mut().subcols_mut(start, k), e.as_ref());
            start += k;
        }
        out
    }
    /// The dense matrix (blocks of 64 unit vectors).
    fn to_dense(&self) -> Mat<T> {
        self.to_dense_blocked(64)
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
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) {
        (**self).apply(out, rhs)
    }
    fn has_transpose(&self) -> bool {
        (**self).has_transpose()
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        (**self).apply_transpose(out, rhs)
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
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) {
        (**self).apply(out, rhs)
    }
    fn has_transpose(&self) -> bool {
        (**self).has_transpose()
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        (**self).apply_transpose(out, rhs)
    }
}

/// Adapter that lets faer's matrix-free algorithms (CG, LSMR, BiCGSTAB, Krylov–Schur) use a
/// [`LinearOperator`]. The transpose (for `BiLinOp`) panics if the operator has none; check
/// [`LinearOperator::has_transpose`] first.
pub struct FaerOp<'a, T: Float, O: LinearOperator<T> + ?Sized> {
    op: &'a O,
    _t: std::marker::PhantomData<T>,
}

impl<'a, T: Float, O: LinearOperator<T> + ?Sized> FaerOp<'a, T, O> {
    /// Wraps `op`.
    pub fn new(op: &'a O) -> Self {
        Self { op, _t: std::marker::PhantomData }
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
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, _par: Par, _stack: &mut MemStack) {
        self.op.apply(out, rhs)
    }
    fn conj_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, _par: Par, _stack: &mut MemStack) {
        // real scalars: conj(A) = A
        self.op.apply(out, rhs)
    }
}

impl<T: Float, O: LinearOperator<T> + ?Sized> faer::matrix_free::BiLinOp<T> for FaerOp<'_, T, O> {
    fn transpose_apply_scratch(&self, _rhs_ncols: usize, _par: Par) -> StackReq {
        StackReq::EMPTY
    }
    fn transpose_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, _par: Par, _stack: &mut MemStack) {
        self.op.apply_transpose(out, rhs).expect("FaerOp: operator has no transpose")
    }
    fn adjoint_apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>, _par: Par, _stack: &mut MemStack) {
        self.op.apply_transpose(out, rhs).expect("FaerOp: operator has no transpose")
    }
}
