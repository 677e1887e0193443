//! The identity operator.

use crate::decomp::Eigh;
use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{Mat, MatMut, MatRef};

/// The `n × n` identity `I` (PSD).
///
/// Exact: `tr = n`, `diag = 1`, `log|det(I + sI)| = n·log|1 + s|`, `(I + sI)⁻¹ = I/(1 + s)`,
/// eigendecomposition with no listed vectors and `rest = 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityOp {
    n: usize,
}

impl IdentityOp {
    /// The `n × n` identity.
    pub fn new(n: usize) -> Self {
        Self { n }
    }
}

impl<T: Float> LinearOperator<T> for IdentityOp {
    fn nrows(&self) -> usize {
        self.n
    }
    fn ncols(&self) -> usize {
        self.n
    }
    fn structure(&self) -> Structure {
        Structure::PSD
    }
    fn describe(&self) -> String {
        format!("identity {}", self.n)
    }
    fn apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        out.copy_from(rhs);
        Ok(())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        Ok(T::of(self.n as f64))
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        Ok(vec![T::one(); self.n])
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.eigh()?.shifted(shift).logdet(&LinearOperator::<T>::describe(self))
    }
    fn solve_shifted(&self, shift: T, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let d = T::one() + shift;
        if d == T::zero() {
            return Err(LinalgError::Singular(format!("identity {} shifted by -1", self.n)));
        }
        let inv = d.recip();
        for j in 0..rhs.ncols() {
            for i in 0..rhs.nrows() {
                out[(i, j)] = inv * rhs[(i, j)];
            }
        }
        Ok(())
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        Ok(Eigh { values: vec![], vectors: Mat::zeros(self.n, 0), rest: T::one() })
    }
}
