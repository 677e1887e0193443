//! Dense matrices of the operators (`curvops dense`), built the cheap way for each structure.
//!
//! * GGN, empirical and MC Fisher are Gram matrices `G = Σ_b V_bᵀ V_b` of their factors
//!   `V_b` (rows `√c S_{n,r}ᵀ J_n`, from one per-sample backward pass per batch with `R`
//!   cotangents per sample), so the dense matrix costs `N·R` backward rows plus one GEMM
//!   instead of `D` operator applications.
//! * The Hessian is applied to blocks of unit vectors.
//! * The Jacobian's rows are per-sample backward passes with the `C` unit cotangents.

use crate::curvature::{Curvature, CurvatureOperator};
use crate::walk::DataWalk;
use crate::Problem;
use curvops_linalg::{LinalgError, LinearOperator};
use curvops_nn::ActiveSet;
use curvops_tensor::{gemm, Float, Trans};

/// The per-sample factor rows `V_b` of a GGN-type operator on batch `b`: `[n·R, D_S]` and `R`.
pub fn factor_rows<T: Float>(op: &CurvatureOperator<T>, index: usize, batch: &curvops_nn::Batch<T>) -> (Vec<T>, usize) {
    let p = op.problem();
    let net = &p.net;
    let cdim = net.out_size();
    let st = op.batch_state(index, batch);
    let (cot, r) = match op.kind() {
        Curvature::Ggn => {
            let (mut s, r) = net.loss.hess_factor(st.tape.output(), batch.y, batch.n, cdim);
            curvops_tensor::ops::scale(op.reduction_factor().sqrt(), &mut s);
            (s, r)
        }
        Curvature::Ef | Curvature::FisherMc { .. } => (st.factor.clone(), st.rank),
        Curvature::Hessian => panic!("the Hessian has no factor"),
    };
    let d = op.active().dim;
    let mut rows = vec![T::zero(); batch.n * r * d];
    net.vjp_per_sample(&p.theta, &st.tape, cot, r, op.active(), &mut rows);
    (rows, r)
}

/// The dense `D_S × D_S` matrix (row-major), reporting progress as `(done, total)` steps.
pub fn dense_curvature<T: Float>(op: &CurvatureOperator<T>, progress: &dyn Fn(usize, usize)) -> Vec<T> {
    let d = op.active().dim;
    let mut m = vec![T::zero(); d * d];
    match op.kind() {
        Curvature::Hessian => {
            let block = 32;
            let steps = d.div_ceil(block);
            for (i, start) in (0..d).step_by(block).enumerate() {
                let k = block.min(d - start);
                let mut e = vec![T::zero(); k * d];
                for j in 0..k {
                    e[j * d + start + j] = T::one();
                }
                let cols = op.apply_block(&e, k);
                // columns start..start+k of the symmetric matrix = rows of the result
                m[start * d..(start + k) * d].copy_from_slice(&cols);
                progress(i + 1, steps);
            }
        }
        _ => {
            let batches = op.walk().batches();
            let steps = batches.len();
            for (bi, batch) in batches.iter().enumerate() {
                let (rows, r) = factor_rows(op, bi, batch);
                let nr = batch.n * r;
                gemm(d, d, nr, T::one(), &rows, d, Trans::T, &rows, d, Trans::N, T::one(), &mut m, d);
                progress(bi + 1, steps);
            }
        }
    }
    m
}

/// The dense Jacobian `[N·C, D_S]`, rows `(n, c)`.
pub fn dense_jacobian<T: Float>(p: &Problem<T>, active: &ActiveSet, batch_size: usize) -> Vec<T> {
    let net = &p.net;
    let (cdim, d) = (net.out_size(), active.dim);
    let mut out = vec![T::zero(); p.data.n * cdim * d];
    for batch in DataWalk::new(&p.data, batch_size).batches() {
        let tape = net.forward(&p.theta, batch.x, batch.n);
        let mut eye = vec![T::zero(); batch.n * cdim * cdim];
        for s in 0..batch.n {
            for j in 0..cdim {
                eye[(s * cdim + j) * cdim + j] = T::one();
            }
        }
        let start = batch.start * cdim * d;
        net.vjp_per_sample(&p.theta, &tape, eye, cdim, active, &mut out[start..start + batch.n * cdim * d]);
    }
    out
}

/// Dense matrix of any operator by unit-vector blocks (row-major `[nrows, ncols]`); errors when
/// an application of `op` fails.
pub fn dense_of<T: Float>(op: &dyn LinearOperator<T>) -> Result<Vec<T>, LinalgError> {
    let m = op.to_dense()?;
    let (r, c) = (m.nrows(), m.ncols());
    let mut out = vec![T::zero(); r * c];
    for i in 0..r {
        for j in 0..c {
            out[i * c + j] = m[(i, j)];
        }
    }
    Ok(out)
}
