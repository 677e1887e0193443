//! `curvops solve CURV --damping λ --rhs grad|FILE --method …`: x = (CURV + λI)⁻¹ b; the damped
//! Newton step is −x.

use crate::args::{Common, Curv};
use crate::common::{CliResult, ProgressOp};
use crate::obj;
use crate::output::emit;
use curvops::gradient::loss_and_grad;
use curvops::{ActiveSet, Problem};
use curvops_linalg::solvers::{solve_with, CgOptions, LsmrOptions, MinresOptions, NeumannOptions, SolveMethod};
use curvops_linalg::DampedOp;
use curvops_linalg::LinearOperator;
use curvops_nn::io::{read_npy, write_npy};
use curvops_tensor::Float;
use faer::MatRef;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Exact structured solve if available, else CG / MINRES / LSMR by structure.
    Auto,
    /// The operator's exact solve (Kronecker, low rank, block diagonal …).
    Exact,
    Cg,
    Minres,
    Lsmr,
    Neumann,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precond {
    None,
    /// Damped KFAC inverse (same damping).
    Kfac,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    pub curv: Curv,
    #[command(flatten)]
    pub common: Common,
    /// Damping λ.
    #[arg(long, default_value_t = 0.0)]
    pub damping: f64,
    /// Right-hand side: `grad` (the loss gradient) or a .npy file ([D] or [D, K]).
    #[arg(long, default_value = "grad")]
    pub rhs: String,
    #[arg(long, value_enum, default_value = "auto")]
    pub method: Method,
    /// Relative residual tolerance.
    #[arg(long, default_value_t = 1e-10)]
    pub tol: f64,
    /// Maximum iterations (Neumann: terms).
    #[arg(long)]
    pub max_iters: Option<usize>,
    /// Preconditioner for CG.
    #[arg(long, value_enum, default_value = "none")]
    pub precond: Precond,
    /// Output (.npy, same shape as the right-hand side).
    #[arg(long)]
    pub out: PathBuf,
    /// The debiased mini-batch step (Tatzel et al. 2025): CG directions on a batch B₁ of
    /// --batch-size samples, step lengths by line search (a) or the subspace solve (b) on an
    /// independent batch B₂ of the same size (drawn with --seed); --rhs grad, --max-iters K
    /// directions (default 50). Writes x with (C + δI)x ≈ g (the step is −x).
    #[arg(long, value_enum)]
    pub debias: Option<DebiasVariant>,
}

/// `--debias`: the variant of the debiased step.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebiasVariant {
    /// Exact line search on B₂ along each CG direction.
    A,
    /// The K-dimensional subspace solve on B₂.
    B,
}

impl DebiasVariant {
    /// The library's variant.
    pub fn variant(self) -> curvops::debias::Variant {
        match self {
            Self::A => curvops::debias::Variant::A,
            Self::B => curvops::debias::Variant::B,
        }
    }
}

/// `solve --debias`: the debiased step on two independent batches.
fn run_debiased<T: Float>(a: &Args, p: &Problem<T>, active: ActiveSet, v: DebiasVariant) -> CliResult<()> {
    use curvops::debias::{debiased_solve, draw_pair, Quadratic};
    use curvops::walk::DataWalk;
    let c = &a.common;
    let kind = match super::curvature_of(a.curv, c)? {
        Some(k) => k,
        None => return Err("--debias needs a curvature computed by the engine (hessian, ggn, ef, fisher-mc)".into()),
    };
    if a.rhs != "grad" {
        return Err("--debias: the right-hand side is the batch gradient; use --rhs grad".into());
    }
    if !matches!(a.method, Method::Auto | Method::Cg) || a.precond != Precond::None {
        return Err("--debias runs unpreconditioned CG: use --method cg (or auto) and --precond none".into());
    }
    let b = match c.batch_size {
        Some(b) if b > 0 => b,
        _ => return Err("--debias needs --batch-size B (the size of each of the two batches)".into()),
    };
    let (b1, b2) = draw_pair(p.data.n, b, c.seed, 0).map_err(|e| e.to_string())?;
    let walk = |idx: &[usize]| DataWalk::subset(&p.data, idx, 0).map_err(|e| e.to_string());
    let q1 = Quadratic::new(p, kind, active.clone(), walk(&b1)?, a.damping).map_err(|e| e.to_string())?;
    let q2 = Quadratic::new(p, kind, active.clone(), walk(&b2)?, a.damping).map_err(|e| e.to_string())?;
    let iters = a.max_iters.unwrap_or(50);
    let st = debiased_solve(&q1, Some(&q2), Some(v.variant()), iters, a.tol).map_err(|e| format!("solve: {e}"))?;
    let x: Vec<T> = st.step.iter().map(|&s| -s).collect();
    write_npy(&a.out, &[x.len()], &x).map_err(|e| e.to_string())?;
    emit(
        c.json,
        obj! {"out" => a.out.display().to_string(), "damping" => a.damping, "debias" => format!("{v:?}").to_lowercase(),
        "batch_size" => b, "iterations" => st.run.len(), "matvecs" => st.products,
        "relative_residuals" => st.run.residuals.clone(), "negative_curvature" => st.run.negative_curvature,
        "model_decrease" => st.model_change(1.0)},
    );
    Ok(())
}

pub fn run<T: Float>(a: &Args, p: &Problem<T>, active: ActiveSet, bs: usize) -> CliResult<()> {
    if let Some(v) = a.debias {
        return run_debiased(a, p, active, v);
    }
    let c = &a.common;
    let d = active.dim;
    let (shape, b) = if a.rhs == "grad" {
        let (_, g) = loss_and_grad(p, &active, bs);
        (vec![d], g)
    } else {
        let path = PathBuf::from(&a.rhs);
        let (s, v) = read_npy::<T>(&path).map_err(|e| e.to_string())?;
        if !(s == [d] || (s.len() == 2 && s[0] == d && s[1] > 0)) {
            return Err(format!("{}: --rhs has shape {s:?}, expected [{d}] or [{d}, K]", path.display()));
        }
        (s, v)
    };
    let k = if shape.len() == 1 { 1 } else { shape[1] };
    let precond = match a.precond {
        Precond::None => None,
        Precond::Kfac => Some(super::kfac::make_preconditioner(p, active.clone(), bs, c, a.damping)?),
    };
    let op = super::make_operator(a.curv, p, active, bs, c)?;
    let damped = DampedOp::new(op.as_ref(), T::of(a.damping)).map_err(|e| e.to_string())?;
    let pop = ProgressOp::new(&damped, "solve");
    let rhs = MatRef::from_row_major_slice(&b, d, k);
    let iters = a.max_iters;
    let method = match a.method {
        Method::Auto => SolveMethod::Auto,
        Method::Exact => SolveMethod::Exact,
        Method::Cg => {
            let mut o = CgOptions { tol: a.tol, ..Default::default() };
            if let Some(m) = iters {
                o.max_iters = Some(m);
            }
            SolveMethod::Cg(o)
        }
        Method::Minres => {
            let mut o = MinresOptions { tol: a.tol, ..Default::default() };
            if let Some(m) = iters {
                o.max_iters = Some(m);
            }
            SolveMethod::Minres(o)
        }
        Method::Lsmr => {
            let mut o = LsmrOptions { tol: a.tol, ..Default::default() };
            if let Some(m) = iters {
                o.max_iters = Some(m);
            }
            SolveMethod::Lsmr(o)
        }
        Method::Neumann => {
            let mut o = NeumannOptions { tol: Some(a.tol), ..Default::default() };
            if let Some(m) = iters {
                o.terms = m;
            }
            SolveMethod::Neumann(o)
        }
    };
    let (x, info) = solve_with(&pop, rhs, &method, precond.as_deref()).map_err(|e| format!("solve: {e}"))?;
    let flat: Vec<T> = (0..d).flat_map(|i| (0..k).map(move |j| (i, j))).map(|(i, j)| x[(i, j)]).collect();
    write_npy(&a.out, &shape, &flat).map_err(|e| e.to_string())?;
    let res: Vec<f64> = info.rel_residuals.clone();
    emit(
        c.json,
        obj! {"out" => a.out.display().to_string(), "damping" => a.damping, "iterations" => info.iterations,
        "matvecs" => info.matvecs, "relative_residuals" => res, "operator" => damped.describe()},
    );
    Ok(())
}
