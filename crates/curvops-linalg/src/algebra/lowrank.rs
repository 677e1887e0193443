//! Low-rank symmetric operators `U diag(λ) Uᵀ`.

use crate::decomp::{thin_qr, Eigh};
use crate::util::mul;
use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::gemm::matmul;
use curvops_tensor::{threads, Float};
use faer::{Accum, Mat, MatMut, MatRef};
use std::sync::OnceLock;

/// `U diag(λ) Uᵀ` with `U` an `n × r` matrix (columns need not be orthonormal) and `λ` of
/// length `r`: symmetric, PSD when every `λⱼ ≥ 0`.
///
/// Applying costs two thin GEMMs (`O(nrK)`). Exact operations:
/// * `tr = Σⱼ λⱼ ‖uⱼ‖²`, `diagᵢ = Σⱼ λⱼ Uᵢⱼ²`;
/// * eigendecomposition from a thin QR `U = QR` and the `r × r` eigenproblem
///   `R diag(λ) Rᵀ = W diag(μ) Wᵀ`: eigenvectors `QW`, eigenvalues `μ`, complement 0
///   (`O(nr²)`, computed once and cached);
/// * with a shift `s` (damping): `log|det(UΛUᵀ + sI)| = Σ log|μᵢ + s| + (n − r)·log|s|` and
///   `(UΛUᵀ + sI)⁻¹ x = QW diag(1/(μ + s)) (QW)ᵀ x + (x − QW(QW)ᵀx)/s` — the eigen form of the
///   Woodbury identity, which also handles zero `λⱼ` and rank-deficient `U`.
///
/// Without a shift, logdet and solve are errors ([`LinalgError::Singular`]) when `r < n`.
#[derive(Debug)]
pub struct LowRankOp<T: Float> {
    u: Mat<T>,
    lambda: Vec<T>,
    eig: OnceLock<Result<Eigh<T>, LinalgError>>,
}

impl<T: Float> Clone for LowRankOp<T> {
    fn clone(&self) -> Self {
        Self { u: self.u.clone(), lambda: self.lambda.clone(), eig: self.eig.clone() }
    }
}

impl<T: Float> LowRankOp<T> {
    /// `u diag(lambda) uᵀ`; `lambda.len()` must equal `u.ncols()`.
    pub fn new(u: Mat<T>, lambda: Vec<T>) -> Result<Self, LinalgError> {
        if u.ncols() != lambda.len() {
            return Err(LinalgError::Dimension(format!(
                "low rank: U has {} columns but {} weights",
                u.ncols(),
                lambda.len()
            )));
        }
        Ok(Self { u, lambda, eig: OnceLock::new() })
    }
    /// `U`.
    pub fn factor(&self) -> MatRef<'_, T> {
        self.u.as_ref()
    }
    /// `λ`.
    pub fn weights(&self) -> &[T] {
        &self.lambda
    }
    fn cached_eigh(&self) -> Result<&Eigh<T>, LinalgError> {
        self.eig
            .get_or_init(|| {
                let (q, r) = thin_qr(self.u.as_ref());
                // M = R diag(λ) Rᵀ
                let rl = Mat::<T>::from_fn(r.nrows(), r.ncols(), |i, j| r[(i, j)] * self.lambda[j]);
                let mut m = mul(rl.as_ref(), r.transpose());
                let p = m.nrows();
                for i in 0..p {
                    for j in 0..i {
                        let s = (m[(i, j)] + m[(j, i)]) * T::of(0.5);
                        m[(i, j)] = s;
                        m[(j, i)] = s;
                    }
                }
                let e = Eigh::from_dense(m.as_ref())?;
                let vectors = mul(q.as_ref(), e.vectors.as_ref());
                Ok(Eigh { values: e.values, vectors, rest: T::zero() })
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl<T: Float> LinearOperator<T> for LowRankOp<T> {
    fn nrows(&self) -> usize {
        self.u.nrows()
    }
    fn ncols(&self) -> usize {
        self.u.nrows()
    }
    fn structure(&self) -> Structure {
        if self.lambda.iter().all(|&x| x >= T::zero()) {
            Structure::PSD
        } else {
            Structure::SYMMETRIC
        }
    }
    fn describe(&self) -> String {
        format!("low rank {} (n = {})", self.u.ncols(), self.u.nrows())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let mut c = mul(self.u.transpose(), rhs);
        for j in 0..c.ncols() {
            for i in 0..c.nrows() {
                c[(i, j)] = self.lambda[i] * c[(i, j)];
            }
        }
        matmul(out, Accum::Replace, self.u.as_ref(), c.as_ref(), T::one(), threads::par());
        Ok(())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        let mut t = 0.0f64;
        for (j, &l) in self.lambda.iter().enumerate() {
            let nrm2: f64 = (0..self.u.nrows()).map(|i| self.u[(i, j)].as_f64().powi(2)).sum();
            t += l.as_f64() * nrm2;
        }
        Ok(T::of(t))
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        Ok((0..self.u.nrows())
            .map(|i| {
                let s: f64 =
                    self.lambda.iter().enumerate().map(|(j, &l)| l.as_f64() * self.u[(i, j)].as_f64().powi(2)).sum();
                T::of(s)
            })
            .collect())
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.cached_eigh()?.logdet_shifted(shift, &self.describe())
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.cached_eigh()?.solve_shifted(shift, out, rhs, &self.describe())
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        self.cached_eigh().cloned()
    }
}
