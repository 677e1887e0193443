//! Every layer's derivative rules against finite differences and adjoint identities, on random
//! shapes and options (stride, padding, dilation, groups, rectangular kernels, no bias, …).

use curvops_nn::layers::*;
use curvops_tensor::conv::Geom2d;
use curvops_tensor::rng::Rng;

fn randn(r: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| r.normal()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-12);
    num / den
}

/// Stacks K per-tensor tangents `[K, size]` from K full-layer vectors.
fn per_tensor(layer: &dyn Layer<f64>, dps: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let k = dps.len();
    let mut off = 0;
    let mut out = Vec::new();
    for s in layer.params() {
        let mut v = Vec::with_capacity(k * s.len());
        for d in dps {
            v.extend_from_slice(&d[off..off + s.len()]);
        }
        out.push(v);
        off += s.len();
    }
    out
}

fn flat_from_tensors(layer: &dyn Layer<f64>, t: &[Vec<f64>], k: usize, kk: usize) -> Vec<f64> {
    let mut v = Vec::new();
    for (s, buf) in layer.params().iter().zip(t) {
        v.extend_from_slice(&buf[kk * s.len()..(kk + 1) * s.len()]);
    }
    let _ = k;
    v
}

/// Central difference of `f` along direction `d` from `z`.
fn fd(f: &dyn Fn(&[f64]) -> Vec<f64>, z: &[f64], d: &[f64], h: f64) -> Vec<f64> {
    let zp: Vec<f64> = z.iter().zip(d).map(|(a, b)| a + h * b).collect();
    let zm: Vec<f64> = z.iter().zip(d).map(|(a, b)| a - h * b).collect();
    f(&zp).iter().zip(f(&zm)).map(|(a, b)| (a - b) / (2.0 * h)).collect()
}

fn check_layer(name: &str, layer: &dyn Layer<f64>, n: usize, seed: u64) {
    let mut r = Rng::new(seed);
    let (is, os, np) = (layer.in_size(), layer.out_size(), layer.num_params());
    let k = 3;
    let p = randn(&mut r, np);
    let x = randn(&mut r, n * is);
    let (y, aux) = layer.forward(&p, &x, n);
    assert_eq!(y.len(), n * os, "{name}: output size");
    let xr: &[f64] = &x;
    let c = Ctx { p: &p, x: &x, xs: std::slice::from_ref(&xr), y: &y, aux: &aux, n };
    let h = 1e-6;
    let tol = 1e-6;

    // --- JVP wrt input vs finite differences, K tangents at once
    let dx = randn(&mut r, n * k * is);
    let jx = layer.jvp_input(&c, &dx, k);
    for kk in 0..k {
        let d: Vec<f64> = (0..n).flat_map(|s| dx[(s * k + kk) * is..(s * k + kk + 1) * is].to_vec()).collect();
        let num = fd(&|z| layer.forward(&p, z, n).0, &x, &d, h);
        let ana: Vec<f64> = (0..n).flat_map(|s| jx[(s * k + kk) * os..(s * k + kk + 1) * os].to_vec()).collect();
        assert!(rel_err(&ana, &num) < tol, "{name}: jvp_input err {}", rel_err(&ana, &num));
    }

    // --- adjoint of input rules: <g, J dx> = <J^T g, dx>
    let g = randn(&mut r, n * k * os);
    let gx = layer.vjp_input(&c, &g, k);
    let lhs = dot(&g, &jx);
    let rhs = dot(&gx, &dx);
    assert!((lhs - rhs).abs() <= 1e-10 * lhs.abs().max(1.0), "{name}: input adjoint {lhs} vs {rhs}");

    let nt = layer.params().len();
    let dps: Vec<Vec<f64>> = (0..k).map(|_| randn(&mut r, np)).collect();
    let dpt = per_tensor(layer, &dps);
    let dpr: Vec<Option<&[f64]>> = dpt.iter().map(|v| Some(v.as_slice())).collect();
    if np > 0 {
        // --- JVP wrt parameters vs finite differences
        let mut jp = vec![0.0; n * k * os];
        layer.jvp_param(&c, &dpr, k, &mut jp);
        for kk in 0..k {
            let num = fd(&|q| layer.forward(q, &x, n).0, &p, &dps[kk], h);
            let ana: Vec<f64> = (0..n).flat_map(|s| jp[(s * k + kk) * os..(s * k + kk + 1) * os].to_vec()).collect();
            assert!(rel_err(&ana, &num) < tol, "{name}: jvp_param err {}", rel_err(&ana, &num));
        }
        // --- adjoint: <g, J_θ dθ> = <J_θ^T g, dθ>
        let mut bufs: Vec<Vec<f64>> = layer.params().iter().map(|s| vec![0.0; k * s.len()]).collect();
        {
            let mut views: Vec<Option<&mut [f64]>> = bufs.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
            layer.vjp_param(&c, &g, k, &mut views);
        }
        let lhs = dot(&g, &jp);
        let rhs: f64 = bufs.iter().zip(&dpt).map(|(a, b)| dot(a, b)).sum();
        assert!((lhs - rhs).abs() <= 1e-10 * lhs.abs().max(1.0), "{name}: param adjoint {lhs} vs {rhs}");
        // --- per-sample gradients sum to the batch gradient; each equals the 1-sample batch
        let mut ps: Vec<Vec<f64>> = layer.params().iter().map(|s| vec![f64::NAN; n * k * s.len()]).collect();
        {
            let mut views: Vec<Option<&mut [f64]>> = ps.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
            layer.vjp_param_per_sample(&c, &g, k, &mut views);
        }
        for (t, s) in layer.params().iter().enumerate() {
            let len = s.len();
            let mut sum = vec![0.0; k * len];
            for sn in 0..n {
                for (a, b) in sum.iter_mut().zip(&ps[t][sn * k * len..(sn + 1) * k * len]) {
                    *a += b;
                }
            }
            assert!(rel_err(&sum, &bufs[t]) < 1e-12, "{name}: per-sample sum ({})", s.name);
        }
        let sn = n - 1;
        let x1 = &x[sn * is..(sn + 1) * is];
        let (y1, aux1) = layer.forward(&p, x1, 1);
        let c1 = Ctx { p: &p, x: x1, xs: std::slice::from_ref(&x1), y: &y1, aux: &aux1, n: 1 };
        let mut one: Vec<Vec<f64>> = layer.params().iter().map(|s| vec![0.0; k * s.len()]).collect();
        {
            let mut views: Vec<Option<&mut [f64]>> = one.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
            layer.vjp_param(&c1, &g[sn * k * os..], k, &mut views);
        }
        for (t, s) in layer.params().iter().enumerate() {
            let len = s.len();
            assert!(
                rel_err(&ps[t][sn * k * len..(sn + 1) * k * len], &one[t]) < 1e-12,
                "{name}: per-sample {}",
                s.name
            );
        }
    }

    // --- R-op of backprop vs finite differences of the VJP along (rx, dθ, rg)
    let g1 = randn(&mut r, n * os);
    let rg = randn(&mut r, n * k * os);
    let rx = randn(&mut r, n * k * is);
    for with_rx in [true, false] {
        let mut rgrad: Vec<Vec<f64>> = layer.params().iter().map(|s| vec![0.0; k * s.len()]).collect();
        let rgx = {
            let mut views: Vec<Option<&mut [f64]>> = rgrad.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
            let rxo = if with_rx { Some(rx.as_slice()) } else { None };
            let dpin: Vec<Option<&[f64]>> = if np > 0 { dpr.clone() } else { vec![None; nt] };
            layer.hvp_backward(&c, rxo, &dpin, &g1, &rg, k, &mut views, true).unwrap()
        };
        for kk in 0..k {
            let dxk: Vec<f64> = if with_rx {
                (0..n).flat_map(|s| rx[(s * k + kk) * is..(s * k + kk + 1) * is].to_vec()).collect()
            } else {
                vec![0.0; n * is]
            };
            let rgk: Vec<f64> = (0..n).flat_map(|s| rg[(s * k + kk) * os..(s * k + kk + 1) * os].to_vec()).collect();
            // z = (x, θ, g) ↦ (vjp_input(g), vjp_param(g)) at (x, θ)
            let z0: Vec<f64> = x.iter().chain(&p).chain(&g1).copied().collect();
            let dz: Vec<f64> = dxk.iter().chain(if np > 0 { &dps[kk] } else { &dps[0] }).chain(&rgk).copied().collect();
            let f = |z: &[f64]| -> Vec<f64> {
                let (xz, rest) = z.split_at(n * is);
                let (pz, gz) = rest.split_at(np);
                let (yz, az) = layer.forward(pz, xz, n);
                let cz = Ctx { p: pz, x: xz, xs: std::slice::from_ref(&xz), y: &yz, aux: &az, n };
                let mut out = layer.vjp_input(&cz, gz, 1);
                let mut b: Vec<Vec<f64>> = layer.params().iter().map(|s| vec![0.0; s.len()]).collect();
                {
                    let mut views: Vec<Option<&mut [f64]>> = b.iter_mut().map(|v| Some(v.as_mut_slice())).collect();
                    layer.vjp_param(&cz, gz, 1, &mut views);
                }
                for v in b {
                    out.extend(v);
                }
                out
            };
            let num = fd(&f, &z0, &dz, 1e-5);
            let mut ana: Vec<f64> =
                (0..n).flat_map(|s| rgx[(s * k + kk) * is..(s * k + kk + 1) * is].to_vec()).collect();
            ana.extend(flat_from_tensors(layer, &rgrad, k, kk));
            let e = rel_err(&ana, &num);
            assert!(e < 1e-6, "{name}: hvp_backward (with_rx={with_rx}) err {e}");
        }
    }
}

fn geom(
    c: usize,
    h: usize,
    w: usize,
    k: (usize, usize),
    s: (usize, usize),
    p: (usize, usize),
    d: (usize, usize),
) -> Geom2d {
    Geom2d::new(c, h, w, k, s, p, d).unwrap()
}

#[test]
fn linear_rules() {
    check_layer("linear", &Linear::new(5, 4, true), 3, 1);
    check_layer("linear/nobias", &Linear::new(3, 6, false), 4, 2);
    check_layer("linear/1x1", &Linear::new(1, 1, true), 1, 3);
}

#[test]
fn conv2d_rules() {
    let cases: Vec<(Geom2d, usize, usize, bool)> = vec![
        (geom(2, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1)), 3, 1, true),
        (geom(4, 7, 6, (3, 2), (2, 1), (1, 0), (1, 2)), 6, 2, true),
        (geom(3, 8, 8, (2, 3), (2, 3), (0, 2), (2, 1)), 3, 3, false),
        (geom(4, 5, 5, (1, 1), (1, 1), (0, 0), (1, 1)), 2, 2, false),
        (geom(2, 4, 6, (4, 4), (1, 2), (2, 1), (1, 1)), 4, 1, true),
    ];
    for (i, (g, o, groups, bias)) in cases.into_iter().enumerate() {
        let l = Conv2d::new(g, o, groups, bias).unwrap();
        check_layer(&format!("conv2d case {i}"), &l, 2, 10 + i as u64);
    }
}

#[test]
fn pooling_rules() {
    let cases = [
        geom(2, 6, 6, (2, 2), (2, 2), (0, 0), (1, 1)),
        geom(3, 7, 5, (3, 2), (2, 1), (1, 1), (1, 1)),
        geom(1, 9, 8, (3, 3), (1, 2), (1, 0), (2, 2)),
        geom(2, 5, 5, (2, 3), (3, 1), (1, 1), (1, 1)),
    ];
    for (i, g) in cases.into_iter().enumerate() {
        check_layer(&format!("maxpool case {i}"), &MaxPool2d::new(g).unwrap(), 2, 20 + i as u64);
        if g.dh == 1 && g.dw == 1 {
            check_layer(&format!("avgpool case {i}"), &AvgPool2d::new(g).unwrap(), 2, 30 + i as u64);
        }
    }
}

#[test]
fn batchnorm_rules() {
    let mut r = Rng::new(5);
    for (shape, kind) in [(vec![4], "batchnorm1d"), (vec![3, 5], "batchnorm1d"), (vec![2, 3, 4], "batchnorm2d")] {
        let c = shape[0];
        let mean = randn(&mut r, c);
        let var: Vec<f64> = (0..c).map(|_| 0.5 + r.uniform()).collect();
        for affine in [true, false] {
            let l = BatchNorm::new(kind, shape.clone(), mean.clone(), var.clone(), 1e-5, affine);
            check_layer(&format!("{kind} {shape:?} affine={affine}"), &l, 3, 40);
        }
    }
}

#[test]
fn activation_rules() {
    for kind in [
        ActivationKind::Relu,
        ActivationKind::LeakyRelu(0.07),
        ActivationKind::Tanh,
        ActivationKind::Sigmoid,
        ActivationKind::Gelu,
        ActivationKind::Silu,
    ] {
        check_layer(kind.name(), &Activation::new(kind, vec![2, 3]), 3, 50);
    }
    check_layer("flatten", &Identity::flatten(vec![2, 3, 2]), 2, 51);
    check_layer("dropout", &Identity::dropout(vec![5]), 2, 52);
}

#[test]
fn kink_conventions_match_pytorch() {
    let relu = ActivationKind::Relu;
    assert_eq!(relu.d1(0.0f64, 0.0), 0.0);
    let leaky = ActivationKind::LeakyRelu(0.2);
    assert_eq!(leaky.d1(0.0f64, 0.0), 0.2);
    // max pool: the first maximal element (row-major) of a window wins
    let g = geom(1, 2, 2, (2, 2), (2, 2), (0, 0), (1, 1));
    let mp = MaxPool2d::new(g).unwrap();
    let x = [1.0f64, 3.0, 3.0, 2.0];
    let (y, aux) = mp.forward(&[], &x, 1);
    assert_eq!(y, vec![3.0]);
    let xr: &[f64] = &x;
    let c = Ctx { p: &[], x: &x, xs: std::slice::from_ref(&xr), y: &y, aux: &aux, n: 1 };
    assert_eq!(mp.vjp_input(&c, &[1.0], 1), vec![0.0, 1.0, 0.0, 0.0]);
}
