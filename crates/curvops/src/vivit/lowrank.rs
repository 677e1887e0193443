//! `V Vᵀ` as a linear operator, from its eigenpairs.

use super::Eigenpairs;
use curvops_linalg::decomp::Eigh;
use curvops_linalg::{LinalgError, LinearOperator, Structure};
use curvops_tensor::gemm::matmul;
use curvops_tensor::{threads, Float};
use faer::{Accum, Mat, MatMut, MatRef};

/// The low-rank GGN `V Vᵀ = Σ_k λ_k e_k e_kᵀ` (`D_S × D_S`), from ViViT's eigenpairs. With all
/// nonzero eigenpairs it is `V Vᵀ` up to the threshold; with the top `k`, its best rank-`k`
/// approximation.
///
/// Exact operations: trace `Σ λ_k`, diagonal `Σ_k λ_k e_k²`, eigendecomposition (the pairs,
/// complement 0), `log det(VVᵀ + δI)` and the Woodbury solve
/// `(V Vᵀ + δI)⁻¹ x = Σ_k e_k e_kᵀx/(λ_k + δ) + (x − Σ_k e_k e_kᵀ x)/δ`
/// (the eigen form of `δ⁻¹(I − V(δI + VᵀV)⁻¹Vᵀ)`).
#[derive(Clone, Debug)]
pub struct LowRankGgn<T: Float> {
    eig: Eigh<T>,
}

impl<T: Float> LowRankGgn<T> {
    /// From ViViT eigenpairs (all groups: the eigenvectors of different groups have disjoint
    /// supports and are orthogonal).
    pub fn new(e: &Eigenpairs<T>) -> Self {
        Self { eig: Eigh { values: e.values.clone(), vectors: e.vectors_mat(), rest: T::zero() } }
    }
    /// The eigenvalues.
    pub fn values(&self) -> &[T] {
        &self.eig.values
    }
}

impl<T: Float> LinearOperator<T> for LowRankGgn<T> {
    fn nrows(&self) -> usize {
        self.eig.dim()
    }
    fn ncols(&self) -> usize {
        self.eig.dim()
    }
    fn structure(&self) -> Structure {
        Structure::PSD
    }
    fn describe(&self) -> String {
        format!("vivit low-rank ggn (D={}, rank {})", self.eig.dim(), self.eig.rank())
    }
    fn apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let (r, k) = (self.eig.rank(), rhs.ncols());
        let u = self.eig.vectors.as_ref();
        let mut c = Mat::<T>::zeros(r, k);
        matmul(c.as_mut(), Accum::Replace, u.transpose(), rhs, T::one(), threads::par());
        for i in 0..r {
            for j in 0..k {
                c[(i, j)] *= self.eig.values[i];
            }
        }
        if r == 0 {
            out.fill(T::zero());
            return Ok(());
        }
        matmul(out.as_mut(), Accum::Replace, u, c.as_ref(), T::one(), threads::par());
        Ok(())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        Ok(self.eig.values.iter().copied().sum())
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        let u = &self.eig.vectors;
        Ok((0..u.nrows()).map(|i| (0..u.ncols()).map(|j| self.eig.values[j] * u[(i, j)] * u[(i, j)]).sum()).collect())
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.eig.logdet_shifted(shift, &self.describe())
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.eig.solve_shifted(shift, out, rhs, &self.describe())
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        Ok(self.eig.clone())
    }
}
