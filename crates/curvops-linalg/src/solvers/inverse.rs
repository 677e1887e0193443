//! Inverse operators and damped solves.

use super::{cg, lsmr, minres, neumann, CgOptions, LsmrOptions, MinresOptions, NeumannOptions, SolveInfo};
use crate::algebra::DampedOp;
use crate::decomp::Eigh;
use crate::util::check_square;
use crate::{LinalgError, LinearOperator, Structure};
use curvops_tensor::Float;
use faer::{Mat, MatMut, MatRef};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How to solve `Ax = b`.
#[derive(Clone, Debug, Default)]
pub enum SolveMethod {
    /// The operator's exact structured solve if it has one; else CG for PSD-tagged operators,
    /// MINRES for symmetric ones, LSMR for others with a transpose.
    #[default]
    Auto,
    /// The operator's exact [`LinearOperator::solve`] (error if unsupported).
    Exact,
    /// Conjugate gradients (with the preconditioner, if one is given).
    Cg(CgOptions),
    /// MINRES.
    Minres(MinresOptions),
    /// LSMR.
    Lsmr(LsmrOptions),
    /// Truncated Neumann series.
    Neumann(NeumannOptions),
}

impl SolveMethod {
    fn name(&self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Exact => "exact",
            Self::Cg(_) => "cg",
            Self::Minres(_) => "minres",
            Self::Lsmr(_) => "lsmr",
            Self::Neumann(_) => "neumann",
        }
    }
}

/// Solves `A X = B` with `method` (see [`SolveMethod`]); `precond` is used by CG.
/// For exact solves the reported residuals are NaN (not computed) and matvecs 0.
pub fn solve_with<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    rhs: MatRef<'_, T>,
    method: &SolveMethod,
    precond: Option<&dyn LinearOperator<T>>,
) -> Result<(Mat<T>, SolveInfo), LinalgError> {
    let exact = || -> Result<(Mat<T>, SolveInfo), LinalgError> {
        let mut x = Mat::<T>::zeros(op.ncols(), rhs.ncols());
        op.solve(x.as_mut(), rhs)?;
        Ok((x, SolveInfo { iterations: 0, matvecs: 0, rel_residuals: vec![f64::NAN; rhs.ncols()] }))
    };
    match method {
        SolveMethod::Exact => exact(),
        SolveMethod::Cg(o) => cg(op, rhs, precond, o),
        SolveMethod::Minres(o) => minres(op, rhs, o),
        SolveMethod::Lsmr(o) => lsmr(op, rhs, o),
        SolveMethod::Neumann(o) => neumann(op, rhs, o),
        SolveMethod::Auto => match exact() {
            Err(LinalgError::Unsupported { .. }) => {
                let s = op.structure();
                if s.psd {
                    cg(op, rhs, precond, &CgOptions::default())
                } else if s.symmetric {
                    minres(op, rhs, &MinresOptions::default())
                } else if op.has_transpose() {
                    lsmr(op, rhs, &LsmrOptions::default())
                } else {
                    Err(LinalgError::unsupported("solve (no structure, no transpose)", op.describe()))
                }
            }
            r => r,
        },
    }
}

/// Solves `(A + λI) X = B` — the damped Newton system; the damped Newton step is `−x` for
/// `B = ∇L` — with `method` (default [`SolveMethod::Auto`]: exact when the structure allows,
/// e.g. Kronecker or low rank + λI, else CG for PSD `A` and `λ ≥ 0`).
pub fn damped_solve<T: Float, O: LinearOperator<T> + ?Sized>(
    op: &O,
    lambda: T,
    rhs: MatRef<'_, T>,
    method: &SolveMethod,
) -> Result<(Mat<T>, SolveInfo), LinalgError> {
    let damped = DampedOp::new(op, lambda)?;
    solve_with(&damped, rhs, method, None)
}

/// `A⁻¹` as an operator: `apply` solves `A X = rhs` with a [`SolveMethod`].
///
/// On a solver failure (no convergence, `pᵀAp ≤ 0` in CG, …) `apply` returns
/// [`LinalgError::Inner`] naming this operator, with the solver's error as its source.
/// Structure: that of `A` (the inverse of a
/// symmetric positive-definite matrix is one). Exact: `solve` (applies `A`), `logdet`
/// (`−log|det A|`), `eigh` (inverted eigenvalues) when `A` offers them.
pub struct InverseOp<'p, T: Float, O> {
    op: O,
    method: SolveMethod,
    precond: Option<&'p dyn LinearOperator<T>>,
    matvecs: AtomicUsize,
}

impl<'p, T: Float, O: LinearOperator<T>> InverseOp<'p, T, O> {
    /// `op⁻¹` by `method`.
    pub fn new(op: O, method: SolveMethod) -> Result<Self, LinalgError> {
        check_square(&op, "inverse")?;
        Ok(Self { op, method, precond: None, matvecs: AtomicUsize::new(0) })
    }
    /// Uses `precond ≈ A⁻¹` in CG.
    pub fn with_preconditioner(mut self, precond: &'p dyn LinearOperator<T>) -> Self {
        self.precond = Some(precond);
        self
    }
    /// Matvecs of `A` spent by all applications so far.
    pub fn matvecs(&self) -> usize {
        self.matvecs.load(Ordering::Relaxed)
    }
    /// The inverted operator.
    pub fn inner(&self) -> &O {
        &self.op
    }
}

impl<T: Float, O: LinearOperator<T>> LinearOperator<T> for InverseOp<'_, T, O> {
    fn nrows(&self) -> usize {
        self.op.nrows()
    }
    fn ncols(&self) -> usize {
        self.op.ncols()
    }
    fn structure(&self) -> Structure {
        self.op.structure()
    }
    fn describe(&self) -> String {
        format!("inverse of {} by {}", self.op.describe(), self.method.name())
    }
    fn apply(&self, mut out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        let (x, info) = solve_with(&self.op, rhs, &self.method, self.precond)
            .map_err(|e| LinalgError::inner(self.describe(), e))?;
        out.copy_from(&x);
        self.matvecs.fetch_add(info.matvecs, Ordering::Relaxed);
        Ok(())
    }
    fn solve(&self, out: MatMut<'_, T>, rhs: MatRef<'_, T>) -> Result<(), LinalgError> {
        self.op.apply(out, rhs)
    }
    fn logdet(&self) -> Result<T, LinalgError> {
        Ok(-self.op.logdet()?)
    }
    fn eigh(&self) -> Result<Eigh<T>, LinalgError> {
        let e = self.op.eigh()?;
        if e.values.iter().any(|&v| v == T::zero()) || (!e.is_complete() && e.rest == T::zero()) {
            return Err(LinalgError::Singular(format!("inverse of {}", self.op.describe())));
        }
        let values = e.values.iter().map(|v| v.recip()).collect();
        Ok(Eigh::new_sorted(values, e.vectors, e.rest.recip()))
    }
}
