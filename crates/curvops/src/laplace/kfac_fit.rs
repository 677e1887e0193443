//! The KFAC Laplace curvature on all training samples, on a random subset, or debiased.
//!
//! # Scale
//! A KFAC fit on the samples `S` of a [`DataWalk`] returns the gradient factor
//! `B_S = c_S Σ_{n∈S} Σ_r g_nr g_nrᵀ` (with the reduction factor `c_S` of
//! `L_S = c_S Σ_{n∈S} ℓ_n`) and the input factor `A_S`, a mean over `S`. The Laplace
//! approximation needs the curvature of the summed negative log-likelihood over all `N`
//! training samples, which `S` estimates as `s·N/|S| · Σ_{n∈S} …`, so every block fitted on `S`
//! is scaled by `s·N / (|S|·c_S)` (`s/c` for `S` = all data). The corrected eigenvalues of the
//! debiased fit carry the reduction factor of the value samples and get the same scale with
//! `|B₂|`, so plain and debiased blocks estimate the same quantity.
//!
//! # Debiasing (Tatzel et al., "Debiasing Mini-Batch Quadratics", ICLR 2025)
//! The eigenvectors of a curvature estimated on one mini-batch are aligned with that batch's
//! noise: along its top eigenvectors the batch's curvature overestimates the full-data
//! curvature, along the bottom ones it underestimates it. [`KfacSampling::Debiased`] takes
//! KFAC's Kronecker eigenbases `Q_B ⊗ Q_A` from a batch `B₁` and measures the curvature along
//! each Kronecker eigenvector on an independent batch `B₂` (EKFAC's corrected eigenvalues,
//! [`crate::kfac::fit_ekfac_split`]): `E[i, j] = s·N/(|B₂| c_{B₂}) · c_{B₂} Σ_{n∈B₂} Σ_r
//! (q_{B,i}ᵀ G_nr q_{A,j})²`, an unbiased estimate of the full-data Rayleigh quotient along
//! `q_{B,i} ⊗ q_{A,j}` given the basis. A bias gets `E_b[i] = … Σ_{n∈B₂} Σ_r (q_{B,i}ᵀ Σ_p
//! g_nrp)²` in the eigenbasis of its `B`. Blocks outside Kronecker-factored maps (dense blocks)
//! and tied tensors keep their KFAC block from `B₁` (as EKFAC does).

use super::fit::{KronBlock, ParamGroup};
use super::{LaplaceError, LaplaceOptions};
use crate::curvature::Curvature;
use crate::kfac::{fit_ekfac_split, fit_kfac_on, Ekfac, FisherType, KfacApprox, KfacFactors, KfacOptions};
use crate::walk::DataWalk;
use crate::Problem;
use curvops_nn::ActiveSet;
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use faer::Mat;

/// Which training samples a KFAC Laplace curvature is estimated on. Subsets are drawn without
/// replacement: the first indices of the permutation [`sample_split`]`(N, seed)` (all `N`
/// samples in their order when `M = N`), so that
/// `Subset { samples: 2B, seed }` is `B₁ ∪ B₂` of `Debiased { batch: B, seed }` and
/// `Subset { samples: B, seed }` is its `B₁`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KfacSampling {
    /// All `N` training samples.
    #[default]
    All,
    /// KFAC on `samples` random training samples (scaled to estimate the full-data curvature).
    Subset {
        /// Number of samples `M ≤ N`.
        samples: usize,
        /// Seed of the permutation.
        seed: u64,
    },
    /// EKFAC on `samples` random training samples (`N`: all of them): eigenbases and
    /// corrected eigenvalues from the same samples — the biased counterpart of `Debiased`.
    Ekfac {
        /// Number of samples `M ≤ N`.
        samples: usize,
        /// Seed of the permutation.
        seed: u64,
    },
    /// Debiased KFAC: eigenbases from the first `batch` samples of the permutation (`B₁`),
    /// eigenvalues from the next `batch` (`B₂`, disjoint from `B₁`); `2·batch ≤ N`.
    Debiased {
        /// `B = |B₁| = |B₂|`.
        batch: usize,
        /// Seed of the permutation.
        seed: u64,
    },
}

impl KfacSampling {
    /// `(basis samples, eigenvalue samples)` for `n` training samples: `(N, N)`, `(M, M)` or
    /// `(B, B)`.
    pub fn counts(&self, n: usize) -> (usize, usize) {
        match *self {
            Self::All => (n, n),
            Self::Subset { samples, .. } | Self::Ekfac { samples, .. } => (samples, samples),
            Self::Debiased { batch, .. } => (batch, batch),
        }
    }

    /// The indices of the basis samples and, for the debiased fit, of the eigenvalue samples,
    /// out of `n` (`None` for all samples). Errors when the sets do not fit into `n`.
    pub fn index_sets(&self, n: usize) -> Result<Option<SampleSets>, LaplaceError> {
        match *self {
            Self::All => Ok(None),
            Self::Subset { samples, seed } | Self::Ekfac { samples, seed } => {
                if samples == 0 || samples > n {
                    return Err(LaplaceError(format!(
                        "the KFAC subset size {samples} must be between 1 and N = {n} training samples"
                    )));
                }
                let idx = if samples == n { (0..n).collect() } else { sample_split(n, seed)[..samples].to_vec() };
                let values = matches!(self, Self::Ekfac { .. }).then(|| idx.clone());
                Ok(Some((idx, values)))
            }
            Self::Debiased { batch, seed } => {
                if batch == 0 || 2 * batch > n {
                    return Err(LaplaceError(format!(
                        "debiased KFAC needs two disjoint batches: 2·{batch} samples must be between 2 and N = {n}"
                    )));
                }
                let perm = sample_split(n, seed);
                Ok(Some((perm[..batch].to_vec(), Some(perm[batch..2 * batch].to_vec()))))
            }
        }
    }

    /// A short description (`all`, `subset:M:seed`, `debiased:B:seed`), as saved in files.
    pub fn describe(&self) -> String {
        match *self {
            Self::All => "all".into(),
            Self::Subset { samples, seed } => format!("subset:{samples}:{seed}"),
            Self::Ekfac { samples, seed } => format!("ekfac:{samples}:{seed}"),
            Self::Debiased { batch, seed } => format!("debiased:{batch}:{seed}"),
        }
    }

    /// Parses [`KfacSampling::describe`]'s form.
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["all"] => Some(Self::All),
            ["subset", m, seed] => Some(Self::Subset { samples: m.parse().ok()?, seed: seed.parse().ok()? }),
            ["ekfac", m, seed] => Some(Self::Ekfac { samples: m.parse().ok()?, seed: seed.parse().ok()? }),
            ["debiased", b, seed] => Some(Self::Debiased { batch: b.parse().ok()?, seed: seed.parse().ok()? }),
            _ => None,
        }
    }
}

/// The training-sample indices of a KFAC fit: the basis samples and, when the eigenvalues are
/// re-estimated, the eigenvalue samples.
pub type SampleSets = (Vec<usize>, Option<Vec<usize>>);

/// The permutation of `0..n` that draws the KFAC samples for `seed` (Fisher–Yates with
/// [`Rng`]`::new(seed)`): deterministic for a seed.
pub fn sample_split(n: usize, seed: u64) -> Vec<usize> {
    Rng::new(seed).permutation(n)
}

/// KFAC blocks of the active tensors (curvlinops' conventions: type-2 for the GGN, empirical
/// for the EF, MC for the MC Fisher; `expand`; weight and bias separately), one per prior group
/// (tensor), in the groups' order, on the samples given by `opts.kfac_sampling`:
///
/// * the weight of a Kronecker-factored map: `B ⊗ A` (`A ⊗ B` for a weight stored `[in, out]`);
///   its bias: `B`; debiased: the eigenbasis of `B₁`'s factors with `B₂`'s corrected
///   eigenvalues ([`KronBlock::Eigen`]);
/// * a tensor outside the maps (layer norm, batch norm, `parameter` nodes, …): the fit's dense
///   block of that tensor;
/// * a tied tensor: the sum of its uses' Kronecker blocks, as a dense block.
///
/// Each block is scaled by `s·N/(|S|·c_S)` (see the module docs).
pub(crate) fn kfac_blocks<T: Float>(
    p: &Problem<T>,
    active: &ActiveSet,
    opts: &LaplaceOptions,
    s: f64,
    groups: &[ParamGroup],
) -> Result<Vec<KronBlock<T>>, LaplaceError> {
    let fisher = match opts.curvature {
        Curvature::Ggn => FisherType::Type2,
        Curvature::Ef => FisherType::Empirical,
        Curvature::FisherMc { samples, seed } => FisherType::Mc { samples, seed },
        Curvature::Hessian => {
            return Err(LaplaceError("the Hessian is only available with the full structure".into()));
        }
    };
    let kopts = KfacOptions { fisher, approx: KfacApprox::Expand, joint_bias: false, batch_size: opts.batch_size };
    let n = p.data.n as f64;
    let scale_of = |w: &DataWalk<T>| s * n / (w.n() as f64 * w.factor(&p.net));
    let subset =
        |idx: &[usize]| DataWalk::subset(&p.data, idx, opts.batch_size).map_err(|e| LaplaceError(e.to_string()));
    let kerr = |e: crate::kfac::KfacError| LaplaceError(format!("KFAC: {e}"));
    let (basis, values) = match opts.kfac_sampling.index_sets(p.data.n)? {
        None => (DataWalk::new(&p.data, opts.batch_size), None),
        Some((b, v)) => (subset(&b)?, v.as_deref().map(subset).transpose()?),
    };
    let scale = scale_of(&basis);
    match values {
        None => {
            let factors = fit_kfac_on(p, &basis, active, &kopts).map_err(kerr)?;
            assemble(&factors, None, scale, groups)
        }
        Some(vw) => {
            let ek = fit_ekfac_split(p, &basis, &vw, active, &kopts).map_err(kerr)?;
            assemble(ek.factors(), Some((&ek, scale_of(&vw))), scale, groups)
        }
    }
}

/// The Laplace blocks of KFAC factors (scaled by `scale`), with the weight and bias blocks of
/// Kronecker-factored maps replaced by EKFAC's eigenbases and eigenvalues (scaled by its own
/// scale) when given.
fn assemble<T: Float>(
    factors: &KfacFactors<T>,
    ekfac: Option<(&Ekfac<T>, f64)>,
    scale: f64,
    groups: &[ParamGroup],
) -> Result<Vec<KronBlock<T>>, LaplaceError> {
    let scale = T::of(scale);
    let scaled = |m: &Mat<T>| Mat::from_fn(m.nrows(), m.ncols(), |i, j| scale * m[(i, j)]);
    let mut blocks: Vec<Option<KronBlock<T>>> = (0..groups.len()).map(|_| None).collect();
    let mut put = |offset: usize, name: &str, b: KronBlock<T>| -> Result<(), LaplaceError> {
        let g = groups.iter().position(|g| g.offset == offset).ok_or_else(|| {
            LaplaceError(format!("KFAC: block of '{name}' at offset {offset} has no parameter group"))
        })?;
        blocks[g] = Some(b);
        Ok(())
    };
    for (li, lf) in factors.layers.iter().enumerate() {
        if lf.joint {
            return Err(LaplaceError("KFAC: joint weight and bias blocks are not a Laplace structure".into()));
        }
        if lf.kind == "dense" {
            let t = lf.bias.as_ref().ok_or_else(|| LaplaceError("KFAC: a dense block without tensor".into()))?;
            put(t.offset, &t.name, KronBlock::Dense(scaled(&lf.b)))?;
            continue;
        }
        let corrected = ekfac.map(|(ek, sv)| (ek.bases()[li].clone(), ek.layer_eigenvalues(li), T::of(sv)));
        if let Some(w) = &lf.weight {
            let blk = match &corrected {
                Some(((qa, qb), (Some(e), _), sv)) => {
                    let qa =
                        qa.as_ref().ok_or_else(|| LaplaceError(format!("KFAC: '{}' has no input basis", w.name)))?;
                    let (o, i) = (qb.nrows(), qa.nrows());
                    if lf.transposed {
                        // stored [in, out]: rows' basis Q_A, columns' basis Q_B, values Eᵀ
                        let values = (0..i * o).map(|x| *sv * e[(x % o) * i + x / o]).collect();
                        KronBlock::Eigen { qb: qa.as_ref().clone(), qa: qb.as_ref().clone(), values }
                    } else {
                        let values = e.iter().map(|&v| *sv * v).collect();
                        KronBlock::Eigen { qb: qb.as_ref().clone(), qa: qa.as_ref().clone(), values }
                    }
                }
                Some(_) => return Err(LaplaceError(format!("KFAC: no corrected eigenvalues for '{}'", w.name))),
                None => {
                    let a =
                        lf.a.as_deref()
                            .cloned()
                            .ok_or_else(|| LaplaceError(format!("KFAC: '{}' has no input factor", w.name)))?;
                    let b = scaled(&lf.b);
                    if lf.transposed {
                        KronBlock::Kron { b: a, a: b }
                    } else {
                        KronBlock::Kron { b, a }
                    }
                }
            };
            put(w.offset, &w.name, blk)?;
        }
        if let Some(bias) = &lf.bias {
            let blk = match &corrected {
                Some(((_, qb), (_, Some(e)), sv)) => KronBlock::Eigen {
                    qb: qb.as_ref().clone(),
                    qa: Mat::identity(1, 1),
                    values: e.iter().map(|&v| *sv * v).collect(),
                },
                Some(_) => return Err(LaplaceError(format!("KFAC: no corrected eigenvalues for '{}'", bias.name))),
                None => KronBlock::Dense(scaled(&lf.b)),
            };
            put(bias.offset, &bias.name, blk)?;
        }
    }
    for t in &factors.tied {
        let (rows, cols) = (t.rows, t.cols);
        let d = rows * cols;
        let mut m = Mat::<T>::zeros(d, d);
        for u in &t.uses {
            let (left, right) = u.left_right();
            for i in 0..d {
                for j in 0..d {
                    let r = right.map_or(T::one(), |r| r[(i % cols, j % cols)]);
                    m[(i, j)] += scale * left[(i / cols, j / cols)] * r;
                }
            }
        }
        put(t.param.offset, &t.param.name, KronBlock::Dense(m))?;
    }
    blocks
        .into_iter()
        .zip(groups)
        .map(|(b, g)| b.ok_or_else(|| LaplaceError(format!("KFAC: no block for '{}'", g.name))))
        .collect()
}
