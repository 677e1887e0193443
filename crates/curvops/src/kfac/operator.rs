//! [`Kfac`]: the block-diagonal Kronecker operator of fitted factors.

use super::factors::{fit_kfac, KfacFactors};
use super::inverse::{DampingMode, KfacInverse, MIN_DAMPING};
use super::kernels::{inner, sq_norm, trace_of};
use super::plan::DENSE_MAX;
use super::slots::{kron_sum_dense, slots_of, Slot, SlotMap, SlotOp};
use super::{KfacError, KfacOptions};
use crate::walk::DataWalk;
use crate::Problem;
use curvops_linalg::{Eigh, LinalgError, LinearOperator, Structure};
use curvops_nn::ActiveSet;
use curvops_tensor::Float;
use faer::{Mat, MatMut, MatRef};
use std::sync::{Arc, OnceLock};

/// A value computed on first use (an eigendecomposition), or the error computing it gave.
type Lazy<T> = OnceLock<Result<T, LinalgError>>;

/// A tied block's eigenvalues and eigenvectors (as columns).
type TiedEigh<T> = (Vec<T>, Arc<Mat<T>>);

/// Eigendecompositions `A = Q_A Λ_A Q_Aᵀ`, `B = Q_B Λ_B Q_Bᵀ` of one layer's factors
/// (eigenvalues descending).
#[derive(Clone, Debug)]
pub struct LayerEigh<T: Float> {
    /// `(λ_A, Q_A)`, if the layer has an input factor.
    pub a: Option<(Vec<T>, Arc<Mat<T>>)>,
    /// `(λ_B, Q_B)`.
    pub b: (Vec<T>, Arc<Mat<T>>),
}

/// KFAC as a linear operator over the active parameters: `diag(…, B_l ⊗ A_l, B_l, …)` (weight
/// and bias blocks of each layer; one `B_l ⊗ Ā_l` block per layer with `joint_bias`), where
/// `(B ⊗ A) vec(W) = vec(B W A)` for a row-major `[out, in]` weight `W`.
///
/// Exact operations from the factors (cached eigendecompositions where needed):
/// * `trace = Σ tr(B)·tr(A)` (bias blocks: `tr(B)`), [`Kfac::frobenius_norm`]
///   `= (Σ ‖B‖²_F ‖A‖²_F)^½`, `diagonal = diag(B) ⊗ diag(A)`;
/// * `logdet_shifted(s) = Σ_blocks Σ_{ij} log|λ_{B,i} λ_{A,j} + s|`, [`Kfac::det`];
/// * `solve_shifted(s)`: `(KFAC + sI)⁻¹ = (Q_B ⊗ Q_A) (Λ_B ⊗ Λ_A + sI)⁻¹ (Q_B ⊗ Q_A)ᵀ` per
///   block (exact damping of the Kronecker eigenvalues);
/// * `eigh`: eigenpairs `(λ_{B,i} λ_{A,j}, q_{B,i} q_{A,j}ᵀ)` of every block;
/// * [`Kfac::inverse`] with the three damping modes of [`DampingMode`].
#[derive(Debug)]
pub struct Kfac<T: Float> {
    factors: KfacFactors<T>,
    slots: Vec<Slot>,
    layer_eigh: Vec<Lazy<LayerEigh<T>>>,
    tied_eigh: Vec<Lazy<TiedEigh<T>>>,
    eigen_op: Lazy<SlotOp<T>>,
    kron_op: SlotOp<T>,
}

impl<T: Float> Kfac<T> {
    /// The operator of fitted (or loaded) factors.
    pub fn new(factors: KfacFactors<T>) -> Self {
        let slots = slots_of(&factors);
        type Shared<T> = (Arc<Mat<T>>, Option<Arc<Mat<T>>>, Option<Arc<Mat<T>>>, Option<Arc<Mat<T>>>);
        let shared: Vec<Shared<T>> = factors
            .layers
            .iter()
            .map(|l| {
                // the operator shares the fitted matrices (no copies)
                (l.b.clone(), l.a.clone(), l.b_rows.clone(), l.a_rows.clone())
            })
            .collect();
        let nl = factors.layers.len();
        let maps = slots
            .iter()
            .map(|s| {
                if s.layer >= nl {
                    let t = &factors.tied[s.layer - nl];
                    let terms = t
                        .uses
                        .iter()
                        .map(|u| {
                            let (l, r) = u.left_right();
                            (Arc::new(l.clone()), r.map(|r| Arc::new(r.clone())))
                        })
                        .collect();
                    return SlotMap::KronSum { rows: t.rows, cols: t.cols, terms };
                }
                let (b, a, b_rows, a_rows) = &shared[s.layer];
                let wa = s.with_a();
                SlotMap::Kron {
                    left: b.clone(),
                    right: if wa { a.clone() } else { None },
                    left_rows: b_rows.clone(),
                    right_rows: if wa { a_rows.clone() } else { None },
                }
            })
            .collect();
        let kron_op = SlotOp { dim: factors.dim, slots: slots.clone(), maps };
        let n = factors.layers.len();
        let nt = factors.tied.len();
        Self {
            factors,
            slots,
            layer_eigh: (0..n).map(|_| OnceLock::new()).collect(),
            tied_eigh: (0..nt).map(|_| OnceLock::new()).collect(),
            eigen_op: OnceLock::new(),
            kron_op,
        }
    }

    /// Fits the factors on the problem's data ([`fit_kfac`]) and wraps them.
    pub fn fit(p: &Problem<T>, active: &ActiveSet, opts: &KfacOptions) -> Result<Self, KfacError> {
        Ok(Self::new(fit_kfac(p, active, opts)?))
    }

    /// Fits the factors on the samples of `walk` ([`super::factors::fit_kfac_on`]: a subset of
    /// the data, Monte-Carlo labels keyed globally) and wraps them.
    pub fn fit_on(
        p: &Problem<T>,
        walk: &DataWalk<T>,
        active: &ActiveSet,
        opts: &KfacOptions,
    ) -> Result<Self, KfacError> {
        Ok(Self::new(super::factors::fit_kfac_on(p, walk, active, opts)?))
    }

    /// The factors.
    pub fn factors(&self) -> &KfacFactors<T> {
        &self.factors
    }

    /// The Kronecker blocks (slots) in the active vector.
    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The eigendecompositions of layer `i`'s factors (computed once).
    pub fn layer_eigh(&self, i: usize) -> Result<&LayerEigh<T>, LinalgError> {
        self.layer_eigh[i]
            .get_or_init(|| {
                let l = &self.factors.layers[i];
                let split = |e: Eigh<T>| (e.values, Arc::new(e.vectors));
                let b = split(Eigh::from_dense(Mat::as_ref(&l.b))?);
                let a = match &l.a {
                    Some(a) => Some(split(Eigh::from_dense(Mat::as_ref(a))?)),
                    None => None,
                };
                Ok(LayerEigh { a, b })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The eigendecomposition `(λ, Q)` of tied tensor `i`'s block `Σ_u L_u ⊗ R_u` (dense, so
    /// at most [`DENSE_MAX`] entries; computed once).
    pub fn tied_eigh(&self, i: usize) -> Result<&(Vec<T>, Arc<Mat<T>>), LinalgError> {
        self.tied_eigh[i]
            .get_or_init(|| {
                let t = &self.factors.tied[i];
                let d = t.rows * t.cols;
                if d > DENSE_MAX {
                    return Err(LinalgError::Other(format!(
                        "KFAC: the block of the tied tensor '{}' ({d} entries, a sum of Kronecker products) has no \
                         factored eigendecomposition, and a dense one is limited to {DENSE_MAX} entries",
                        t.param.name
                    )));
                }
                let terms: Vec<_> = t.uses.iter().map(|u| u.left_right()).collect();
                let m = kron_sum_dense(t.rows, t.cols, &terms);
                let e = Eigh::from_dense(m.as_ref())?;
                Ok((e.values, Arc::new(e.vectors)))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The dense block of tied tensor `i` (`[D_t, D_t]`, `Σ_u L_u ⊗ R_u`).
    pub fn tied_dense(&self, i: usize) -> Mat<T> {
        let t = &self.factors.tied[i];
        let terms: Vec<_> = t.uses.iter().map(|u| u.left_right()).collect();
        kron_sum_dense(t.rows, t.cols, &terms)
    }

    /// The operator in the Kronecker eigenbasis (eigenvalues `λ_{B,i} λ_{A,j}` per block).
    pub(crate) fn eigen_op(&self) -> Result<&SlotOp<T>, LinalgError> {
        self.eigen_op
            .get_or_init(|| {
                let mut maps = Vec::with_capacity(self.slots.len());
                let nl = self.factors.layers.len();
                for s in &self.slots {
                    if s.layer >= nl {
                        let (vals, q) = self.tied_eigh(s.layer - nl)?;
                        maps.push(SlotMap::Eigen { ql: q.clone(), qr: None, values: vals.clone() });
                        continue;
                    }
                    let e = self.layer_eigh(s.layer)?;
                    let (lb, qb) = &e.b;
                    let (la, qa) = match (&e.a, s.with_a()) {
                        (Some((la, qa)), true) => (la.as_slice(), Some(qa.clone())),
                        _ => (&[][..], None),
                    };
                    let values = if qa.is_some() {
                        lb.iter().flat_map(|&x| la.iter().map(move |&y| x * y)).collect()
                    } else {
                        lb.clone()
                    };
                    maps.push(SlotMap::Eigen { ql: qb.clone(), qr: qa, values });
                }
                Ok(SlotOp { dim: self.factors.dim, slots: self.slots.clone(), maps })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// `‖KFAC‖_F = (Σ_blocks ‖B‖²_F ‖A‖²_F)^½` (bias blocks: `‖B‖_F`).
    pub fn frobenius_norm(&self) -> T {
        let mut s = 0.0;
        let nl = self.factors.layers.len();
        for sl in &self.slots {
            if sl.layer >= nl {
                // ‖Σ_u L_u ⊗ R_u‖² = Σ_{u,v} ⟨L_u, L_v⟩ ⟨R_u, R_v⟩
                let t = &self.factors.tied[sl.layer - nl];
                let lr: Vec<_> = t.uses.iter().map(|u| u.left_right()).collect();
                for (lu, ru) in &lr {
                    for (lv, rv) in &lr {
                        let r = match (ru, rv) {
                            (Some(a), Some(b)) => inner(a.as_ref(), b.as_ref()),
                            _ => 1.0,
                        };
                        s += inner(lu.as_ref(), lv.as_ref()) * r;
                    }
                }
                continue;
            }
            let l = &self.factors.layers[sl.layer];
            let a = if sl.with_a() { sq_norm(Mat::as_ref(l.a.as_ref().expect("input factor"))) } else { 1.0 };
            s += sq_norm(Mat::as_ref(&l.b)) * a;
        }
        T::of(s.sqrt())
    }

    /// `det KFAC = Π_blocks det(A)^{out} det(B)^{in}` (as `exp` of the log-determinant; 0 when
    /// a factor is singular).
    pub fn det(&self) -> Result<T, LinalgError> {
        match self.logdet_shifted(T::zero()) {
            Ok(l) => Ok(T::of(l.as_f64().exp())),
            Err(LinalgError::Singular(_)) => Ok(T::zero()),
            Err(e) => Err(e),
        }
    }

    /// The dampings `(δ_A, δ_B)` added to layer `i`'s factors in `mode` (see [`DampingMode`]):
    /// `(δ, δ)` for `Same` (and `Exact`, where they are not used), π-damping for `Pi`.
    pub fn factor_damping(&self, i: usize, damping: f64, mode: DampingMode) -> (f64, f64) {
        let Some(l) = self.factors.layers.get(i) else { return (damping, damping) };
        match (mode, &l.a) {
            (DampingMode::Pi, Some(a)) => {
                let ma = trace_of(Mat::as_ref(a)) / a.nrows() as f64;
                let mb = trace_of(Mat::as_ref(&l.b)) / l.b.nrows() as f64;
                if ma >= 0.0 && mb > 0.0 {
                    let pi = (ma / mb).sqrt();
                    let sd = damping.sqrt();
                    ((sd * pi).max(MIN_DAMPING), (sd / pi).max(MIN_DAMPING))
                } else {
                    (damping, damping)
                }
            }
            _ => (damping, damping),
        }
    }

    /// `log det` of the damped operator whose inverse is [`Kfac::inverse`]`(δ, mode)`:
    /// `Exact`: `log det(KFAC + δI)`; `Same` / `Pi`: `Σ_blocks out·log det(A + δ_A I) +
    /// cols·log det(B + δ_B I)` (bias blocks: `log det(B + δ_B I)`).
    pub fn logdet_damped(&self, damping: f64, mode: DampingMode) -> Result<T, LinalgError> {
        if mode == DampingMode::Exact {
            return self.logdet_shifted(T::of(damping));
        }
        let logdet = |vals: &[T], d: f64, what: &str| -> Result<f64, LinalgError> {
            let mut s = 0.0;
            for (i, &v) in vals.iter().enumerate() {
                let x = v.as_f64() + d;
                if x == 0.0 {
                    return Err(LinalgError::Singular(format!("{what}: factor eigenvalue {i} + {d} is 0")));
                }
                s += x.abs().ln();
            }
            Ok(s)
        };
        let what = self.describe();
        let mut acc = 0.0;
        let nl = self.factors.layers.len();
        for s in &self.slots {
            if s.layer >= nl {
                // tied blocks are not one Kronecker product: exact damping in every mode
                let (vals, _) = self.tied_eigh(s.layer - nl)?;
                acc += logdet(vals, damping, &what)?;
                continue;
            }
            let (da, db) = self.factor_damping(s.layer, damping, mode);
            let e = self.layer_eigh(s.layer)?;
            acc += s.cols() as f64 * logdet(&e.b.0, db, &what)?;
            if s.with_a() {
                let (va, _) = e.a.as_ref().expect("input factor");
                acc += s.out as f64 * logdet(va, da, &what)?;
            }
        }
        Ok(T::of(acc))
    }

    /// The damped inverse `(KFAC + δ)⁻¹` in one of the three damping modes (see [`DampingMode`]).
    pub fn inverse(&self, damping: f64, mode: DampingMode) -> Result<KfacInverse<T>, KfacError> {
        KfacInverse::of_kfac(self, damping, mode)
    }
}

impl<T: Float> LinearOperator<T> for Kfac<T> {
    fn nrows(&self) -> usize {
        self.factors.dim
    }
    fn ncols(&self) -> usize {
        self.factors.dim
    }
    fn structure(&self) -> Structure {
        Structure::PSD
    }
    fn describe(&self) -> String {
        let o = &self.factors.options;
        format!(
            "kfac ({}, {}{}, D={})",
            o.fisher.name(),
            o.approx.name(),
            if o.joint_bias { ", joint bias" } else { "" },
            self.factors.dim
        )
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.kron_op.apply(out, rhs);
        Ok(())
    }
    fn trace(&self) -> Result<T, LinalgError> {
        let mut t = 0.0;
        let nl = self.factors.layers.len();
        for sl in &self.slots {
            if sl.layer >= nl {
                for u in &self.factors.tied[sl.layer - nl].uses {
                    let (l, r) = u.left_right();
                    t += trace_of(l.as_ref()) * r.map_or(1.0, |r| trace_of(r.as_ref()));
                }
                continue;
            }
            let l = &self.factors.layers[sl.layer];
            let a = if sl.with_a() { trace_of(Mat::as_ref(l.a.as_ref().expect("input factor"))) } else { 1.0 };
            t += trace_of(Mat::as_ref(&l.b)) * a;
        }
        Ok(T::of(t))
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        Ok(self.kron_op.diagonal())
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.eigen_op()?.logdet_shifted(shift, &self.describe())
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.eigen_op()?.solve_shifted(shift, out, rhs, &self.describe())
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        self.eigen_op()?.eigh()
    }
}

/// KFAC whose shifted operations follow a [`DampingMode`]: `logdet_shifted(λ)` and
/// `solve_shifted(λ)` use [`Kfac::logdet_damped`] / [`Kfac::inverse`] with that mode — for
/// `Same` and `Pi` the factor-damped approximation `(B + λ_B I) ⊗ (A + λ_A I)` that KFAC
/// optimizers use, for `Exact` the inverse of `KFAC + λI`. Products, trace, diagonal and
/// eigendecomposition are KFAC's own.
pub struct DampedKfac<T: Float> {
    k: Kfac<T>,
    mode: DampingMode,
}

impl<T: Float> DampedKfac<T> {
    /// Wraps `k` with damping mode `mode`.
    pub fn new(k: Kfac<T>, mode: DampingMode) -> Self {
        Self { k, mode }
    }
    /// The wrapped operator.
    pub fn kfac(&self) -> &Kfac<T> {
        &self.k
    }
}

impl<T: Float> LinearOperator<T> for DampedKfac<T> {
    fn nrows(&self) -> usize {
        self.k.nrows()
    }
    fn ncols(&self) -> usize {
        self.k.ncols()
    }
    fn structure(&self) -> Structure {
        self.k.structure()
    }
    fn describe(&self) -> String {
        format!("{} [{} damping]", self.k.describe(), self.mode.name())
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.k.apply(out, rhs)
    }
    fn trace(&self) -> Result<T, LinalgError> {
        self.k.trace()
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        self.k.diagonal()
    }
    fn logdet_shifted(&self, shift: T) -> Result<T, LinalgError> {
        self.k.logdet_damped(shift.as_f64(), self.mode)
    }
    fn solve_shifted(&self, shift: T, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let inv = self.k.inverse(shift.as_f64(), self.mode).map_err(|e| LinalgError::inner(self.describe(), e))?;
        inv.apply(out, rhs)
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        self.k.eigh()
    }
}
