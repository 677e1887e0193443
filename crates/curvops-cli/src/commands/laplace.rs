//! `curvops laplace fit|predict|evaluate`: Laplace approximations with laplace-torch 0.3's
//! conventions (SPEC.md §4). Computes in f64 unless `--dtype f32` is given: log-determinants
//! of posterior precisions need it.

use crate::args::{Common, Curv, Dtype};
use crate::commands::train::{load_problem_spec, DataFlags};
use crate::common::{self, CliResult, Progress};
use crate::obj;
use crate::output::emit;
use curvops::laplace::marglik::{logspace, PriorStructure};
use curvops::laplace::predictive::{classes_of, map_predict};
use curvops::laplace::{
    self, io as lio, select_prior, HessianStructure, KfacSampling, LaplaceFit, LaplaceOptions, Likelihood, Link,
    Posterior, PredictiveMetrics, PriorChoice, PriorPrecision, PriorSelection,
};
use curvops::{metrics, ActiveSet, Curvature, Problem};
use curvops_nn::data_formats::load_dataset;
use curvops_nn::io::{load_weights, read_model};
use curvops_nn::{Dataset, Network, Targets};
use curvops_tensor::Float;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Fit a Laplace approximation (and its prior precision) and save the posterior.
    Fit(FitArgs),
    /// Predict with a saved posterior (no pass over the training data).
    Predict(PredictArgs),
    /// Fit on --data and report MAP vs Laplace metrics on --test-data.
    Evaluate(EvaluateArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StructureArg {
    Full,
    Diag,
    Kfac,
    Lowrank,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsetArg {
    /// All parameters.
    All,
    /// The parameters of the last layer that has any.
    LastLayer,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriorArg {
    /// Maximize the log marginal likelihood.
    Marglik,
    /// Minimize the validation NLL over a grid (--val-data).
    Gridsearch,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriorStructureArg {
    Scalar,
    Layerwise,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkArg {
    Probit,
    Mc,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredArg {
    /// Linearized (GLM) predictive.
    Glm,
    /// Sampled networks.
    Nn,
}

/// What to fit and how to choose the prior.
#[derive(clap::Args, Debug, Clone)]
pub struct FitFlags {
    /// Structure of the curvature.
    #[arg(long, value_enum, default_value = "kfac")]
    pub structure: StructureArg,
    /// Parameters of the posterior (--params overrides: a subnetwork of named tensors).
    #[arg(long, value_enum, default_value = "all")]
    pub subset: SubsetArg,
    /// A subnetwork given by parameter indices (into the selected tensors' flat vector): a
    /// .npy file of indices or a comma-separated list.
    #[arg(long)]
    pub indices: Option<String>,
    /// Curvature: ggn, ef, fisher-mc (--mc-samples) or hessian (full only).
    #[arg(long, value_enum, default_value = "ggn")]
    pub curvature: Curv,
    /// Rank of the low-rank structure.
    #[arg(long, default_value_t = 20)]
    pub rank: usize,
    /// How to choose the prior precision (ignored with --prior-precision).
    #[arg(long, value_enum, default_value = "marglik")]
    pub prior: PriorArg,
    /// A fixed prior precision τ (one value, or one per parameter tensor, comma separated).
    #[arg(long, value_delimiter = ',')]
    pub prior_precision: Option<Vec<f64>>,
    /// Scalar or per-tensor τ for --prior marglik.
    #[arg(long, value_enum, default_value = "scalar")]
    pub prior_structure: PriorStructureArg,
    /// Regression noise σ (default: optimized with --prior marglik, else 1).
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Likelihood temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Validation data for --prior gridsearch.
    #[arg(long)]
    pub val_data: Option<String>,
    /// Grid of --prior gridsearch: log10 of the bounds and the count, e.g. -4,4,100.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, default_values_t = [-4.0, 4.0, 100.0])]
    pub grid: Vec<f64>,
    /// Debiased KFAC (--structure kfac): Kronecker eigenbases from a batch B₁ of --batch-size B
    /// random training samples, their eigenvalues re-estimated on the next B samples (B₂,
    /// disjoint); the permutation is drawn with --seed. With --debias, --batch-size is B.
    #[arg(long)]
    pub debias: bool,
    /// Plain KFAC (--structure kfac) on M random training samples (the first M of the
    /// permutation drawn with --seed: 2B gives B₁ ∪ B₂ of --debias, B gives B₁).
    #[arg(long)]
    pub fit_samples: Option<usize>,
    /// EKFAC Laplace (--structure kfac): KFAC's eigenbases with eigenvalues corrected on the
    /// same samples (all, or --fit-samples M) — the biased counterpart of --debias.
    #[arg(long)]
    pub ekfac: bool,
}

/// How to predict.
#[derive(clap::Args, Debug, Clone)]
pub struct PredictFlags {
    /// Linearized (glm) or sampled-network (nn) predictive.
    #[arg(long, value_enum, default_value = "glm")]
    pub pred: PredArg,
    /// Link of the linearized classification predictive.
    #[arg(long, value_enum, default_value = "probit")]
    pub link: LinkArg,
    /// Draws for --link mc and --pred nn.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// ECE bins.
    #[arg(long, default_value_t = 15)]
    pub bins: usize,
}

#[derive(clap::Args, Debug)]
pub struct FitArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub data_flags: DataFlags,
    #[command(flatten)]
    pub fit: FitFlags,
    /// The posterior (safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub data_flags: DataFlags,
    #[command(flatten)]
    pub predict: PredictFlags,
    /// A posterior written by `laplace fit`.
    #[arg(long)]
    pub posterior: PathBuf,
    /// Inputs (and targets, for metrics).
    #[arg(long)]
    pub test_data: String,
    /// Class probabilities [N, C] (regression: means) as .npy.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Regression: predictive variances [N, C] as .npy.
    #[arg(long)]
    pub out_var: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub data_flags: DataFlags,
    #[command(flatten)]
    pub fit: FitFlags,
    #[command(flatten)]
    pub predict: PredictFlags,
    /// Test data.
    #[arg(long)]
    pub test_data: String,
    /// Out-of-distribution inputs: AUROC of max-probability scores (test vs these).
    #[arg(long)]
    pub ood_data: Option<String>,
    /// Also evaluate on the test inputs with added Gaussian noise of this standard deviation.
    #[arg(long)]
    pub shift_noise: Option<f64>,
    /// Reliability diagram (SVG) of MAP and Laplace on the test data.
    #[arg(long)]
    pub reliability: Option<PathBuf>,
    /// Also save the posterior.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: &Args) -> CliResult<()> {
    let c = match &a.action {
        Action::Fit(f) => &f.common,
        Action::Predict(p) => &p.common,
        Action::Evaluate(e) => &e.common,
    };
    common::set_threads(c)?;
    match c.dtype.unwrap_or(Dtype::F64) {
        Dtype::F32 => run_typed::<f32>(a),
        Dtype::F64 => run_typed::<f64>(a),
    }
}

fn run_typed<T: Float>(a: &Args) -> CliResult<()> {
    match &a.action {
        Action::Fit(f) => fit_cmd::<T>(f),
        Action::Predict(p) => predict_cmd::<T>(p),
        Action::Evaluate(e) => evaluate_cmd::<T>(e),
    }
}

fn structure_of(f: &FitFlags) -> HessianStructure {
    match f.structure {
        StructureArg::Full => HessianStructure::Full,
        StructureArg::Diag => HessianStructure::Diag,
        StructureArg::Kfac => HessianStructure::Kron,
        StructureArg::Lowrank => HessianStructure::LowRank { rank: f.rank },
    }
}

fn curvature_of(f: &FitFlags, c: &Common) -> CliResult<Curvature> {
    Ok(match f.curvature {
        Curv::Ggn => Curvature::Ggn,
        Curv::Ef => Curvature::Ef,
        Curv::Hessian => Curvature::Hessian,
        Curv::FisherMc => {
            if c.mc_samples == 0 {
                return Err("--mc-samples must be positive".into());
            }
            Curvature::FisherMc { samples: c.mc_samples, seed: c.seed }
        }
        other => {
            return Err(format!("--curvature {other:?} is not a Laplace curvature (use ggn, ef, fisher-mc or hessian)"))
        }
    })
}

/// The posterior's tensors: --params, else --subset.
fn active_of<T: Float>(f: &FitFlags, c: &Common, net: &Network<T>) -> CliResult<(ActiveSet, &'static str)> {
    if let Some(names) = &c.params {
        return Ok((ActiveSet::from_names(&net.layout, names).map_err(|e| format!("--params: {e}"))?, "params"));
    }
    Ok(match f.subset {
        SubsetArg::All => (ActiveSet::all(&net.layout), "all"),
        SubsetArg::LastLayer => (laplace::last_layer(net).ok_or("the model has no parameters")?, "last-layer"),
    })
}

fn parse_indices(s: &str) -> CliResult<Vec<usize>> {
    let mut v: Vec<usize> = if s.ends_with(".npy") {
        let arr = curvops_nn::data_formats::read_npy_array(std::path::Path::new(s)).map_err(|e| e.to_string())?;
        arr.data.iter().map(|&x| x as usize).collect()
    } else {
        s.split(',')
            .map(|t| t.trim().parse::<usize>().map_err(|_| format!("--indices: '{t}' is not an index")))
            .collect::<Result<_, _>>()?
    };
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// The samples of a KFAC curvature: --debias (with --batch-size B), --fit-samples M, or all.
fn kfac_sampling_of(f: &FitFlags, c: &Common, n: usize) -> CliResult<KfacSampling> {
    let kfac = f.structure == StructureArg::Kfac;
    if f.debias {
        if !kfac {
            return Err("--debias applies to --structure kfac only".into());
        }
        if f.fit_samples.is_some() || f.ekfac {
            return Err("--fit-samples and --ekfac exclude --debias (--debias uses 2·--batch-size samples)".into());
        }
        let b = c.batch_size.ok_or("--debias needs --batch-size B (the size of each of the two batches)")?;
        if b == 0 || 2 * b > n {
            return Err(format!("--batch-size {b}: --debias needs 1 ≤ B and 2·B ≤ N = {n} training samples"));
        }
        return Ok(KfacSampling::Debiased { batch: b, seed: c.seed });
    }
    if f.ekfac && !kfac {
        return Err("--ekfac applies to --structure kfac only".into());
    }
    match f.fit_samples {
        None if f.ekfac => Ok(KfacSampling::Ekfac { samples: n, seed: c.seed }),
        None => Ok(KfacSampling::All),
        Some(_) if !kfac => Err("--fit-samples applies to --structure kfac only".into()),
        Some(m) if m == 0 || m > n => Err(format!("--fit-samples {m} must be between 1 and N = {n} training samples")),
        Some(m) if f.ekfac => Ok(KfacSampling::Ekfac { samples: m, seed: c.seed }),
        Some(m) => Ok(KfacSampling::Subset { samples: m, seed: c.seed }),
    }
}

/// The result of fitting and choosing the prior.
struct Fitted<T: Float> {
    fit: LaplaceFit<T>,
    prior: PriorPrecision,
    sigma: f64,
    how: &'static str,
    subset: &'static str,
    seconds_fit: f64,
    seconds_prior: f64,
    grid: Option<Vec<(f64, f64)>>,
}

fn do_fit<T: Float>(p: &Problem<T>, f: &FitFlags, c: &Common, flags: &DataFlags) -> CliResult<Fitted<T>> {
    let (active, subset) = active_of(f, c, &p.net)?;
    let selection = f.indices.as_deref().map(parse_indices).transpose()?;
    let opts = LaplaceOptions {
        structure: structure_of(f),
        curvature: curvature_of(f, c)?,
        batch_size: common::batch_size(c)?,
        seed: c.seed,
        kfac_sampling: kfac_sampling_of(f, c, p.data.n)?,
        ..Default::default()
    };
    let lik = Likelihood::of(p.net.loss.kind);
    if f.sigma.is_some() && lik != Likelihood::Regression {
        return Err("--sigma applies to regression (mse) models only".into());
    }
    let t0 = Instant::now();
    let bar = Progress::new(1, "fitting Laplace");
    let fit = laplace::fit(p, active, selection, &opts, &|d, t| bar.set(d, t)).map_err(|e| e.to_string())?;
    drop(bar);
    let seconds_fit = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let val;
    let how = if let Some(v) = &f.prior_precision {
        PriorSelection::Fixed(if v.len() == 1 {
            PriorPrecision::Scalar(v[0])
        } else {
            PriorPrecision::Layerwise(v.clone())
        })
    } else {
        match f.prior {
            PriorArg::Marglik => PriorSelection::Marglik(match f.prior_structure {
                PriorStructureArg::Scalar => PriorStructure::Scalar,
                PriorStructureArg::Layerwise => PriorStructure::Layerwise,
            }),
            PriorArg::Gridsearch => {
                let vd = f.val_data.as_deref().ok_or("--prior gridsearch needs --val-data")?;
                val = load_dataset(&p.net, vd, &flags.options(true)).map_err(|e| e.to_string())?;
                let g = &f.grid;
                if g.len() != 3 || g[2] < 1.0 {
                    return Err("--grid takes LO,HI,COUNT (log10 bounds)".into());
                }
                PriorSelection::Gridsearch { val: &val, grid: logspace(g[0], g[1], g[2] as usize) }
            }
        }
    };
    let PriorChoice { prior, sigma, method: how, grid } =
        select_prior(&fit, &p.net, &how, f.sigma, f.temperature).map_err(|e| e.to_string())?;
    Ok(Fitted { fit, prior, sigma, how, subset, seconds_fit, seconds_prior: t1.elapsed().as_secs_f64(), grid })
}

fn fit_cmd<T: Float>(a: &FitArgs) -> CliResult<()> {
    let p = load_problem_spec::<T>(&a.common, &a.data_flags)?;
    let f = do_fit(&p, &a.fit, &a.common, &a.data_flags)?;
    let post = Posterior::new(&f.fit, f.prior.clone(), f.sigma, a.fit.temperature).map_err(|e| e.to_string())?;
    let lml = post.log_marginal_likelihood();
    lio::save(&a.out, &p.net, &f.fit, &f.prior, f.sigma, a.fit.temperature, lml).map_err(|e| e.to_string())?;
    let mut o = summary(&f, &post);
    o.insert("out".into(), json!(a.out.display().to_string()));
    emit(a.common.json, o);
    Ok(())
}

fn summary<T: Float>(f: &Fitted<T>, post: &Posterior<T>) -> Map<String, Value> {
    let mut o = obj! {
        "structure" => f.fit.structure.name(),
        "subset" => f.subset,
        "curvature" => f.fit.curvature.name(),
        "likelihood" => f.fit.likelihood.name(),
        "D" => f.fit.dim(),
        "N" => f.fit.n_data,
        "prior_precision" => f.prior.to_json(),
        "prior_method" => f.how,
        "log_marginal_likelihood" => post.log_marginal_likelihood(),
        "log_likelihood" => post.log_likelihood(),
        "log_det_posterior_precision" => post.logdet(),
        "seconds_fit" => f.seconds_fit,
        "seconds_prior" => f.seconds_prior,
    };
    if f.fit.likelihood == Likelihood::Regression {
        o.insert("sigma".into(), json!(f.sigma));
    }
    if f.fit.structure == HessianStructure::Kron {
        let (basis, values) = f.fit.sampling.counts(f.fit.n_data);
        let (kind, seed) = match f.fit.sampling {
            KfacSampling::All => ("all", None),
            KfacSampling::Subset { seed, .. } => ("subset", Some(seed)),
            KfacSampling::Ekfac { seed, .. } => ("ekfac", Some(seed)),
            KfacSampling::Debiased { seed, .. } => ("debiased", Some(seed)),
        };
        let distinct = if kind == "debiased" { basis + values } else { basis };
        o.insert(
            "curvature_samples".into(),
            json!({"sampling": kind, "basis": basis, "eigenvalues": values, "distinct": distinct, "seed": seed}),
        );
    }
    if let Some(g) = &f.grid {
        o.insert("grid".into(), json!(g.iter().map(|(t, v)| json!([t, v])).collect::<Vec<_>>()));
    }
    o
}

/// Class labels of a data set, if it has them.
fn labels<T: Float>(d: &Dataset<T>) -> Option<&[usize]> {
    match &d.y {
        Targets::Classes(v) => Some(v),
        Targets::Dense(_) => None,
    }
}

/// Predictions: class probabilities (or regression mean) and variance.
fn predict<T: Float>(
    post: &Posterior<T>,
    net: &Network<T>,
    x: &[T],
    n: usize,
    pf: &PredictFlags,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    let lik = post.fit().likelihood;
    match (pf.pred, lik) {
        (PredArg::Nn, _) => post.predict_sampled(net, x, n, pf.samples.max(1), seed),
        (PredArg::Glm, Likelihood::Regression) => post.predict_regression(net, x, n),
        (PredArg::Glm, _) => {
            let link = match pf.link {
                LinkArg::Probit => Link::Probit,
                LinkArg::Mc => Link::Mc { samples: pf.samples.max(1), seed },
            };
            (post.predict_probs(net, x, n, link), Vec::new())
        }
    }
}

/// Metrics of a predictive on a data set ([`PredictiveMetrics`]) as JSON.
fn metric_obj<T: Float>(d: &Dataset<T>, lik: Likelihood, mean: &[f64], var: &[f64], c: usize, bins: usize) -> Value {
    PredictiveMetrics::of(d, lik, mean, var, c, bins).to_json()
}

fn predict_cmd<T: Float>(a: &PredictArgs) -> CliResult<()> {
    let c = &a.common;
    let (m, w, _) = common::problem_paths(&Common { data: Some(PathBuf::from("-")), ..c.clone() })?;
    let spec = read_model(&m).map_err(|e| e.to_string())?;
    let (net, theta) = load_weights::<T>(&spec, &m.display().to_string(), &w).map_err(|e| e.to_string())?;
    let saved = lio::load::<T>(&a.posterior, &net).map_err(|e| e.to_string())?;
    if saved.fit.theta.iter().zip(&theta).any(|(x, y)| x != y) {
        return Err(format!(
            "{}: the posterior was fitted on other weights than {}",
            a.posterior.display(),
            w.display()
        ));
    }
    let test = load_dataset(&net, &a.test_data, &a.data_flags.options(true)).map_err(|e| e.to_string())?;
    let post =
        Posterior::new(&saved.fit, saved.prior.clone(), saved.sigma, saved.temperature).map_err(|e| e.to_string())?;
    let lik = saved.fit.likelihood;
    let cdim = net.out_size();
    // metrics per softmax: per position for sequence outputs
    let classes = classes_of(&net);
    let (mean, var) = predict(&post, &net, &test.x, test.n, &a.predict, c.seed);
    if let Some(out) = &a.out {
        curvops_nn::io::write_npy(out, &[test.n, cdim], &mean).map_err(|e| e.to_string())?;
    }
    if let Some(out) = &a.out_var {
        if var.len() != mean.len() || lik != Likelihood::Regression {
            return Err("--out-var applies to regression".into());
        }
        curvops_nn::io::write_npy(out, &[test.n, cdim], &var).map_err(|e| e.to_string())?;
    }
    let mut o = obj! {
        "N" => test.n,
        "structure" => saved.fit.structure.name(),
        "prior_precision" => saved.prior.to_json(),
        "laplace" => metric_obj(&test, lik, &mean, &var, classes, a.predict.bins),
    };
    let map = map_predict(&net, &theta, &test.x, test.n, lik);
    let s2 = saved.sigma * saved.sigma;
    o.insert("map".into(), metric_obj(&test, lik, &map, &vec![s2; map.len()], classes, a.predict.bins));
    emit(c.json, o);
    Ok(())
}

fn evaluate_cmd<T: Float>(a: &EvaluateArgs) -> CliResult<()> {
    let c = &a.common;
    let p = load_problem_spec::<T>(c, &a.data_flags)?;
    let test = load_dataset(&p.net, &a.test_data, &a.data_flags.options(true)).map_err(|e| e.to_string())?;
    let f = do_fit(&p, &a.fit, c, &a.data_flags)?;
    let post = Posterior::new(&f.fit, f.prior.clone(), f.sigma, a.fit.temperature).map_err(|e| e.to_string())?;
    let lik = f.fit.likelihood;
    // metrics per softmax: per position for sequence outputs
    let cdim = classes_of(&p.net);
    let t2 = Instant::now();
    let (mean, var) = predict(&post, &p.net, &test.x, test.n, &a.predict, c.seed);
    let seconds_predict = t2.elapsed().as_secs_f64();
    let map = map_predict(&p.net, &p.theta, &test.x, test.n, lik);
    let s2 = f.sigma * f.sigma;
    let mut o = obj! {
        "map" => metric_obj(&test, lik, &map, &vec![s2; map.len()], cdim, a.predict.bins),
        "laplace" => metric_obj(&test, lik, &mean, &var, cdim, a.predict.bins),
    };
    o.extend(summary(&f, &post));
    o.insert("seconds_predict".into(), json!(seconds_predict));
    o.insert("N_test".into(), json!(test.n));
    if let Some(std) = a.shift_noise {
        let mut rng = curvops_tensor::rng::Rng::new(c.seed ^ 0x5eed);
        let shifted = Dataset { x: test.x.iter().map(|&v| v + T::of(std * rng.normal())).collect(), ..test.clone() };
        let (sm, sv) = predict(&post, &p.net, &shifted.x, shifted.n, &a.predict, c.seed);
        let smap = map_predict(&p.net, &p.theta, &shifted.x, shifted.n, lik);
        o.insert(
            "shifted".into(),
            json!({
                "noise_std": std,
                "map": metric_obj(&shifted, lik, &smap, &vec![s2; smap.len()], cdim, a.predict.bins),
                "laplace": metric_obj(&shifted, lik, &sm, &sv, cdim, a.predict.bins),
            }),
        );
    }
    if let Some(ood) = &a.ood_data {
        if lik != Likelihood::Classification {
            return Err("--ood-data applies to classification".into());
        }
        let od = load_dataset(&p.net, ood, &a.data_flags.options(true)).map_err(|e| e.to_string())?;
        let (om, _) = predict(&post, &p.net, &od.x, od.n, &a.predict, c.seed);
        let omap = map_predict(&p.net, &p.theta, &od.x, od.n, lik);
        o.insert(
            "ood_auroc".into(),
            json!({
                "map": metrics::auroc(&metrics::max_prob(&map, cdim), &metrics::max_prob(&omap, cdim)),
                "laplace": metrics::auroc(&metrics::max_prob(&mean, cdim), &metrics::max_prob(&om, cdim)),
            }),
        );
    }
    if let Some(path) = &a.reliability {
        let y = labels(&test).ok_or("--reliability needs class labels")?;
        let rm = metrics::reliability(&map, cdim, y, a.predict.bins);
        let rl = metrics::reliability(&mean, cdim, y, a.predict.bins);
        let title = format!("Reliability: MAP vs Laplace ({}, {})", f.fit.structure.name(), f.subset);
        let svg = metrics::reliability_svg(&title, &[("MAP", &rm), ("Laplace", &rl)]);
        std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(out) = &a.out {
        lio::save(out, &p.net, &f.fit, &f.prior, f.sigma, a.fit.temperature, post.log_marginal_likelihood())
            .map_err(|e| e.to_string())?;
    }
    emit(c.json, o);
    Ok(())
}
