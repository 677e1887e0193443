//! First-order optimizers with PyTorch's update rules (`torch.optim.SGD`, `Adam`, `AdamW`),
//! mini-batch training ([`train`]), and Newton-CG with Levenberg–Marquardt damping and
//! optionally debiased steps ([`newton_cg`]).
//!
//! With gradient `g` of the mini-batch loss, weight decay `λ` and step `t = 1, 2, …`:
//!
//! * SGD (momentum `μ`, dampening 0): `g ← g + λθ`; `b ← g` at the first step, else
//!   `b ← μ b + g`; Nesterov uses `g + μ b`; `θ ← θ − η b` (`b = g` without momentum).
//! * Adam: `g ← g + λθ` (L2 weight decay, coupled); `m ← β₁m + (1 − β₁)g`,
//!   `v ← β₂v + (1 − β₂)g²`; `θ ← θ − η/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε)`.
//! * AdamW: `θ ← θ(1 − ηλ)` (decoupled), then the Adam step without the L2 term.

pub mod newton_cg;
mod train;

pub use newton_cg::{train_newton_cg, NewtonCgOptions, NewtonStep};
pub use train::{
    prior_precision_of_weight_decay, train, weight_decay_of_prior_precision, write_checkpoint, EpochStats, TrainOptions,
};

use curvops_tensor::Float;

/// Which optimizer, with its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// `torch.optim.SGD`.
    Sgd {
        /// Learning rate `η`.
        lr: f64,
        /// Momentum `μ` (0: plain SGD).
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 weight decay `λ`.
        weight_decay: f64,
    },
    /// `torch.optim.Adam` (L2 weight decay added to the gradient).
    Adam {
        /// Learning rate `η`.
        lr: f64,
        /// `(β₁, β₂)`.
        betas: (f64, f64),
        /// `ε`.
        eps: f64,
        /// L2 weight decay `λ`.
        weight_decay: f64,
    },
    /// `torch.optim.AdamW` (decoupled weight decay).
    AdamW {
        /// Learning rate `η`.
        lr: f64,
        /// `(β₁, β₂)`.
        betas: (f64, f64),
        /// `ε`.
        eps: f64,
        /// Decoupled weight decay `λ`.
        weight_decay: f64,
    },
}

impl OptimizerKind {
    /// The L2 weight decay added to the gradient (0 for AdamW, whose decay is decoupled).
    pub fn l2_weight_decay(&self) -> f64 {
        match self {
            Self::Sgd { weight_decay, .. } | Self::Adam { weight_decay, .. } => *weight_decay,
            Self::AdamW { .. } => 0.0,
        }
    }
    /// The name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sgd { .. } => "sgd",
            Self::Adam { .. } => "adam",
            Self::AdamW { .. } => "adamw",
        }
    }
}

/// An optimizer's state for a parameter vector of length `D`.
#[derive(Clone, Debug)]
pub struct Optimizer<T: Float> {
    kind: OptimizerKind,
    step: u64,
    m: Vec<T>,
    v: Vec<T>,
}

impl<T: Float> Optimizer<T> {
    /// A fresh optimizer for `d` parameters.
    pub fn new(kind: OptimizerKind, d: usize) -> Self {
        let v = if matches!(kind, OptimizerKind::Sgd { .. }) { Vec::new() } else { vec![T::zero(); d] };
        Self { kind, step: 0, m: vec![T::zero(); d], v }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update of `theta` with the gradient `grad` of the mini-batch loss (PyTorch's
    /// order of floating-point operations).
    pub fn step(&mut self, theta: &mut [T], grad: &[T]) {
        self.step += 1;
        let t = self.step as i32;
        match self.kind {
            OptimizerKind::Sgd { lr, momentum, nesterov, weight_decay } => {
                let (lr, mu, wd) = (T::of(lr), T::of(momentum), T::of(weight_decay));
                for ((th, &g0), b) in theta.iter_mut().zip(grad).zip(self.m.iter_mut()) {
                    let mut g = g0;
                    if weight_decay != 0.0 {
                        g += wd * *th;
                    }
                    if momentum != 0.0 {
                        *b = if t == 1 { g } else { mu * *b + g };
                        g = if nesterov { g + mu * *b } else { *b };
                    }
                    *th -= lr * g;
                }
            }
            OptimizerKind::Adam { lr, betas, eps, weight_decay }
            | OptimizerKind::AdamW { lr, betas, eps, weight_decay } => {
                let decoupled = matches!(self.kind, OptimizerKind::AdamW { .. });
                let (b1, b2) = (T::of(betas.0), T::of(betas.1));
                let bc1 = 1.0 - betas.0.powi(t);
                let bc2 = 1.0 - betas.1.powi(t);
                let step_size = T::of(lr / bc1);
                let bc2_sqrt = T::of(bc2.sqrt());
                let (eps, wd) = (T::of(eps), T::of(weight_decay));
                let decay = T::of(1.0 - lr * weight_decay);
                for (((th, &g0), m), v) in theta.iter_mut().zip(grad).zip(self.m.iter_mut()).zip(self.v.iter_mut()) {
                    let mut g = g0;
                    if decoupled {
                        *th *= decay;
                    } else if weight_decay != 0.0 {
                        g += wd * *th;
                    }
                    // torch: exp_avg.lerp_(grad, 1 − β₁); exp_avg_sq.mul_(β₂).addcmul_(grad, grad, 1 − β₂)
                    *m += (g - *m) * (T::one() - b1);
                    *v = *v * b2 + (T::one() - b2) * g * g;
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    *th -= step_size * (*m / denom);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_first_step_is_sign_times_lr() {
        let mut o = Optimizer::<f64>::new(
            OptimizerKind::Adam { lr: 0.1, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 },
            2,
        );
        let mut th = vec![1.0, -1.0];
        o.step(&mut th, &[2.0, -3.0]);
        assert!((th[0] - 0.9).abs() < 1e-7 && (th[1] + 0.9).abs() < 1e-7);
    }

    #[test]
    fn sgd_momentum() {
        let k = OptimizerKind::Sgd { lr: 0.5, momentum: 0.9, nesterov: false, weight_decay: 0.1 };
        let mut o = Optimizer::<f64>::new(k, 1);
        let mut th = vec![1.0];
        o.step(&mut th, &[1.0]); // g = 1.1, b = 1.1, θ = 1 − 0.55
        assert!((th[0] - 0.45).abs() < 1e-15);
        o.step(&mut th, &[1.0]); // g = 1.045, b = 0.99 + 1.045
        assert!((th[0] - (0.45 - 0.5 * (0.9 * 1.1 + 1.045))).abs() < 1e-15);
    }
}
