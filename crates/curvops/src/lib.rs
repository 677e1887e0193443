//! Curvature of neural networks as matrix-free linear operators.
//!
//! For a [`Problem`] (network, parameters `θ`, data set) with loss `L(θ) = c Σ_n ℓ_n`
//! (SPEC.md §3), this crate provides, with respect to all parameters or a subset
//! ([`ActiveSet`], `--params`):
//!
//! * [`CurvatureOperator`]: the Hessian `∇²L`, the GGN `c Σ_n J_nᵀ ∇²_f ℓ_n J_n`, the empirical
//!   Fisher `c Σ_n ∇ℓ_n ∇ℓ_nᵀ` and the Monte-Carlo Fisher `c Σ_n J_nᵀ (1/M Σ_m g_nm g_nmᵀ) J_n`,
//!   each a [`LinearOperator`] applying to a block of `K` vectors in one pass over the data
//!   (one GEMM per layer per batch), summed over mini-batches so the result does not depend on
//!   the batch size.
//! * [`JacobianOperator`]: the Jacobian `J` (`[N·C, D]`) of all outputs and its transpose.
//! * [`gradient`]: loss and gradient over the data set; per-sample gradients `∇ℓ_n` and
//!   BackPACK's first-order statistics.
//! * [`dense`]: dense matrices, built from low-rank factors where that is cheaper.
//!
//! Forward passes and loss-Hessian factors can be kept across applications
//! ([`cache::ForwardCache`], within a memory budget), so algorithms that apply the same
//! operator many times (Lanczos, CG, Hutch++) pay for the forward pass once.

// Index loops over several arrays are the clearest form for numerical kernels.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

pub mod cache;
pub mod curvature;
pub mod debias;
pub mod dense;
pub mod diag;
pub mod gradient;
pub mod jacobian;
pub mod kfac;
pub mod laplace;
pub mod metrics;
pub mod optim;
pub mod registry;
pub mod vivit;
pub mod walk;

pub use curvature::{Curvature, CurvatureOperator};
pub use curvops_linalg::{LinearOperator, Structure};
pub use curvops_nn::io::Problem;
pub use curvops_nn::{ActiveSet, Network};
pub use jacobian::JacobianOperator;
pub use registry::{OperatorKind, OperatorSpec};
pub use walk::DataWalk;

use curvops_tensor::Float;
use faer::MatRef;

/// Copies a faer block (`[D, K]`, any strides) into a contiguous row-major `[K, D]` vector
/// (column-major `[D, K]`): the layout of parameter-space blocks in the engine.
pub fn block_to_vec<T: Float>(m: MatRef<'_, T>) -> Vec<T> {
    let (d, k) = (m.nrows(), m.ncols());
    let mut v = Vec::with_capacity(d * k);
    for j in 0..k {
        let col = m.col(j);
        match col.try_as_col_major() {
            Some(c) => v.extend_from_slice(c.as_slice()),
            None => v.extend((0..d).map(|i| col[i])),
        }
    }
    v
}

/// Writes a contiguous `[K, D]` vector into a faer block `[D, K]`.
pub fn vec_to_block<T: Float>(v: &[T], mut out: faer::MatMut<'_, T>) {
    let (d, k) = (out.nrows(), out.ncols());
    debug_assert_eq!(v.len(), d * k);
    for j in 0..k {
        let src = &v[j * d..(j + 1) * d];
        let mut col = out.as_mut().col_mut(j);
        match col.as_mut().try_as_col_major_mut() {
            Some(c) => c.as_slice_mut().copy_from_slice(src),
            None => {
                for i in 0..d {
                    col[i] = src[i];
                }
            }
        }
    }
}
