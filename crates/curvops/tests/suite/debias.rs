//! Mini-batch curvature bias (issue 12): the eigen-bias diagnostic on a synthetic problem with
//! known structure, CG on a batch quadratic against the full-data one, the debiased variants,
//! identities of the debiased steps, and Newton-CG.

use curvops::debias::{
    cg_run, cg_trace, debiased_iterates, debiased_solve, draw_pair, eigen_bias, EigenBiasOptions, Quadratic, Variant,
};
use curvops::optim::{train_newton_cg, NewtonCgOptions};
use curvops::walk::DataWalk;
use curvops::{ActiveSet, Curvature, Problem};
use curvops_nn::data::{Dataset, Targets};
use curvops_nn::layers::ActivationKind as A;
use curvops_nn::loss::{Loss, LossKind, Reduction};
use curvops_nn::spec::{LayerSpec as L, ModelSpec};
use curvops_tensor::rng::Rng;
use faer::Mat;

/// Linear regression `f = θᵀa` (no bias) with anisotropic inputs `a_n ~ N(0, diag(σ²))`,
/// `σ_i = decay^i`, targets `aᵀθ* + noise`: the GGN is `C = 2/N Σ a_n a_nᵀ`.
fn linear_problem(d: usize, n: usize, decay: f64, seed: u64, reduction: Reduction) -> Problem<f64> {
    linear_problem_at(d, n, decay, seed, reduction, None)
}

/// [`linear_problem`] at `θ = θ* + offset·ξ` (`ξ ~ N(0, I)`) instead of `θ = 0`.
fn linear_problem_at(
    d: usize,
    n: usize,
    decay: f64,
    seed: u64,
    reduction: Reduction,
    offset: Option<f64>,
) -> Problem<f64> {
    let spec = ModelSpec {
        input_shape: vec![d],
        layers: vec![L::Linear { in_f: d, out_f: 1, bias: false, transposed: false }],
        loss: Loss { kind: LossKind::Mse, reduction, positions: 1 },
    };
    let net = spec.build::<f64>("<test>", &|_, _| unreachable!("no batch norm")).unwrap();
    let mut rng = Rng::new(seed);
    let sig: Vec<f64> = (0..d).map(|i| decay.powi(i as i32)).collect();
    let x: Vec<f64> = (0..n * d).map(|j| sig[j % d] * rng.normal()).collect();
    let star: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let y: Vec<f64> =
        (0..n).map(|r| (0..d).map(|i| x[r * d + i] * star[i]).sum::<f64>() + 0.5 * rng.normal()).collect();
    let theta = match offset {
        None => vec![0.0; d],
        Some(o) => star.iter().map(|s| s + o * rng.normal()).collect(),
    };
    Problem { net, theta, data: Dataset { x, sample_shape: vec![d], n, y: Targets::Dense(y), target_width: 1 } }
}

fn all(p: &Problem<f64>) -> ActiveSet {
    ActiveSet::all(&p.net.layout)
}

#[test]
fn eigen_bias_on_rank_one_sums() {
    // D = 50, N = 10 000, |B| = 32 < D, 200 rounds
    let p = linear_problem(50, 10_000, 0.93, 1, Reduction::Mean);
    let opts = EigenBiasOptions { curvature: Curvature::Ggn, batch_size: 32, k: 3, batches: 200, seed: 5, chunk: 2048 };
    let r = eigen_bias(&p, &all(&p), &opts, &mut |_, _| {}).unwrap();
    assert_eq!(r.top.len(), 3);
    assert_eq!(r.bottom.len(), 3);
    let t = &r.top[0];
    assert_eq!(t.rounds, 200);
    // self-evaluated curvature along the batch's top eigenvector exceeds the full data's
    assert!(t.same_minus_full.z() > 5.0, "top: same − full = {:?}", t.same_minus_full);
    // measured on independent batches it is unbiased
    assert!(t.independent_minus_full.z().abs() < 3.0, "top: independent − full = {:?}", t.independent_minus_full);
    // the bottom nonzero eigenpairs are underestimated
    let b = &r.bottom[0];
    assert!(b.same_minus_full.z() < -5.0, "bottom: same − full = {:?}", b.same_minus_full);
    assert!(b.independent_minus_full.z().abs() < 3.0, "bottom: independent − full = {:?}", b.independent_minus_full);
    for s in r.top.iter().chain(&r.bottom) {
        assert!(s.independent_minus_full.z().abs() < 3.5, "index {}: {:?}", s.index, s.independent_minus_full);
    }
    // the batch eigenvalue is the Rayleigh quotient on its own batch: λ_max(C_B) ≥ the full λ_max
    let full_top = curvops_linalg::eigen::eigsh(
        &curvops::CurvatureOperator::new(&p, Curvature::Ggn, all(&p), 0),
        1,
        curvops_linalg::eigen::Which::Largest,
        &Default::default(),
    )
    .unwrap()
    .values[0];
    assert!(t.same.mean > full_top && t.full.mean <= full_top * (1.0 + 1e-9));
}

#[test]
fn eigen_bias_with_all_data_has_no_bias() {
    let p = linear_problem(12, 200, 0.8, 2, Reduction::Sum);
    let opts = EigenBiasOptions { curvature: Curvature::Ggn, batch_size: 200, k: 2, batches: 3, seed: 0, chunk: 64 };
    let r = eigen_bias(&p, &all(&p), &opts, &mut |_, _| {}).unwrap();
    for s in r.top.iter().chain(&r.bottom) {
        assert!((s.same.mean - s.full.mean).abs() <= 1e-10 * s.full.mean.abs());
        assert!((s.independent.mean - s.full.mean).abs() <= 1e-10 * s.full.mean.abs());
    }
    // the Hessian path (Lanczos) agrees on this linear model, where Hessian = GGN
    let h = EigenBiasOptions { curvature: Curvature::Hessian, ..opts };
    let rh = eigen_bias(&p, &all(&p), &h, &mut |_, _| {}).unwrap();
    assert!((rh.top[0].same.mean - r.top[0].same.mean).abs() <= 1e-8 * r.top[0].same.mean);
    assert!((rh.bottom[0].same.mean - r.bottom[0].same.mean).abs() <= 1e-8 * r.top[0].same.mean);
}

#[test]
fn sum_reduction_batches_are_rescaled_to_the_full_loss() {
    // s = N/|B| for a summed loss: the batch quadratic estimates the full one
    let p = linear_problem(6, 300, 0.9, 3, Reduction::Sum);
    let (b1, _) = draw_pair(300, 30, 1, 0).unwrap();
    let q = Quadratic::new(&p, Curvature::Ggn, all(&p), DataWalk::subset(&p.data, &b1, 0).unwrap(), 0.0).unwrap();
    assert!((q.scale - 10.0).abs() < 1e-12);
    let full = Quadratic::new(&p, Curvature::Ggn, all(&p), DataWalk::new(&p.data, 7), 0.0).unwrap();
    assert_eq!(full.scale, 1.0);
    // q(d) of the full model equals the loss at θ + d (a quadratic loss)
    let dvec: Vec<f64> = (0..6).map(|i| 0.1 * (i as f64 - 2.0)).collect();
    let qd = full.values(Mat::from_fn(6, 1, |i, _| dvec[i]).as_ref()).unwrap()[0];
    let mut p2 = linear_problem(6, 300, 0.9, 3, Reduction::Sum);
    p2.theta = dvec.clone();
    let l = curvops::gradient::loss_value(&p2, 0);
    assert!((qd - l).abs() <= 1e-10 * l, "{qd} vs {l}");
}

#[test]
fn debiased_steps_satisfy_their_optimality_conditions() {
    let p = linear_problem(20, 400, 0.85, 4, Reduction::Mean);
    let (b1, b2) = draw_pair(400, 10, 2, 0).unwrap();
    let walk = |idx: &[usize]| DataWalk::subset(&p.data, idx, 0).unwrap();
    let q1 = Quadratic::new(&p, Curvature::Ggn, all(&p), walk(&b1), 1e-3).unwrap();
    let q2 = Quadratic::new(&p, Curvature::Ggn, all(&p), walk(&b2), 1e-3).unwrap();
    let run = cg_run(&q1, 8, 0.0).unwrap();
    assert_eq!(run.len(), 8);
    let dense2 = q2.curvature_times(Mat::<f64>::identity(20, 20).as_ref()).unwrap();
    let grad_at = |y: &[f64]| -> Vec<f64> {
        (0..20).map(|i| q2.grad[i] + (0..20).map(|j| dense2[(i, j)] * y[j]).sum::<f64>()).collect()
    };
    // variant B: the gradient of q₂ at y_k is orthogonal to the first k directions
    let yb = debiased_iterates(&q2, &run, Variant::B).unwrap();
    for k in 1..=8 {
        let y: Vec<f64> = (0..20).map(|i| yb[(i, k)]).collect();
        let g = grad_at(&y);
        let gn = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        for j in 0..k {
            let pj: Vec<f64> = (0..20).map(|i| run.directions[(i, j)]).collect();
            let pn = pj.iter().map(|v| v * v).sum::<f64>().sqrt();
            let c: f64 = g.iter().zip(&pj).map(|(a, b)| a * b).sum();
            assert!(c.abs() <= 1e-8 * gn.max(1e-300) * pn + 1e-12, "k = {k}, j = {j}: {c}");
        }
    }
    // variant A: after step k the slope of q₂ along p_k vanishes, and q₂ decreases monotonically
    let ya = debiased_iterates(&q2, &run, Variant::A).unwrap();
    let qa = q2.values(ya.as_ref()).unwrap();
    for k in 0..8 {
        let y: Vec<f64> = (0..20).map(|i| ya[(i, k + 1)]).collect();
        let g = grad_at(&y);
        let c: f64 = (0..20).map(|i| g[i] * run.directions[(i, k)]).sum();
        assert!(c.abs() <= 1e-9 * g.iter().map(|v| v.abs()).sum::<f64>().max(1e-12), "k = {k}: {c}");
        assert!(qa[k + 1] <= qa[k] + 1e-12);
    }
    // variant B is the best point of the span: at least as good as variant A on q₂
    let qb = q2.values(yb.as_ref()).unwrap();
    assert!(qb[8] <= qa[8] + 1e-12);
    // the step's model change equals the quadratic's difference (curvature from the products)
    for v in [None, Some(Variant::A), Some(Variant::B)] {
        let st = debiased_solve(&q1, Some(&q2), v, 8, 0.0).unwrap();
        let q = if v.is_some() { &q2 } else { &q1 };
        let x = Mat::from_fn(20, 2, |i, j| if j == 0 { 0.0 } else { 0.7 * st.step[i] });
        let vals = q.values(x.as_ref()).unwrap();
        let dm = st.model_change(0.7);
        assert!((vals[1] - vals[0] - dm).abs() <= 1e-9 * dm.abs(), "{v:?}: {} vs {dm}", vals[1] - vals[0]);
        assert_eq!(st.products, if v.is_some() { 16 } else { 8 });
    }
    // with B₂ = B₁, variant B over all directions of converged CG is CG's solution
    let conv = cg_run(&q1, 60, 1e-13).unwrap();
    let same = debiased_iterates(&q1, &conv, Variant::B).unwrap();
    let k = conv.len();
    let diff: f64 = (0..20).map(|i| (same[(i, k)] - conv.iterates[(i, k)]).powi(2)).sum::<f64>().sqrt();
    let nrm: f64 = (0..20).map(|i| conv.iterates[(i, k)].powi(2)).sum::<f64>().sqrt();
    assert!(diff <= 1e-8 * nrm, "{diff} vs {nrm}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = v.len();
    if m % 2 == 1 {
        v[m / 2]
    } else {
        0.5 * (v[m / 2 - 1] + v[m / 2])
    }
}

#[test]
fn batch_cg_overfits_the_batch_and_debiased_cg_does_not() {
    // linear least squares D = 200, N = 10 000, |B| = 64
    // at θ = θ* + ξ with input scales 0.95^i: batch CG first descends, then fits the batch's
    // noise (docs/debias.md lists other settings, some where variant B overfits B₂ instead)
    let p = linear_problem_at(200, 10_000, 0.95, 6, Reduction::Mean, Some(1.0));
    let damping = 1e-4;
    let act = all(&p);
    let full = Quadratic::new(&p, Curvature::Ggn, act.clone(), DataWalk::new(&p.data, 2500), 0.0).unwrap();
    let walk = |idx: &[usize]| DataWalk::subset(&p.data, idx, 0).unwrap();
    // one trace: q_B decreases monotonically, the full-data q rises after some k* < 50
    let (b1, b2) = draw_pair(10_000, 64, 0, 0).unwrap();
    let q1 = Quadratic::new(&p, Curvature::Ggn, act.clone(), walk(&b1), damping).unwrap();
    let q2 = Quadratic::new(&p, Curvature::Ggn, act.clone(), walk(&b2), damping).unwrap();
    let tr = cg_trace(&q1, &q2, &full, 50, 0.0).unwrap();
    assert_eq!(tr.k.len(), 51);

    for k in 0..50 {
        assert!(tr.biased_on_b1[k + 1] <= tr.biased_on_b1[k] + 1e-12 * tr.biased_on_b1[0].abs());
    }
    let kstar = (0..51).min_by(|&a, &b| tr.biased_full[a].partial_cmp(&tr.biased_full[b]).unwrap()).unwrap();
    assert!(kstar < 50 && tr.biased_full[50] > tr.biased_full[kstar], "k* = {kstar}: {:?}", tr.biased_full);
    // over 50 seeds: debiased CG's full-data q at k = 50 is no worse than biased CG's (median)
    let (mut qb, mut qa, mut qs) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 0..50 {
        let (b1, b2) = draw_pair(10_000, 64, 100 + seed, 0).unwrap();
        let q1 = Quadratic::new(&p, Curvature::Ggn, act.clone(), walk(&b1), damping).unwrap();
        let q2 = Quadratic::new(&p, Curvature::Ggn, act.clone(), walk(&b2), damping).unwrap();
        let steps: Vec<Vec<f64>> = [None, Some(Variant::A), Some(Variant::B)]
            .into_iter()
            .map(|v| debiased_solve(&q1, Some(&q2), v, 50, 0.0).unwrap().step)
            .collect();
        let x = Mat::from_fn(200, 3, |i, j| steps[j][i]);
        let v = full.values(x.as_ref()).unwrap();
        qb.push(v[0]);
        qa.push(v[1]);
        qs.push(v[2]);
    }
    let (mb, ma, ms) = (median(qb), median(qa), median(qs));
    eprintln!(
        "full-data q at k = 50 (median of 50): biased {mb:.4}, A {ma:.4}, B {ms:.4}; q(0) = {:.4}, k* = {kstar}",
        full.loss
    );
    assert!(ma <= mb && ms <= mb, "medians: biased {mb}, A {ma}, B {ms}");
    assert!(ma < full.loss && ms < full.loss, "debiased steps decrease the full loss: {ma}, {ms} vs {}", full.loss);
}

fn classification_problem() -> Problem<f64> {
    let spec = ModelSpec {
        input_shape: vec![4],
        layers: vec![
            L::Linear { in_f: 4, out_f: 8, bias: true, transposed: false },
            L::Activation(A::Tanh),
            L::Linear { in_f: 8, out_f: 3, bias: true, transposed: false },
        ],
        loss: Loss { kind: LossKind::CrossEntropy, reduction: Reduction::Mean, positions: 1 },
    };
    let net = spec.build::<f64>("<test>", &|_, _| unreachable!()).unwrap();
    let mut rng = Rng::new(9);
    let n = 240;
    let x: Vec<f64> = (0..n * 4).map(|_| rng.normal()).collect();
    let y: Vec<usize> = (0..n)
        .map(|r| {
            if x[r * 4] + x[r * 4 + 1] > 0.0 {
                0
            } else if x[r * 4 + 2] > 0.0 {
                1
            } else {
                2
            }
        })
        .collect();
    let theta: Vec<f64> = (0..net.num_params()).map(|_| 0.3 * rng.normal()).collect();
    Problem { net, theta, data: Dataset { x, sample_shape: vec![4], n, y: Targets::Classes(y), target_width: 0 } }
}

#[test]
fn newton_cg_trains_and_debiased_steps_are_deterministic() {
    let p0 = classification_problem();
    let l0 = curvops::gradient::loss_value(&p0, 0);
    for debias in [None, Some(Variant::A), Some(Variant::B)] {
        let opts = NewtonCgOptions {
            curvature: Curvature::Ggn,
            batch_size: 40,
            epochs: 3,
            lr: 1.0,
            damping: 1e-2,
            cg_iters: 10,
            cg_tol: 1e-10,
            debias,
            seed: 3,
            max_products: None,
            fresh_judge: false,
            fixed_damping: false,
        };
        let run = |p: &mut Problem<f64>| train_newton_cg(p, &all(p), &opts, &mut |_, _| {}, &mut |_, _| {}).unwrap();
        let mut p = classification_problem();
        let (hist, steps) = run(&mut p);
        assert_eq!(hist.len(), 3);
        assert_eq!(steps.len(), 3 * if debias.is_some() { 3 } else { 6 });
        let per = if debias.is_some() { 20 } else { 10 };
        assert!(steps.iter().all(|s| s.products <= per * steps.len()));
        let l1 = curvops::gradient::loss_value(&p, 0);
        assert!(l1 < 0.8 * l0, "{debias:?}: loss {l0} → {l1}");
        let mut p2 = classification_problem();
        run(&mut p2);
        assert_eq!(p.theta, p2.theta, "same seed, same result");
    }
    // a budget of curvature products stops training
    let opts = NewtonCgOptions {
        curvature: Curvature::Ggn,
        batch_size: 40,
        epochs: 10,
        lr: 1.0,
        damping: 1e-2,
        cg_iters: 5,
        cg_tol: 0.0,
        debias: Some(Variant::A),
        seed: 3,
        max_products: Some(25),
        fresh_judge: false,
        fixed_damping: false,
    };
    let mut p = classification_problem();
    let (_, steps) = train_newton_cg(&mut p, &all(&p0), &opts, &mut |_, _| {}, &mut |_, _| {}).unwrap();
    assert_eq!(steps.len(), 3);
    let bad = NewtonCgOptions { batch_size: 0, ..opts };
    let e = train_newton_cg(&mut p, &all(&p0), &bad, &mut |_, _| {}, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("--batch-size"));
}
