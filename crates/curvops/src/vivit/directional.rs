//! Per-sample directional derivatives along the eigenvectors.

use super::{Eigenpairs, Vivit};
use crate::walk::DataWalk;
use curvops_tensor::{ops, Float};

/// First- and second-order directional derivatives along `K` directions `e_k`:
/// `γ_nk = e_kᵀ ∇ℓ_n` for the gradient samples and `λ_nk = ‖S̃_nᵀ J_n e_k‖²`
/// (`= e_kᵀ J_nᵀ ∇²_f ℓ_n J_n e_k` for the exact factor; the MC factor's estimate otherwise)
/// for the curvature samples. `c Σ_n λ_nk = λ_k` over all samples (exact factor, no subsample).
#[derive(Clone, Debug)]
pub struct Directional<T> {
    /// Indices (into the data set) of the gradient samples.
    pub grad_samples: Vec<usize>,
    /// Indices of the curvature samples.
    pub curv_samples: Vec<usize>,
    /// `γ`, `[N_g, K]` row-major.
    pub gamma: Vec<T>,
    /// `λ`, `[N_c, K]` row-major.
    pub lambda: Vec<T>,
    /// `K`.
    pub k: usize,
}

impl<T: Float> Vivit<'_, T> {
    /// `γ_nk` for `n ∈ grad_samples` and `λ_nk` for `n ∈ curv_samples` (each sorted, indices
    /// into the data set) along the eigenvectors, from one forward-mode pass (`J_n e_k` for all
    /// `K` directions at once) over the union of the two sets.
    pub fn directional(&self, eig: &Eigenpairs<T>, grad_samples: &[usize], curv_samples: &[usize]) -> Directional<T> {
        self.directional_along(&eig.vectors, eig.k(), grad_samples, curv_samples)
    }

    /// As [`Self::directional`] for any `K` directions (`[K, D_S]` row-major).
    pub fn directional_along(
        &self,
        dirs: &[T],
        k: usize,
        grad_samples: &[usize],
        curv_samples: &[usize],
    ) -> Directional<T> {
        let p = self.problem();
        let net = &p.net;
        let cdim = net.out_size();
        let r = self.rank_per_sample();
        let mut union: Vec<usize> = grad_samples.iter().chain(curv_samples).copied().collect();
        union.sort_unstable();
        union.dedup();
        let bs = self.options().batch_size;
        let walk = if union.len() == p.data.n {
            DataWalk::new(&p.data, bs)
        } else {
            DataWalk::subset(&p.data, &union, bs).expect("sample indices below N")
        };
        let mut gamma = vec![T::zero(); grad_samples.len() * k];
        let mut lambda = vec![T::zero(); curv_samples.len() * k];
        let pos = |set: &[usize], g: usize| set.binary_search(&g).ok();
        for batch in walk.batches() {
            let n = batch.n;
            let global = &union[batch.start..batch.start + n];
            let tape = net.forward(&p.theta, batch.x, n);
            let mut tan = net.jvp(&p.theta, &tape, dirs, k, self.active(), false);
            let jv = tan[net.layers.len()].take().expect("output tangent");
            let f = tape.output();
            let needs_g = global.iter().any(|&g| pos(grad_samples, g).is_some());
            let needs_c = global.iter().any(|&g| pos(curv_samples, g).is_some());
            if needs_g {
                let grad = net.loss.grad(f, batch.y, n, cdim);
                for (s, &g) in global.iter().enumerate() {
                    if let Some(i) = pos(grad_samples, g) {
                        for j in 0..k {
                            let v = &jv[(s * k + j) * cdim..(s * k + j + 1) * cdim];
                            gamma[i * k + j] = ops::dot(v, &grad[s * cdim..(s + 1) * cdim]);
                        }
                    }
                }
            }
            if needs_c {
                let fac = self.output_factor(f, &batch, global);
                for (s, &g) in global.iter().enumerate() {
                    if let Some(i) = pos(curv_samples, g) {
                        for j in 0..k {
                            let v = &jv[(s * k + j) * cdim..(s * k + j + 1) * cdim];
                            let mut acc = T::zero();
                            for rr in 0..r {
                                let a = ops::dot(&fac[(s * r + rr) * cdim..(s * r + rr + 1) * cdim], v);
                                acc += a * a;
                            }
                            lambda[i * k + j] = acc;
                        }
                    }
                }
            }
        }
        Directional { grad_samples: grad_samples.to_vec(), curv_samples: curv_samples.to_vec(), gamma, lambda, k }
    }
}
