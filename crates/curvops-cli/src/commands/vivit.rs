//! `curvops vivit --k K [--mc-samples M] [--subsample N'] [--blocks layer|param] [--out-dir DIR]`:
//! the GGN's nonzero eigenvalues from ViViT's Gram matrix, the top-K eigenvectors, per-sample
//! directional derivatives and the directionally damped Newton step (SPEC.md §5, issue 5).
//!
//! The factor is exact unless `--mc-samples M` is given on the command line (then `M` sampled
//! labels per data point, keyed by `--seed`). `--subsample N'` builds the Gram matrix on `N'`
//! random samples (seeded by `--seed`, rescaled by `N/N'`); γ and λ are written for all `N`
//! samples, and the bootstrap damping resamples γ over all samples and λ over the curvature
//! samples. `--damping δ` uses a constant damping instead of the bootstrap rule.
//! `--bench R` times the top-K eigenpairs against Lanczos on the exact GGN (medians of R runs).

use crate::args::{Blocks, Common};
use crate::common::CliResult;
use crate::obj;
use crate::output::emit;
use curvops::vivit::{
    critical_batch_size, memory_estimate, newton_step, ConvGram, Damping, Directional, FactorKind, Grouping, Spectrum,
    Vivit, VivitOptions,
};
use curvops::{ActiveSet, Curvature, CurvatureOperator, Problem};
use curvops_linalg::eigen::{eigsh, EigshOptions, Which};
use curvops_nn::io::write_npy;
use curvops_tensor::Float;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvGramArg {
    /// The cheaper form by a flop count.
    Auto,
    /// Gram of the unfolded inputs (U_nᵀ U_m) combined with the output cotangents.
    Unfolded,
    /// Per-sample weight gradients of the layer.
    Materialized,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpectrumArg {
    /// `all` for Gram matrices up to 512 columns (or K ≥ N·R/4), else `top`.
    Auto,
    /// Dense eigendecomposition of the Gram matrix: every nonzero eigenvalue ("rank" in the
    /// output).
    All,
    /// Only the top K, by Lanczos on the explicit Gram matrix.
    Top,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Number of eigenpairs (the largest; fewer if the GGN has fewer nonzero eigenvalues).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Build the Gram matrix on N' random samples (rescaled so the GGN estimate is unbiased).
    #[arg(long)]
    pub subsample: Option<usize>,
    /// Write eigenvalues.npy, eigenvectors.npy [D, K], gamma.npy and lambda.npy [N, K],
    /// newton_step.npy [D] and newton_damping.npy [K] (δ_k; −1: no step along e_k) here.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Constant damping δ of the Newton step (default: ViViT's bootstrap rule).
    #[arg(long)]
    pub damping: Option<f64>,
    /// Eigenvalues ≤ rtol·λ_max count as zero (default 1e-10 in f64, 1e-5 in f32).
    #[arg(long)]
    pub rtol: Option<f64>,
    /// Full or top-K eigendecomposition of the Gram matrix.
    #[arg(long, value_enum, default_value = "auto")]
    pub spectrum: SpectrumArg,
    /// How conv2d layers enter the Gram matrix.
    #[arg(long, value_enum, default_value = "auto")]
    pub conv_gram: ConvGramArg,
    /// Benchmark: time the top-K eigenpairs R times (medians) via ViViT and via Lanczos on
    /// the exact GGN (`eigs ggn --k K --tol`), with the peak heap of each.
    #[arg(long)]
    pub bench: Option<usize>,
    /// Print ViViT's critical batch size for this memory budget (GiB): the largest N whose
    /// estimated peak heap (exact factor, or --mc-samples M) fits, for K eigenvectors.
    #[arg(long)]
    pub memory_budget_gb: Option<f64>,
    /// Lanczos tolerance of --bench.
    #[arg(long, default_value_t = 1e-4)]
    pub bench_tol: f64,
}

/// Whether `--mc-samples` was given on the command line (the common flag defaults to 1, but
/// ViViT's default is the exact factor).
fn mc_given() -> bool {
    std::env::args().any(|a| a == "--mc-samples" || a.starts_with("--mc-samples="))
}

fn options(a: &Args, bs: usize, p_n: usize) -> CliResult<VivitOptions> {
    let c = &a.common;
    let factor = if mc_given() {
        if c.mc_samples == 0 {
            return Err("--mc-samples must be positive".into());
        }
        FactorKind::MonteCarlo { samples: c.mc_samples, seed: c.seed }
    } else {
        FactorKind::Exact
    };
    let grouping = match c.blocks {
        None => Grouping::Full,
        Some(Blocks::Layer) => Grouping::Layer,
        Some(Blocks::Param) => Grouping::Param,
    };
    if a.k == 0 {
        return Err("--k must be positive".into());
    }
    if let Some(d) = a.damping {
        if !(d.is_finite() && d >= 0.0) {
            return Err(format!("--damping must be ≥ 0, got {d}"));
        }
    }
    let conv = match a.conv_gram {
        ConvGramArg::Auto => ConvGram::Auto,
        ConvGramArg::Unfolded => ConvGram::Unfolded,
        ConvGramArg::Materialized => ConvGram::Materialized,
    };
    let spectrum = match a.spectrum {
        SpectrumArg::Auto => Spectrum::Auto,
        SpectrumArg::All => Spectrum::All,
        SpectrumArg::Top => Spectrum::Top,
    };
    if let Some(m) = a.subsample {
        if m == 0 || m > p_n {
            return Err(format!("--subsample must be in 1..={p_n}, got {m}"));
        }
    }
    Ok(VivitOptions {
        factor,
        subsample: a.subsample.map(|m| (m, c.seed)),
        grouping,
        batch_size: bs,
        rtol: a.rtol,
        conv,
        spectrum,
    })
}

pub fn run<T: Float>(a: &Args, p: &Problem<T>, active: ActiveSet, bs: usize) -> CliResult<()> {
    let opts = options(a, bs, p.data.n)?;
    if let Some(gb) = a.memory_budget_gb {
        return critical(a, p, &active, &opts, gb);
    }
    if let Some(reps) = a.bench {
        return bench(a, p, active, opts, reps);
    }
    let c = &a.common;
    let v = Vivit::new(p, active, opts).map_err(|e| e.to_string())?;
    let eig = v.eigen(a.k).map_err(|e| e.to_string())?;
    for w in &eig.warnings {
        eprintln!("warning: {w}");
    }
    let values: Vec<f64> = eig.values.iter().map(|x| x.as_f64()).collect();
    if let Some(dir) = &a.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("--out-dir {}: {e}", dir.display()))?;
        let n = p.data.n;
        let (d, k) = (eig.dim, eig.k());
        let all: Vec<usize> = (0..n).collect();
        let dd = v.directional(&eig, &all, &all);
        // the bootstrap's curvature samples: those of the Gram matrix
        let curv = v.samples().to_vec();
        let dd_newton = if curv.len() == n {
            dd.clone()
        } else {
            let lambda = curv.iter().flat_map(|&s| dd.lambda[s * k..(s + 1) * k].iter().copied()).collect();
            Directional { curv_samples: curv, lambda, ..dd.clone() }
        };
        let damping = match a.damping {
            Some(d) => Damping::Constant(d),
            None => Damping::bootstrap(c.seed),
        };
        let step = newton_step(&eig, &dd_newton, n, v.reduction_factor(), &damping).map_err(|e| e.to_string())?;
        let write = |name: &str, shape: &[usize], data: &[T]| -> CliResult<()> {
            let path = dir.join(name);
            write_npy(&path, shape, data).map_err(|e| format!("{}: {e}", path.display()))
        };
        write("eigenvalues.npy", &[k], &eig.values)?;
        let mut vecs = vec![T::zero(); d * k];
        for j in 0..k {
            for i in 0..d {
                vecs[i * k + j] = eig.vectors[j * d + i];
            }
        }
        write("eigenvectors.npy", &[d, k], &vecs)?;
        write("gamma.npy", &[n, k], &dd.gamma)?;
        write("lambda.npy", &[n, k], &dd.lambda)?;
        write("newton_step.npy", &[d], &step.step)?;
        let damp: Vec<T> = step.damping.iter().map(|x| T::of(x.unwrap_or(-1.0))).collect();
        write("newton_damping.npy", &[k], &damp)?;
    }
    let mut out = obj! {"eigenvalues" => values};
    if eig.complete {
        // the number of nonzero eigenvalues (all groups)
        out.insert("rank".into(), eig.nonzero.len().into());
    }
    emit(c.json, out);
    Ok(())
}

fn columns_per_sample<T: Float>(p: &Problem<T>, opts: &VivitOptions) -> usize {
    match opts.factor {
        FactorKind::Exact => p.net.out_size(),
        FactorKind::MonteCarlo { samples, .. } => samples,
    }
}

fn full_eigh(opts: &VivitOptions, m: usize, k: usize) -> bool {
    match opts.spectrum {
        Spectrum::All => true,
        Spectrum::Top => k >= m,
        Spectrum::Auto => m <= 512 || 4 * k >= m,
    }
}

/// `--memory-budget-gb B`: the critical batch size by the memory formula.
fn critical<T: Float>(a: &Args, p: &Problem<T>, active: &ActiveSet, opts: &VivitOptions, gb: f64) -> CliResult<()> {
    if !(gb.is_finite() && gb > 0.0) {
        return Err(format!("--memory-budget-gb must be positive, got {gb}"));
    }
    let budget = (gb * (1u64 << 30) as f64) as usize;
    let r = columns_per_sample(p, opts);
    let k = a.k;
    // the eigensolver depends on N·R: search each regime and keep the larger fitting N
    let n_top = critical_batch_size(&p.net, active, r, k, false, budget, 1 << 26);
    let n_all = critical_batch_size(&p.net, active, r, k, true, budget, 1 << 26);
    let n = if full_eigh(opts, n_top * r, k) { n_all } else { n_top };
    let mb = |n: usize| {
        memory_estimate(&p.net, active, n, r, k, opts.conv, full_eigh(opts, n * r, k)).peak as f64 / 1048576.0
    };
    emit(
        a.common.json,
        obj! {"critical_batch_size" => n, "critical_batch_size_full_eigh" => n_all, "memory_budget_gb" => gb,
        "columns_per_sample" => r, "k" => k, "estimate_mb_at_critical" => mb(n), "n_data" => p.data.n,
        "estimate_mb_at_n_data" => mb(p.data.n), "dtype" => if T::BYTES == 4 { "f32" } else { "f64" }},
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// `--bench R`: medians of R timed runs of ViViT's top-K eigenpairs and of Lanczos on the
/// exact GGN, alternating, after one warm-up run of each.
fn bench<T: Float>(a: &Args, p: &Problem<T>, active: ActiveSet, opts: VivitOptions, reps: usize) -> CliResult<()> {
    let c = &a.common;
    let k = a.k;
    let run_vivit = || -> CliResult<Vec<f64>> {
        let v = Vivit::new(p, active.clone(), opts.clone()).map_err(|e| e.to_string())?;
        let e = v.eigen(k).map_err(|e| e.to_string())?;
        Ok(e.values.iter().map(|x| x.as_f64()).collect())
    };
    let run_lanczos = || -> CliResult<(Vec<f64>, usize)> {
        let op =
            CurvatureOperator::new(p, Curvature::Ggn, active.clone(), opts.batch_size).with_cache(c.cache_mb << 20);
        let o = EigshOptions { tol: a.bench_tol, seed: c.seed, ..Default::default() };
        let r = eigsh(&op, k, Which::Largest, &o).map_err(|e| format!("eigs: {e}"))?;
        Ok((r.values.iter().map(|x| x.as_f64()).collect(), r.matvecs))
    };
    // warm-up (one-time allocations of the GEMM kernels and thread pools), then the peak heap
    // of one run of each
    run_vivit()?;
    run_lanczos()?;
    crate::alloc::reset_peak();
    let base = crate::alloc::live();
    let vals_v = run_vivit()?;
    let peak_v = crate::alloc::peak().saturating_sub(base);
    crate::alloc::reset_peak();
    let base = crate::alloc::live();
    let (vals_l, matvecs) = run_lanczos()?;
    let peak_l = crate::alloc::peak().saturating_sub(base);
    let (mut tv, mut tl) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        run_vivit()?;
        tv.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        run_lanczos()?;
        tl.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (mv, ml) = (median(&mut tv), median(&mut tl));
    let n_eff = opts.subsample.map_or(p.data.n, |s| s.0);
    let r = columns_per_sample(p, &opts);
    let estimate_mb = memory_estimate(&p.net, &active, n_eff, r, k, opts.conv, full_eigh(&opts, n_eff * r, k)).peak
        as f64
        / 1048576.0;
    let agree = vals_v
        .iter()
        .zip(&vals_l)
        .map(|(x, y)| (x - y).abs() / vals_l[0].abs().max(f64::MIN_POSITIVE))
        .fold(0.0, f64::max);
    emit(
        c.json,
        obj! {"k" => k, "vivit_ms" => mv, "lanczos_ms" => ml, "speedup" => ml / mv, "lanczos_matvecs" => matvecs,
        "vivit_peak_mb" => peak_v as f64 / 1048576.0,
        "vivit_estimate_mb" => estimate_mb, "n" => n_eff, "lanczos_peak_mb" => peak_l as f64 / 1048576.0,
        "max_rel_diff" => agree, "eigenvalues" => vals_v, "dtype" => if T::BYTES == 4 { "f32" } else { "f64" },
        "threads" => curvops_tensor::threads::threads(), "reps" => reps.max(1)},
    );
    Ok(())
}
