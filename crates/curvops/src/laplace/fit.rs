//! Fitting: one pass over the training data computes the loss `Σ_n ℓ_n` and the curvature
//! `H` in the requested structure (see the module docs of [`crate::laplace`]).

use super::kfac_fit::kfac_blocks;
use super::kron::{kron_eigs, BlockEig};
use super::{HessianStructure, KfacSampling, LaplaceError, LaplaceOptions, Likelihood};
use crate::curvature::{Curvature, CurvatureOperator};
use crate::dense::dense_curvature;
use crate::diag::{curvature_diag_with_loss, DiagKind};
use crate::walk::DataWalk;
use crate::Problem;
use curvops_linalg::algebra::ScaledOp;
use curvops_linalg::eigen::{eigsh, EigshOptions, Which};
use curvops_nn::data::Batch;
use curvops_nn::{ActiveSet, Network, Tape};
use curvops_tensor::gemm::tri_matmul;
use curvops_tensor::gemm::view;
use curvops_tensor::{threads, Float, Trans};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::Accum;
use faer::Mat;
use std::sync::OnceLock;

/// A group of posterior coordinates sharing one prior precision in a "layerwise" prior: one
/// parameter tensor (its selected entries, for a subnetwork given by indices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamGroup {
    /// State-dict name of the tensor.
    pub name: String,
    /// Offset in the posterior vector.
    pub offset: usize,
    /// Number of coordinates.
    pub len: usize,
}

/// One block of a KFAC curvature, in the order of the parameter groups.
#[derive(Clone, Debug)]
pub enum KronBlock<T: Float> {
    /// A weight `[out, in]` flattened row-major: `H_W ≈ B ⊗ A` with `B` (`out × out`) the
    /// gradient factor and `A` (`in × in`) the input factor. For a weight stored `[in, out]`
    /// (a transposed linear layer) the factors swap places: `b` holds `A` (the rows' factor)
    /// and `a` holds `B`.
    Kron {
        /// The rows' factor: gradient factor `B = s Σ_n Σ_r g_nr g_nrᵀ`.
        b: Mat<T>,
        /// The columns' factor: input factor `A = 1/N Σ_n a_n a_nᵀ`.
        a: Mat<T>,
    },
    /// A dense block (a bias: `H_b = B`; a tensor outside KFAC's maps; a tied tensor).
    Dense(Mat<T>),
    /// A Kronecker eigenbasis with corrected eigenvalues (EKFAC-style; the debiased KFAC
    /// Laplace, [`super::KfacSampling::Debiased`]): `H ≈ (Q_B ⊗ Q_A) diag(vec E) (Q_B ⊗ Q_A)ᵀ`
    /// for a tensor flattened row-major as `[rows, cols]` (a bias: `cols = 1`, `Q_A = [1]`).
    Eigen {
        /// `Q_B` (`rows × rows`, orthonormal columns).
        qb: Mat<T>,
        /// `Q_A` (`cols × cols`, orthonormal columns).
        qa: Mat<T>,
        /// `E` (`[rows, cols]`, row-major): `E[i, j] = (q_B,i ⊗ q_A,j)ᵀ H (q_B,i ⊗ q_A,j)`
        /// as estimated on the value samples.
        values: Vec<T>,
    },
}

/// The curvature `H` (of the summed negative log-likelihood, before `h = 1/(σ²T)`).
#[derive(Clone, Debug)]
pub enum HessianApprox<T: Float> {
    /// Dense `D × D`.
    Full(Mat<T>),
    /// The diagonal `[D]`.
    Diag(Vec<T>),
    /// KFAC blocks, one per parameter group.
    Kron(Vec<KronBlock<T>>),
    /// `U diag(λ) Uᵀ` with orthonormal `U` (`D × k`), `λ ≥ 0` descending.
    LowRank {
        /// Eigenvectors.
        u: Mat<T>,
        /// Eigenvalues.
        lambda: Vec<T>,
    },
}

/// A fitted Laplace approximation before choosing the prior: the MAP, the data-fit term and the
/// curvature. [`super::Posterior`] adds a prior precision (and noise `σ`).
#[derive(Debug)]
pub struct LaplaceFit<T: Float> {
    /// The likelihood (from the model's loss).
    pub likelihood: Likelihood,
    /// The structure of `H`.
    pub structure: HessianStructure,
    /// The curvature.
    pub curvature: Curvature,
    /// The parameter tensors of the posterior.
    pub active: ActiveSet,
    /// For a subnetwork given by indices: the sorted indices into the active tensors'
    /// coordinates that form the posterior; `None` for whole tensors.
    pub selection: Option<Vec<usize>>,
    /// Prior groups (one per tensor), in state-dict order.
    pub groups: Vec<ParamGroup>,
    /// All parameters `θ*` (state-dict order), for predictions.
    pub theta: Vec<T>,
    /// The posterior mean `θ*` restricted to the posterior's coordinates.
    pub mean: Vec<T>,
    /// `Σ_n s·ℓ_n` on the training data (laplace-torch's `loss`): the summed cross-entropy for
    /// classification, `½ Σ_n ‖f_n − y_n‖²` for regression.
    pub loss: f64,
    /// Training samples `N`.
    pub n_data: usize,
    /// Outputs `C`.
    pub n_outputs: usize,
    /// The curvature.
    pub h: HessianApprox<T>,
    /// For the KFAC structure: the training samples its curvature was estimated on
    /// ([`KfacSampling::All`] for the other structures).
    pub sampling: KfacSampling,
    pub(crate) kron_eig: OnceLock<Vec<BlockEig<T>>>,
    pub(crate) full_eig: OnceLock<Result<FullEig<T>, String>>,
    pub(crate) full_eigvals: OnceLock<Result<Vec<f64>, String>>,
}

/// Eigenvalues and eigenvectors of a full posterior precision's curvature.
pub(crate) type FullEig<T> = (Vec<f64>, Mat<T>);

impl<T: Float> LaplaceFit<T> {
    /// Assembles a fit from its parts (used when loading a saved posterior).
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        likelihood: Likelihood,
        structure: HessianStructure,
        curvature: Curvature,
        active: ActiveSet,
        selection: Option<Vec<usize>>,
        groups: Vec<ParamGroup>,
        theta: Vec<T>,
        mean: Vec<T>,
        loss: f64,
        n_data: usize,
        n_outputs: usize,
        h: HessianApprox<T>,
    ) -> Self {
        Self {
            likelihood,
            structure,
            curvature,
            active,
            selection,
            groups,
            theta,
            mean,
            loss,
            n_data,
            n_outputs,
            h,
            sampling: KfacSampling::All,
            kron_eig: OnceLock::new(),
            full_eig: OnceLock::new(),
            full_eigvals: OnceLock::new(),
        }
    }

    /// Number of posterior parameters `D`.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Sizes of the prior groups.
    pub fn group_sizes(&self) -> Vec<usize> {
        self.groups.iter().map(|g| g.len).collect()
    }

    /// For each posterior coordinate, its index in the full parameter vector.
    pub fn coords(&self, net: &Network<T>) -> Vec<usize> {
        let mut full = Vec::with_capacity(self.active.dim);
        for (e, _) in self.active.names(&net.layout) {
            full.extend(e.offset..e.offset + e.len);
        }
        match &self.selection {
            None => full,
            Some(sel) => sel.iter().map(|&i| full[i]).collect(),
        }
    }

    /// The eigendecompositions of the KFAC blocks (computed once).
    pub(crate) fn kron_eigs(&self) -> Result<&[BlockEig<T>], LaplaceError> {
        match &self.h {
            HessianApprox::Kron(blocks) => Ok(self.kron_eig.get_or_init(|| kron_eigs(blocks))),
            _ => Err(LaplaceError("not a KFAC Laplace approximation".into())),
        }
    }

    /// The eigendecomposition `H = Q diag(λ) Qᵀ` of a full `H` (computed once; λ descending).
    pub(crate) fn full_eigh(&self) -> Result<&(Vec<f64>, Mat<T>), LaplaceError> {
        let HessianApprox::Full(h) = &self.h else {
            return Err(LaplaceError("not a full Laplace approximation".into()));
        };
        self.full_eig
            .get_or_init(|| {
                let e = curvops_linalg::Eigh::from_dense(h.as_ref())
                    .map_err(|e| format!("eigendecomposition of H: {e}"))?;
                Ok((e.values.iter().map(|v| v.as_f64()).collect(), e.vectors))
            })
            .as_ref()
            .map_err(|e| LaplaceError(e.clone()))
    }

    /// The eigenvalues of a full `H` (computed once, without eigenvectors).
    pub(crate) fn full_eigenvalues(&self) -> Result<&[f64], LaplaceError> {
        if let Some(Ok((v, _))) = self.full_eig.get() {
            return Ok(v);
        }
        let HessianApprox::Full(h) = &self.h else {
            return Err(LaplaceError("not a full Laplace approximation".into()));
        };
        self.full_eigvals
            .get_or_init(|| {
                let mut v: Vec<f64> = h
                    .self_adjoint_eigenvalues(faer::Side::Lower)
                    .map_err(|e| format!("eigenvalues of H: {e:?}"))?
                    .iter()
                    .map(|x| x.as_f64())
                    .collect();
                v.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
                Ok(v)
            })
            .as_ref()
            .map(|v| v.as_slice())
            .map_err(|e| LaplaceError(e.clone()))
    }

    /// The eigenvalues of `H` in each prior group, when the structure separates them (diag,
    /// KFAC: per group; full and low rank: one group of all `D`, only for `single = true`).
    /// For the low-rank structure the `D − k` zero eigenvalues are included.
    pub fn spectrum(&self, single: bool) -> Result<Option<Vec<Vec<f64>>>, LaplaceError> {
        let d = self.dim();
        let per_group = |all: Vec<f64>| -> Vec<Vec<f64>> {
            if single {
                vec![all]
            } else {
                self.groups.iter().map(|g| all[g.offset..g.offset + g.len].to_vec()).collect()
            }
        };
        let spec = self.spectrum_raw(single, &per_group, d)?;
        // GGN-type curvatures are PSD: eigenvalues below 0 are round-off
        Ok(match (spec, self.curvature) {
            (Some(s), c) if c != Curvature::Hessian => {
                Some(s.into_iter().map(|g| g.into_iter().map(|l| l.max(0.0)).collect()).collect())
            }
            (s, _) => s,
        })
    }

    fn spectrum_raw(
        &self,
        single: bool,
        per_group: &dyn Fn(Vec<f64>) -> Vec<Vec<f64>>,
        d: usize,
    ) -> Result<Option<Vec<Vec<f64>>>, LaplaceError> {
        Ok(match &self.h {
            HessianApprox::Diag(v) => Some(per_group(v.iter().map(|x| x.as_f64()).collect())),
            HessianApprox::Kron(_) => {
                let eigs = self.kron_eigs()?;
                let lists: Vec<Vec<f64>> = eigs.iter().map(|e| e.eigenvalues()).collect();
                if single {
                    Some(vec![lists.concat()])
                } else {
                    Some(lists)
                }
            }
            HessianApprox::Full(_) if single || self.groups.len() == 1 => Some(vec![self.full_eigenvalues()?.to_vec()]),
            HessianApprox::LowRank { lambda, .. } if single || self.groups.len() == 1 => {
                let mut v: Vec<f64> = lambda.iter().map(|x| x.as_f64()).collect();
                v.resize(d, 0.0);
                Some(vec![v])
            }
            _ => None,
        })
    }
}

/// The cotangents whose Gram matrix is the output-space curvature of `Σ_n ℓ_n`: `[n, R, C]`
/// and `R` (GGN: the loss-Hessian factor; EF: the loss gradient; MC Fisher: sampled gradients
/// over `√M`).
pub(crate) fn output_factor<T: Float>(
    net: &Network<T>,
    kind: Curvature,
    tape: &Tape<T>,
    batch: &Batch<T>,
) -> Result<(Vec<T>, usize), LaplaceError> {
    let (f, n, c) = (tape.output(), batch.n, net.out_size());
    Ok(match kind {
        Curvature::Ggn => net.loss.hess_factor(f, batch.y, n, c),
        Curvature::Ef => (net.loss.grad(f, batch.y, n, c), 1),
        Curvature::FisherMc { samples, seed } => {
            let mut g = net.loss.sampled_grads_batch(f, batch, c, seed, samples);
            curvops_tensor::ops::scale(T::of(1.0 / (samples as f64).sqrt()), &mut g);
            (g, samples)
        }
        Curvature::Hessian => {
            return Err(LaplaceError("the Hessian is only available with the full structure".into()));
        }
    })
}

/// The prior groups of an active set (and selection).
fn make_groups<T: Float>(net: &Network<T>, active: &ActiveSet, selection: Option<&[usize]>) -> Vec<ParamGroup> {
    let mut groups = Vec::new();
    let mut offset = 0;
    for (e, so) in active.names(&net.layout) {
        let len = match selection {
            None => e.len,
            Some(sel) => sel.iter().filter(|&&i| i >= so && i < so + e.len).count(),
        };
        if len > 0 {
            groups.push(ParamGroup { name: e.name.clone(), offset, len });
            offset += len;
        }
    }
    groups
}

/// Fits the Laplace approximation of `problem` over the `active` parameter tensors (and, for a
/// subnetwork given by indices, only the coordinates `selection` of the active vector, sorted):
/// computes `Σ_n s·ℓ_n` and `H` in one pass over the data. `progress(done, total)` reports
/// batches.
pub fn fit<T: Float>(
    problem: &Problem<T>,
    active: ActiveSet,
    selection: Option<Vec<usize>>,
    opts: &LaplaceOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<LaplaceFit<T>, LaplaceError> {
    let net = &problem.net;
    let likelihood = Likelihood::of(net.loss.kind);
    let s = likelihood.scale();
    if let Some(sel) = &selection {
        if sel.is_empty() {
            return Err(LaplaceError("the subnetwork index set is empty".into()));
        }
        if sel.windows(2).any(|w| w[0] >= w[1]) || *sel.last().unwrap() >= active.dim {
            return Err(LaplaceError(format!(
                "subnetwork indices must be sorted, distinct and below {} (the size of the selected tensors)",
                active.dim
            )));
        }
        if !matches!(opts.structure, HessianStructure::Full | HessianStructure::Diag) {
            return Err(LaplaceError("a subnetwork given by indices supports the full and diag structures".into()));
        }
    }
    if opts.kfac_sampling != KfacSampling::All && opts.structure != HessianStructure::Kron {
        return Err(LaplaceError("a subset or debiased curvature applies to the KFAC structure only".into()));
    }
    if opts.curvature == Curvature::Hessian && opts.structure != HessianStructure::Full {
        return Err(LaplaceError("the Hessian is only available with the full structure".into()));
    }
    let groups = make_groups(net, &active, selection.as_deref());
    let full_mean = active.gather(&net.layout, &problem.theta);
    let mean = match &selection {
        None => full_mean,
        Some(sel) => sel.iter().map(|&i| full_mean[i]).collect(),
    };
    // the diagonal's pass yields the loss from its own forward pass; the others take one more
    let mut loss_sum = None;
    let h = match opts.structure {
        HessianStructure::Full => HessianApprox::Full(full(problem, &active, selection.as_deref(), opts, s, progress)?),
        HessianStructure::Diag => {
            let (d, l) = diagonal(problem, &active, opts, s, progress)?;
            loss_sum = Some(l);
            HessianApprox::Diag(match &selection {
                None => d,
                Some(sel) => sel.iter().map(|&i| d[i]).collect(),
            })
        }
        HessianStructure::Kron => HessianApprox::Kron(kfac_blocks(problem, &active, opts, s, &groups)?),
        HessianStructure::LowRank { rank } => low_rank(problem, &active, opts, s, rank)?,
    };
    let loss = s * loss_sum
        .unwrap_or_else(|| crate::diag::summed_loss(problem, &DataWalk::new(&problem.data, opts.batch_size)));
    let mut fit = LaplaceFit::from_parts(
        likelihood,
        opts.structure,
        opts.curvature,
        active,
        selection,
        groups,
        problem.theta.clone(),
        mean,
        loss,
        problem.data.n,
        net.out_size(),
        h,
    );
    fit.sampling = opts.kfac_sampling;
    Ok(fit)
}

/// Dense `H` from per-sample factor rows (`s Σ_b V_bᵀ V_b`) or, for the Hessian, unit vectors.
fn full<T: Float>(
    p: &Problem<T>,
    active: &ActiveSet,
    selection: Option<&[usize]>,
    opts: &LaplaceOptions,
    s: f64,
    progress: &dyn Fn(usize, usize),
) -> Result<Mat<T>, LaplaceError> {
    let net = &p.net;
    let ds = active.dim;
    let d = selection.map_or(ds, <[usize]>::len);
    if opts.curvature == Curvature::Hessian {
        let op = CurvatureOperator::new(p, Curvature::Hessian, active.clone(), opts.batch_size);
        let full = dense_curvature(&op, progress);
        let scale = s / op.reduction_factor().as_f64();
        return Ok(match selection {
            None => Mat::from_fn(d, d, |i, j| T::of(scale) * T::of(0.5) * (full[i * ds + j] + full[j * ds + i])),
            Some(sel) => Mat::from_fn(d, d, |i, j| {
                T::of(scale) * T::of(0.5) * (full[sel[i] * ds + sel[j]] + full[sel[j] * ds + sel[i]])
            }),
        });
    }
    let mut m = Mat::<T>::zeros(d, d);
    let walk = DataWalk::new(&p.data, opts.batch_size);
    let batches = walk.batches();
    for (bi, batch) in batches.iter().enumerate() {
        let tape = net.forward(&p.theta, batch.x, batch.n);
        let (cot, r) = output_factor(net, opts.curvature, &tape, batch)?;
        let mut rows = vec![T::zero(); batch.n * r * ds];
        net.vjp_per_sample(&p.theta, &tape, cot, r, active, &mut rows);
        let rows = match selection {
            None => rows,
            Some(sel) => rows.chunks_exact(ds).flat_map(|row| sel.iter().map(move |&i| row[i])).collect(),
        };
        // lower triangle of s·VᵀV (a symmetric rank-(n·R) update: half a GEMM)
        let v = view(&rows, batch.n * r, d, d, Trans::N);
        tri_matmul(
            m.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Add,
            v.transpose(),
            BlockStructure::Rectangular,
            v,
            BlockStructure::Rectangular,
            T::of(s),
            threads::par(),
        );
        progress(bi + 1, batches.len());
    }
    for j in 0..d {
        for i in 0..j {
            m[(i, j)] = m[(j, i)];
        }
    }
    Ok(m)
}

/// The exact diagonal of `H = s·Curv(Σ_n ℓ_n)` over the active tensors, from
/// [`crate::diag`] (which computes `diag Curv(c Σ_n ℓ_n)`), and `Σ_n ℓ_n` from the same forward
/// passes.
fn diagonal<T: Float>(
    p: &Problem<T>,
    active: &ActiveSet,
    opts: &LaplaceOptions,
    s: f64,
    progress: &dyn Fn(usize, usize),
) -> Result<(Vec<T>, f64), LaplaceError> {
    let kind = match opts.curvature {
        Curvature::Ggn => DiagKind::Ggn,
        Curvature::Ef => DiagKind::Ef,
        Curvature::FisherMc { samples, seed } => DiagKind::GgnMc { samples, seed },
        Curvature::Hessian => {
            return Err(LaplaceError("the Hessian is only available with the full structure".into()));
        }
    };
    let (mut d, loss) = curvature_diag_with_loss(p, kind, active, opts.batch_size, progress);
    let c = p.net.loss.factor(p.data.n, p.net.out_size());
    curvops_tensor::ops::scale(T::of(s / c), &mut d);
    Ok((d, loss))
}

/// The top-`rank` eigenpairs of `H` (Lanczos on `s/c ·` the curvature operator).
fn low_rank<T: Float>(
    p: &Problem<T>,
    active: &ActiveSet,
    opts: &LaplaceOptions,
    s: f64,
    rank: usize,
) -> Result<HessianApprox<T>, LaplaceError> {
    if rank == 0 || rank > active.dim {
        return Err(LaplaceError(format!("the low rank {rank} must be between 1 and D = {}", active.dim)));
    }
    let op = CurvatureOperator::new(p, opts.curvature, active.clone(), opts.batch_size).with_cache(1 << 30);
    let scale = s / op.reduction_factor().as_f64();
    let scaled = ScaledOp::new(op, T::of(scale));
    let eopts = EigshOptions { tol: opts.lanczos_tol, seed: opts.seed, ..Default::default() };
    let res = eigsh(&scaled, rank, Which::Largest, &eopts).map_err(|e| LaplaceError(format!("Lanczos: {e}")))?;
    let lambda = res.values.iter().map(|&v| if v > T::zero() { v } else { T::zero() }).collect();
    Ok(HessianApprox::LowRank { u: res.vectors, lambda })
}
