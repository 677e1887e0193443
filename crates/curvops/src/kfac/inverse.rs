//! Damped inverses of KFAC and EKFAC (curvlinops' `KFACInverseLinearOperator`).

use super::ekfac::Ekfac;
use super::operator::Kfac;
use super::slots::{SlotMap, SlotOp};
use super::KfacError;
use curvops_linalg::{LinalgError, LinearOperator, Structure};
use curvops_tensor::gemm::matmul;
use curvops_tensor::{threads, Float};
use faer::{Accum, Mat, MatMut, MatRef};
use std::sync::Arc;

/// Smallest factor damping of [`DampingMode::Pi`] (curvlinops' `min_damping`).
pub const MIN_DAMPING: f64 = 1e-8;

/// How a damping `δ` enters the inverse of a Kronecker block `B ⊗ A`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DampingMode {
    /// The same `δ` added to each factor: `(B + δI)⁻¹ ⊗ (A + δI)⁻¹`; bias blocks `(B + δI)⁻¹`.
    Same,
    /// Martens & Grosse (2015, §6.3) π-damping: with `π = √((tr A / dim A) / (tr B / dim B))`,
    /// `(B + max(√δ/π, δ_min) I)⁻¹ ⊗ (A + max(π√δ, δ_min) I)⁻¹` (`δ_min` = [`MIN_DAMPING`]);
    /// layers without an input factor (or with `tr A < 0` or `tr B ≤ 0`) use `δ` for both.
    Pi,
    /// Exact damping of the Kronecker eigenvalues: `(B ⊗ A + δI)⁻¹ =
    /// (Q_B ⊗ Q_A)(Λ_B ⊗ Λ_A + δI)⁻¹(Q_B ⊗ Q_A)ᵀ` — the only mode for EKFAC, where the
    /// eigenvalues are the corrected ones.
    Exact,
}

impl DampingMode {
    /// The CLI name: `same`, `pi`, `exact`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Same => "same",
            Self::Pi => "pi",
            Self::Exact => "exact",
        }
    }
}

/// A damped KFAC / EKFAC inverse as a (positive-definite) linear operator: per block either the
/// Kronecker product of damped factor inverses or the inverted damped eigenvalues in the
/// Kronecker eigenbasis (see [`DampingMode`]).
#[derive(Clone, Debug)]
pub struct KfacInverse<T: Float> {
    op: SlotOp<T>,
    what: String,
}

/// `(M + δI)⁻¹ = Q diag(1/(λ + δ)) Qᵀ`.
fn damped_inverse<T: Float>(vals: &[T], q: &Mat<T>, delta: f64, what: &str) -> Result<Mat<T>, KfacError> {
    let n = vals.len();
    let mut scaled = q.clone();
    for (j, &v) in vals.iter().enumerate() {
        let x = v + T::of(delta);
        if x == T::zero() {
            return Err(LinalgError::Singular(format!("{what}: factor eigenvalue {j} + damping {delta} is 0")).into());
        }
        let inv = x.recip();
        for i in 0..n {
            scaled[(i, j)] *= inv;
        }
    }
    let mut out = Mat::<T>::zeros(n, n);
    matmul(out.as_mut(), Accum::Replace, scaled.as_ref(), q.transpose(), T::one(), threads::par());
    Ok(out)
}

impl<T: Float> KfacInverse<T> {
    /// `(KFAC + δ)⁻¹` in the given damping mode.
    pub fn of_kfac(k: &Kfac<T>, damping: f64, mode: DampingMode) -> Result<Self, KfacError> {
        let what = format!("({} + {damping}, {} damping)⁻¹", k.describe(), mode.name());
        if mode == DampingMode::Exact {
            let eig = k.eigen_op()?;
            let maps = eig
                .maps
                .iter()
                .map(|m| match m {
                    SlotMap::Eigen { ql, qr, values } => {
                        let inv = values
                            .iter()
                            .map(|&v| {
                                let x = v + T::of(damping);
                                if x == T::zero() {
                                    Err(KfacError::Linalg(LinalgError::Singular(format!(
                                        "{what}: eigenvalue + damping is 0"
                                    ))))
                                } else {
                                    Ok(x.recip())
                                }
                            })
                            .collect::<Result<Vec<T>, _>>()?;
                        Ok(SlotMap::Eigen { ql: ql.clone(), qr: qr.clone(), values: inv })
                    }
                    SlotMap::Kron { .. } | SlotMap::KronSum { .. } => unreachable!("eigen operator"),
                })
                .collect::<Result<Vec<_>, KfacError>>()?;
            return Ok(Self { op: SlotOp { dim: eig.dim, slots: eig.slots.clone(), maps }, what });
        }
        let f = k.factors();
        let mut inv_factors = Vec::with_capacity(f.layers.len());
        for i in 0..f.layers.len() {
            let (da, db) = k.factor_damping(i, damping, mode);
            let e = k.layer_eigh(i)?;
            let b_inv = Arc::new(damped_inverse(&e.b.0, &e.b.1, db, &what)?);
            let a_inv = match &e.a {
                Some((va, qa)) => Some(Arc::new(damped_inverse(va, qa, da, &what)?)),
                None => None,
            };
            inv_factors.push((b_inv, a_inv));
        }
        let nl = f.layers.len();
        let mut maps = Vec::with_capacity(k.slots().len());
        for s in k.slots() {
            if s.layer >= nl {
                // a tied block is no single Kronecker product: exact damping in every mode
                let (vals, q) = k.tied_eigh(s.layer - nl)?;
                let mut inv = Vec::with_capacity(vals.len());
                for &v in vals {
                    let x = v + T::of(damping);
                    if x == T::zero() {
                        return Err(LinalgError::Singular(format!("{what}: eigenvalue + damping is 0")).into());
                    }
                    inv.push(x.recip());
                }
                maps.push(SlotMap::Eigen { ql: q.clone(), qr: None, values: inv });
                continue;
            }
            let (b, a) = &inv_factors[s.layer];
            maps.push(SlotMap::Kron {
                left: b.clone(),
                right: if s.with_a() { a.clone() } else { None },
                left_rows: None,
                right_rows: None,
            });
        }
        Ok(Self { op: SlotOp { dim: f.dim, slots: k.slots().to_vec(), maps }, what })
    }

    /// `(EKFAC + δI)⁻¹` (exact damping of the corrected eigenvalues; the other modes are an
    /// error, as in curvlinops).
    pub fn of_ekfac(e: &Ekfac<T>, damping: f64, mode: DampingMode) -> Result<Self, KfacError> {
        if mode != DampingMode::Exact {
            return Err(KfacError::Unsupported(format!(
                "EKFAC's inverse supports exact damping only (got damping mode {})",
                mode.name()
            )));
        }
        let what = format!("({} + {damping})⁻¹", e.describe());
        let src = e.slot_op();
        let mut maps = Vec::with_capacity(src.maps.len());
        for m in &src.maps {
            if let SlotMap::Eigen { ql, qr, values } = m {
                let mut inv = Vec::with_capacity(values.len());
                for &v in values {
                    let x = v + T::of(damping);
                    if x == T::zero() {
                        return Err(LinalgError::Singular(format!("{what}: eigenvalue + damping is 0")).into());
                    }
                    inv.push(x.recip());
                }
                maps.push(SlotMap::Eigen { ql: ql.clone(), qr: qr.clone(), values: inv });
            }
        }
        Ok(Self { op: SlotOp { dim: src.dim, slots: src.slots.clone(), maps }, what })
    }
}

impl<T: Float> LinearOperator<T> for KfacInverse<T> {
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
        self.what.clone()
    }
    fn apply(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.apply(out, rhs);
        Ok(())
    }
    fn diagonal(&self) -> Result<Vec<T>, LinalgError> {
        Ok(self.op.diagonal())
    }
}
