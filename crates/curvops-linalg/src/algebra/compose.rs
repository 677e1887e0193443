//! Products `A · B`.

use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{Mat, MatMut, MatRef};

/// The product `A · B` (`A` is `m × k`, `B` is `k × n`); applying it applies `B`, then `A`.
///
/// Its structure is general unless declared with [`ComposeOp::with_structure`] (a product of
/// symmetric matrices is not symmetric in general; a sandwich `Jᵀ H J` is, and the caller
/// knows it). Exact, for square factors: `log|det(AB)| = log|det A| + log|det B|` and
/// `(AB)⁻¹ = B⁻¹ A⁻¹`.
#[derive(Clone, Debug)]
pub struct ComposeOp<A, B> {
    a: A,
    b: B,
    structure: Structure,
}

impl<A, B> ComposeOp<A, B> {
    /// `a · b`; `a.ncols()` must equal `b.nrows()`.
    pub fn new<T: Float>(a: A, b: B) -> Result<Self, LinalgError>
    where
        A: LinearOperator<T>,
        B: LinearOperator<T>,
    {
        if a.ncols() != b.nrows() {
            return Err(LinalgError::Dimension(format!(
                "product of {} ({}x{}) and {} ({}x{})",
                a.describe(),
                a.nrows(),
                a.ncols(),
                b.describe(),
                b.nrows(),
                b.ncols()
            )));
        }
        Ok(Self { a, b, structure: Structure::GENERAL })
    }
    /// Declares the product's structure (not verified), e.g. [`Structure::PSD`] for `Bᵀ B`.
    pub fn with_structure(mut self, structure: Structure) -> Self {
        self.structure = structure;
        self
    }
    /// The factors `(A, B)`.
    pub fn factors(&self) -> (&A, &B) {
        (&self.a, &self.b)
    }
}

impl<T: Float, A: LinearOperator<T>, B: LinearOperator<T>> LinearOperator<T> for ComposeOp<A, B> {
    fn nrows(&self) -> usize {
        self.a.nrows()
    }
    fn ncols(&self) -> usize {
        self.b.ncols()
    }
    fn structure(&self) -> Structure {
        self.structure
    }
    fn describe(&self) -> String {
        format!("({})·({})", self.a.describe(), self.b.describe())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let mut tmp = Mat::<T>::zeros(self.b.nrows(), rhs.ncols());
        self.b.apply(tmp.as_mut(), rhs)?;
        self.a.apply(out, tmp.as_ref())
    }
    fn has_transpose(&self) -> bool {
        self.structure.symmetric || (self.a.has_transpose() && self.b.has_transpose())
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        if self.structure.symmetric {
            return self.apply(out, rhs);
        }
        // (AB)ᵀ = Bᵀ Aᵀ
        let mut tmp = Mat::<T>::zeros(self.a.ncols(), rhs.ncols());
        self.a.apply_transpose(tmp.as_mut(), rhs)?;
        self.b.apply_transpose(out, tmp.as_ref())
    }
    fn logdet(&self) -> Result<T, LinalgError> {
        if self.a.nrows() != self.a.ncols() || self.b.nrows() != self.b.ncols() {
            return Err(LinalgError::unsupported("logdet (non-square factors)", self.describe()));
        }
        Ok(self.a.logdet()? + self.b.logdet()?)
    }
    fn solve(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        if self.a.nrows() != self.a.ncols() || self.b.nrows() != self.b.ncols() {
            return Err(LinalgError::unsupported("solve (non-square factors)", self.describe()));
        }
        let mut tmp = Mat::<T>::zeros(self.a.nrows(), rhs.ncols());
        self.a.solve(tmp.as_mut(), rhs)?;
        self.b.solve(out, tmp.as_ref())
    }
}
