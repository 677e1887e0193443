//! The Gram matrix `G̃ = Vᵀ V` layer by layer, without forming `V`.
//!
//! Columns of `V` are indexed by `a = (n, r)` (sample-major). For a layer with output
//! cotangents `g_a` (the backpropagated `√(c·w)·S_n e_r` at the layer output) and input `x_n`,
//! the per-sample gradient of the weight is `g_a x_nᵀ` (linear) or `G_a U_nᵀ` (conv2d, `U_n` the
//! unfolded input `[J, L]`, `G_a` `[O, L]`, per channel group), of the bias `g_a` (`Σ_l G_a`).
//! Hence
//!
//! * linear: `G̃[a, b] = (g_aᵀ g_b)·(x_{n_a}ᵀ x_{n_b} + [bias])`: two small GEMMs;
//! * conv2d (unfolded): `G̃[a, b] = ⟨G_a K_{n_a n_b}, G_b⟩_F` with `K_{nm} = U_nᵀ U_m` (`L × L`),
//!   or (materialized) the Gram of the per-sample weight gradients — whichever costs fewer
//!   flops (`ConvGram::Auto`);
//! * any other layer (batch norm, …): the Gram of that layer's per-sample gradients.
//!
//! Memory: the features kept per layer are `N·R·O + N·I` (linear), `N·R·O·L + N·J·L`
//! (conv2d, unfolded) or `N·R·D_l` (per-sample), plus one `N·R × N·R` Gram matrix per group;
//! never a `D × D` matrix nor the whole of `V` unless a layer falls back to per-sample gradients.

use super::ConvGram;
use curvops_nn::layers::{Conv2d, Linear};
use curvops_nn::{ActiveSet, Network, Tape};
use curvops_tensor::gemm::{view, view_mut};
use curvops_tensor::{gemm, ops, threads, Float, Trans};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::Accum;

/// How a layer's features are kept.
#[derive(Clone, Debug)]
pub(crate) enum FeatKind {
    /// `x` is `[N, I]` (empty without an active weight), `g` is `[N·R, O]`.
    Linear { i: usize, o: usize },
    /// `x` is the unfolded input `[N, G·Jg, L]`, `g` is `[N·R, O, L]`.
    Conv { groups: usize, jg: usize, og: usize, l: usize },
    /// Per tensor, per-sample gradients `[N·R, len]`.
    PerSample,
}

/// What the Gram matrices need from one layer, over all samples of the pass.
#[derive(Clone, Debug)]
pub(crate) struct LayerFeat<T> {
    pub layer: usize,
    pub kind: FeatKind,
    /// Layout entry of the weight / bias (if active).
    pub weight: Option<usize>,
    pub bias: Option<usize>,
    pub x: Vec<T>,
    pub g: Vec<T>,
    /// `(layout entry, [N·R, len])` for [`FeatKind::PerSample`].
    pub per: Vec<(usize, Vec<T>)>,
}

/// The memory of [`crate::vivit::Vivit::eigen`] by its phases, in bytes (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The per-layer features kept for the Gram matrices.
    pub features: usize,
    /// One forward pass (layer inputs, unfolded inputs) of the `n` samples.
    pub tape: usize,
    /// Cotangent buffers of the backward pass with `R` columns per sample.
    pub backprop: usize,
    /// One Gram matrix with its temporaries and the eigensolver's (`(NR)²` each).
    pub gram: usize,
    /// The eigenvector pass: `K` vectors of `D_S` and their cotangents.
    pub vectors: usize,
    /// The largest of the three phases: `tape + features + backprop` (data pass),
    /// `tape + features + gram` (Gram matrices and their eigendecompositions; the forward pass
    /// is kept for the eigenvector pass), `tape + vectors`.
    pub peak: usize,
}

/// The heap [`crate::vivit::Vivit::eigen`] needs for `n` samples (one batch) with `r` columns
/// each, `k` eigenvectors and a full (`full_eigh`) or Lanczos eigendecomposition of the Gram
/// matrix: `O((nR)² + nR·D_group)`, never `D²`.
pub fn memory_estimate<T: Float>(
    net: &Network<T>,
    active: &ActiveSet,
    n: usize,
    r: usize,
    k: usize,
    conv: ConvGram,
    full_eigh: bool,
) -> MemoryEstimate {
    let b = T::BYTES;
    let feats: Vec<LayerFeat<T>> = plan(net, active, n, r, conv);
    let mut features = 0;
    for f in &feats {
        features += match f.kind {
            FeatKind::Linear { i, o } => n * r * o + if f.weight.is_some() { n * i } else { 0 },
            FeatKind::Conv { groups, jg, og, l } => {
                n * r * groups * og * l + if f.weight.is_some() { n * groups * jg * l } else { 0 }
            }
            FeatKind::PerSample => n * r * f.per.iter().map(|p| net.layout.entries[p.0].len).sum::<usize>(),
        };
    }
    let stop = feats.iter().map(|f| f.layer).min().unwrap_or(net.layers.len());
    let mut tape = n * net.out_size();
    let mut widest = net.out_size();
    for (l, layer) in net.layers.iter().enumerate() {
        tape += n * layer.in_size();
        if let Some(c) = layer.as_any().downcast_ref::<Conv2d>() {
            tape += n * c.geom().col_rows() * c.geom().out_len();
        }
        if l >= stop {
            widest = widest.max(layer.in_size()).max(layer.out_size());
        }
    }
    let m = n * r;
    let backprop = 2 * m * widest;
    let gram = m * m * if full_eigh { 5 } else { 3 } + n * n;
    let vectors = 2 * k * active.dim + 2 * n * k * widest;
    let peak = (tape + features + backprop).max(tape + features + gram).max(tape + vectors);
    MemoryEstimate {
        features: features * b,
        tape: tape * b,
        backprop: backprop * b,
        gram: gram * b,
        vectors: vectors * b,
        peak: peak * b,
    }
}

/// The largest number of samples `n ≤ n_max` whose [`memory_estimate`] peak fits in `budget`
/// bytes (0 if none does): ViViT's critical batch size.
pub fn critical_batch_size<T: Float>(
    net: &Network<T>,
    active: &ActiveSet,
    r: usize,
    k: usize,
    full_eigh: bool,
    budget: usize,
    n_max: usize,
) -> usize {
    let fits = |n: usize| memory_estimate(net, active, n, r, k, ConvGram::Auto, full_eigh).peak <= budget;
    let (mut lo, mut hi) = (0usize, n_max);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Flop counts of the two conv2d forms for `n` samples with `r` columns each.
pub(crate) fn conv_costs(n: usize, r: usize, groups: usize, jg: usize, og: usize, l: usize) -> (f64, f64) {
    let (n, r, g, jg, og, l) = (n as f64, r as f64, groups as f64, jg as f64, og as f64, l as f64);
    let pairs = n * (n + 1.0) / 2.0;
    let unfolded = pairs * g * (l * l * jg + r * og * l * l + r * r * og * l);
    let materialized = n * r * g * og * jg * l + (n * r) * (n * r) * g * og * jg;
    (unfolded, materialized)
}

/// The features of every layer with an active parameter, empty, for a pass over `n` samples
/// with `r` columns each.
pub(crate) fn plan<T: Float>(
    net: &Network<T>,
    active: &ActiveSet,
    n: usize,
    r: usize,
    conv: ConvGram,
) -> Vec<LayerFeat<T>> {
    let mut out = Vec::new();
    for (l, layer) in net.layers.iter().enumerate() {
        if !active.layer_active[l] {
            continue;
        }
        let mut weight = None;
        let mut bias = None;
        for i in net.layout.layer_entries[l].clone() {
            if active.sub_offset[i].is_some() {
                if net.layout.entries[i].name.ends_with(".weight") {
                    weight = Some(i);
                } else if net.layout.entries[i].name.ends_with(".bias") {
                    bias = Some(i);
                }
            }
        }
        let any = layer.as_any();
        let kind = if any.downcast_ref::<Linear>().is_some() {
            FeatKind::Linear { i: layer.in_size(), o: layer.out_size() }
        } else if let Some(c) = any.downcast_ref::<Conv2d>() {
            let (groups, jg, l) = (c.groups(), c.jg(), c.geom().out_len());
            let og = layer.out_shape()[0] / groups;
            let unfolded = match conv {
                ConvGram::Unfolded => true,
                ConvGram::Materialized => false,
                ConvGram::Auto => {
                    let (u, m) = conv_costs(n, r, groups, jg, og, l);
                    u <= m
                }
            };
            if unfolded {
                FeatKind::Conv { groups, jg, og, l }
            } else {
                FeatKind::PerSample
            }
        } else {
            FeatKind::PerSample
        };
        let per = match kind {
            FeatKind::PerSample => net.layout.layer_entries[l]
                .iter()
                .copied()
                .filter(|&i| active.sub_offset[i].is_some())
                .map(|i| (i, Vec::new()))
                .collect(),
            _ => Vec::new(),
        };
        out.push(LayerFeat { layer: l, kind, weight, bias, x: Vec::new(), g: Vec::new(), per });
    }
    out
}

/// Backpropagates the output cotangents `cot` (`[n, R, C]`) of one batch and appends each
/// planned layer's features.
pub(crate) fn collect<T: Float>(
    net: &Network<T>,
    theta: &[T],
    tape: &Tape<T>,
    cot: Vec<T>,
    r: usize,
    feats: &mut [LayerFeat<T>],
) {
    let n = tape.n;
    let Some(stop) = feats.iter().map(|f| f.layer).min() else { return };
    let mut by_layer: Vec<Option<usize>> = vec![None; net.layers.len()];
    for (i, f) in feats.iter().enumerate() {
        by_layer[f.layer] = Some(i);
    }
    let cots = net.backward_cotangents(theta, tape, cot, r, stop);
    for l in (stop..net.layers.len()).rev() {
        let layer = &net.layers[l];
        let Some(cot) = cots[l + 1].as_deref() else { continue };
        if let Some(fi) = by_layer[l] {
            let f = &mut feats[fi];
            match f.kind {
                FeatKind::Linear { .. } => {
                    if f.weight.is_some() {
                        f.x.extend_from_slice(net.node_input(l, tape));
                    }
                    f.g.extend_from_slice(cot);
                }
                FeatKind::Conv { .. } => {
                    if f.weight.is_some() {
                        match &tape.aux[l] {
                            curvops_nn::layers::Aux::Cols(c) => f.x.extend_from_slice(c),
                            _ => panic!("conv2d: forward pass did not keep cols"),
                        }
                    }
                    f.g.extend_from_slice(cot);
                }
                FeatKind::PerSample => {
                    let range = net.layout.layer_entries[l].clone();
                    let mut bufs: Vec<Option<Vec<T>>> = range
                        .iter()
                        .map(|&i| {
                            f.per.iter().any(|p| p.0 == i).then(|| vec![T::zero(); n * r * net.layout.entries[i].len])
                        })
                        .collect();
                    {
                        let mut views: Vec<Option<&mut [T]>> = bufs.iter_mut().map(|b| b.as_deref_mut()).collect();
                        net.with_ctx(l, theta, tape, |ctx| layer.vjp_param_per_sample(ctx, cot, r, &mut views));
                    }
                    for (i, b) in range.into_iter().zip(bufs) {
                        if let Some(b) = b {
                            let p = f.per.iter_mut().find(|p| p.0 == i).expect("planned tensor");
                            p.1.extend_from_slice(&b);
                        }
                    }
                }
            }
        }
    }
}

/// Below this size a Gram matrix is computed in full (faster than the triangular kernel).
const TRIANGULAR_MIN: usize = 128;

/// The lower triangle (diagonal included) of `A Aᵀ` for a row-major `A` (`[m, k]`), as an
/// `[m, m]` row-major matrix whose strict upper triangle is unspecified (zero or the mirror).
pub(crate) fn syrk_lower<T: Float>(a: &[T], m: usize, k: usize) -> Vec<T> {
    let mut out = vec![T::zero(); m * m];
    if m == 0 || k == 0 {
        return out;
    }
    let av = view(a, m, k, k, Trans::N);
    let dst = view_mut(&mut out, m, m, m);
    if m < TRIANGULAR_MIN {
        matmul(dst, Accum::Replace, av, av.transpose(), T::one(), threads::par());
    } else {
        tri_matmul(
            dst,
            BlockStructure::TriangularLower,
            Accum::Replace,
            av,
            BlockStructure::Rectangular,
            av.transpose(),
            BlockStructure::Rectangular,
            T::one(),
            threads::par(),
        );
    }
    out
}

/// `out += lower(x)` on the lower triangle of `[m, m]` row-major matrices.
fn add_lower<T: Float>(out: &mut [T], x: &[T]) {
    let m = (out.len() as f64).sqrt() as usize;
    for a in 0..m {
        for b in 0..=a {
            out[a * m + b] += x[a * m + b];
        }
    }
}

/// Mirrors the lower triangle of a row-major `[m, m]` matrix onto the upper one.
pub(crate) fn mirror_lower<T: Float>(out: &mut [T], m: usize) {
    for a in 0..m {
        for b in 0..a {
            out[b * m + a] = out[a * m + b];
        }
    }
}

/// Adds the Gram contribution of the tensors of `f` for which `want(entry)` holds to the
/// lower triangle of `out` (`[m, m]` row-major, `m = N·R`; the upper triangle is left
/// unspecified: finish with [`mirror_lower`]).
pub(crate) fn add_gram<T: Float>(f: &LayerFeat<T>, n: usize, r: usize, want: &dyn Fn(usize) -> bool, out: &mut [T]) {
    let m = n * r;
    let want_w = f.weight.is_some_and(want);
    let want_b = f.bias.is_some_and(want);
    match f.kind {
        FeatKind::Linear { i, o } => {
            if !want_w && !want_b {
                return;
            }
            let gg = syrk_lower(&f.g, m, o);
            let xx = if want_w { syrk_lower(&f.x, n, i) } else { Vec::new() };
            let bias = if want_b { T::one() } else { T::zero() };
            for a in 0..m {
                let na = a / r;
                for b in 0..=a {
                    let s = if want_w { xx[na * n + b / r] + bias } else { bias };
                    out[a * m + b] += gg[a * m + b] * s;
                }
            }
        }
        FeatKind::Conv { groups, jg, og, l } => {
            let o = groups * og;
            if want_b {
                // per-sample bias gradients Σ_l G_a[o, l]: [m, O]
                let mut gb = vec![T::zero(); m * o];
                for (a, row) in gb.chunks_exact_mut(o).enumerate() {
                    for (oo, v) in row.iter_mut().enumerate() {
                        *v = f.g[(a * o + oo) * l..(a * o + oo + 1) * l].iter().copied().sum();
                    }
                }
                add_lower(out, &syrk_lower(&gb, m, o));
            }
            if want_w {
                let cs = groups * jg * l;
                let mut k = vec![T::zero(); l * l];
                let mut y = vec![T::zero(); r * og * l];
                let gs = o * l; // cotangent size per column
                for na in 0..n {
                    for nb in 0..=na {
                        for gi in 0..groups {
                            let ua = &f.x[na * cs + gi * jg * l..na * cs + (gi + 1) * jg * l];
                            let ub = &f.x[nb * cs + gi * jg * l..nb * cs + (gi + 1) * jg * l];
                            // K = U_aᵀ U_b: [L, L]
                            gemm(l, l, jg, T::one(), ua, l, Trans::T, ub, l, Trans::N, T::zero(), &mut k, l);
                            // Y_ra = G_{na, ra}[group rows] K: [og, L] per ra
                            for ra in 0..r {
                                let ga = &f.g[(na * r + ra) * gs + gi * og * l..];
                                gemm(
                                    og,
                                    l,
                                    l,
                                    T::one(),
                                    ga,
                                    l,
                                    Trans::N,
                                    &k,
                                    l,
                                    Trans::N,
                                    T::zero(),
                                    &mut y[ra * og * l..],
                                    l,
                                );
                            }
                            for ra in 0..r {
                                let ya = &y[ra * og * l..(ra + 1) * og * l];
                                for rb in 0..r {
                                    let off = (nb * r + rb) * gs + gi * og * l;
                                    let v = ops::dot(ya, &f.g[off..off + og * l]);
                                    let (a, b) = (na * r + ra, nb * r + rb);
                                    out[a * m + b] += v;
                                    if na != nb {
                                        out[b * m + a] += v;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        FeatKind::PerSample => {
            for (e, rows) in &f.per {
                if want(*e) {
                    let len = rows.len() / m.max(1);
                    add_lower(out, &syrk_lower(rows, m, len));
                }
            }
        }
    }
}
