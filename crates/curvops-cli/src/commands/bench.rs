//! `curvops bench DIR`: median times of gradient, GGN-vp, HVP and a GGN block of 16 vectors on
//! benchmark problems, as milliseconds and as ratios to our gradient, for each dtype and thread
//! count, with the peak resident memory of each operation.
//!
//! Memory: `peak_rss_mb` is the process's peak resident set during the operation (Linux
//! `VmHWM` after a reset; it includes memory kept from earlier operations), `peak_heap_mb` the
//! peak of live heap bytes the operation allocated on top of what was live before it.
//!
//! `kfac_build` fits type-2 KFAC (expand, separate weight and bias: curvlinops'
//! `KFACLinearOperator` defaults) on all the data; `kfac_matvec` applies fitted KFAC to one
//! vector (both skipped on problems with parameters KFAC does not support).
//!
//! `ggn_vp`, `hvp` and `ggn_block16` are cold (a fresh operator: forward pass included, as the
//! JAX peer measures them); the `*_cached` variants reuse the forward pass and loss factors
//! kept from an earlier application.
//!
//! `eigs10` is the top-10 GGN eigenvalues by Lanczos (`curvops eigs ggn --k 10 --tol 1e-4` on a
//! fresh operator that caches its forward pass), inside this process: median of at most 3 runs
//! without warm-up (the row gives `matvecs` and the top 3 eigenvalues).
//!
//! Thread counts: `--thread-counts` (default 1,2), else `--threads`; dtypes: `--dtypes`
//! (default both), else `--dtype`.

use crate::args::{Common, Dtype};
use crate::common::{CliResult, Progress};
use curvops::gradient::loss_and_grad;
use curvops::{ActiveSet, Curvature, CurvatureOperator, Problem};
use curvops_linalg::eigen::{eigsh, EigshOptions, Which};
use curvops_nn::io::load_problem;
use curvops_tensor::rng::Rng;
use curvops_tensor::Float;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The problem directories under `dir` (itself if it holds a model.json).
fn problems(dir: &Path) -> CliResult<Vec<PathBuf>> {
    if dir.join("model.json").exists() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut v: Vec<PathBuf> =
        rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.join("model.json").exists()).collect();
    v.sort();
    if v.is_empty() {
        return Err(format!("{}: no problem directories (with model.json) found", dir.display()));
    }
    Ok(v)
}

/// Resets the process's peak-RSS counter (Linux); false if unsupported.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set size in MiB since the last reset (Linux `VmHWM`).
fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Median wall time in ms of `f` over `reps` runs.
fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut ts: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = ts.len();
    if m % 2 == 1 {
        ts[m / 2]
    } else {
        0.5 * (ts[m / 2 - 1] + ts[m / 2])
    }
}

pub fn run(
    dir: &Path,
    c: &Common,
    reps: usize,
    dtypes: Option<Vec<Dtype>>,
    threads: Option<Vec<usize>>,
    only: Option<Vec<String>>,
) -> CliResult<()> {
    let dtypes = dtypes.or_else(|| c.dtype.map(|d| vec![d])).unwrap_or_else(|| vec![Dtype::F32, Dtype::F64]);
    let threads = threads.or_else(|| c.threads.map(|t| vec![t])).unwrap_or_else(|| vec![1, 2]);
    if threads.contains(&0) {
        return Err("--thread-counts must be positive".into());
    }
    if !c.json {
        println!(
            "{:<8} {:<20} {:>5} {:>3} {:>11} {:>9} {:>9} {:>9}",
            "problem", "op", "dtype", "thr", "ms", "ratio", "RSS MiB", "heap MiB"
        );
    }
    for prob in problems(dir)? {
        for &dt in &dtypes {
            for &t in &threads {
                curvops_tensor::threads::set_threads(t);
                match dt {
                    Dtype::F32 => bench_one::<f32>(&prob, reps, t, c.json, only.as_deref())?,
                    Dtype::F64 => bench_one::<f64>(&prob, reps, t, c.json, only.as_deref())?,
                }
            }
        }
    }
    Ok(())
}

fn bench_one<T: Float>(dir: &Path, reps: usize, threads: usize, json: bool, only: Option<&[String]>) -> CliResult<()> {
    let p: Problem<T> =
        load_problem(&dir.join("model.json"), &dir.join("weights.safetensors"), &dir.join("data.safetensors"))
            .map_err(|e| e.to_string())?;
    let name = dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let all = ActiveSet::all(&p.net.layout);
    let d = all.dim;
    let wants = |op: &str| only.is_none_or(|o| o.iter().any(|x| x == op));
    let mut rng = Rng::new(0);
    let v1: Vec<T> = (0..d).map(|_| T::of(rng.normal())).collect();
    // the 16-column block only when an op uses it (16·D normals take a while on large models)
    let v16: Vec<T> = if wants("ggn_block16") || wants("ggn_block16_cached") {
        (0..16 * d).map(|_| T::of(rng.normal())).collect()
    } else {
        Vec::new()
    };
    let cached_ggn = CurvatureOperator::new(&p, Curvature::Ggn, all.clone(), 0).with_cache(usize::MAX);
    let cached_hess = CurvatureOperator::new(&p, Curvature::Hessian, all.clone(), 0).with_cache(usize::MAX);
    type Op<'a> = Box<dyn FnMut() + 'a>;
    // matvecs and top eigenvalues of the last `eigs10` run, reported with its row
    let eig_info: std::cell::RefCell<Option<(usize, Vec<f64>)>> = std::cell::RefCell::new(None);
    let kfac_opts = curvops::kfac::KfacOptions::default();
    // KFAC over every parameter it covers: a tensor it cannot (a dense block over
    // `kfac::DENSE_MAX` entries, e.g. P5's learned positions) is left out and named in the row
    let mut kfac_active = all.clone();
    let mut kfac_excluded: Vec<String> = Vec::new();
    let kfac = (wants("kfac_build") || wants("kfac_matvec")).then(|| loop {
        let r = curvops::kfac::Kfac::fit(&p, &kfac_active, &kfac_opts);
        let Err(curvops::kfac::KfacError::Parameter { param, .. }) = &r else { break r };
        let mask: Vec<bool> = p
            .net
            .layout
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| kfac_active.sub_offset[i].is_some() && &e.name != param)
            .collect();
        let rest = ActiveSet::from_mask(&p.net.layout, &mask);
        if rest.dim == 0 || rest.dim == kfac_active.dim {
            break r;
        }
        kfac_excluded.push(param.clone());
        kfac_active = rest;
    });
    // why KFAC is not measured on this problem (printed as a row of its own)
    let kfac_skipped = match &kfac {
        Some(Err(e)) => Some(e.to_string()),
        _ => None,
    };
    let kfac = kfac.and_then(Result::ok);
    let kfac_d = kfac_active.dim;
    let mut ops: Vec<(&str, Op)> = vec![
        (
            "gradient",
            Box::new(|| {
                std::hint::black_box(loss_and_grad(&p, &all, 0));
            }),
        ),
        (
            "ggn_vp",
            Box::new(|| {
                let op = CurvatureOperator::new(&p, Curvature::Ggn, all.clone(), 0);
                std::hint::black_box(op.apply_block(&v1, 1));
            }),
        ),
        (
            "hvp",
            Box::new(|| {
                let op = CurvatureOperator::new(&p, Curvature::Hessian, all.clone(), 0);
                std::hint::black_box(op.apply_block(&v1, 1));
            }),
        ),
        (
            "ggn_block16",
            Box::new(|| {
                let op = CurvatureOperator::new(&p, Curvature::Ggn, all.clone(), 0);
                std::hint::black_box(op.apply_block(&v16, 16));
            }),
        ),
        (
            "ggn_vp_cached",
            Box::new(|| {
                std::hint::black_box(cached_ggn.apply_block(&v1, 1));
            }),
        ),
        (
            "hvp_cached",
            Box::new(|| {
                std::hint::black_box(cached_hess.apply_block(&v1, 1));
            }),
        ),
        (
            "ggn_block16_cached",
            Box::new(|| {
                std::hint::black_box(cached_ggn.apply_block(&v16, 16));
            }),
        ),
    ];
    // Hutchinson's trace estimate of the GGN with 100 Rademacher probes (blocks of 64 columns)
    // on a fresh operator that caches its forward pass: compare with 100 × `ggn_vp`. Only when
    // asked for by name (`--ops hutchinson100`): it takes 100 products per repetition.
    if only.is_some_and(|o| o.iter().any(|x| x == "hutchinson100")) {
        ops.push((
            "hutchinson100",
            Box::new(|| {
                let op = CurvatureOperator::new(&p, Curvature::Ggn, all.clone(), 0).with_cache(usize::MAX);
                let o = curvops_linalg::estimators::EstimatorOptions::default();
                let _ = std::hint::black_box(curvops_linalg::estimators::trace_hutchinson(&op, 100, &o));
            }),
        ));
    }
    // KFAC (type-2, expand, separate weight and bias; curvlinops' KFACLinearOperator): fitting
    // the factors (a data pass), and one matvec with fitted factors. Skipped on problems with
    // parameters KFAC does not support.
    if let Some(k) = &kfac {
        ops.push((
            "kfac_build",
            Box::new(|| {
                std::hint::black_box(curvops::kfac::Kfac::fit(&p, &kfac_active, &kfac_opts).expect("fitted before"));
            }),
        ));
        ops.push((
            "kfac_matvec",
            Box::new(|| {
                std::hint::black_box(curvops::LinearOperator::apply_vec(k, &v1).expect("kfac matvec"));
            }),
        ));
    }
    // top-10 GGN eigenvalues (Lanczos, tol 1e-4, as `curvops eigs ggn --k 10 --tol 1e-4`)
    if wants("eigs10") {
        ops.push((
            "eigs10",
            Box::new(|| {
                let op = CurvatureOperator::new(&p, Curvature::Ggn, all.clone(), 0).with_cache(1 << 30);
                let o = EigshOptions { tol: 1e-4, ..Default::default() };
                if let Ok(r) = eigsh(&op, 10, Which::Largest, &o) {
                    let top: Vec<f64> = r.values.iter().take(3).map(|v| v.as_f64()).collect();
                    *eig_info.borrow_mut() = Some((r.matvecs, top));
                }
            }),
        ));
    }
    if let Some(why) = &kfac_skipped {
        let first = why.lines().next().unwrap_or("");
        if json {
            println!(
                "{}",
                json!({"problem": name, "op": "kfac_build", "ms": null, "skipped": first, "dtype": T::DTYPE,
                       "threads": threads, "D": d, "N": p.data.n})
            );
        } else {
            println!("{:<8} {:<20} {:>5} {:>3} not measured: {first}", name, "kfac_build", T::DTYPE, threads);
        }
    }
    let bar = Progress::new(ops.len(), &format!("bench {name} {} t={threads}", T::DTYPE));
    let mut grad_ms = f64::NAN;
    let n_ops = ops.len();
    for (i, (op, mut f)) in ops.into_iter().enumerate() {
        if op != "gradient" && only.is_some_and(|o| !o.iter().any(|x| x == op)) {
            continue;
        }
        // two warm-up runs (one-time allocations, e.g. GEMM workspaces, are not counted); the
        // eigensolver (hundreds of products per run) runs at most 3 times, without warm-up
        let op_reps = if op == "eigs10" {
            reps.min(3)
        } else {
            f();
            f();
            reps
        };
        let reset = reset_peak_rss();
        crate::alloc::reset_peak();
        let heap0 = crate::alloc::live();
        let ms = median_ms(op_reps, &mut f);
        let rss = if reset { peak_rss_mb() } else { None };
        let heap_mb = (crate::alloc::peak() - heap0) as f64 / (1 << 20) as f64;
        if op == "gradient" {
            grad_ms = ms;
        }
        let ratio = ms / grad_ms;
        if json {
            let mut row = json!({"problem": name, "op": op, "ms": (ms * 1e4).round() / 1e4, "ratio_to_gradient": (ratio * 1e3).round() / 1e3,
                   "peak_rss_mb": rss.map(|r| (r * 10.0).round() / 10.0),
                   "peak_heap_mb": (heap_mb * 10.0).round() / 10.0, "dtype": T::DTYPE, "threads": threads,
                   "D": d, "N": p.data.n, "reps": op_reps});
            if op == "kfac_build" || op == "kfac_matvec" {
                row["D_kfac"] = json!(kfac_d);
                row["kfac_excluded"] = json!(kfac_excluded);
            }
            if op == "eigs10" {
                if let Some((mv, top)) = eig_info.borrow().as_ref() {
                    row["matvecs"] = json!(mv);
                    row["top3"] = json!(top);
                }
            }
            println!("{row}");
        } else {
            println!(
                "{:<8} {:<20} {:>5} {:>3} {:>11.4} {:>9.3} {:>9} {:>9.1}",
                name,
                op,
                T::DTYPE,
                threads,
                ms,
                ratio,
                rss.map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into()),
                heap_mb
            );
        }
        bar.set(i + 1, n_ops);
    }
    Ok(())
}
