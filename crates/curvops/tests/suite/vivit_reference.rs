//! ViViT against the dense float64 references of `testdata/reference`, `testdata/extra` and the
//! graph problems of `../shared/reference-graph` (residual block, LayerNorm MLP, tiny GPT with
//! sequence outputs and a tied embedding):
//! Gram eigenvalues = the dense GGN's (whole network and its layer / tensor diagonal blocks),
//! eigenvector residuals, per-sample directional derivatives, the damped Newton step and the
//! Woodbury solve.

use crate::common::{ErrorLog, Reference, EXTRA, GRAPH_PROBLEMS, PROBLEMS};
use curvops::vivit::{newton_step, ConvGram, Damping, Grouping, LowRankGgn, Vivit, VivitOptions};
use curvops::{ActiveSet, LinearOperator, Problem};
use curvops_linalg::Eigh;
use faer::linalg::solvers::Solve;
use faer::Mat;

fn all_problems() -> Vec<(Problem<f64>, Reference, String)> {
    let mut v: Vec<_> = PROBLEMS
        .iter()
        .map(|n| {
            let (p, r) = Reference::load(n);
            (p, r, n.to_string())
        })
        .collect();
    v.extend(EXTRA.iter().map(|n| {
        let (p, r) = Reference::load_extra(n);
        (p, r, n.to_string())
    }));
    v.extend(GRAPH_PROBLEMS.iter().map(|n| {
        let (p, r) = Reference::load_graph(n);
        (p, r, n.to_string())
    }));
    v
}

fn dense(r: &Reference, key: &str) -> (Vec<usize>, Vec<f64>) {
    r.array(key)
}

/// Eigenvalues (descending) of the dense symmetric block `rows/cols idx` of `g` (`[d, d]`).
fn block_eigs(g: &[f64], d: usize, idx: &[usize]) -> Vec<f64> {
    let m = Mat::from_fn(idx.len(), idx.len(), |i, j| g[idx[i] * d + idx[j]]);
    Eigh::from_dense(m.as_ref()).unwrap().values
}

/// Max over the nonzero ViViT eigenvalues of |λ_i − μ_i| / λ_max, and the largest dense
/// eigenvalue beyond the ViViT rank (relative): both should be ~0.
fn compare_spectrum(vivit: &[f64], dense: &[f64]) -> f64 {
    let lmax = dense[0].abs().max(f64::MIN_POSITIVE);
    let mut err: f64 = 0.0;
    for (i, mu) in dense.iter().enumerate() {
        let l = vivit.get(i).copied().unwrap_or(0.0);
        err = err.max((l - mu).abs() / lmax);
    }
    err
}

fn opts(r: &Reference, grouping: Grouping) -> VivitOptions {
    VivitOptions { grouping, batch_size: r.batch_size(), ..Default::default() }
}

#[test]
fn gram_eigenvalues_match_dense_ggn() {
    let mut log = ErrorLog::new(1e-8);
    for (p, r, name) in all_problems() {
        let (_, g) = dense(&r, "ggn");
        let d = p.net.num_params();
        let v = Vivit::new(&p, ActiveSet::all(&p.net.layout), opts(&r, Grouping::Full)).unwrap();
        let eig = v.eigen(10).unwrap();
        let all: Vec<usize> = (0..d).collect();
        let mu = block_eigs(&g, d, &all);
        log.check("eigenvalues (full)", &name, compare_spectrum(&eig.nonzero, &mu));
        // per layer and per tensor against the dense diagonal blocks
        for grouping in [Grouping::Layer, Grouping::Param] {
            let v = Vivit::new(&p, ActiveSet::all(&p.net.layout), opts(&r, grouping)).unwrap();
            let e = v.eigen(5).unwrap();
            let mut want: Vec<f64> = Vec::new();
            for grp in v.groups() {
                let idx: Vec<usize> = grp
                    .entries
                    .iter()
                    .flat_map(|&i| {
                        let en = &p.net.layout.entries[i];
                        en.offset..en.offset + en.len
                    })
                    .collect();
                want.extend(block_eigs(&g, d, &idx));
            }
            want.sort_by(|a, b| b.partial_cmp(a).unwrap());
            log.check(&format!("eigenvalues ({grouping:?} blocks)"), &name, compare_spectrum(&e.nonzero, &want));
            // eigenvector residuals against the block-diagonal GGN
            let lmax = want[0];
            let mut res: f64 = 0.0;
            for k in 0..e.k() {
                let u = e.vector(k);
                let grp = &v.groups()[e.group[k]];
                let idx: Vec<usize> = grp
                    .entries
                    .iter()
                    .flat_map(|&i| {
                        let en = &p.net.layout.entries[i];
                        en.offset..en.offset + en.len
                    })
                    .collect();
                let mut r2 = 0.0;
                for &i in &idx {
                    let gi: f64 = idx.iter().map(|&j| g[i * d + j] * u[j]).sum();
                    r2 += (gi - e.values[k] * u[i]).powi(2);
                }
                res = res.max(r2.sqrt() / lmax);
            }
            log.check(&format!("residual ({grouping:?} blocks)"), &name, res);
        }
    }
    log.finish();
}

#[test]
fn eigenvectors_directional_derivatives_newton_and_woodbury() {
    let mut log = ErrorLog::new(1e-8);
    for (p, r, name) in all_problems() {
        let (_, g) = dense(&r, "ggn");
        let (_, psg) = dense(&r, "per_sample_loss_grads");
        let d = p.net.num_params();
        let n = p.data.n;
        let v = Vivit::new(&p, ActiveSet::all(&p.net.layout), opts(&r, Grouping::Full)).unwrap();
        let c = v.reduction_factor();
        let eig = v.eigen(usize::MAX).unwrap();
        let lmax = eig.values[0];
        // ‖G e_k − λ_k e_k‖ ≤ 1e-8 λ_max and ‖e_k‖ = 1
        let mut res: f64 = 0.0;
        let mut norm_err: f64 = 0.0;
        for k in 0..eig.k() {
            let u = eig.vector(k);
            let mut r2 = 0.0;
            for i in 0..d {
                let gi: f64 = (0..d).map(|j| g[i * d + j] * u[j]).sum();
                r2 += (gi - eig.values[k] * u[i]).powi(2);
            }
            res = res.max(r2.sqrt() / lmax);
            if eig.values[k] > 1e-6 * lmax {
                norm_err = norm_err.max((u.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs());
            }
        }
        log.check("‖G e − λ e‖ / λ_max", &name, res);
        log.check("‖e‖ − 1 (λ > 1e-6 λ_max)", &name, norm_err);
        // γ_nk = e_kᵀ ∇ℓ_n; c Σ_n λ_nk = λ_k
        let all: Vec<usize> = (0..n).collect();
        let dd = v.directional(&eig, &all, &all);
        let k = eig.k();
        let mut gerr: f64 = 0.0;
        let gscale: f64 = psg.iter().map(|x| x.abs()).fold(0.0, f64::max);
        for s in 0..n {
            for j in 0..k {
                let want: f64 = (0..d).map(|i| eig.vector(j)[i] * psg[s * d + i]).sum();
                gerr = gerr.max((dd.gamma[s * k + j] - want).abs() / gscale);
            }
        }
        log.check("γ_nk = e_kᵀ ∇ℓ_n", &name, gerr);
        let mut lerr: f64 = 0.0;
        for j in 0..k {
            let s: f64 = (0..n).map(|s| dd.lambda[s * k + j]).sum();
            lerr = lerr.max((c * s - eig.values[j]).abs() / lmax);
        }
        log.check("c Σ_n λ_nk = λ_k (1e-10)", &name, lerr * 100.0);
        // P and ∇L from the dense references
        let grad: Vec<f64> = (0..d).map(|i| c * (0..n).map(|s| psg[s * d + i]).sum::<f64>()).collect();
        let ge = Eigh::from_dense(Mat::from_fn(d, d, |i, j| g[i * d + j]).as_ref()).unwrap();
        let rank = ge.values.iter().filter(|&&x| x > 1e-10 * ge.values[0]).count();
        let delta = 1e-2 * lmax;
        // −P (G + δI)⁻¹ P ∇L
        let mut want = vec![0.0; d];
        for t in 0..rank {
            let u: Vec<f64> = (0..d).map(|i| ge.vectors[(i, t)]).collect();
            let a: f64 = u.iter().zip(&grad).map(|(x, y)| x * y).sum::<f64>() / (ge.values[t] + delta);
            for i in 0..d {
                want[i] -= a * u[i];
            }
        }
        let step = newton_step(&eig, &dd, n, c, &Damping::Constant(delta)).unwrap();
        log.rel("damped step = −P(G+δI)⁻¹P∇L", &name, &step.step, &want);
        // Woodbury: (VVᵀ + δI)⁻¹ b against the dense solve
        let op = LowRankGgn::new(&eig);
        let b: Vec<f64> = (0..d).map(|i| ((i * 7919) % 13) as f64 - 6.0).collect();
        let mut x = Mat::<f64>::zeros(d, 1);
        op.solve_shifted(delta, x.as_mut(), faer::MatRef::from_column_major_slice(&b, d, 1)).unwrap();
        let gd = Mat::from_fn(d, d, |i, j| g[i * d + j] + if i == j { delta } else { 0.0 });
        let xd = gd.as_ref().llt(faer::Side::Lower).unwrap().solve(faer::MatRef::from_column_major_slice(&b, d, 1));
        let got: Vec<f64> = (0..d).map(|i| x[(i, 0)]).collect();
        let want: Vec<f64> = (0..d).map(|i| xd[(i, 0)]).collect();
        log.rel("Woodbury solve", &name, &got, &want);
        // the operator itself: V Vᵀ = G
        let dense_op = op.to_dense().unwrap();
        let got: Vec<f64> = (0..d * d).map(|t| dense_op[(t / d, t % d)]).collect();
        log.rel("V Vᵀ = G", &name, &got, &g);
    }
    log.finish();
}

/// The Gram matrix without `V` equals `Vᵀ V` from the materialized factor, for the exact and
/// MC factors, a subsample, each conv2d form, and any batch size.
#[test]
fn gram_path_equals_factor_gram() {
    use curvops::vivit::FactorKind;
    let mut log = ErrorLog::new(1e-12);
    for (p, r, name) in all_problems() {
        for (label, factor, sub, conv, bs) in [
            ("exact", FactorKind::Exact, None, ConvGram::Auto, r.batch_size()),
            ("exact unfolded", FactorKind::Exact, None, ConvGram::Unfolded, r.batch_size()),
            ("exact materialized", FactorKind::Exact, None, ConvGram::Materialized, r.batch_size()),
            ("mc 3", FactorKind::MonteCarlo { samples: 3, seed: 7 }, None, ConvGram::Unfolded, r.batch_size()),
            ("subsample", FactorKind::Exact, Some((3, 5)), ConvGram::Unfolded, r.batch_size()),
            (
                "mc 2, subsample 4, batch 1",
                FactorKind::MonteCarlo { samples: 2, seed: 1 },
                Some((4, 2)),
                ConvGram::Auto,
                1,
            ),
        ] {
            let o = VivitOptions { factor, subsample: sub, conv, batch_size: bs, ..Default::default() };
            let v = Vivit::new(&p, ActiveSet::all(&p.net.layout), o).unwrap();
            let m = v.columns();
            let d = p.net.num_params();
            let rows = v.factor_rows();
            let mut want = vec![0.0; m * m];
            for a in 0..m {
                for b in 0..m {
                    want[a * m + b] = (0..d).map(|i| rows[a * d + i] * rows[b * d + i]).sum();
                }
            }
            log.rel(&format!("Gram = VᵀV ({label})"), &name, &v.gram(), &want);
            // group Grams sum to the full one
            let o2 = VivitOptions { grouping: Grouping::Param, ..v.options().clone() };
            let vp = Vivit::new(&p, ActiveSet::all(&p.net.layout), o2).unwrap();
            let mut sum = vec![0.0; m * m];
            for gm in vp.grams() {
                for (s, x) in sum.iter_mut().zip(gm) {
                    *s += x;
                }
            }
            log.rel(&format!("Σ_groups Gram = Gram ({label})"), &name, &sum, &want);
        }
    }
    log.finish();
}

/// `--params` subsets: eigenvalues of the dense GGN's sub-block.
#[test]
fn parameter_subset_matches_dense_block() {
    let mut log = ErrorLog::new(1e-8);
    for (p, r, name) in all_problems() {
        let (_, g) = dense(&r, "ggn");
        let d = p.net.num_params();
        let layout = &p.net.layout;
        // the last parameterized layer
        let last = layout.entries.last().unwrap().layer;
        let names: Vec<String> = layout.entries.iter().filter(|e| e.layer == last).map(|e| e.name.clone()).collect();
        let active = ActiveSet::from_names(layout, &names).unwrap();
        let idx: Vec<usize> =
            layout.entries.iter().filter(|e| e.layer == last).flat_map(|e| e.offset..e.offset + e.len).collect();
        let v = Vivit::new(&p, active, opts(&r, Grouping::Full)).unwrap();
        let e = v.eigen(3).unwrap();
        log.check("eigenvalues (--params last layer)", &name, compare_spectrum(&e.nonzero, &block_eigs(&g, d, &idx)));
        assert_eq!(e.vectors.len(), e.k() * idx.len());
    }
    log.finish();
}

/// The graph references: the top-5 ViViT eigenvalues (exact factor, `N·T·V` columns for the
/// language model) equal `meta.json`'s top-5 GGN eigenvalues, for the whole data in one batch
/// and in batches of `batch_size`.
#[test]
fn graph_top5_match_meta_scalars() {
    let mut log = ErrorLog::new(1e-10);
    for name in GRAPH_PROBLEMS {
        let (p, r) = Reference::load_graph(name);
        let want: Vec<f64> =
            r.meta["scalars"]["ggn"]["top5"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        for bs in [0, r.batch_size()] {
            let o = VivitOptions { batch_size: bs, ..Default::default() };
            let v = Vivit::new(&p, ActiveSet::all(&p.net.layout), o).unwrap();
            assert_eq!(v.columns(), p.data.n * p.net.out_size(), "{name}: exact factor columns");
            let e = v.eigen(5).unwrap();
            log.rel("top-5 GGN eigenvalues (meta.json)", format!("{name} bs={bs}"), &e.values, &want);
        }
    }
    log.finish();
}
