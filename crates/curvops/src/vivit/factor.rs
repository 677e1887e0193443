//! The factor `V` (its output-space columns, samples and groups), the Gram pass and the
//! eigenpairs.

use super::gram::{add_gram, collect, mirror_lower, plan, LayerFeat};
use super::{default_rtol, warn_rtol, Eigenpairs, FactorKind, Grouping, Spectrum, VivitError, VivitOptions};
use crate::walk::DataWalk;
use crate::Problem;
use curvops_linalg::decomp::Eigh;
use curvops_linalg::eigen::{eigsh, EigshOptions, Which};
use curvops_linalg::{DenseOp, Structure};
use curvops_nn::data::Batch;
use curvops_nn::{ActiveSet, Tape};
use curvops_tensor::{ops, Float};
use faer::Mat;

/// A parameter group: its name and the layout entries (parameter tensors) it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// `"all"`, the node's name (`"3"` for layer 3 of a chain; a tied tensor belongs to its
    /// first user) or the tensor name (`"3.weight"`).
    pub name: String,
    /// Layout entries (active) of the group.
    pub entries: Vec<usize>,
}

/// The ViViT factor `V` of a problem (see the module docs of [`crate::vivit`]).
pub struct Vivit<'a, T: Float> {
    problem: &'a Problem<T>,
    active: ActiveSet,
    opts: VivitOptions,
    /// Curvature samples (sorted global indices).
    samples: Vec<usize>,
    /// The walk over `samples` (a subset view when subsampled; keys = global indices).
    walk: DataWalk<'a, T>,
    /// `c·N/N'`: the squared scale of `V`'s columns.
    scale: f64,
    c: f64,
    r: usize,
    groups: Vec<Group>,
    /// Group of each layout entry (`None`: inactive).
    group_of: Vec<Option<usize>>,
}

impl<'a, T: Float> Vivit<'a, T> {
    /// The factor of `problem` over the `active` parameters.
    pub fn new(problem: &'a Problem<T>, active: ActiveSet, opts: VivitOptions) -> Result<Self, VivitError> {
        let n = problem.data.n;
        let cdim = problem.net.out_size();
        let r = match opts.factor {
            FactorKind::Exact => cdim,
            FactorKind::MonteCarlo { samples, .. } => {
                if samples == 0 {
                    return Err(VivitError::Invalid("vivit: the number of MC samples must be positive".into()));
                }
                samples
            }
        };
        if active.dim == 0 {
            return Err(VivitError::Invalid("vivit: no active parameters".into()));
        }
        if let Some(rt) = opts.rtol {
            if !(rt.is_finite() && rt >= 0.0) {
                return Err(VivitError::Invalid(format!("vivit: the relative threshold must be ≥ 0, got {rt}")));
            }
        }
        let (samples, walk) = match opts.subsample {
            None => ((0..n).collect::<Vec<_>>(), None),
            Some((m, seed)) => {
                if m == 0 || m > n {
                    return Err(VivitError::Invalid(format!("vivit: the subsample size must be in 1..={n}, got {m}")));
                }
                let mut rng = curvops_tensor::rng::Rng::new(seed ^ 0x5eed_51b5_a3b1_e000);
                let mut idx: Vec<usize> = rng.permutation(n)[..m].to_vec();
                idx.sort_unstable();
                if m == n {
                    (idx, None)
                } else {
                    let w = DataWalk::subset(&problem.data, &idx, opts.batch_size).expect("indices below N");
                    (idx, Some(w))
                }
            }
        };
        let c = problem.net.loss.factor(n, cdim);
        let scale = c * n as f64 / samples.len() as f64;
        let layout = &problem.net.layout;
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of = vec![None; layout.entries.len()];
        for (i, e) in layout.entries.iter().enumerate() {
            if active.sub_offset[i].is_none() {
                continue;
            }
            let name = match opts.grouping {
                Grouping::Full => "all".to_string(),
                Grouping::Layer => layout.node_names[e.layer].clone(),
                Grouping::Param => e.name.clone(),
            };
            let gi = match groups.iter().position(|g| g.name == name) {
                Some(g) => g,
                None => {
                    groups.push(Group { name, entries: Vec::new() });
                    groups.len() - 1
                }
            };
            groups[gi].entries.push(i);
            group_of[i] = Some(gi);
        }
        let walk = walk.unwrap_or_else(|| DataWalk::new(&problem.data, opts.batch_size));
        Ok(Self { problem, active, opts, samples, walk, scale, c, r, groups, group_of })
    }

    /// The problem.
    pub fn problem(&self) -> &'a Problem<T> {
        self.problem
    }
    /// The active parameters.
    pub fn active(&self) -> &ActiveSet {
        &self.active
    }
    /// The curvature samples (sorted indices into the data set).
    pub fn samples(&self) -> &[usize] {
        &self.samples
    }
    /// Columns `R` per sample.
    pub fn rank_per_sample(&self) -> usize {
        self.r
    }
    /// Columns of `V`: `N'·R`.
    pub fn columns(&self) -> usize {
        self.samples.len() * self.r
    }
    /// The reduction factor `c`.
    pub fn reduction_factor(&self) -> f64 {
        self.c
    }
    /// The parameter groups.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }
    /// The options.
    pub fn options(&self) -> &VivitOptions {
        &self.opts
    }

    /// Batches of the curvature samples, with the global index of each sample's first row.
    fn batches(&self) -> Vec<Batch<'_, T>> {
        self.walk.batches()
    }

    /// Unscaled output-space factor columns of a batch (`[n, R, C]`): `S_n` or
    /// `∇_f ℓ(f_n, ŷ_{nm})/√M`. `global[i]` is the data-set index of sample `i`.
    pub(crate) fn output_factor(&self, f: &[T], batch: &Batch<'_, T>, global: &[usize]) -> Vec<T> {
        let net = &self.problem.net;
        let cdim = net.out_size();
        match self.opts.factor {
            FactorKind::Exact => net.loss.hess_factor(f, batch.y, batch.n, cdim).0,
            FactorKind::MonteCarlo { samples, seed } => {
                let mut out = Vec::with_capacity(batch.n * samples * cdim);
                for (i, &gi) in global.iter().enumerate().take(batch.n) {
                    out.extend(net.loss.sampled_grads(&f[i * cdim..(i + 1) * cdim], 1, cdim, seed, gi, samples));
                }
                ops::scale(T::of(1.0 / (samples as f64).sqrt()), &mut out);
                out
            }
        }
    }

    /// The columns `√(c·N/N')·S̃_n e_r` of `V` in output space for one batch of the curvature
    /// samples (`[n, R, C]`).
    fn cotangents(&self, f: &[T], batch: &Batch<'_, T>) -> Vec<T> {
        let global = &self.samples[batch.start..batch.start + batch.n];
        let mut s = self.output_factor(f, batch, global);
        ops::scale(T::of(self.scale.sqrt()), &mut s);
        s
    }

    /// The factor `V` materialized (`[N'·R, D_S]` row-major: row `(n, r)` is `V`'s column).
    /// For checks: this is what the Gram path avoids.
    pub fn factor_rows(&self) -> Vec<T> {
        let net = &self.problem.net;
        let d = self.active.dim;
        let mut out = vec![T::zero(); self.columns() * d];
        for batch in self.batches() {
            let tape = net.forward(&self.problem.theta, batch.x, batch.n);
            let cot = self.cotangents(tape.output(), &batch);
            let off = batch.start * self.r * d;
            net.vjp_per_sample(
                &self.problem.theta,
                &tape,
                cot,
                self.r,
                &self.active,
                &mut out[off..off + batch.n * self.r * d],
            );
        }
        out
    }

    /// One pass over the curvature samples keeping each layer's Gram features.
    pub(crate) fn features(&self) -> Vec<LayerFeat<T>> {
        self.features_keep(false).0
    }

    /// [`Self::features`], also returning the forward pass when the samples form one batch
    /// (`keep`), for the eigenvector pass.
    fn features_keep(&self, keep: bool) -> (Vec<LayerFeat<T>>, Option<Tape<T>>) {
        let net = &self.problem.net;
        let mut feats = plan(net, &self.active, self.samples.len(), self.r, self.opts.conv);
        let batches = self.batches();
        let keep = keep && batches.len() == 1;
        let mut kept = None;
        for batch in batches {
            let tape = net.forward(&self.problem.theta, batch.x, batch.n);
            let cot = self.cotangents(tape.output(), &batch);
            collect(net, &self.problem.theta, &tape, cot, self.r, &mut feats);
            if keep {
                kept = Some(tape);
            }
        }
        (feats, kept)
    }

    fn group_gram(&self, feats: &[LayerFeat<T>], g: usize) -> Vec<T> {
        let m = self.columns();
        let mut out = vec![T::zero(); m * m];
        let want = |e: usize| self.group_of[e] == Some(g);
        for f in feats {
            add_gram(f, self.samples.len(), self.r, &want, &mut out);
        }
        mirror_lower(&mut out, m);
        out
    }

    /// The Gram matrices `G̃_g = V_gᵀ V_g` of every group (`[N'R, N'R]` row-major each).
    pub fn grams(&self) -> Vec<Vec<T>> {
        let feats = self.features();
        (0..self.groups.len()).map(|g| self.group_gram(&feats, g)).collect()
    }

    /// The Gram matrix `G̃ = Σ_g G̃_g` (the full `Vᵀ V`, whatever the grouping).
    pub fn gram(&self) -> Vec<T> {
        let feats = self.features();
        let m = self.columns();
        let mut out = vec![T::zero(); m * m];
        for f in &feats {
            add_gram(f, self.samples.len(), self.r, &|e| self.group_of[e].is_some(), &mut out);
        }
        mirror_lower(&mut out, m);
        out
    }

    /// The nonzero eigenvalues (`> rtol·λ_max` per group) of the (block-diagonal) GGN and the
    /// top-`k` eigenvectors `e_k = V_g ẽ_k/√λ_k` (one backward pass with `k` combined
    /// cotangents). Returns fewer than `k` pairs when there are fewer nonzero eigenvalues (with
    /// a warning).
    pub fn eigen(&self, k: usize) -> Result<Eigenpairs<T>, VivitError> {
        let timing = std::env::var_os("VIVIT_TIMING").is_some();
        let t0 = std::time::Instant::now();
        let (feats, tape) = self.features_keep(true);
        if timing {
            eprintln!("vivit: features {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
        }
        let m = self.columns();
        let rtol = self.opts.rtol.unwrap_or_else(default_rtol::<T>);
        // (value, group, coefficient column)
        let mut cands: Vec<(T, usize, Vec<T>)> = Vec::new();
        let mut nonzero: Vec<T> = Vec::new();
        let mut lmax_all = T::zero();
        let mut complete = true;
        for g in 0..self.groups.len() {
            let t0 = std::time::Instant::now();
            let gram = self.group_gram(&feats, g);
            let t1 = std::time::Instant::now();
            let full = match self.opts.spectrum {
                Spectrum::All => true,
                Spectrum::Top => false,
                Spectrum::Auto => m <= 512 || 4 * k >= m,
            } || k >= m;
            complete &= full;
            let e = if full {
                Eigh::from_dense(faer::MatRef::from_row_major_slice(&gram, m, m))?
            } else {
                let op = DenseOp::with_structure(Mat::from_fn(m, m, |i, j| gram[i * m + j]), Structure::PSD);
                let tol = if T::BYTES == 4 { 1e-5 } else { 1e-11 };
                let o = EigshOptions { tol, ..Default::default() };
                let r = eigsh(&op, k.min(m), Which::Largest, &o)?;
                Eigh { values: r.values, vectors: r.vectors, rest: T::zero() }
            };
            if timing {
                eprintln!(
                    "vivit: group {g}: gram {:.1} ms, eigh {:.1} ms (m = {m})",
                    (t1 - t0).as_secs_f64() * 1e3,
                    t1.elapsed().as_secs_f64() * 1e3
                );
            }
            let lmax = e.values.first().copied().unwrap_or(T::zero());
            if lmax <= T::zero() {
                continue;
            }
            lmax_all = lmax_all.max(lmax);
            let thr = T::of(rtol) * lmax;
            let nz: Vec<usize> = (0..e.values.len()).filter(|&i| e.values[i] > thr).collect();
            nonzero.extend(nz.iter().map(|&i| e.values[i]));
            for &i in nz.iter().take(k) {
                cands.push((e.values[i], g, (0..m).map(|j| e.vectors[(j, i)]).collect()));
            }
        }
        drop(feats);
        nonzero.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
        cands.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
        cands.truncate(k);
        let mut warnings = Vec::new();
        if cands.len() < k {
            warnings.push(format!(
                "vivit: asked for {k} eigenpairs but the GGN has {} nonzero eigenvalues (rank ≤ N'·R = {m})",
                cands.len()
            ));
        }
        let wthr = T::of(warn_rtol::<T>()) * lmax_all;
        let tiny = cands.iter().filter(|c| c.0 < wthr).count();
        if tiny > 0 {
            warnings.push(format!(
                "vivit: {tiny} eigenvalue(s) below {:.1e}·λ_max: their eigenvectors e = Vẽ/√λ lose accuracy",
                warn_rtol::<T>()
            ));
        }
        let kk = cands.len();
        let values: Vec<T> = cands.iter().map(|c| c.0).collect();
        let group: Vec<usize> = cands.iter().map(|c| c.1).collect();
        // coefficients ẽ_k/√λ_k: [m, K]
        let mut coef = vec![T::zero(); m * kk];
        for (j, c) in cands.iter().enumerate() {
            let s = c.0.sqrt().recip();
            for a in 0..m {
                coef[a * kk + j] = c.2[a] * s;
            }
        }
        let t0 = std::time::Instant::now();
        let vectors = self.apply_v_with(&coef, kk, tape.as_ref());
        if timing {
            eprintln!("vivit: V ẽ {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
        }
        let d = self.active.dim;
        let mut vectors = vectors;
        if self.groups.len() > 1 {
            // e_k = P_g V ẽ_k: keep the coordinates of its group
            for (j, &g) in group.iter().enumerate() {
                for (i, e) in self.problem.net.layout.entries.iter().enumerate() {
                    if let Some(so) = self.active.sub_offset[i] {
                        if self.group_of[i] != Some(g) {
                            vectors[j * d + so..j * d + so + e.len].fill(T::zero());
                        }
                    }
                }
            }
        }
        Ok(Eigenpairs { values, vectors, group, nonzero, complete, dim: d, warnings })
    }

    /// `V W` for `K` coefficient columns `W` (`[N'·R, K]` row-major), returned as `[K, D_S]`:
    /// one backward pass per batch with the combined cotangents `Σ_r W[(n,r),k]·u_{nr}`.
    pub fn apply_v(&self, w: &[T], k: usize) -> Vec<T> {
        self.apply_v_with(w, k, None)
    }

    /// [`Self::apply_v`] reusing the forward pass of the single batch, if given.
    fn apply_v_with(&self, w: &[T], k: usize, kept: Option<&Tape<T>>) -> Vec<T> {
        let net = &self.problem.net;
        let cdim = net.out_size();
        let r = self.r;
        let d = self.active.dim;
        let mut out = vec![T::zero(); k * d];
        if k == 0 {
            return out;
        }
        for batch in self.batches() {
            let fresh;
            let tape = match kept {
                Some(t) => t,
                None => {
                    fresh = net.forward(&self.problem.theta, batch.x, batch.n);
                    &fresh
                }
            };
            let u = self.cotangents(tape.output(), &batch);
            let mut z = vec![T::zero(); batch.n * k * cdim];
            for s in 0..batch.n {
                for rr in 0..r {
                    let col = &u[(s * r + rr) * cdim..(s * r + rr + 1) * cdim];
                    let a = (batch.start + s) * r + rr;
                    for j in 0..k {
                        let wv = w[a * k + j];
                        if wv != T::zero() {
                            ops::axpy(wv, col, &mut z[(s * k + j) * cdim..(s * k + j + 1) * cdim]);
                        }
                    }
                }
            }
            net.vjp(&self.problem.theta, tape, z, k, &self.active, &mut out);
        }
        out
    }

    /// The group of each active layout entry (for block masks).
    pub fn group_of_entry(&self, entry: usize) -> Option<usize> {
        self.group_of[entry]
    }

    /// The dense Gram matrix of a group as a faer matrix (for checks).
    pub fn gram_mat(gram: &[T], m: usize) -> Mat<T> {
        Mat::from_fn(m, m, |i, j| gram[i * m + j])
    }
}
