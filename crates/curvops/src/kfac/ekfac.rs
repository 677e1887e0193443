//! EKFAC (George et al. 2018): KFAC's Kronecker eigenbases with corrected eigenvalues.

use super::factors::{data_pass, fit_kfac, plan_layers, KfacFactors, Plan};
use super::inverse::{DampingMode, KfacInverse};
use super::kernels::gemm;
use super::operator::Kfac;
use super::slots::{slots_of, SlotMap, SlotOp};
use super::{FisherType, KfacError, KfacOptions};
use crate::Problem;
use curvops_linalg::{Eigh, LinalgError, LinearOperator, Structure};
use curvops_nn::{ActiveSet, Tape};
use curvops_tensor::{Float, Trans};
use faer::{Mat, MatMut, MatRef};
use std::sync::Arc;

/// Per layer: `(Q_A, Q_B)`, the eigenvectors of the KFAC factors (`Q_A` absent without an
/// active weight).
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

/// Corrected-eigenvalue sums of one layer: joint or weight `[out, cols]`, bias `[out]`.
struct Corrections<T> {
    w: Option<Vec<T>>,
    b: Option<Vec<T>>,
}

/// Adds the corrections of one batch (`cot`: `[n, R, out, P]`) for layer `pl`.
fn add_corrections<T: Float>(
    acc: &mut Corrections<T>,
    pl: &Plan,
    (qa, qb): &LayerBases<T>,
    tape: &Tape<T>,
    cot: &[T],
    r: usize,
    n: usize,
) {
    let (o, pp) = (pl.out, pl.positions());
    let qb_rows = super::kernels::mat_to_rows(qb.as_ref().as_ref());
    if let (Some(ew), Some(qa)) = (acc.w.as_mut(), qa.as_ref()) {
        let cols = pl.a_dim();
        let qa_rows = super::kernels::mat_to_rows(qa.as_ref().as_ref());
        // X_s: [cols, P] (augmented by a row of ones when joint)
        let inputs = |s: usize| -> Vec<T> {
            let a = pl.patches(tape, s);
            let mut x = a.into_owned();
            if pl.joint {
                x.extend(std::iter::repeat_n(T::one(), pp));
            }
            x
        };
        if pp == 1 {
            // Ã = X Q_A [n, cols]; G̃ = G Q_B [nR, o]; E += (Σ_r G̃²)ᵀ Ã²
            let mut x = Vec::with_capacity(n * cols);
            for s in 0..n {
                x.extend(inputs(s));
            }
            let mut at = vec![T::zero(); n * cols];
            gemm(n, cols, cols, &x, cols, Trans::N, &qa_rows, cols, Trans::N, T::zero(), &mut at, cols);
            let mut gt = vec![T::zero(); n * r * o];
            gemm(n * r, o, o, cot, o, Trans::N, &qb_rows, o, Trans::N, T::zero(), &mut gt, o);
            let mut gsq = vec![T::zero(); n * o];
            for s in 0..n {
                for rr in 0..r {
                    let row = &gt[(s * r + rr) * o..(s * r + rr + 1) * o];
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
            let mut at = vec![T::zero(); cols * pp];
            let mut u = vec![T::zero(); r * o * cols];
            let mut m = vec![T::zero(); o * cols];
            for s in 0..n {
                let x = inputs(s);
                // Ã_s = Q_Aᵀ X_s [cols, P]
                gemm(cols, pp, cols, &qa_rows, cols, Trans::T, &x, pp, Trans::N, T::zero(), &mut at, pp);
                // U = G_s Ã_sᵀ [R·o, cols]
                let gs = &cot[s * r * o * pp..(s + 1) * r * o * pp];
                gemm(r * o, cols, pp, gs, pp, Trans::N, &at, pp, Trans::T, T::zero(), &mut u, cols);
                for rr in 0..r {
                    // M = Q_Bᵀ U_r [o, cols]
                    gemm(
                        o,
                        cols,
                        o,
                        &qb_rows,
                        o,
                        Trans::T,
                        &u[rr * o * cols..(rr + 1) * o * cols],
                        cols,
                        Trans::N,
                        T::zero(),
                        &mut m,
                        cols,
                    );
                    for (d, v) in ew.iter_mut().zip(&m) {
                        *d += *v * *v;
                    }
                }
            }
        }
    }
    if let Some(eb) = acc.b.as_mut() {
        // ĝ = Σ_p g [nR, o]; b̃ = ĝ Q_B; E_b += Σ b̃²
        let rows = n * r;
        let mut gsum = vec![T::zero(); rows * o];
        for (mm, gs) in gsum.chunks_exact_mut(o).enumerate() {
            for (j, v) in gs.iter_mut().enumerate() {
                let base = (mm * o + j) * pp;
                *v = cot[base..base + pp].iter().copied().sum();
            }
        }
        let mut bt = vec![T::zero(); rows * o];
        gemm(rows, o, o, &gsum, o, Trans::N, &qb_rows, o, Trans::N, T::zero(), &mut bt, o);
        for row in bt.chunks_exact(o) {
            for (d, v) in eb.iter_mut().zip(row) {
                *d += *v * *v;
            }
        }
    }
}

/// Fits EKFAC: KFAC's factors (first data pass), their eigenbases, and the corrected
/// eigenvalues (second data pass with the same cotangents). `forward-only` has no gradients
/// to correct with and is an error.
pub fn fit_ekfac<T: Float>(p: &Problem<T>, active: &ActiveSet, opts: &KfacOptions) -> Result<Ekfac<T>, KfacError> {
    if opts.fisher == FisherType::ForwardOnly {
        return Err(KfacError::Unsupported(
            "EKFAC needs backpropagated gradients: --fisher forward-only is not supported".into(),
        ));
    }
    let kfac = Kfac::new(fit_kfac(p, active, opts)?);
    let plans = plan_layers(p, active, opts.joint_bias)?;
    let mut bases = Vec::with_capacity(plans.len());
    for i in 0..plans.len() {
        let e = kfac.layer_eigh(i)?;
        bases.push((e.a.as_ref().map(|(_, q)| q.clone()), e.b.1.clone()));
    }
    let mut acc: Vec<Corrections<T>> = plans
        .iter()
        .map(|pl| {
            let w = pl.weight.as_ref().map(|_| vec![T::zero(); pl.out * pl.a_dim()]);
            let b = (pl.bias.is_some() && !pl.joint).then(|| vec![T::zero(); pl.out]);
            Corrections { w, b }
        })
        .collect();
    let accp = &mut acc;
    data_pass(
        p,
        &plans,
        opts,
        |_, _, _, _| {},
        |i, pl, tape, cot, r, batch| add_corrections(&mut accp[i], pl, &bases[i], tape, cot, r, batch.n),
    );
    let factors = kfac.factors().clone();
    let slots = slots_of(&factors.layers);
    let mut values = Vec::with_capacity(slots.len());
    for s in &slots {
        let c = &mut acc[s.layer];
        let v = if s.with_a() { c.w.take() } else { c.b.take() };
        values.push(v.expect("corrections of every slot"));
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
        let slots = slots_of(&factors.layers);
        if bases.len() != factors.layers.len() || values.len() != slots.len() {
            return Err(KfacError::File("EKFAC: eigenbases or eigenvalues do not match the layers".into()));
        }
        let mut maps = Vec::with_capacity(slots.len());
        for (s, v) in slots.iter().zip(values) {
            let (qa, qb) = &bases[s.layer];
            if v.len() != s.len() {
                return Err(KfacError::File(format!(
                    "EKFAC: block of layer {} has {} eigenvalues, expected {}",
                    factors.layers[s.layer].layer,
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
                SlotMap::Kron { .. } => unreachable!("EKFAC blocks are eigen blocks"),
            })
            .collect()
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
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) {
        self.op.apply(out, rhs);
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
