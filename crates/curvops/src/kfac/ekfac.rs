//! EKFAC (George et al. 2018): KFAC's Kronecker eigenbases with corrected eigenvalues.

use super::factors::{data_pass, fit_kfac_on, sum_positions, KfacFactors, PassSink};
use super::inverse::{DampingMode, KfacInverse};
use super::kernels::{gemm, mat_to_rows};
use super::operator::Kfac;
use super::plan::{structure, Block, Plan};
use super::slots::{slots_of, SlotMap, SlotOp};
use super::{FisherType, KfacError, KfacOptions};
use crate::walk::DataWalk;
use crate::Problem;
use curvops_linalg::{Eigh, LinalgError, LinearOperator, Structure};
use curvops_nn::ActiveSet;
use curvops_tensor::{Float, Trans};
use faer::{Mat, MatMut, MatRef};
use std::sync::Arc;

/// Per block (layers, then tied tensors): `(Q_A, Q_B)`, the eigenvectors of the KFAC factors
/// (`Q_A` absent without an active weight; a dense or tied block's eigenvectors as `Q_B`).
pub type LayerBases<T> = (Option<Arc<Mat<T>>>, Arc<Mat<T>>);

/// EKFAC as a linear operator: per Kronecker block `(Q_B ⊗ Q_A) diag(E) (Q_B ⊗ Q_A)ᵀ` with the
/// corrected eigenvalues `E[i, j] = Σ_{n,r} (q_{B,i}ᵀ G_{nr} q_{A,j})²` (bias blocks:
/// `Q_B diag(E) Q_Bᵀ`, `E[i] = Σ_{n,r} (q_{B,i}ᵀ Σ_p g_{nrp})²`), see [`crate::kfac`].
///
/// Exact: `trace = Σ E`, Frobenius norm `(Σ E²)^½`, `logdet_shifted(s) = Σ log|E + s|`,
/// `solve_shifted(s)` (inverted `E + s` in the eigenbasis), `eigh`, `diagonal`.
#[derive(Debug)]
pub struct Ekfac<T: Float> {
    factors: KfacFactors<T>,
    bases: Vec<LayerBases<T>>,
    op: SlotOp<T>,
}

/// Corrected-eigenvalue sums of one map: weight or joint `[out, cols]`, bias `[out]`.
struct Corrections<T> {
    w: Option<Vec<T>>,
    b: Option<Vec<T>>,
}

/// The eigenbases of one map as row-major matrices: `(Q_A, Q_B)`.
type RowBases<T> = (Option<Vec<T>>, Vec<T>);

/// Adds the corrections of one batch for plan `pl`: inputs `a` (layout of
/// `Layer::kfac_inputs`), cotangents `g` (`[n, r, R, out]` rows or `[n, r, out, R]` columns).
fn add_corrections<T: Float>(
    acc: &mut Corrections<T>,
    pl: &Plan,
    (qa, qb): &RowBases<T>,
    a: Option<&[T]>,
    g: &[T],
    r: usize,
    n: usize,
) {
    let (o, pp, inp) = (pl.out(), pl.positions(), pl.inp());
    if let (Some(ew), Some(qa), Some(a)) = (acc.w.as_mut(), qa.as_ref(), a) {
        let cols = pl.a_dim();
        // Ã = X Q_A as [n·R, cols] (X the inputs, one row per position, augmented by 1 if joint)
        let mut at = vec![T::zero(); n * pp * cols];
        if pl.info.one_hot {
            for (row, &id) in at.chunks_exact_mut(cols).zip(&a[..n * pp]) {
                let id = id.as_f64() as usize;
                row.copy_from_slice(&qa[id * cols..(id + 1) * cols]);
                if pl.joint {
                    curvops_tensor::ops::axpy(T::one(), &qa[inp * cols..(inp + 1) * cols], row);
                }
            }
        } else if pl.columns() {
            let mut x = vec![T::one(); cols * pp];
            for s in 0..n {
                x[..inp * pp].copy_from_slice(&a[s * inp * pp..(s + 1) * inp * pp]);
                let dst = &mut at[s * pp * cols..(s + 1) * pp * cols];
                gemm(pp, cols, cols, &x, pp, Trans::T, qa, cols, Trans::N, T::zero(), dst, cols);
            }
        } else {
            let x: std::borrow::Cow<[T]> = if pl.joint {
                let mut x = Vec::with_capacity(n * pp * cols);
                for row in a.chunks_exact(inp).take(n * pp) {
                    x.extend_from_slice(row);
                    x.push(T::one());
                }
                std::borrow::Cow::Owned(x)
            } else {
                std::borrow::Cow::Borrowed(&a[..n * pp * inp])
            };
            gemm(n * pp, cols, cols, &x, cols, Trans::N, qa, cols, Trans::N, T::zero(), &mut at, cols);
        }
        // G̃ = Q_Bᵀ g per (sample, cotangent): [n·r, R, out] rows, [n·r, out, R] columns
        let mut gt = vec![T::zero(); n * r * pp * o];
        if pl.columns() && pp > 1 {
            for (src, dst) in g.chunks_exact(o * pp).zip(gt.chunks_exact_mut(o * pp)) {
                gemm(o, pp, o, qb, o, Trans::T, src, pp, Trans::N, T::zero(), dst, pp);
            }
        } else {
            gemm(n * r * pp, o, o, g, o, Trans::N, qb, o, Trans::N, T::zero(), &mut gt, o);
        }
        if pp == 1 {
            // E += Σ_s (Σ_k G̃²)ᵀ Ã²
            let mut gsq = vec![T::zero(); n * o];
            for s in 0..n {
                for row in gt[s * r * o..(s + 1) * r * o].chunks_exact(o) {
                    for (d, v) in gsq[s * o..(s + 1) * o].iter_mut().zip(row) {
                        *d += *v * *v;
                    }
                }
            }
            for v in &mut at {
                *v = *v * *v;
            }
            gemm(o, cols, n, &gsq, o, Trans::T, &at, cols, Trans::N, T::one(), ew, cols);
        } else {
            // E += (G̃_{s,k} Ã_s)² for each sample and cotangent
            let mut m = vec![T::zero(); o * cols];
            for s in 0..n {
                let a_s = &at[s * pp * cols..(s + 1) * pp * cols];
                for kk in 0..r {
                    let gk = &gt[(s * r + kk) * pp * o..(s * r + kk + 1) * pp * o];
                    if pl.columns() {
                        gemm(o, cols, pp, gk, pp, Trans::N, a_s, cols, Trans::N, T::zero(), &mut m, cols);
                    } else {
                        gemm(o, cols, pp, gk, o, Trans::T, a_s, cols, Trans::N, T::zero(), &mut m, cols);
                    }
                    for (d, v) in ew.iter_mut().zip(&m) {
                        *d += *v * *v;
                    }
                }
            }
        }
    }
    if let Some(eb) = acc.b.as_mut() {
        // ĝ = Σ_p g [n·r, o]; b̃ = ĝ Q_B; E_b += Σ b̃²
        let rows = n * r;
        let gsum = sum_positions(pl, g, rows);
        let mut bt = vec![T::zero(); rows * o];
        gemm(rows, o, o, &gsum, o, Trans::N, qb, o, Trans::N, T::zero(), &mut bt, o);
        for row in bt.chunks_exact(o) {
            for (d, v) in eb.iter_mut().zip(row) {
                *d += *v * *v;
            }
        }
    }
}

/// The statistics of EKFAC's second pass.
struct EkfacSink<'a, T: Float> {
    plans: &'a [Plan],
    bases: Vec<Option<RowBases<T>>>,
    acc: Vec<Corrections<T>>,
}

impl<T: Float> PassSink<T> for EkfacSink<'_, T> {
    fn wants_inputs(&self) -> bool {
        false
    }
    fn wants_a(&self) -> bool {
        true
    }
    fn wants_dense(&self) -> bool {
        false
    }
    fn cotangents(&mut self, i: usize, a: Option<&[T]>, g: &[T], r: usize, n: usize) {
        if let Some(b) = &self.bases[i] {
            add_corrections(&mut self.acc[i], &self.plans[i], b, a, g, r, n);
        }
    }
}

/// Fits EKFAC: KFAC's factors (first data pass), their eigenbases, and the corrected
/// eigenvalues (second data pass with the same cotangents). Dense and tied blocks keep KFAC's
/// block (their eigenvalues are not corrected). `forward-only` has no gradients to correct with
/// and is an error.
pub fn fit_ekfac<T: Float>(p: &Problem<T>, active: &ActiveSet, opts: &KfacOptions) -> Result<Ekfac<T>, KfacError> {
    fit_ekfac_on(p, &DataWalk::new(&p.data, opts.batch_size), active, opts)
}

/// [`fit_ekfac`] on the samples of `walk` (see [`super::factors::fit_kfac_on`]).
pub fn fit_ekfac_on<T: Float>(
    p: &Problem<T>,
    walk: &DataWalk<T>,
    active: &ActiveSet,
    opts: &KfacOptions,
) -> Result<Ekfac<T>, KfacError> {
    fit_ekfac_split(p, walk, walk, active, opts)
}

/// EKFAC with the eigenbases from one set of samples and the eigenvalues from another: KFAC's
/// factors and their eigenbases `Q_B ⊗ Q_A` on `basis_walk`, the corrected eigenvalues
/// `E[i, j] = Σ_{n ∈ value_walk} Σ_r (q_{B,i}ᵀ G_{nr} q_{A,j})²` (with the loss reduction
/// factor of `value_walk`, as KFAC's `B` carries that of `basis_walk`) on `value_walk`.
/// With both walks the same this is [`fit_ekfac_on`]; with independent samples of the same
/// size it is the debiased mini-batch curvature of Tatzel et al. (ICLR 2025): directions chosen
/// on one batch, curvature along them measured on another. Dense and tied blocks keep the
/// basis walk's KFAC block.
pub fn fit_ekfac_split<T: Float>(
    p: &Problem<T>,
    basis_walk: &DataWalk<T>,
    value_walk: &DataWalk<T>,
    active: &ActiveSet,
    opts: &KfacOptions,
) -> Result<Ekfac<T>, KfacError> {
    if opts.fisher == FisherType::ForwardOnly {
        return Err(KfacError::Unsupported(
            "EKFAC needs backpropagated gradients: Fisher type forward-only is not supported".into(),
        ));
    }
    let kfac = Kfac::new(fit_kfac_on(p, basis_walk, active, opts)?);
    let st = structure(p, active, opts)?;
    let nl = kfac.factors().layers.len();
    let mut bases: Vec<LayerBases<T>> = Vec::with_capacity(nl + kfac.factors().tied.len());
    for i in 0..nl {
        let e = kfac.layer_eigh(i)?;
        bases.push((e.a.as_ref().map(|(_, q)| q.clone()), e.b.1.clone()));
    }
    for i in 0..kfac.factors().tied.len() {
        bases.push((None, kfac.tied_eigh(i)?.1.clone()));
    }
    // per plan: its block's bases and correction buffers (only for its own weight / bias)
    let mut plan_block: Vec<Option<usize>> = vec![None; st.plans.len()];
    for (li, blk) in st.order.iter().enumerate() {
        if let Block::Plan(pi) = *blk {
            plan_block[pi] = Some(li);
        }
    }
    let row_bases: Vec<Option<RowBases<T>>> = plan_block
        .iter()
        .map(|li| {
            li.map(|li| {
                let (qa, qb) = &bases[li];
                (qa.as_ref().map(|q| mat_to_rows(q.as_ref().as_ref())), mat_to_rows(qb.as_ref().as_ref()))
            })
        })
        .collect();
    let acc: Vec<Corrections<T>> = st
        .plans
        .iter()
        .map(|pl| {
            let w = pl.own_weight().map(|_| vec![T::zero(); pl.out() * pl.a_dim()]);
            let b = (pl.own_bias().is_some() && !pl.joint).then(|| vec![T::zero(); pl.out()]);
            Corrections { w, b }
        })
        .collect();
    let mut sink = EkfacSink { plans: &st.plans, bases: row_bases, acc };
    data_pass(p, value_walk, active, &st, opts, &mut sink);
    let mut acc = sink.acc;
    let factors = kfac.factors().clone();
    let slots = slots_of(&factors);
    let mut values = Vec::with_capacity(slots.len());
    for s in &slots {
        let v = if s.layer >= nl {
            kfac.tied_eigh(s.layer - nl)?.0.clone()
        } else {
            match st.order[s.layer] {
                Block::Plan(pi) => {
                    let c = &mut acc[pi];
                    if s.with_a() { c.w.take() } else { c.b.take() }.expect("corrections of every slot")
                }
                Block::Dense(_) => kfac.layer_eigh(s.layer)?.b.0.clone(),
            }
        };
        values.push(v);
    }
    Ekfac::from_parts(factors, bases, values)
}

impl<T: Float> Ekfac<T> {
    /// EKFAC from KFAC factors, per-layer eigenbases `(Q_A, Q_B)` and per-slot corrected
    /// eigenvalues (weight / joint slots `[out, cols]` row-major, bias slots `[out]`), in the
    /// slot order of the factors (per layer: joint, or weight then bias).
    pub fn from_parts(
        factors: KfacFactors<T>,
        bases: Vec<LayerBases<T>>,
        values: Vec<Vec<T>>,
    ) -> Result<Self, KfacError> {
        let slots = slots_of(&factors);
        if bases.len() != factors.layers.len() + factors.tied.len() || values.len() != slots.len() {
            return Err(KfacError::File("EKFAC: eigenbases or eigenvalues do not match the layers".into()));
        }
        let mut maps = Vec::with_capacity(slots.len());
        for (s, v) in slots.iter().zip(values) {
            let (qa, qb) = &bases[s.layer];
            if v.len() != s.len() {
                return Err(KfacError::File(format!(
                    "EKFAC: block of layer {} has {} eigenvalues, expected {}",
                    factors.layers.get(s.layer).map_or_else(
                        || factors.tied[s.layer - factors.layers.len()].param.name.clone(),
                        |l| l.key.clone()
                    ),
                    v.len(),
                    s.len()
                )));
            }
            maps.push(SlotMap::Eigen { ql: qb.clone(), qr: if s.with_a() { qa.clone() } else { None }, values: v });
        }
        let op = SlotOp { dim: factors.dim, slots, maps };
        Ok(Self { factors, bases, op })
    }

    /// Fits EKFAC ([`fit_ekfac`]).
    pub fn fit(p: &Problem<T>, active: &ActiveSet, opts: &KfacOptions) -> Result<Self, KfacError> {
        fit_ekfac(p, active, opts)
    }

    /// Fits EKFAC on the samples of `walk` ([`fit_ekfac_on`]).
    pub fn fit_on(
        p: &Problem<T>,
        walk: &DataWalk<T>,
        active: &ActiveSet,
        opts: &KfacOptions,
    ) -> Result<Self, KfacError> {
        fit_ekfac_on(p, walk, active, opts)
    }

    /// The KFAC factors the eigenbases come from.
    pub fn factors(&self) -> &KfacFactors<T> {
        &self.factors
    }

    /// Per layer `(Q_A, Q_B)`.
    pub fn bases(&self) -> &[LayerBases<T>] {
        &self.bases
    }

    /// Per block (slot order) the corrected eigenvalues.
    pub fn eigenvalues(&self) -> Vec<&[T]> {
        self.op
            .maps
            .iter()
            .map(|m| match m {
                SlotMap::Eigen { values, .. } => values.as_slice(),
                SlotMap::Kron { .. } | SlotMap::KronSum { .. } => unreachable!("EKFAC blocks are eigen blocks"),
            })
            .collect()
    }

    /// The corrected eigenvalues of layer `i` (an index into [`KfacFactors::layers`]):
    /// `(weight or joint block [out, cols] row-major, bias block [out])`, each `None` when the
    /// layer has no such block. A dense block's eigenvalues are returned as its bias block.
    pub fn layer_eigenvalues(&self, i: usize) -> (Option<&[T]>, Option<&[T]>) {
        let (mut w, mut b) = (None, None);
        for (s, m) in self.op.slots.iter().zip(&self.op.maps) {
            if s.layer != i {
                continue;
            }
            let SlotMap::Eigen { values, .. } = m else { unreachable!("EKFAC blocks are eigen blocks") };
            if s.with_a() {
                w = Some(values.as_slice());
            } else {
                b = Some(values.as_slice());
            }
        }
        (w, b)
    }

    pub(crate) fn slot_op(&self) -> &SlotOp<T> {
        &self.op
    }

    /// `‖EKFAC‖_F = (Σ E²)^½`.
    pub fn frobenius_norm(&self) -> T {
        self.op.eigen_frobenius().expect("eigen blocks")
    }

    /// `det EKFAC = Π E` (as `exp Σ log E`; 0 when an eigenvalue is 0).
    pub fn det(&self) -> T {
        match self.op.logdet_shifted(T::zero(), "ekfac") {
            Ok(l) => T::of(l.as_f64().exp()),
            Err(_) => T::zero(),
        }
    }

    /// `(EKFAC + δI)⁻¹` (exact damping only, as curvlinops).
    pub fn inverse(&self, damping: f64, mode: DampingMode) -> Result<KfacInverse<T>, KfacError> {
        KfacInverse::of_ekfac(self, damping, mode)
    }
}

impl<T: Float> LinearOperator<T> for Ekfac<T> {
    fn nrows(&self) -> usize {
        self.op.dim
    }
    fn ncols(&self) -> usize {
        self.op.dim
    }
    fn structure(&self) -> Structure {
        Structure::PSD
    }
    fn describe(&self) -> String {
        let o = &self.factors.options;
        format!(
            "ekfac ({}, {}{}, D={})",
            o.fisher.name(),
            o.approx.name(),
            if o.joint_bias { ", joint bias" } else { "" },
            self.op.dim
        )
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.apply(out, rhs);
        Ok(())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        self.op.eigen_trace()
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        Ok(self.op.diagonal())
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.op.logdet_shifted(shift, &self.describe())
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.solve_shifted(shift, out, rhs, &self.describe())
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        self.op.eigh()
    }
}
