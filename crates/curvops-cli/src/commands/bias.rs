//! `curvops bias ggn|hessian --batch-size B [--k K] [--batches R] [--plot F.svg]`: the
//! mini-batch curvature bias (eigenpairs of `C_B` evaluated on the same batch, independent
//! batches and all data; CG on `q_B` with the full-data and independent-batch quadratics along
//! its iterates, and the debiased variants).

use crate::args::Common;
use crate::commands::train::{load_problem_spec, DataFlags};
use crate::common::{self, CliResult, Progress};
use crate::obj;
use crate::output::emit;
use curvops::debias::{cg_trace, draw_pair, eigen_bias, CgTrace, EigenBiasOptions, IndexStats, Quadratic};
use curvops::walk::DataWalk;
use curvops::Curvature;
use curvops_plot::{LinePlot, Series};
use curvops_tensor::Float;
use std::path::PathBuf;

/// The curvature whose bias is measured.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BiasCurv {
    Ggn,
    Hessian,
    Ef,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    pub curv: BiasCurv,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub data_flags: DataFlags,
    /// Eigenpairs per end of the spectrum.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Rounds R (pairs of independent batches) of the eigen-bias diagnostic.
    #[arg(long, default_value_t = 50)]
    pub batches: usize,
    /// CG iterations of the CG diagnostic.
    #[arg(long, default_value_t = 50)]
    pub cg_iters: usize,
    /// Rounds of the CG diagnostic (default: min(--batches, 20); 0 skips it).
    #[arg(long)]
    pub cg_batches: Option<usize>,
    /// Damping δ of the CG diagnostic's quadratics.
    #[arg(long, default_value_t = 1e-4)]
    pub damping: f64,
    /// SVG with both diagnostics side by side.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

fn curvature(c: BiasCurv) -> Curvature {
    match c {
        BiasCurv::Ggn => Curvature::Ggn,
        BiasCurv::Hessian => Curvature::Hessian,
        BiasCurv::Ef => Curvature::Ef,
    }
}

pub fn run(a: &Args, c: &Common) -> CliResult<()> {
    match common::dtype_of(c)? {
        crate::args::Dtype::F32 => run_typed::<f32>(a, c),
        crate::args::Dtype::F64 => run_typed::<f64>(a, c),
    }
}

fn stats_json(s: &IndexStats) -> serde_json::Value {
    let m = |x: curvops::debias::MeanSe| serde_json::json!({"mean": x.mean, "se": x.se});
    serde_json::json!({
        "index": s.index, "rounds": s.rounds, "same_batch": m(s.same), "independent_batch": m(s.independent),
        "full_data": m(s.full), "same_minus_full": m(s.same_minus_full),
        "independent_minus_full": m(s.independent_minus_full),
    })
}

/// Per iteration, the median over rounds of one series of the traces.
fn medians(traces: &[CgTrace], f: &dyn Fn(&CgTrace) -> &Vec<f64>) -> Vec<f64> {
    let kmax = traces.iter().map(|t| t.k.len()).max().unwrap_or(0);
    (0..kmax)
        .map(|k| {
            // a run that stopped early stays at its last iterate
            let mut v: Vec<f64> = traces.iter().map(|t| f(t)[k.min(f(t).len() - 1)]).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            let m = v.len();
            if m % 2 == 1 {
                v[m / 2]
            } else {
                0.5 * (v[m / 2 - 1] + v[m / 2])
            }
        })
        .collect()
}

fn run_typed<T: Float>(a: &Args, c: &Common) -> CliResult<()> {
    let bs = match c.batch_size {
        Some(b) if b > 0 => b,
        _ => return Err("--batch-size B (the mini-batch of the quadratic model) is required and positive".into()),
    };
    let p = load_problem_spec::<T>(c, &a.data_flags)?;
    let active = common::active(c, &p)?;
    let kind = curvature(a.curv);
    let opts =
        EigenBiasOptions { curvature: kind, batch_size: bs, k: a.k, batches: a.batches, seed: c.seed, chunk: 1024 };
    let bar = Progress::new(a.batches, "eigen-bias");
    let eb = eigen_bias(&p, &active, &opts, &mut |d, t| bar.set(d, t)).map_err(|e| format!("bias: {e}"))?;
    drop(bar);
    for w in &eb.warnings {
        eprintln!("warning: {w}");
    }
    let cg_rounds = a.cg_batches.unwrap_or(a.batches.min(20));
    let mut traces = Vec::new();
    if cg_rounds > 0 {
        if a.cg_iters == 0 {
            return Err("--cg-iters must be positive".into());
        }
        let full = Quadratic::new(&p, kind, active.clone(), DataWalk::new(&p.data, 1024), a.damping)
            .map_err(|e| format!("bias: {e}"))?;
        let bar = Progress::new(cg_rounds, "CG");
        for r in 0..cg_rounds {
            // rounds after the eigen-bias ones: fresh batches
            let (b1, b2) = draw_pair(p.data.n, bs, c.seed, (a.batches + r) as u64).map_err(|e| e.to_string())?;
            let walk = |idx: &[usize]| DataWalk::subset(&p.data, idx, 0).map_err(|e| e.to_string());
            let q1 = Quadratic::new(&p, kind, active.clone(), walk(&b1)?, a.damping).map_err(|e| e.to_string())?;
            let q2 = Quadratic::new(&p, kind, active.clone(), walk(&b2)?, a.damping).map_err(|e| e.to_string())?;
            traces.push(cg_trace(&q1, &q2, &full, a.cg_iters, 0.0).map_err(|e| format!("bias: CG: {e}"))?);
            bar.set(r + 1, cg_rounds);
        }
    }
    let med = |f: &dyn Fn(&CgTrace) -> &Vec<f64>| if traces.is_empty() { Vec::new() } else { medians(&traces, f) };
    let q_b1 = med(&|t| &t.biased_on_b1);
    let q_b2 = med(&|t| &t.biased_on_b2);
    let q_full = med(&|t| &t.biased_full);
    let q_a = med(&|t| &t.debiased_a_full);
    let q_b = med(&|t| &t.debiased_b_full);
    if let Some(path) = &a.plot {
        let ratio = |rows: &[IndexStats], sign: f64, f: &dyn Fn(&IndexStats) -> f64| -> Vec<(f64, f64)> {
            rows.iter().map(|s| (sign * (s.index + 1) as f64, f(s) / s.full.mean)).collect()
        };
        let same = |s: &IndexStats| s.same.mean;
        let ind = |s: &IndexStats| s.independent.mean;
        let mut eig =
            LinePlot::new(format!("Curvature along the batch's eigenvectors (|B| = {bs}, {} rounds)", a.batches))
                .x_label("eigenvector: +i = i-th largest, −i = i-th smallest (nonzero)")
                .y_label("uᵀ C_· u / uᵀ C u  (mean over rounds)")
                .log_y(true)
                .size(620, 420);
        eig.push(Series::new("same batch, top", ratio(&eb.top, 1.0, &same)).color("#d62728"));
        eig.push(Series::new("same batch, bottom", ratio(&eb.bottom, -1.0, &same)).color("#ff9896"));
        eig.push(Series::new("independent batch, top", ratio(&eb.top, 1.0, &ind)).color("#1f77b4"));
        eig.push(Series::new("independent batch, bottom", ratio(&eb.bottom, -1.0, &ind)).color("#aec7e8"));
        let xs: Vec<f64> = eb
            .top
            .iter()
            .map(|s| (s.index + 1) as f64)
            .chain(eb.bottom.iter().map(|s| -((s.index + 1) as f64)))
            .collect();
        let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
        eig.push(Series::new("all data (= 1)", vec![(lo, 1.0), (hi, 1.0)]).color("#333333").dashed());
        let mut plots = vec![eig];
        if !q_full.is_empty() {
            let pts = |v: &[f64]| v.iter().enumerate().map(|(k, &y)| (k as f64, y)).collect::<Vec<_>>();
            let mut cg = LinePlot::new(format!("q along CG on one batch (median of {} rounds)", traces.len()))
                .x_label("CG iteration k")
                .y_label("quadratic model q(d_k)")
                .size(620, 420);
            cg.push(Series::new("q_B₁ (the batch CG runs on)", pts(&q_b1)).color("#d62728"));
            cg.push(Series::new("q_B₂ (independent batch)", pts(&q_b2)).color("#ff9896").dashed());
            cg.push(Series::new("q (all data), biased CG", pts(&q_full)).color("#333333"));
            cg.push(Series::new("q (all data), debiased A", pts(&q_a)).color("#1f77b4"));
            cg.push(Series::new("q (all data), debiased B", pts(&q_b)).color("#2ca02c"));
            plots.push(cg);
        }
        curvops_plot::save_row(&plots, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if !c.json {
        println!(
            "{:>6} {:>14} {:>14} {:>14} {:>22} {:>22}",
            "index", "same", "independent", "full", "same−full (±s.e.)", "indep−full (±s.e.)"
        );
        for (end, rows) in [("top", &eb.top), ("bottom", &eb.bottom)] {
            for s in rows.iter() {
                println!(
                    "{:>6} {:>14.6e} {:>14.6e} {:>14.6e} {:>11.3e} ±{:>9.2e} {:>11.3e} ±{:>9.2e}",
                    format!("{}{}", if end == "top" { "+" } else { "-" }, s.index + 1),
                    s.same.mean,
                    s.independent.mean,
                    s.full.mean,
                    s.same_minus_full.mean,
                    s.same_minus_full.se,
                    s.independent_minus_full.mean,
                    s.independent_minus_full.se
                );
            }
        }
    }
    let last = |v: &[f64]| v.last().copied();
    emit(
        c.json,
        obj! {
            "curvature" => kind.name(), "batch_size" => bs, "N" => p.data.n, "D" => active.dim, "rounds" => a.batches,
            "top" => eb.top.iter().map(stats_json).collect::<Vec<_>>(),
            "bottom" => eb.bottom.iter().map(stats_json).collect::<Vec<_>>(),
            "cg_rounds" => traces.len(), "cg_iters" => a.cg_iters, "damping" => a.damping,
            "cg_median_q_batch" => q_b1.clone(), "cg_median_q_independent" => q_b2.clone(),
            "cg_median_q_full" => q_full.clone(), "cg_median_q_full_debiased_a" => q_a.clone(),
            "cg_median_q_full_debiased_b" => q_b.clone(),
            "q_full_final" => serde_json::json!({"biased": last(&q_full), "debiased_a": last(&q_a), "debiased_b": last(&q_b)}),
            "products" => eb.products, "plot" => a.plot.as_ref().map(|p| p.display().to_string()),
        },
    );
    Ok(())
}
