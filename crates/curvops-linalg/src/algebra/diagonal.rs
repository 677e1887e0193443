//! Diagonal operators.

use crate::decomp::Eigh;
use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{Mat, MatMut, MatRef};

/// `diag(d)`: symmetric; PSD when every `dᵢ ≥ 0`.
///
/// Exact: trace `Σ dᵢ`, diagonal `d`, `log|det(D + sI)| = Σ log|dᵢ + s|`,
/// `(D + sI)⁻¹ x = x / (d + s)`, eigendecomposition (sorted `d`, unit vectors).
#[derive(Clone, Debug, PartialEq)]
pub struct DiagonalOp<T: Float> {
    d: Vec<T>,
}

impl<T: Float> DiagonalOp<T> {
    /// `diag(d)`.
    pub fn new(d: Vec<T>) -> Self {
        Self { d }
    }
    /// The diagonal.
    pub fn values(&self) -> &[T] {
        &self.d
    }
}

impl<T: Float> LinearOperator<T> for DiagonalOp<T> {
    fn nrows(&self) -> usize {
        self.d.len()
    }
    fn ncols(&self) -> usize {
        self.d.len()
    }
    fn structure(&self) -> Structure {
        if self.d.iter().all(|&x| x >= T::zero()) {
            Structure::PSD
        } else {
            Structure::SYMMETRIC
        }
    }
    fn describe(&self) -> String {
        format!("diagonal {}", self.d.len())
    }
    fn apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        for j in 0..rhs.ncols() {
            for (i, &di) in self.d.iter().enumerate() {
                out[(i, j)] = di * rhs[(i, j)];
            }
        }
        Ok(())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        Ok(self.d.iter().copied().sum())
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        Ok(self.d.clone())
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        let mut acc = 0.0f64;
        for (i, &x) in self.d.iter().enumerate() {
            let v = x + shift;
            if v == T::zero() {
                return Err(LinalgError::Singular(format!("{}: entry {i} is 0", self.describe())));
            }
            acc += v.as_f64().abs().ln();
        }
        Ok(T::of(acc))
    }
    fn solve_shifted(&self, shift: T, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        if let Some(i) = self.d.iter().position(|&x| x + shift == T::zero()) {
            return Err(LinalgError::Singular(format!("{}: entry {i} is 0", self.describe())));
        }
        for j in 0..rhs.ncols() {
            for (i, &di) in self.d.iter().enumerate() {
                out[(i, j)] = rhs[(i, j)] / (di + shift);
            }
        }
        Ok(())
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        let n = self.d.len();
        Ok(Eigh::new_sorted(self.d.clone(), Mat::identity(n, n), T::zero()))
    }
}
