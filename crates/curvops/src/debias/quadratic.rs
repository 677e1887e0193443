//! The quadratic model of a batch: `q_B(d) = s (L_B + g_Bᵀd + ½ dᵀC_B d) + ½ δ‖d‖²`.

use super::DebiasError;
use crate::curvature::{Curvature, CurvatureOperator};
use crate::gradient::loss_and_grad_on;
use crate::walk::DataWalk;
use crate::Problem;
use curvops_linalg::LinearOperator;
use curvops_nn::ActiveSet;
use curvops_tensor::Float;
use faer::{Mat, MatRef};

/// The quadratic model of the loss on the samples of a walk (a batch or all data) around the
/// problem's `θ`:
///
/// `q(d) = s·(L_B + g_Bᵀd + ½ dᵀC_B d) + ½ δ‖d‖²`,
///
/// with `s = c_N·N / (c_B·|B|)` (`c` the loss's reduction factor) so that batch quantities
/// estimate the full-data loss `L = c_N Σ_n ℓ_n` (`s = 1` for mean reductions and for all data).
/// The curvature is applied matrix-free to blocks of points.
pub struct Quadratic<'a, T: Float> {
    op: CurvatureOperator<'a, T>,
    /// `s·L_B`.
    pub loss: f64,
    /// `s·g_B`.
    pub grad: Vec<T>,
    /// The rescaling `s`.
    pub scale: f64,
    /// The damping `δ`.
    pub damping: f64,
    products: std::sync::atomic::AtomicUsize,
}

impl<'a, T: Float> Quadratic<'a, T> {
    /// The model of `kind` on the samples of `walk` (loss and gradient by one pass).
    pub fn new(
        p: &'a Problem<T>,
        kind: Curvature,
        active: ActiveSet,
        walk: DataWalk<'a, T>,
        damping: f64,
    ) -> Result<Self, DebiasError> {
        if walk.n() == 0 {
            return Err(DebiasError::Invalid("a quadratic model needs at least one sample".into()));
        }
        if !(damping.is_finite() && damping >= 0.0) {
            return Err(DebiasError::Invalid(format!("--damping {damping} must be non-negative")));
        }
        let cdim = p.net.out_size();
        let n_all = p.data.n;
        let scale = p.net.loss.factor(n_all, cdim) * n_all as f64 / (walk.factor(&p.net) * walk.n() as f64);
        let (loss, mut grad) = loss_and_grad_on(p, &walk, &active);
        curvops_tensor::ops::scale(T::of(scale), &mut grad);
        let op = CurvatureOperator::on(p, kind, active, walk);
        Ok(Self { op, loss: scale * loss, grad, scale, damping, products: Default::default() })
    }

    /// Dimension `D`.
    pub fn dim(&self) -> usize {
        self.grad.len()
    }

    /// Samples of the model.
    pub fn samples(&self) -> usize {
        self.op.walk().n()
    }

    /// The curvature operator `C_B` (unscaled).
    pub fn operator(&self) -> &CurvatureOperator<'a, T> {
        &self.op
    }

    /// Columns the curvature was applied to so far.
    pub fn products(&self) -> usize {
        self.products.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `(s·C_B + δI) X` for a block of points `X` (`D × K`), in one pass over the samples.
    pub fn curvature_times(&self, x: MatRef<'_, T>) -> Result<Mat<T>, DebiasError> {
        let mut out = Mat::<T>::zeros(x.nrows(), x.ncols());
        self.products.fetch_add(x.ncols(), std::sync::atomic::Ordering::Relaxed);
        self.op.apply(out.as_mut(), x)?;
        let (s, dl) = (T::of(self.scale), T::of(self.damping));
        for j in 0..x.ncols() {
            for i in 0..x.nrows() {
                out[(i, j)] = s * out[(i, j)] + dl * x[(i, j)];
            }
        }
        Ok(out)
    }

    /// `q(d)` for every column `d` of `X` (one block application of the curvature).
    pub fn values(&self, x: MatRef<'_, T>) -> Result<Vec<f64>, DebiasError> {
        if x.ncols() == 0 {
            return Ok(Vec::new());
        }
        let cx = self.curvature_times(x)?;
        Ok((0..x.ncols())
            .map(|j| {
                let (mut lin, mut quad) = (0.0, 0.0);
                for i in 0..x.nrows() {
                    let xi = x[(i, j)].as_f64();
                    lin += self.grad[i].as_f64() * xi;
                    quad += cx[(i, j)].as_f64() * xi;
                }
                self.loss + lin + 0.5 * quad
            })
            .collect())
    }

    /// Rayleigh quotients `uᵀ(s·C_B + δI)u / uᵀu` of the columns of `U`.
    pub fn rayleigh(&self, u: MatRef<'_, T>) -> Result<Vec<f64>, DebiasError> {
        let cu = self.curvature_times(u)?;
        Ok((0..u.ncols())
            .map(|j| {
                let (mut num, mut den) = (0.0, 0.0);
                for i in 0..u.nrows() {
                    let ui = u[(i, j)].as_f64();
                    num += cu[(i, j)].as_f64() * ui;
                    den += ui * ui;
                }
                num / den
            })
            .collect())
    }
}
