//! Test-only checks of a node's derivative rules against central finite differences and the
//! adjoint identities, for nodes with any number of inputs (used by each layer's unit tests).
//!
//! Checked, with `K = 2` stacked tangents:
//! * `jvp_inputs` and `jvp_param` against finite differences of `forward_inputs`;
//! * `⟨g, J dx⟩ = ⟨Jᵀ g, dx⟩` for inputs and parameters (`vjp_inputs`, `vjp_param`);
//! * `vjp_param_per_sample` summed over the batch equals `vjp_param`, and row `n` equals the
//!   rule applied to sample `n` alone;
//! * `hvp_backward_inputs` against finite differences of the first-order backward map
//!   `(x, θ, g) ↦ (vjp_inputs, vjp_param)` along `(R(x), dθ, R(g))`.

use super::{Ctx, Layer};
use curvops_tensor::rng::Rng;

fn randn(r: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| r.normal()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Relative error `‖a − b‖ / max(‖b‖, 1e-12)`.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err: lengths differ");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-12);
    num / den
}

/// Column `kk` of `K` stacked tangents `[N, K, S]` as `[N, S]`.
fn col(v: &[f64], n: usize, k: usize, s: usize, kk: usize) -> Vec<f64> {
    (0..n).flat_map(|i| v[(i * k + kk) * s..(i * k + kk + 1) * s].to_vec()).collect()
}

/// Parameter block `[K, size]` per tensor from `K` flat parameter vectors.
fn per_tensor(layer: &dyn Layer<f64>, dps: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let mut off = 0;
    let mut out = Vec::new();
    for s in layer.params() {
        let mut v = Vec::with_capacity(dps.len() * s.len());
        for d in dps {
            v.extend_from_slice(&d[off..off + s.len()]);
        }
        out.push(v);
        off += s.len();
    }
    out
}

/// Flat parameter vector `kk` from per-tensor `[K, size]` buffers.
fn flat(layer: &dyn Layer<f64>, t: &[Vec<f64>], kk: usize) -> Vec<f64> {
    let mut v = Vec::new();
    for (s, buf) in layer.params().iter().zip(t) {
        v.extend_from_slice(&buf[kk * s.len()..(kk + 1) * s.len()]);
    }
    v
}

fn fd(f: &dyn Fn(f64) -> Vec<f64>, h: f64) -> Vec<f64> {
    f(h).iter().zip(f(-h)).map(|(a, b)| (a - b) / (2.0 * h)).collect()
}

fn with_ctx<R>(layer: &dyn Layer<f64>, p: &[f64], xs: &[Vec<f64>], n: usize, f: impl FnOnce(&Ctx<f64>) -> R) -> R {
    let xr: Vec<&[f64]> = xs.iter().map(|v| v.as_slice()).collect();
    let (y, aux) = layer.forward_inputs(p, &xr, n);
    let c = Ctx { p, x: xr.first().copied().unwrap_or(&[]), xs: &xr, y: &y, aux: &aux, n };
    f(&c)
}

/// Checks every rule of `layer` at parameters `p` and inputs `xs` (batch of `n`). Inputs with
/// `diff[i] == false` (token ids) are held fixed. `tol` bounds the relative errors against
/// finite differences (step `1e-5`); identities are checked to `1e-10`.
pub fn check_rules(name: &str, layer: &dyn Layer<f64>, p: &[f64], xs: &[Vec<f64>], diff: &[bool], n: usize, tol: f64) {
    let mut r = Rng::new(17);
    let k = 2;
    let h = 1e-5;
    let shapes = layer.in_shapes();
    assert_eq!(shapes.len(), xs.len(), "{name}: number of inputs");
    let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    for (i, x) in xs.iter().enumerate() {
        assert_eq!(x.len(), n * sizes[i], "{name}: input {i} size");
    }
    let os = layer.out_size();
    let np = layer.num_params();
    assert_eq!(p.len(), np, "{name}: parameter count");
    let xr: Vec<&[f64]> = xs.iter().map(|v| v.as_slice()).collect();
    let (y, aux) = layer.forward_inputs(p, &xr, n);
    assert_eq!(y.len(), n * os, "{name}: output size");
    let c = Ctx { p, x: xr.first().copied().unwrap_or(&[]), xs: &xr, y: &y, aux: &aux, n };
    let fwd = |pp: &[f64], xx: &[Vec<f64>]| -> Vec<f64> {
        let xr: Vec<&[f64]> = xx.iter().map(|v| v.as_slice()).collect();
        layer.forward_inputs(pp, &xr, n).0
    };

    // tangents of the differentiable inputs and of the parameters
    let dxs: Vec<Option<Vec<f64>>> =
        sizes.iter().zip(diff).map(|(&s, &d)| d.then(|| randn(&mut r, n * k * s))).collect();
    let dxr: Vec<Option<&[f64]>> = dxs.iter().map(|o| o.as_deref()).collect();
    let jx = layer.jvp_inputs(&c, &dxr, k);
    if dxs.iter().any(Option::is_some) {
        let jx = jx.as_ref().unwrap_or_else(|| panic!("{name}: jvp_inputs returned None with tangents"));
        assert_eq!(jx.len(), n * k * os, "{name}: jvp_inputs size");
        for kk in 0..k {
            let num = fd(
                &|t| {
                    let xx: Vec<Vec<f64>> = xs
                        .iter()
                        .zip(&dxs)
                        .zip(&sizes)
                        .map(|((x, d), &s)| match d {
                            Some(d) => x.iter().zip(col(d, n, k, s, kk)).map(|(a, b)| a + t * b).collect(),
                            None => x.clone(),
                        })
                        .collect();
                    fwd(p, &xx)
                },
                h,
            );
            let e = rel_err(&col(jx, n, k, os, kk), &num);
            assert!(e < tol, "{name}: jvp_inputs vs finite differences: {e:.2e}");
        }
        // adjoint per input
        let g = randn(&mut r, n * k * os);
        let want: Vec<bool> = diff.to_vec();
        let gx = layer.vjp_inputs(&c, &g, k, &want);
        let lhs = dot(&g, jx);
        let rhs: f64 = gx.iter().zip(&dxs).filter_map(|(a, b)| Some(dot(a.as_ref()?, b.as_ref()?))).sum();
        assert!((lhs - rhs).abs() <= 1e-10 * lhs.abs().max(1.0), "{name}: input adjoint {lhs} vs {rhs}");
    }

    if np > 0 {
        let dps: Vec<Vec<f64>> = (0..k).map(|_| randn(&mut r, np)).collect();
        let dpt = per_tensor(layer, &dps);
        let dpr: Vec<Option<&[f64]>> = dpt.iter().map(|v| Some(v.as_slice())).collect();
        let mut jp = vec![0.0; n * k * os];
        layer.jvp_param(&c, &dpr, k, &mut jp);
        for kk in 0..k {
            let num = fd(
                &|t| {
                    let pp: Vec<f64> = p.iter().zip(&dps[kk]).map(|(a, b)| a + t * b).collect();
                    fwd(&pp, xs)
                },
                h,
            );
            let e = rel_err(&col(&jp, n, k, os, kk), &num);
            assert!(e < tol, "{name}: jvp_param vs finite differences: {e:.2e}");
        }
        let g = randn(&mut r, n * k * os);
        let mut gp: Vec<Vec<f64>> = layer.params().iter().map(|s| vec![0.0; k * s.len()]).collect();
        {
            let mut views: Vec<Option<&mut [f64]>> = gp.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
            layer.vjp_param(&c, &g, k, &mut views);
        }
        let lhs = dot(&g, &jp);
        let rhs: f64 = (0..k).map(|kk| dot(&flat(layer, &gp, kk), &dps[kk])).sum();
        assert!((lhs - rhs).abs() <= 1e-10 * lhs.abs().max(1.0), "{name}: parameter adjoint {lhs} vs {rhs}");
        // per-sample: sums to the batch rule; row n is sample n alone
        let mut ps: Vec<Vec<f64>> = layer.params().iter().map(|s| vec![0.0; n * k * s.len()]).collect();
        {
            let mut views: Vec<Option<&mut [f64]>> = ps.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
            layer.vjp_param_per_sample(&c, &g, k, &mut views);
        }
        for (t, s) in layer.params().iter().enumerate() {
            let len = s.len();
            let mut sum = vec![0.0; k * len];
            for i in 0..n {
                for (a, b) in sum.iter_mut().zip(&ps[t][i * k * len..(i + 1) * k * len]) {
                    *a += b;
                }
            }
            let e = rel_err(&sum, &gp[t]);
            assert!(e < 1e-10, "{name}: per-sample gradients of {} do not sum to the batch rule: {e:.2e}", s.name);
        }
        let x0: Vec<Vec<f64>> = xs.iter().zip(&sizes).map(|(x, &s)| x[..s].to_vec()).collect();
        let g0 = g[..k * os].to_vec();
        let one: Vec<Vec<f64>> = with_ctx(layer, p, &x0, 1, |c1| {
            let mut b: Vec<Vec<f64>> = layer.params().iter().map(|s| vec![0.0; k * s.len()]).collect();
            let mut views: Vec<Option<&mut [f64]>> = b.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
            layer.vjp_param(c1, &g0, k, &mut views);
            b
        });
        for (t, s) in layer.params().iter().enumerate() {
            let e = rel_err(&ps[t][..k * s.len()], &one[t]);
            assert!(e < 1e-10, "{name}: per-sample gradient of sample 0 ({}) vs the sample alone: {e:.2e}", s.name);
        }
    }

    // R-op of backpropagation against finite differences of the first-order backward map
    let g = randn(&mut r, n * os);
    let rg = randn(&mut r, n * k * os);
    let rxs: Vec<Option<Vec<f64>>> =
        sizes.iter().zip(diff).map(|(&s, &d)| d.then(|| randn(&mut r, n * k * s))).collect();
    let dps: Vec<Vec<f64>> = (0..k).map(|_| randn(&mut r, np)).collect();
    let dpt = per_tensor(layer, &dps);
    for with_params in [false, true] {
        if with_params && np == 0 {
            continue;
        }
        let dpr: Vec<Option<&[f64]>> =
            dpt.iter().map(|v| if with_params { Some(v.as_slice()) } else { None }).collect();
        let rxr: Vec<Option<&[f64]>> = rxs.iter().map(|o| o.as_deref()).collect();
        let mut rgrad: Vec<Vec<f64>> = layer.params().iter().map(|s| vec![0.0; k * s.len()]).collect();
        let want: Vec<bool> = diff.to_vec();
        let rgx = {
            let mut views: Vec<Option<&mut [f64]>> = rgrad.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
            layer.hvp_backward_inputs(&c, &rxr, &dpr, &g, &rg, k, &mut views, &want)
        };
        assert_eq!(rgx.len(), xs.len(), "{name}: hvp_backward_inputs returns one entry per input");
        for kk in 0..k {
            // B(t) = backward map at (x + t R(x), θ + t dθ) for cotangent g + t R(g)
            let bmap = |t: f64| -> Vec<f64> {
                let xx: Vec<Vec<f64>> = xs
                    .iter()
                    .zip(&rxs)
                    .zip(&sizes)
                    .map(|((x, d), &s)| match d {
                        Some(d) => x.iter().zip(col(d, n, k, s, kk)).map(|(a, b)| a + t * b).collect(),
                        None => x.clone(),
                    })
                    .collect();
                let pp: Vec<f64> =
                    if with_params { p.iter().zip(&dps[kk]).map(|(a, b)| a + t * b).collect() } else { p.to_vec() };
                let gg: Vec<f64> = g.iter().zip(col(&rg, n, k, os, kk)).map(|(a, b)| a + t * b).collect();
                with_ctx(layer, &pp, &xx, n, |c2| {
                    let mut out = Vec::new();
                    for v in layer.vjp_inputs(c2, &gg, 1, &want).into_iter().flatten() {
                        out.extend(v);
                    }
                    let mut b: Vec<Vec<f64>> = layer.params().iter().map(|s| vec![0.0; s.len()]).collect();
                    {
                        let mut views: Vec<Option<&mut [f64]>> = b.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
                        layer.vjp_param(c2, &gg, 1, &mut views);
                    }
                    for v in b {
                        out.extend(v);
                    }
                    out
                })
            };
            let num = fd(&bmap, h);
            let mut ana = Vec::new();
            for (i, v) in rgx.iter().enumerate() {
                if want[i] {
                    let v = v.as_ref().unwrap_or_else(|| panic!("{name}: hvp_backward_inputs gave no R(g_x{i})"));
                    ana.extend(col(v, n, k, sizes[i], kk));
                }
            }
            if with_params {
                ana.extend(flat(layer, &rgrad, kk));
            } else {
                // the parameter part is still the R-op of the parameter gradient (θ held fixed)
                ana.extend(flat(layer, &rgrad, kk));
            }
            let e = rel_err(&ana, &num);
            assert!(e < tol, "{name}: hvp_backward (params: {with_params}) vs finite differences: {e:.2e}");
        }
    }
}
