//! Mini-batch curvature bias and its removal (Tatzel, Mucsányi, Hackel & Hennig, "Debiasing
//! Mini-Batch Quadratics for Applications in Deep Learning", ICLR 2025).
//!
//! A quadratic model built on one mini-batch `B`,
//!
//! `q_B(d) = L_B + g_Bᵀd + ½ dᵀ(C_B + δI)d`,
//!
//! (`L_B`, `g_B`, `C_B` the loss, gradient and curvature — GGN, Fisher or Hessian — of the batch,
//! `δ` a damping) is an unbiased estimate of the full-data quadratic `q` entry by entry, but its
//! shape is biased: eigenvalues and eigenvectors are nonlinear functions of `C_B`. Along the
//! batch's own top eigenvectors `u_B` the curvature is overestimated
//! (`E[u_Bᵀ C_B u_B] ≥ E[u_Bᵀ C u_B]`, since `λ_max` is convex), along its bottom ones
//! underestimated, and with `|B|·C < D` most directions are flat. Directions chosen on `B₁` and
//! measured (curvature and slope) on an independent batch `B₂` of the same size give unbiased
//! estimates along them: `E[u_{B₁}ᵀ C_{B₂} u_{B₁} | B₁] = u_{B₁}ᵀ C u_{B₁}`.
//!
//! This module holds
//!
//! * [`draw_pair`]: disjoint batches `B₁`, `B₂` drawn without replacement with a seed;
//! * [`Quadratic`]: `q_B` of a batch (or of all data), evaluated at a block of points in one
//!   pass, with batch quantities rescaled to estimate the full-data loss (`s_B = c_N N /
//!   (c_B |B|)`, which is 1 for mean reductions);
//! * [`eigen_bias`]: the eigen-bias diagnostic (top-k / bottom-k eigenpairs of `C_B`, their
//!   Rayleigh quotients on the same batch, independent batches and all data, with standard
//!   errors);
//! * [`cg`]: conjugate gradients on `q_B`, and the debiased variants — directions from `B₁`,
//!   step lengths by exact line search on `B₂` (variant A) or the subspace solve on `B₂`
//!   (variant B) — with the quadratics of other data evaluated along the iterates.

pub mod cg;
pub mod eigen_bias;
mod quadratic;

pub use cg::{cg_run, cg_trace, debiased_iterates, debiased_solve, CgRun, CgTrace, Step, Variant};
pub use eigen_bias::{eigen_bias, EigenBias, EigenBiasOptions, IndexStats, MeanSe};
pub use quadratic::Quadratic;

use curvops_tensor::rng::{keyed_u64, Rng};

/// Errors of the debiasing module (the message names the option at fault).
#[derive(Debug, thiserror::Error)]
pub enum DebiasError {
    /// An option out of range (batch size, number of batches, `k`).
    #[error("{0}")]
    Invalid(String),
    /// A linear-algebra failure (an eigensolver that did not converge, …).
    #[error(transparent)]
    Linalg(#[from] curvops_linalg::LinalgError),
}

/// Two disjoint batches `B₁`, `B₂` of `b` samples each, drawn without replacement from `n`
/// samples (round `round` of the stream `seed`: a fresh permutation per round, so rounds are
/// independent and the draw does not depend on how many rounds are asked for). With `b = n`
/// (the whole data set) both are all samples: the biased and debiased models then coincide.
pub fn draw_pair(n: usize, b: usize, seed: u64, round: u64) -> Result<(Vec<usize>, Vec<usize>), DebiasError> {
    if b == 0 {
        return Err(DebiasError::Invalid("--batch-size must be positive".into()));
    }
    if b == n {
        let all: Vec<usize> = (0..n).collect();
        return Ok((all.clone(), all));
    }
    if 2 * b > n {
        return Err(DebiasError::Invalid(format!(
            "--batch-size {b}: two disjoint batches need 2·{b} ≤ N = {n} samples (or --batch-size {n} for all data)"
        )));
    }
    let mut rng = Rng::new(keyed_u64(seed, 0x6465_6269_6173, round, 0));
    let perm = rng.permutation(n);
    let mut b1 = perm[..b].to_vec();
    let mut b2 = perm[b..2 * b].to_vec();
    b1.sort_unstable();
    b2.sort_unstable();
    Ok((b1, b2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_disjoint_and_deterministic() {
        let (a, b) = draw_pair(100, 30, 7, 3).unwrap();
        assert_eq!(a.len(), 30);
        assert!(a.iter().all(|i| !b.contains(i)));
        assert_eq!(draw_pair(100, 30, 7, 3).unwrap().0, a);
        assert_ne!(draw_pair(100, 30, 7, 4).unwrap().0, a);
        assert_eq!(draw_pair(10, 10, 0, 0).unwrap().0, (0..10).collect::<Vec<_>>());
        assert!(draw_pair(10, 6, 0, 0).unwrap_err().to_string().contains("--batch-size 6"));
    }
}
