//! The eigen-bias diagnostic: how the curvature along a batch's own eigenvectors differs on
//! the same batch, on an independent batch and on all data.
//!
//! For rounds `r = 1 … R`, draw disjoint batches `B_r`, `B'_r` ([`super::draw_pair`]), compute
//! the top-`k` and bottom-`k` eigenpairs `(λ_i, u_i)` of `s·C_{B_r}` and evaluate along each
//! `u_i`
//!
//! * the same batch: `λ_i = u_iᵀ s C_{B_r} u_i` (self-evaluated),
//! * the independent batch: `u_iᵀ s' C_{B'_r} u_i`,
//! * all data: `u_iᵀ C u_i`.
//!
//! Per index `i` the means over rounds and their standard errors `sd/√R` are reported, also for
//! the per-round differences to the full-data value (the bias and its unbiased counterpart).
//! For PSD curvatures (GGN, Fisher) the eigenpairs come from the batch's factor
//! `s·C_B = VᵀV` (`V` the `|B|·R × D` rows of the per-sample factor): the Gram matrix `VVᵀ`
//! yields all nonzero eigenpairs exactly, so "bottom" means the smallest nonzero ones
//! (`λ > 10⁻¹⁰·λ_max` in f64, `10⁻⁵` in f32). For the Hessian, Lanczos gives the algebraically
//! largest and smallest.

use super::quadratic::Quadratic;
use super::{draw_pair, DebiasError};
use crate::curvature::Curvature;
use crate::walk::DataWalk;
use crate::Problem;
use curvops_linalg::eigen::{eigsh, EigshOptions, Which};
use curvops_linalg::Eigh;
use curvops_nn::ActiveSet;
use curvops_tensor::gemm::{matmul, view};
use curvops_tensor::{threads, Float, Trans};
use faer::{Accum, Mat};

/// Options of [`eigen_bias`].
#[derive(Clone, Debug)]
pub struct EigenBiasOptions {
    /// The curvature.
    pub curvature: Curvature,
    /// Batch size `|B|`.
    pub batch_size: usize,
    /// Eigenpairs per end.
    pub k: usize,
    /// Rounds `R`.
    pub batches: usize,
    /// Seed of the batch draws.
    pub seed: u64,
    /// Accumulation chunk of the full-data passes (0: one batch).
    pub chunk: usize,
}

/// A mean over rounds and its standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MeanSe {
    /// Mean.
    pub mean: f64,
    /// Standard error `sd/√R` (NaN for one round).
    pub se: f64,
}

impl MeanSe {
    /// Mean and standard error of `x`.
    pub fn of(x: &[f64]) -> Self {
        let r = x.len() as f64;
        let mean = x.iter().sum::<f64>() / r;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (r - 1.0);
        Self { mean, se: (var / r).sqrt() }
    }

    /// `mean / se` (0 when both vanish).
    pub fn z(&self) -> f64 {
        if self.mean == 0.0 {
            0.0
        } else {
            self.mean / self.se
        }
    }
}

/// Statistics of the `i`-th eigenpair from one end of the spectrum over the rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexStats {
    /// Position from its end (0: the largest, resp. the smallest).
    pub index: usize,
    /// Rounds that had this eigenpair.
    pub rounds: usize,
    /// `u_iᵀ s C_B u_i` (the batch's eigenvalue).
    pub same: MeanSe,
    /// `u_iᵀ s' C_{B'} u_i` on the independent batch.
    pub independent: MeanSe,
    /// `u_iᵀ C u_i` on all data.
    pub full: MeanSe,
    /// Per-round `same − full` (the bias).
    pub same_minus_full: MeanSe,
    /// Per-round `independent − full` (zero in expectation).
    pub independent_minus_full: MeanSe,
}

/// The diagnostic's result: per index, from the top and from the bottom.
#[derive(Clone, Debug)]
pub struct EigenBias {
    /// Top eigenpairs (`index` 0 = the largest).
    pub top: Vec<IndexStats>,
    /// Bottom (nonzero for PSD curvatures) eigenpairs (`index` 0 = the smallest).
    pub bottom: Vec<IndexStats>,
    /// Curvature products spent (columns): Lanczos on the batches (the Hessian) and the
    /// Rayleigh quotients on the independent batches and all data (the PSD eigenpairs come from
    /// the factor and cost none).
    pub products: usize,
    /// Remarks (fewer nonzero eigenpairs than asked for).
    pub warnings: Vec<String>,
}

/// Eigenpairs of `s·C_B`: `(top values, top vectors, bottom values, bottom vectors, curvature
/// products)`, the top descending from the largest, the bottom ascending from the smallest.
type Ends<T> = (Vec<f64>, Mat<T>, Vec<f64>, Mat<T>, usize);

/// The largest factor `V` (entries) formed for the PSD eigenpairs before Lanczos is used.
const FACTOR_MAX: usize = 1 << 27;

fn batch_ends<T: Float>(
    p: &Problem<T>,
    q: &Quadratic<'_, T>,
    kind: Curvature,
    active: &ActiveSet,
    k: usize,
    seed: u64,
) -> Result<Ends<T>, DebiasError> {
    let d = active.dim;
    let walk = q.operator().walk();
    let rows_per = match kind {
        Curvature::Hessian => 0,
        Curvature::Ef => 1,
        Curvature::FisherMc { samples, .. } => samples,
        Curvature::Ggn => p.net.out_size(),
    };
    if kind != Curvature::Hessian && walk.n() * rows_per * d <= FACTOR_MAX {
        // s·C_B = s·c Σ_n V_nᵀ V_n: rows of all samples, scaled by √(s c)
        let net = &p.net;
        let mut v: Vec<T> = Vec::new();
        let mut m = 0;
        for batch in walk.batches() {
            let tape = net.forward(&p.theta, batch.x, batch.n);
            let (cot, r) = crate::laplace::output_factor(net, kind, &tape, &batch)
                .map_err(|e| DebiasError::Invalid(e.to_string()))?;
            let mut rows = vec![T::zero(); batch.n * r * d];
            net.vjp_per_sample(&p.theta, &tape, cot, r, active, &mut rows);
            v.extend_from_slice(&rows);
            m += batch.n * r;
        }
        curvops_tensor::ops::scale(T::of((q.scale * walk.factor(net)).sqrt()), &mut v);
        let vm = view(&v, m, d, d, Trans::N);
        let mut gram = Mat::<T>::zeros(m, m);
        matmul(gram.as_mut(), Accum::Replace, vm, vm.transpose(), T::one(), threads::par());
        let e = Eigh::from_dense(gram.as_ref())?;
        let lmax = e.values.first().map_or(0.0, |v| v.as_f64());
        let rtol = if T::BYTES == 4 { 1e-5 } else { 1e-10 };
        let nz: Vec<usize> = (0..e.values.len()).filter(|&i| e.values[i].as_f64() > rtol * lmax).collect();
        // eigenvectors u = Vᵀ w / √λ
        let vecs = |idx: &[usize]| -> Mat<T> {
            let w = Mat::<T>::from_fn(m, idx.len(), |i, j| {
                e.vectors[(i, idx[j])] * T::of(1.0 / e.values[idx[j]].as_f64().sqrt())
            });
            let mut u = Mat::<T>::zeros(d, idx.len());
            matmul(u.as_mut(), Accum::Replace, vm.transpose(), w.as_ref(), T::one(), threads::par());
            u
        };
        let kk = k.min(nz.len());
        let top: Vec<usize> = nz[..kk].to_vec();
        let bottom: Vec<usize> = nz.iter().rev().take(kk).copied().collect();
        let val = |idx: &[usize]| idx.iter().map(|&i| e.values[i].as_f64()).collect::<Vec<f64>>();
        return Ok((val(&top), vecs(&top), val(&bottom), vecs(&bottom), 0));
    }
    // Lanczos on s·C_B (the Hessian, or a factor too large to form)
    let op = curvops_linalg::algebra::ScaledOp::new(q.operator(), T::of(q.scale));
    let kk = k.min(d);
    let tol = if T::BYTES == 4 { 1e-4 } else { 1e-9 };
    let o = EigshOptions { tol, seed, ..Default::default() };
    let t = eigsh(&op, kk, Which::Largest, &o)?;
    let b = eigsh(&op, kk, Which::Smallest, &o)?;
    let f = |v: &[T]| v.iter().map(|x| x.as_f64()).collect::<Vec<f64>>();
    // Lanczos returns descending values: reverse the bottom end to start at the smallest
    let bk = b.values.len();
    let bvals: Vec<f64> = f(&b.values).into_iter().rev().collect();
    let bvecs = Mat::<T>::from_fn(d, bk, |i, j| b.vectors[(i, bk - 1 - j)]);
    Ok((f(&t.values), t.vectors, bvals, bvecs, t.matvecs + b.matvecs))
}

/// Runs the eigen-bias diagnostic (see the module docs) over the `active` parameters.
pub fn eigen_bias<T: Float>(
    p: &Problem<T>,
    active: &ActiveSet,
    opts: &EigenBiasOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EigenBias, DebiasError> {
    if opts.k == 0 {
        return Err(DebiasError::Invalid("--k must be positive".into()));
    }
    if opts.batches < 2 {
        return Err(DebiasError::Invalid("--batches must be at least 2 (standard errors need two rounds)".into()));
    }
    let full = Quadratic::new(p, opts.curvature, active.clone(), DataWalk::new(&p.data, opts.chunk), 0.0)?;
    let mut products = 0;
    // per end, per index: rows (same, independent, full)
    let mut acc: [Vec<Vec<[f64; 3]>>; 2] = [vec![Vec::new(); opts.k], vec![Vec::new(); opts.k]];
    let mut warnings = Vec::new();
    for r in 0..opts.batches {
        let (b1, b2) = draw_pair(p.data.n, opts.batch_size, opts.seed, r as u64)?;
        let sub = |idx: &[usize]| DataWalk::subset(&p.data, idx, 0).map_err(|e| DebiasError::Invalid(e.to_string()));
        let q1 = Quadratic::new(p, opts.curvature, active.clone(), sub(&b1)?, 0.0)?;
        let q2 = Quadratic::new(p, opts.curvature, active.clone(), sub(&b2)?, 0.0)?;
        let (tv, tu, bv, bu, mv) = batch_ends(p, &q1, opts.curvature, active, opts.k, opts.seed ^ r as u64)?;
        if tv.len() < opts.k && warnings.is_empty() {
            warnings.push(format!(
                "round {r}: the batch curvature has {} nonzero eigenvalues, fewer than --k {}",
                tv.len(),
                opts.k
            ));
        }
        for (end, (vals, u)) in [(&tv, &tu), (&bv, &bu)].into_iter().enumerate() {
            if vals.is_empty() {
                continue;
            }
            let ind = q2.rayleigh(u.as_ref())?;
            let fu = full.rayleigh(u.as_ref())?;
            for i in 0..vals.len() {
                acc[end][i].push([vals[i], ind[i], fu[i]]);
            }
        }
        products += mv + q2.products();
        progress(r + 1, opts.batches);
    }
    products += full.products();
    let stats = |rows: &Vec<Vec<[f64; 3]>>| -> Vec<IndexStats> {
        rows.iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(index, r)| {
                let col = |f: &dyn Fn(&[f64; 3]) -> f64| r.iter().map(f).collect::<Vec<f64>>();
                IndexStats {
                    index,
                    rounds: r.len(),
                    same: MeanSe::of(&col(&|x| x[0])),
                    independent: MeanSe::of(&col(&|x| x[1])),
                    full: MeanSe::of(&col(&|x| x[2])),
                    same_minus_full: MeanSe::of(&col(&|x| x[0] - x[2])),
                    independent_minus_full: MeanSe::of(&col(&|x| x[1] - x[2])),
                }
            })
            .collect()
    };
    Ok(EigenBias { top: stats(&acc[0]), bottom: stats(&acc[1]), products, warnings })
}
