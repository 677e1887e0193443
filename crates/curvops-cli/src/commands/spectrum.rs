//! `curvops spectrum CURV --method slq --out density.csv [--plot density.svg]`.

use crate::args::{Common, Curv};
use crate::common::{CliResult, ProgressOp};
use crate::obj;
use crate::output::emit;
use curvops::{ActiveSet, Problem};
use curvops_linalg::slq::{lanczos_quadrature, DensityOptions, SlqOptions};
use curvops_linalg::LinearOperator;
use curvops_plot::{LinePlot, Series};
use curvops_tensor::Float;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpectrumMethod {
    /// Stochastic Lanczos quadrature.
    Slq,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    pub curv: Curv,
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "slq")]
    pub method: SpectrumMethod,
    /// Random starts.
    #[arg(long, default_value_t = 10)]
    pub starts: usize,
    /// Lanczos steps per start.
    #[arg(long, default_value_t = 80)]
    pub steps: usize,
    /// Gaussian smoothing width (default: 1% of the estimated spectral range).
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Grid points.
    #[arg(long, default_value_t = 1000)]
    pub grid: usize,
    /// The density of log|λ| instead of λ.
    #[arg(long)]
    pub log: bool,
    /// Density output (CSV: grid,density).
    #[arg(long)]
    pub out: PathBuf,
    /// Plot (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub fn run<T: Float>(a: &Args, p: &Problem<T>, active: ActiveSet, bs: usize) -> CliResult<()> {
    let c = &a.common;
    let op = super::make_operator(a.curv, p, active, bs, c)?;
    let name = op.describe();
    let op = ProgressOp::new(op.as_ref(), "spectrum");
    if a.starts == 0 || a.steps == 0 {
        return Err("--starts and --steps must be positive".into());
    }
    let q =
        lanczos_quadrature(&op, &SlqOptions { starts: a.starts, steps: a.steps, seed: c.seed, ..Default::default() })
            .map_err(|e| format!("spectrum: {e}"))?;
    let o = DensityOptions { grid_points: a.grid.max(2), sigma: a.sigma, ..Default::default() };
    let dens = if a.log { q.log_density(&o) } else { q.density(&o) };
    dens.save_csv(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    if let Some(path) = &a.plot {
        let xl = if a.log { "log |λ|" } else { "λ" };
        // log scale down to 1e-7 of the peak: deeper valleys are numerical, not spectral
        let peak = dens.density.iter().copied().fold(0.0f64, f64::max).max(f64::MIN_POSITIVE);
        let plot = LinePlot::new(format!("Spectral density of {name} (SLQ, {} starts × {} steps)", a.starts, a.steps))
            .x_label(xl)
            .y_label("density")
            .log_y(true)
            .y_range(peak * 1e-7, peak * 2.0)
            .with_series(Series::new("density", dens.pairs()));
        plot.save(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let (lo, hi) = q.bounds();
    let (mean, se) = q.mean();
    emit(
        c.json,
        obj! {"out" => a.out.display().to_string(), "lambda_min_estimate" => lo, "lambda_max_estimate" => hi,
        "mean" => mean, "mean_std_err" => se, "trace_estimate" => mean * op.nrows() as f64,
        "sigma" => dens.sigma, "matvecs" => q.matvecs, "integral" => dens.integral()},
    );
    Ok(())
}
