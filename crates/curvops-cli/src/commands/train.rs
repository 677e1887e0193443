//! `curvops train`: mini-batch SGD / Adam / AdamW with PyTorch's update rules, writing the
//! weights as safetensors in the layout (keys, dtypes, buffers) of the input weights file.

use crate::args::{Common, Dtype};
use crate::common::{self, CliResult, Progress};
use crate::obj;
use crate::output::emit;
use curvops::laplace::predictive::classes_of;
use curvops::metrics;
use curvops::optim::{self, OptimizerKind, TrainOptions};
use curvops::Problem;
use curvops_nn::data_formats::{load_dataset, LoadOptions};
use curvops_nn::io::{load_weights, read_model};
use curvops_nn::{Dataset, LossKind, Network, Targets};
use curvops_tensor::Float;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Flags that say how data files are read (CSV label column, scaling, splits).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DataFlags {
    /// CSV: the label column(s), by name or 0-based index, comma separated (default: the
    /// column named label/y/target, else the last).
    #[arg(long)]
    pub label_column: Option<String>,
    /// Divide the inputs by this (default 255 for 8-bit IDX images, else 1).
    #[arg(long)]
    pub x_scale: Option<f64>,
    /// Shuffle the rows of every data file with this seed before its `@A:B` row slice.
    #[arg(long)]
    pub permute_seed: Option<u64>,
    /// Targets of `--data` when it is a `.npy` or IDX input file.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Targets of `--test-data` when it is a `.npy` or IDX input file.
    #[arg(long)]
    pub test_labels: Option<PathBuf>,
}

impl DataFlags {
    /// Options for `--data` (`test = false`) or `--test-data`.
    pub fn options(&self, test: bool) -> LoadOptions {
        LoadOptions {
            label_column: self.label_column.clone(),
            x_scale: self.x_scale,
            permute_seed: self.permute_seed,
            labels: if test { self.test_labels.clone() } else { self.labels.clone() },
        }
    }
}

/// The optimizer (PyTorch's `torch.optim` classes).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opt {
    /// `torch.optim.SGD`.
    Sgd,
    /// `torch.optim.Adam` (L2 weight decay).
    Adam,
    /// `torch.optim.AdamW` (decoupled weight decay).
    Adamw,
    /// Newton-CG (Hessian-free) with Levenberg–Marquardt damping; `--debias a|b` for the
    /// debiased mini-batch step.
    NewtonCg,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub data_flags: DataFlags,
    /// Passes over the data.
    #[arg(long)]
    pub epochs: usize,
    /// The optimizer.
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: Opt,
    /// Learning rate (required for sgd/adam/adamw; newton-cg: default 1, the full step).
    #[arg(long)]
    pub lr: Option<f64>,
    /// newton-cg: initial Levenberg–Marquardt damping.
    #[arg(long, default_value_t = 1e-3)]
    pub damping: f64,
    /// newton-cg: CG iterations per step.
    #[arg(long, default_value_t = 50)]
    pub cg_iters: usize,
    /// newton-cg: the debiased step (directions from B₁, step lengths from an independent B₂).
    #[arg(long, value_enum)]
    pub debias: Option<super::solve::DebiasVariant>,
    /// newton-cg: the curvature of the quadratic model.
    #[arg(long, value_enum, default_value = "ggn")]
    pub curvature: NewtonCurvature,
    /// newton-cg: judge each step (reduction ratio, acceptance) on a freshly drawn batch
    /// instead of the batch that measured it.
    #[arg(long)]
    pub fresh_judge: bool,
    /// newton-cg: keep --damping fixed and take every step (no Levenberg–Marquardt
    /// adaptation, no rejection).
    #[arg(long)]
    pub fixed_damping: bool,
    /// newton-cg: stop once this many curvature products (columns) are spent.
    #[arg(long)]
    pub max_products: Option<usize>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f64,
    /// SGD with Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay λ (L2 for sgd/adam: the Gaussian prior τ = λ·N·s/(c(B)·B·σ²), e.g. N·λ for
    /// mean cross-entropy; decoupled for adamw).
    #[arg(long, conflicts_with = "prior_precision")]
    pub weight_decay: Option<f64>,
    /// Train as the MAP under the prior N(0, τ⁻¹I): sets the L2 weight decay from τ.
    #[arg(long)]
    pub prior_precision: Option<f64>,
    /// Regression noise σ for the weight decay ↔ prior relation.
    #[arg(long, default_value_t = 1.0)]
    pub sigma: f64,
    /// Adam's (β₁, β₂).
    #[arg(long, value_delimiter = ',', default_values_t = [0.9, 0.999])]
    pub betas: Vec<f64>,
    /// Adam's ε.
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    /// Keep the sample order (no shuffling).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Test data for the final report.
    #[arg(long)]
    pub test_data: Option<String>,
    /// Also write `OUT_STEM.epochE.safetensors` every this many epochs.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// The trained weights (safetensors, same keys and dtype as --weights).
    #[arg(long)]
    pub out: PathBuf,
}

/// The curvature of Newton-CG's quadratic model.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewtonCurvature {
    /// The generalized Gauss-Newton (positive semi-definite).
    Ggn,
    /// The Hessian (CG stops at negative curvature).
    Hessian,
}

/// Loads model, weights and a data spec in dtype `T`.
pub fn load_problem_spec<T: Float>(c: &Common, flags: &DataFlags) -> CliResult<Problem<T>> {
    let (m, w, _) = common::problem_paths(c)?;
    let data = match (&c.data, &c.problem) {
        (Some(d), _) => d.display().to_string(),
        (None, Some(dir)) => dir.join("data.safetensors").display().to_string(),
        (None, None) => return Err("--data is required (or --problem DIR with data.safetensors)".into()),
    };
    let spec = read_model(&m).map_err(|e| e.to_string())?;
    let (net, theta) = load_weights::<T>(&spec, &m.display().to_string(), &w).map_err(|e| e.to_string())?;
    for w in &net.warnings {
        eprintln!("warning: {w}");
    }
    let data = load_dataset(&net, &data, &flags.options(false)).map_err(|e| e.to_string())?;
    Ok(Problem { net, theta, data })
}

/// The loss `L` on a data set and the accuracy for class labels (NaN otherwise; per token for
/// sequence outputs).
pub fn loss_and_accuracy<T: Float>(net: &Network<T>, theta: &[T], d: &Dataset<T>) -> (f64, f64) {
    let c = net.out_size();
    let v = classes_of(net);
    let mut loss = 0.0;
    let mut hits = 0usize;
    let mut labels = 0usize;
    for b in curvops::DataWalk::new(d, 1024).batches() {
        let f = net.predict(theta, b.x, b.n);
        loss += net.loss.values(&f, b.y, b.n, c).iter().map(|v| v.as_f64()).sum::<f64>();
        if let curvops_nn::TargetsRef::Classes(y) = b.y {
            let fd: Vec<f64> = f.iter().map(|v| v.as_f64()).collect();
            hits += y.iter().enumerate().filter(|&(r, &yy)| metrics::argmax(&fd[r * v..(r + 1) * v]) == yy).count();
            labels += y.len();
        }
    }
    let acc = if matches!(d.y, Targets::Classes(_)) { hits as f64 / labels.max(1) as f64 } else { f64::NAN };
    (net.loss.factor(d.n, c) * loss, acc)
}

pub fn run(a: &Args, c: &Common) -> CliResult<()> {
    let dtype = common::dtype_of(c)?;
    match dtype {
        Dtype::F32 => run_typed::<f32>(a, c),
        Dtype::F64 => run_typed::<f64>(a, c),
    }
}

fn checkpoint_path(out: &Path, epoch: usize) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "weights".into());
    out.with_file_name(format!("{stem}.epoch{epoch}.safetensors"))
}

fn run_typed<T: Float>(a: &Args, c: &Common) -> CliResult<()> {
    if a.epochs == 0 {
        return Err("--epochs must be positive".into());
    }
    if a.optimizer != Opt::NewtonCg && (a.debias.is_some() || a.max_products.is_some()) {
        return Err("--debias and --max-products apply to --optimizer newton-cg".into());
    }
    let lr = match (a.lr, a.optimizer) {
        (Some(lr), _) => lr,
        (None, Opt::NewtonCg) => 1.0,
        (None, _) => return Err("--lr is required for sgd, adam and adamw".into()),
    };
    if !(lr.is_finite() && lr > 0.0) {
        return Err("--lr must be positive".into());
    }
    let mut p = load_problem_spec::<T>(c, &a.data_flags)?;
    let test = match &a.test_data {
        Some(t) => Some(load_dataset(&p.net, t, &a.data_flags.options(true)).map_err(|e| e.to_string())?),
        None => None,
    };
    let (_, weights, _) = common::problem_paths(c)?;
    let bs = common::batch_size(c)?;
    let mut notes: Vec<&str> = p.net.layers.iter().filter_map(|l| l.training_note()).collect();
    notes.sort_unstable();
    notes.dedup();
    for note in notes {
        eprintln!("warning: {note}");
    }
    let (n, cout) = (p.data.n, p.net.out_size());
    let weight_decay = match (a.weight_decay, a.prior_precision) {
        (Some(w), _) => w,
        (None, Some(tau)) => optim::weight_decay_of_prior_precision(p.net.loss, n, cout, bs, a.sigma, tau),
        (None, None) => 0.0,
    };
    if !(weight_decay.is_finite() && weight_decay >= 0.0) {
        return Err("--weight-decay must be non-negative".into());
    }
    let betas = match a.betas.as_slice() {
        [b1, b2] => (*b1, *b2),
        _ => return Err("--betas takes two values, e.g. 0.9,0.999".into()),
    };
    let kind = match a.optimizer {
        Opt::Sgd => OptimizerKind::Sgd { lr, momentum: a.momentum, nesterov: a.nesterov, weight_decay },
        Opt::Adam => OptimizerKind::Adam { lr, betas, eps: a.eps, weight_decay },
        Opt::Adamw => OptimizerKind::AdamW { lr, betas, eps: a.eps, weight_decay },
        Opt::NewtonCg => {
            if weight_decay != 0.0 {
                return Err("--weight-decay / --prior-precision are not supported by newton-cg".into());
            }
            return run_newton(a, c, p, test.as_ref(), lr, bs);
        }
    };
    let opts = TrainOptions { epochs: a.epochs, batch_size: bs, optimizer: kind, seed: c.seed, shuffle: !a.no_shuffle };
    let (loss0, _) = loss_and_accuracy(&p.net, &p.theta, &p.data);
    let t0 = Instant::now();
    let bar = Progress::new(a.epochs, "training");
    let mut err = None;
    let net = &p.net;
    let mut theta = p.theta.clone();
    let history = {
        let mut ckpt = |st: &optim::EpochStats, th: &[T]| {
            if let Some(every) = a.checkpoint_every {
                if every > 0 && st.epoch.is_multiple_of(every) && err.is_none() {
                    if let Err(e) = optim::write_checkpoint(&checkpoint_path(&a.out, st.epoch), &weights, net, th) {
                        err = Some(e.to_string());
                    }
                }
            }
        };
        let mut prog = |step: usize, total: usize| bar.set(step * a.epochs / total.max(1), a.epochs);
        optim::train(net, &mut theta, &p.data, &opts, &mut prog, &mut ckpt)
    };
    drop(bar);
    if let Some(e) = err {
        return Err(e);
    }
    let seconds = t0.elapsed().as_secs_f64();
    p.theta = theta;
    optim::write_checkpoint(&a.out, &weights, &p.net, &p.theta).map_err(|e| e.to_string())?;
    let (loss, acc) = loss_and_accuracy(&p.net, &p.theta, &p.data);
    let tau = if kind.l2_weight_decay() > 0.0 {
        Some(optim::prior_precision_of_weight_decay(p.net.loss, n, cout, bs, a.sigma, weight_decay))
    } else {
        None
    };
    let mut o = obj! {
        "epochs" => a.epochs,
        "optimizer" => kind.name(),
        "lr" => lr,
        "weight_decay" => weight_decay,
        "prior_precision" => tau,
        "batch_size" => if bs == 0 { n } else { bs },
        "N" => n,
        "dtype" => T::DTYPE,
        "loss_initial" => loss0,
        "loss" => loss,
        "epoch_losses" => history.iter().map(|h| h.loss).collect::<Vec<f64>>(),
        "seconds" => seconds,
        "out" => a.out.display().to_string(),
    };
    insert_metrics(&mut o, &p, acc, test.as_ref());
    emit(c.json, o);
    Ok(())
}

/// `train --optimizer newton-cg`.
fn run_newton<T: Float>(
    a: &Args,
    c: &Common,
    mut p: Problem<T>,
    test: Option<&Dataset<T>>,
    lr: f64,
    bs: usize,
) -> CliResult<()> {
    use curvops::optim::{train_newton_cg, NewtonCgOptions};
    if bs == 0 {
        return Err("--batch-size B is required for newton-cg (the mini-batch of the quadratic model)".into());
    }
    let (_, weights, _) = common::problem_paths(c)?;
    let active = common::active(c, &p)?;
    let opts = NewtonCgOptions {
        curvature: match a.curvature {
            NewtonCurvature::Ggn => curvops::Curvature::Ggn,
            NewtonCurvature::Hessian => curvops::Curvature::Hessian,
        },
        batch_size: bs,
        epochs: a.epochs,
        lr,
        damping: a.damping,
        cg_iters: a.cg_iters,
        cg_tol: 1e-10,
        debias: a.debias.map(|v| v.variant()),
        seed: c.seed,
        max_products: a.max_products,
        fresh_judge: a.fresh_judge,
        fixed_damping: a.fixed_damping,
    };
    let (loss0, _) = loss_and_accuracy(&p.net, &p.theta, &p.data);
    let t0 = Instant::now();
    let bar = Progress::new(a.epochs, "newton-cg");
    let mut err = None;
    let (history, steps) = {
        let mut ckpt = |st: &optim::EpochStats, pr: &Problem<T>| {
            bar.set(st.epoch, a.epochs);
            if let Some(every) = a.checkpoint_every {
                if every > 0 && st.epoch.is_multiple_of(every) && err.is_none() {
                    let path = checkpoint_path(&a.out, st.epoch);
                    if let Err(e) = optim::write_checkpoint(&path, &weights, &pr.net, &pr.theta) {
                        err = Some(e.to_string());
                    }
                }
            }
        };
        train_newton_cg(&mut p, &active, &opts, &mut |_, _| {}, &mut ckpt).map_err(|e| format!("train: {e}"))?
    };
    drop(bar);
    if let Some(e) = err {
        return Err(e);
    }
    let seconds = t0.elapsed().as_secs_f64();
    optim::write_checkpoint(&a.out, &weights, &p.net, &p.theta).map_err(|e| e.to_string())?;
    let (loss, acc) = loss_and_accuracy(&p.net, &p.theta, &p.data);
    let mut o = obj! {
        "epochs" => history.len(),
        "optimizer" => "newton-cg",
        "debias" => a.debias.map(|v| v.variant().name()),
        "curvature" => opts.curvature.name(),
        "lr" => lr,
        "damping_initial" => a.damping,
        "damping_final" => steps.last().map_or(a.damping, |s| s.damping),
        "cg_iters" => a.cg_iters,
        "steps" => steps.len(),
        "accepted_steps" => steps.iter().filter(|s| s.accepted).count(),
        "curvature_products" => steps.last().map_or(0, |s| s.products),
        "batch_size" => bs,
        "N" => p.data.n,
        "dtype" => T::DTYPE,
        "loss_initial" => loss0,
        "loss" => loss,
        "epoch_losses" => history.iter().map(|h| h.loss).collect::<Vec<f64>>(),
        "seconds" => seconds,
        "out" => a.out.display().to_string(),
    };
    insert_metrics(&mut o, &p, acc, test);
    emit(c.json, o);
    Ok(())
}

/// Adds the training accuracy (classification) and the test loss and accuracy to a train JSON.
fn insert_metrics<T: Float>(
    o: &mut serde_json::Map<String, serde_json::Value>,
    p: &Problem<T>,
    acc: f64,
    test: Option<&Dataset<T>>,
) {
    let ce = p.net.loss.kind == LossKind::CrossEntropy;
    if ce {
        o.insert("train_accuracy".into(), serde_json::json!(acc));
    }
    if let Some(t) = test {
        let (tl, ta) = loss_and_accuracy(&p.net, &p.theta, t);
        o.insert("test_loss".into(), serde_json::json!(tl));
        if ce {
            o.insert("test_accuracy".into(), serde_json::json!(ta));
        }
    }
}
