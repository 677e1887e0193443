//! Mini-batch training and the relation between weight decay and the Gaussian prior.
//!
//! # Weight decay as a prior
//! A step on mini-batch `b` (`B` samples) minimizes `L_b(θ) + λ/2 ‖θ‖²` with
//! `L_b = c(B) Σ_{n∈b} ℓ_n` (`c(B)` the loss's reduction factor, SPEC.md §3). Over an epoch
//! `E[L_b] = c(B)·B/N · Σ_n ℓ_n`, and `Σ_n ℓ_n = σ²/s · (−log p(D | θ))` (`s = ½`, noise `σ`
//! for MSE; `s = σ = 1` otherwise). So training minimizes a multiple of
//! `−log p(D | θ) + τ/2 ‖θ‖²`, the negative log joint under the prior `N(0, τ⁻¹I)`, with
//!
//! `τ = λ · N · s / (c(B) · B · σ²)`,
//!
//! i.e. `τ = N·λ` for mean cross-entropy, `τ = N·λ/B` for summed cross-entropy, and
//! `τ = N·C·λ/(2σ²)` for mean MSE. (For the MAP interpretation use SGD or Adam with L2 weight
//! decay; AdamW's decoupled decay has other fixed points.)

use super::{Optimizer, OptimizerKind};
use curvops_nn::data::Dataset;
use curvops_nn::loss::{Loss, LossKind};
use curvops_nn::{ActiveSet, Network};
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use std::time::Instant;

/// Options of [`train`].
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Mini-batch size (0: the whole data set).
    pub batch_size: usize,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Seed of the shuffling.
    pub seed: u64,
    /// Shuffle the samples every epoch (PyTorch's `DataLoader(shuffle=True)`); otherwise
    /// consecutive batches.
    pub shuffle: bool,
}

/// Statistics of one epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochStats {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean of the mini-batch losses (as PyTorch reports them, weighted by batch size).
    pub loss: f64,
    /// Seconds since training started.
    pub seconds: f64,
}

/// `τ` of the Gaussian prior that weight decay `λ` implements (see the module docs), for `n`
/// training samples with `c_out` outputs, mini-batches of `batch_size` (0: all) and noise `σ`.
pub fn prior_precision_of_weight_decay(
    loss: Loss,
    n: usize,
    c_out: usize,
    batch_size: usize,
    sigma: f64,
    weight_decay: f64,
) -> f64 {
    let b = if batch_size == 0 { n } else { batch_size.min(n) };
    let s = if loss.kind == LossKind::Mse { 0.5 } else { 1.0 };
    let sigma = if loss.kind == LossKind::Mse { sigma } else { 1.0 };
    weight_decay * n as f64 * s / (loss.factor(b, c_out) * b as f64 * sigma * sigma)
}

/// The weight decay `λ` that implements the prior precision `τ` (inverse of
/// [`prior_precision_of_weight_decay`]).
pub fn weight_decay_of_prior_precision(
    loss: Loss,
    n: usize,
    c_out: usize,
    batch_size: usize,
    sigma: f64,
    tau: f64,
) -> f64 {
    tau / prior_precision_of_weight_decay(loss, n, c_out, batch_size, sigma, 1.0)
}

/// Trains `theta` on `data` with mini-batches: per batch the loss as PyTorch computes it on the
/// batch (`c(B) Σ_{n∈b} ℓ_n`), its gradient by one forward and one backward pass, and one
/// optimizer step. `progress(step, total)` is called after every step, `on_epoch` after every
/// epoch with its statistics and the parameters. Batch-norm layers keep their running statistics (evaluation mode) and dropout is the
/// identity.
pub fn train<T: Float>(
    net: &Network<T>,
    theta: &mut [T],
    data: &Dataset<T>,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(usize, usize),
    on_epoch: &mut dyn FnMut(&EpochStats, &[T]),
) -> Vec<EpochStats> {
    let all = ActiveSet::all(&net.layout);
    let c = net.out_size();
    let n = data.n;
    let bs = if opts.batch_size == 0 { n } else { opts.batch_size.min(n) };
    let per_epoch = n.div_ceil(bs);
    let total = per_epoch * opts.epochs;
    let mut opt = Optimizer::<T>::new(opts.optimizer, theta.len());
    let mut rng = Rng::new(opts.seed);
    let t0 = Instant::now();
    let mut history = Vec::with_capacity(opts.epochs);
    let mut grad = vec![T::zero(); theta.len()];
    for epoch in 1..=opts.epochs {
        let order: Vec<usize> = if opts.shuffle { rng.permutation(n) } else { (0..n).collect() };
        let mut loss_sum = 0.0;
        for (bi, idx) in order.chunks(bs).enumerate() {
            let sub;
            let batch = if opts.shuffle {
                sub = data.select(idx);
                sub.batch(0, idx.len())
            } else {
                data.batch(idx[0], idx.len())
            };
            let factor = net.loss.factor(batch.n, c);
            let tape = net.forward(theta, batch.x, batch.n);
            let (vals, mut g) = net.loss.values_and_grad(tape.output(), batch.y, batch.n, c);
            loss_sum += factor * vals.iter().map(|v| v.as_f64()).sum::<f64>() * batch.n as f64;
            curvops_tensor::ops::scale(T::of(factor), &mut g);
            grad.fill(T::zero());
            net.vjp(theta, &tape, g, 1, &all, &mut grad);
            opt.step(theta, &grad);
            progress((epoch - 1) * per_epoch + bi + 1, total);
        }
        let st = EpochStats { epoch, loss: loss_sum / n as f64, seconds: t0.elapsed().as_secs_f64() };
        on_epoch(&st, theta);
        history.push(st);
    }
    history
}

/// Writes `theta` as a safetensors state dict in the layout of the weights file `template`:
/// the same keys, shapes and dtypes; parameters hold `theta` (converted to the file's dtype),
/// every other tensor (batch-norm buffers, `num_batches_tracked`) is copied unchanged — so
/// `torch.load_state_dict` accepts the result wherever it accepted the template.
pub fn write_checkpoint<T: Float>(
    path: &std::path::Path,
    template: &std::path::Path,
    net: &Network<T>,
    theta: &[T],
) -> Result<(), String> {
    use safetensors::tensor::TensorView;
    use safetensors::{Dtype, SafeTensors};
    let tp = template.display().to_string();
    let bytes = std::fs::read(template).map_err(|e| format!("{tp}: {e}"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{tp}: {e}"))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| format!("{tp}: {e}"))?;
    let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let data = match net.layout.find(&name) {
            Some(i) => {
                let e = &net.layout.entries[i];
                let vals = &theta[e.offset..e.offset + e.len];
                let mut b = Vec::with_capacity(vals.len() * 8);
                match view.dtype() {
                    Dtype::F32 => vals.iter().for_each(|v| b.extend_from_slice(&(v.as_f64() as f32).to_le_bytes())),
                    Dtype::F64 => vals.iter().for_each(|v| b.extend_from_slice(&v.as_f64().to_le_bytes())),
                    d => return Err(format!("{tp}: parameter '{name}' has dtype {d:?}, expected f32 or f64")),
                }
                b
            }
            None => view.data().to_vec(),
        };
        out.push((name, view.dtype(), view.shape().to_vec(), data));
    }
    let p = path.display().to_string();
    let views = out
        .iter()
        .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)).map_err(|e| format!("{p}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::tensor::serialize_to_file(views, header.metadata().clone(), path).map_err(|e| format!("{p}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use curvops_nn::loss::Reduction;

    #[test]
    fn weight_decay_relation() {
        let ce = Loss { kind: LossKind::CrossEntropy, reduction: Reduction::Mean, positions: 1 };
        assert!((prior_precision_of_weight_decay(ce, 1200, 10, 64, 1.0, 1e-3) - 1.2).abs() < 1e-12);
        let ces = Loss { kind: LossKind::CrossEntropy, reduction: Reduction::Sum, positions: 1 };
        assert!((prior_precision_of_weight_decay(ces, 1200, 10, 100, 1.0, 1e-3) - 0.012).abs() < 1e-12);
        let mse = Loss { kind: LossKind::Mse, reduction: Reduction::Mean, positions: 1 };
        let t = prior_precision_of_weight_decay(mse, 150, 1, 32, 0.3, 1e-3);
        assert!((t - 150.0 * 1e-3 / (2.0 * 0.09)).abs() < 1e-9);
        assert!((weight_decay_of_prior_precision(mse, 150, 1, 32, 0.3, t) - 1e-3).abs() < 1e-15);
    }
}
