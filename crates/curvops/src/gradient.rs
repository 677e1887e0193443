//! Loss and gradient over a data set, per-sample gradients and BackPACK's first-order
//! statistics.
//!
//! Conventions (`L = c Σ_n ℓ_n`, SPEC.md §3; `N` is the data-set size):
//!
//! | quantity | value | shape |
//! |---|---|---|
//! | `grad` | `∇ℓ_n` (sample `n`'s loss summed over its outputs) | `[N, D]` |
//! | `batch-grad` | `c ∇ℓ_n` (BackPACK's `BatchGrad`: the sample's share of `∇L`) | `[N, D]` |
//! | `l2` | `‖c ∇ℓ_n‖²` per parameter tensor (BackPACK's `BatchL2Grad`) | `[N, P]` |
//! | `sum-grad-squared` | `Σ_n (c ∇ℓ_n)²` (BackPACK's `SumGradSquared`) | `[D]` |
//! | `variance` | `1/N Σ_n (c∇ℓ_n)² − (1/N ∇L)²` (BackPACK's `Variance`) | `[D]` |
//!
//! BackPACK computes these per mini-batch; here `N` and `c` refer to the whole data set, so
//! the results do not depend on `--batch-size`.

use crate::walk::DataWalk;
use crate::Problem;
use curvops_nn::ActiveSet;
use curvops_tensor::Float;

/// `(L, ∇L)` over the data set for the active parameters; the loss is accumulated in f64.
pub fn loss_and_grad<T: Float>(p: &Problem<T>, active: &ActiveSet, batch_size: usize) -> (f64, Vec<T>) {
    loss_and_grad_on(p, &DataWalk::new(&p.data, batch_size), active)
}

/// `(L_B, ∇L_B)` over the samples of `walk` (with their reduction factor: the mini-batch loss
/// PyTorch computes on them).
pub fn loss_and_grad_on<T: Float>(p: &Problem<T>, walk: &DataWalk<T>, active: &ActiveSet) -> (f64, Vec<T>) {
    let net = &p.net;
    let cdim = net.out_size();
    let c = walk.factor(net);
    let mut grad = vec![T::zero(); active.dim];
    let mut loss = 0.0;
    for batch in walk.batches() {
        let tape = net.forward(&p.theta, batch.x, batch.n);
        let (vals, mut g) = net.loss.values_and_grad(tape.output(), batch.y, batch.n, cdim);
        loss += vals.iter().map(|v| v.as_f64()).sum::<f64>();
        curvops_tensor::ops::scale(T::of(c), &mut g);
        net.vjp(&p.theta, &tape, g, 1, active, &mut grad);
    }
    (c * loss, grad)
}

/// The data-set loss `L` only (forward passes without tapes).
pub fn loss_value<T: Float>(p: &Problem<T>, batch_size: usize) -> f64 {
    loss_value_on(p, &DataWalk::new(&p.data, batch_size))
}

/// The loss `L_B` over the samples of `walk`.
pub fn loss_value_on<T: Float>(p: &Problem<T>, walk: &DataWalk<T>) -> f64 {
    let net = &p.net;
    let cdim = net.out_size();
    let mut loss = 0.0;
    for batch in walk.batches() {
        let f = net.predict(&p.theta, batch.x, batch.n);
        loss += net.loss.values(&f, batch.y, batch.n, cdim).iter().map(|v| v.as_f64()).sum::<f64>();
    }
    walk.factor(net) * loss
}

/// Calls `f(batch_start, n, rows)` with the per-sample gradients `∇ℓ_n` of each batch
/// (`rows` is `[n, D_S]`).
pub fn for_each_per_sample_grads<T: Float>(
    p: &Problem<T>,
    active: &ActiveSet,
    batch_size: usize,
    mut f: impl FnMut(usize, usize, &[T]),
) {
    let net = &p.net;
    let cdim = net.out_size();
    for batch in DataWalk::new(&p.data, batch_size).batches() {
        let tape = net.forward(&p.theta, batch.x, batch.n);
        let g = net.loss.grad(tape.output(), batch.y, batch.n, cdim);
        let mut rows = vec![T::zero(); batch.n * active.dim];
        net.vjp_per_sample(&p.theta, &tape, g, 1, active, &mut rows);
        f(batch.start, batch.n, &rows);
    }
}

/// Per-sample gradients `∇ℓ_n`: `[N, D_S]`.
pub fn per_sample_grads<T: Float>(p: &Problem<T>, active: &ActiveSet, batch_size: usize) -> Vec<T> {
    let d = active.dim;
    let mut out = vec![T::zero(); p.data.n * d];
    for_each_per_sample_grads(p, active, batch_size, |start, n, rows| {
        out[start * d..(start + n) * d].copy_from_slice(rows);
    });
    out
}

/// A first-order quantity (see the module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstOrder {
    /// `∇ℓ_n`.
    Grad,
    /// `c ∇ℓ_n`.
    BatchGrad,
    /// `‖c ∇ℓ_n‖²` per parameter tensor.
    L2,
    /// `Σ_n (c ∇ℓ_n)²`.
    SumGradSquared,
    /// `1/N Σ_n (c∇ℓ_n)² − (1/N ∇L)²`.
    Variance,
}

/// Computes a first-order quantity: `(shape, values)`.
pub fn first_order<T: Float>(
    p: &Problem<T>,
    active: &ActiveSet,
    batch_size: usize,
    q: FirstOrder,
) -> (Vec<usize>, Vec<T>) {
    let d = active.dim;
    let n_total = p.data.n;
    let c = T::of(p.net.loss.factor(n_total, p.net.out_size()));
    let names = active.names(&p.net.layout);
    match q {
        FirstOrder::Grad | FirstOrder::BatchGrad => {
            let mut v = per_sample_grads(p, active, batch_size);
            if q == FirstOrder::BatchGrad {
                curvops_tensor::ops::scale(c, &mut v);
            }
            (vec![n_total, d], v)
        }
        FirstOrder::L2 => {
            let np = names.len();
            let mut out = vec![T::zero(); n_total * np];
            for_each_per_sample_grads(p, active, batch_size, |start, n, rows| {
                for s in 0..n {
                    for (j, (e, off)) in names.iter().enumerate() {
                        let sl = &rows[s * d + off..s * d + off + e.len];
                        out[(start + s) * np + j] = c * c * curvops_tensor::ops::dot(sl, sl);
                    }
                }
            });
            (vec![n_total, np], out)
        }
        FirstOrder::SumGradSquared | FirstOrder::Variance => {
            let mut sgs = vec![T::zero(); d];
            let mut sum = vec![T::zero(); d];
            for_each_per_sample_grads(p, active, batch_size, |_, n, rows| {
                for s in 0..n {
                    for ((a, b), &g) in sgs.iter_mut().zip(sum.iter_mut()).zip(&rows[s * d..(s + 1) * d]) {
                        let cg = c * g;
                        *a += cg * cg;
                        *b += cg;
                    }
                }
            });
            if q == FirstOrder::Variance {
                let nn = T::of(n_total as f64);
                for (a, b) in sgs.iter_mut().zip(&sum) {
                    let mean = *b / nn;
                    *a = *a / nn - mean * mean;
                }
            }
            (vec![d], sgs)
        }
    }
}
