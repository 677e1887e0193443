//! Newton-CG (Hessian-free, Martens 2010) with Levenberg–Marquardt damping, taking the biased
//! mini-batch step or the debiased one ([`crate::debias`]).
//!
//! Step `t` draws disjoint batches `B₁`, `B₂` of `B` samples ([`crate::debias::draw_pair`]) and
//! builds `q_{B}(d) = L_B + g_Bᵀd + ½ dᵀ(C_B + λI)d` with the current damping `λ`:
//!
//! * biased: `K` CG iterations on `q_{B₁}` give `d`; the model that judges it is `q_{B₁}`;
//! * debiased (variant A or B): CG's directions from `B₁`, step lengths from `B₂`
//!   ([`crate::debias::cg`]); the model that judges it is `q_{B₂}`.
//!
//! With learning rate `η` the candidate is `θ + ηd`. The reduction ratio on the judging batch
//! `B_s`, `ρ = (L_{B_s}(θ + ηd) − L_{B_s}(θ)) / (q_{B_s}(ηd) − q_{B_s}(0))`, updates the
//! damping: `λ ← 3/2·λ` if `ρ < 1/4`, `λ ← 2/3·λ` if `ρ > 3/4`. A candidate that raises the
//! batch loss is rejected (`θ` unchanged). With `fixed_damping` the damping stays and every
//! candidate is taken. An epoch is `⌊N/B⌋` biased or `⌊N/(2B)⌋` debiased
//! steps, so that both see `N` samples and spend the same curvature products per epoch
//! (`K` per biased step, `2K` per debiased one).

use super::EpochStats;
use crate::curvature::Curvature;
use crate::debias::{debiased_solve, draw_pair, DebiasError, Quadratic, Variant};
use crate::gradient::loss_value_on;
use crate::walk::DataWalk;
use crate::Problem;
use curvops_nn::ActiveSet;
use curvops_tensor::Float;
use std::time::Instant;

/// Options of [`train_newton_cg`].
#[derive(Clone, Debug)]
pub struct NewtonCgOptions {
    /// The curvature of the quadratic model (GGN: positive semi-definite).
    pub curvature: Curvature,
    /// Batch size `B = |B₁| = |B₂|`.
    pub batch_size: usize,
    /// Epochs.
    pub epochs: usize,
    /// Learning rate `η` (1: the full Newton step).
    pub lr: f64,
    /// Initial Levenberg–Marquardt damping `λ`.
    pub damping: f64,
    /// CG iterations `K` per step.
    pub cg_iters: usize,
    /// Relative residual at which CG stops early.
    pub cg_tol: f64,
    /// `None`: the biased step; else the debiased variant.
    pub debias: Option<Variant>,
    /// Seed of the batch draws.
    pub seed: u64,
    /// Stop once this many curvature products are spent (`None`: run all epochs).
    pub max_products: Option<usize>,
    /// Judge the step (ρ, acceptance) on a fresh batch `B₃` drawn independently of `B₁`, `B₂`
    /// (costs one more loss evaluation at `θ` and at the candidate; no curvature products),
    /// instead of the batch that measured it.
    pub fresh_judge: bool,
    /// Keep the damping at [`Self::damping`] and take every step (plain damped Newton-CG, no
    /// Levenberg–Marquardt adaptation, no rejection).
    pub fixed_damping: bool,
}

/// One step's record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NewtonStep {
    /// The judging batch's loss before the step.
    pub loss: f64,
    /// The reduction ratio `ρ`.
    pub rho: f64,
    /// The damping after the update.
    pub damping: f64,
    /// Whether the candidate was taken.
    pub accepted: bool,
    /// CG iterations.
    pub cg_iters: usize,
    /// Curvature products so far.
    pub products: usize,
}

/// Trains `p.theta` (the `active` entries) by Newton-CG (see the module docs). Calls
/// `progress(step, total)` after every step and `on_epoch` after every epoch with the mean
/// judging-batch loss and the problem (its current `θ`). Returns the epochs and the per-step records.
pub fn train_newton_cg<T: Float>(
    p: &mut Problem<T>,
    active: &ActiveSet,
    opts: &NewtonCgOptions,
    progress: &mut dyn FnMut(usize, usize),
    on_epoch: &mut dyn FnMut(&EpochStats, &Problem<T>),
) -> Result<(Vec<EpochStats>, Vec<NewtonStep>), DebiasError> {
    let n = p.data.n;
    let b = opts.batch_size;
    if b == 0 || b > n {
        return Err(DebiasError::Invalid(format!("--batch-size {b} must be between 1 and N = {n}")));
    }
    if !(opts.lr.is_finite() && opts.lr > 0.0) {
        return Err(DebiasError::Invalid("--lr must be positive".into()));
    }
    if !(opts.damping.is_finite() && opts.damping > 0.0) {
        return Err(DebiasError::Invalid("--damping must be positive (Levenberg–Marquardt damping)".into()));
    }
    if opts.cg_iters == 0 {
        return Err(DebiasError::Invalid("--cg-iters must be positive".into()));
    }
    let per_epoch = match opts.debias {
        None => (n / b).max(1),
        Some(_) => (n / (2 * b)).max(1),
    };
    let total = per_epoch * opts.epochs;
    let mut lambda = opts.damping;
    let mut products = 0usize;
    let mut history = Vec::new();
    let mut steps = Vec::new();
    let t0 = Instant::now();
    let mut round = 0u64;
    'epochs: for epoch in 1..=opts.epochs {
        let mut loss_sum = 0.0;
        let mut done = 0;
        for _ in 0..per_epoch {
            let (b1, b2) = draw_pair(n, b, opts.seed, round)?;
            round += 1;
            let sub =
                |idx: &[usize]| DataWalk::subset(&p.data, idx, 0).map_err(|e| DebiasError::Invalid(e.to_string()));
            let (step, judge_idx, loss0) = {
                let q1 = Quadratic::new(p, opts.curvature, active.clone(), sub(&b1)?, lambda)?;
                let q2 = match opts.debias {
                    Some(_) => Some(Quadratic::new(p, opts.curvature, active.clone(), sub(&b2)?, lambda)?),
                    None => None,
                };
                let st = debiased_solve(&q1, q2.as_ref(), opts.debias, opts.cg_iters, opts.cg_tol)?;
                let (judge, loss0) = match &q2 {
                    Some(q2) => (b2.clone(), q2.loss),
                    None => (b1.clone(), q1.loss),
                };
                (st, judge, loss0)
            };
            let (judge_idx, loss0) = if opts.fresh_judge {
                let b3 = draw_pair(n, b, opts.seed ^ 0x006a_7564_6765, round)?.0;
                let w = sub(&b3)?;
                let scale = p.net.loss.factor(n, p.net.out_size()) * n as f64 / (w.factor(&p.net) * w.n() as f64);
                let l = scale * loss_value_on(p, &w);
                (b3, l)
            } else {
                (judge_idx, loss0)
            };
            products += step.products;
            let before = active.gather(&p.net.layout, &p.theta);
            let cand: Vec<T> = before.iter().zip(&step.step).map(|(&t, &d)| t + T::of(opts.lr) * d).collect();
            active.scatter(&p.net.layout, &cand, &mut p.theta);
            let judge = sub(&judge_idx)?;
            let scale = p.net.loss.factor(n, p.net.out_size()) * n as f64 / (judge.factor(&p.net) * judge.n() as f64);
            let loss1 = scale * loss_value_on(p, &judge);
            let model = step.model_change(opts.lr);
            let rho = if model < 0.0 { (loss1 - loss0) / model } else { f64::NAN };
            let accepted = opts.fixed_damping || (loss1.is_finite() && loss1 < loss0);
            if !accepted {
                active.scatter(&p.net.layout, &before, &mut p.theta);
            }
            if opts.fixed_damping {
            } else if rho.is_nan() || rho < 0.25 {
                lambda *= 1.5;
            } else if rho > 0.75 {
                lambda *= 2.0 / 3.0;
            }
            steps.push(NewtonStep { loss: loss0, rho, damping: lambda, accepted, cg_iters: step.run.len(), products });
            loss_sum += loss0;
            done += 1;
            progress(steps.len(), total);
            if opts.max_products.is_some_and(|m| products >= m) {
                let st = EpochStats { epoch, loss: loss_sum / done as f64, seconds: t0.elapsed().as_secs_f64() };
                on_epoch(&st, p);
                history.push(st);
                break 'epochs;
            }
        }
        let st = EpochStats { epoch, loss: loss_sum / done.max(1) as f64, seconds: t0.elapsed().as_secs_f64() };
        on_epoch(&st, p);
        history.push(st);
    }
    Ok((history, steps))
}
