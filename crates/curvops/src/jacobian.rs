//! The Jacobian `J = ∂f/∂θ` of all network outputs (`[N·C, D_S]`, rows `(n, c)` row-major over
//! `[N, C]`) and its transpose, as linear operators.

use crate::walk::DataWalk;
use crate::{block_to_vec, vec_to_block, Problem};
use curvops_linalg::{LinalgError, LinearOperator, Structure};
use curvops_nn::ActiveSet;
use curvops_tensor::Float;
use faer::{MatMut, MatRef};

/// `J` (or `Jᵀ` with `transposed`).
pub struct JacobianOperator<'a, T: Float> {
    problem: &'a Problem<T>,
    active: ActiveSet,
    walk: DataWalk<'a, T>,
    transposed: bool,
}

impl<'a, T: Float> JacobianOperator<'a, T> {
    /// The Jacobian of `problem`'s outputs with respect to the `active` parameters.
    pub fn new(problem: &'a Problem<T>, active: ActiveSet, batch_size: usize, transposed: bool) -> Self {
        Self::on(problem, active, DataWalk::new(&problem.data, batch_size), transposed)
    }

    /// The Jacobian of the outputs on the samples of `walk` (rows in the walk's order).
    pub fn on(problem: &'a Problem<T>, active: ActiveSet, walk: DataWalk<'a, T>, transposed: bool) -> Self {
        Self { problem, active, walk, transposed }
    }

    fn out_rows(&self) -> usize {
        self.walk.n() * self.problem.net.out_size()
    }

    /// `J V` for `K` parameter vectors (`[K, D_S]`), returned as `[K, N·C]`.
    pub fn jvp_block(&self, v: &[T], k: usize) -> Vec<T> {
        let net = &self.problem.net;
        let (c, rows) = (net.out_size(), self.out_rows());
        let mut out = vec![T::zero(); k * rows];
        for batch in self.walk.batches() {
            let tape = net.forward(&self.problem.theta, batch.x, batch.n);
            let jv =
                net.jvp(&self.problem.theta, &tape, v, k, &self.active, false).pop().flatten().expect("output tangent");
            for s in 0..batch.n {
                for kk in 0..k {
                    let dst = kk * rows + (batch.start + s) * c;
                    out[dst..dst + c].copy_from_slice(&jv[(s * k + kk) * c..(s * k + kk + 1) * c]);
                }
            }
        }
        out
    }

    /// `Jᵀ U` for `K` output-space vectors (`[K, N·C]`), returned as `[K, D_S]`.
    pub fn vjp_block(&self, u: &[T], k: usize) -> Vec<T> {
        let net = &self.problem.net;
        let (c, rows) = (net.out_size(), self.out_rows());
        let mut acc = vec![T::zero(); k * self.active.dim];
        for batch in self.walk.batches() {
            let tape = net.forward(&self.problem.theta, batch.x, batch.n);
            let mut g = vec![T::zero(); batch.n * k * c];
            for s in 0..batch.n {
                for kk in 0..k {
                    let src = kk * rows + (batch.start + s) * c;
                    g[(s * k + kk) * c..(s * k + kk + 1) * c].copy_from_slice(&u[src..src + c]);
                }
            }
            net.vjp(&self.problem.theta, &tape, g, k, &self.active, &mut acc);
        }
        acc
    }
}

impl<T: Float> LinearOperator<T> for JacobianOperator<'_, T> {
    fn nrows(&self) -> usize {
        if self.transposed {
            self.active.dim
        } else {
            self.out_rows()
        }
    }
    fn ncols(&self) -> usize {
        if self.transposed {
            self.out_rows()
        } else {
            self.active.dim
        }
    }
    fn structure(&self) -> Structure {
        Structure::GENERAL
    }
    fn describe(&self) -> String {
        format!("{} ({}x{})", if self.transposed { "jacobian-t" } else { "jacobian" }, self.nrows(), self.ncols())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let k = rhs.ncols();
        let v = block_to_vec(rhs);
        let r = if self.transposed { self.vjp_block(&v, k) } else { self.jvp_block(&v, k) };
        vec_to_block(&r, out);
        Ok(())
    }
    fn has_transpose(&self) -> bool {
        true
    }
    fn apply_transpose(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let k = rhs.ncols();
        let v = block_to_vec(rhs);
        let r = if self.transposed { self.jvp_block(&v, k) } else { self.vjp_block(&v, k) };
        vec_to_block(&r, out);
        Ok(())
    }
}
