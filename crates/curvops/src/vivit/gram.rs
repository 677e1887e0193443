//! The Gram matrix `G̃ = Vᵀ V` node by node, without forming `V`.
//!
//! Columns of `V` are indexed by `a = (n, r)` (sample-major). For a node with output cotangents
//! `g_a` (the backpropagated `√(c·w)·S_n e_r` at the node output, summed where values fan out)
//! `G̃ = Σ_t Σ ⟨∇θ_t(a), ∇θ_t(b)⟩` over the parameter tensors `t`, from each node's
//! [`Layer::gram_features`](curvops_nn::layers::Layer::gram_features):
//!
//! * factored ([`GradFactorShape`]: linear, conv2d): the weight gradient is
//!   `G_{a,γ} U_{n,γ}ᵀ` per channel group `γ` (`U` the input at the `L` weight-sharing positions
//!   — the rows of a linear layer's input, a convolution's unfolded patches — `G` the cotangent
//!   there), the bias gradient `G_a 1`. Then
//!   `G̃[a, b] = Σ_γ ⟨G_{a,γ} K_{n_a n_b, γ}, G_{b,γ}⟩ + ⟨G_a 1, G_b 1⟩`, `K_{nm,γ} = U_{n,γ}ᵀ U_{m,γ}`
//!   (`L × L`), and for `L = 1` and one group `G̃[a, b] = (g_aᵀ g_b)(u_{n_a}ᵀ u_{n_b} + [bias])`:
//!   two small GEMMs. With `L > 1` the factored form or the per-sample gradients, whichever
//!   costs fewer flops (`ConvGram::Auto`);
//! * any other node (batch norm, layer norm, embeddings, attention, `parameter`): the Gram of
//!   that node's per-sample gradients;
//! * a tensor tied between nodes: the per-sample gradients summed over its uses (the sum of
//!   the uses' Grams would miss the cross terms).
//!
//! Memory: the features kept per node are `N·R·O·L + N·J·L` (factored) or `N·R·D_t`
//! (per-sample), plus one `N·R × N·R` Gram matrix per group; never a `D × D` matrix nor the
//! whole of `V` unless every node falls back to per-sample gradients.

use super::ConvGram;
use curvops_nn::layers::{GradFactorShape, GramFeatures};
use curvops_nn::{ActiveSet, Network, Tape};
use curvops_tensor::gemm::{matmul, tri_matmul};
use curvops_tensor::gemm::{view, view_mut};
use curvops_tensor::{gemm, ops, threads, Float, Trans};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::Accum;

/// Where a feature's per-sample gradients come from.
#[derive(Clone, Debug)]
pub(crate) enum FeatSource {
    /// A node's active, untied tensors, by its rule ([`LayerFeat::shape`] set when factored).
    Node(usize),
    /// A tied tensor (layout entry): per-sample gradients summed over its users.
    Tied(usize),
}

/// What the Gram matrices need from one node (or tied tensor), over all samples of the pass.
#[derive(Clone, Debug)]
pub(crate) struct LayerFeat<T> {
    pub source: FeatSource,
    /// Per role of the node: the layout entry it contributes (active, untied), else `None`.
    pub roles: Vec<Option<usize>>,
    /// The factorization, when the node's Gram is computed from its factors.
    pub shape: Option<GradFactorShape>,
    /// `U` `[N, G·J, L]` (empty without an active weight).
    pub u: Vec<T>,
    /// `G` `[N·R, G·O, L]`.
    pub g: Vec<T>,
    /// `(layout entry, [N·R, len])` for per-sample features.
    pub per: Vec<(usize, Vec<T>)>,
}

impl<T> LayerFeat<T> {
    /// The weight's entry of a factored node (role 0).
    fn weight(&self) -> Option<usize> {
        self.roles.first().copied().flatten()
    }
    /// The bias's entry of a factored node (role 1).
    fn bias(&self) -> Option<usize> {
        self.roles.get(1).copied().flatten()
    }
}

/// The memory of [`crate::vivit::Vivit::eigen`] by its phases, in bytes (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The per-node features kept for the Gram matrices.
    pub features: usize,
    /// One forward pass (all values of the graph and what the nodes keep) of the `n` samples.
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
/// matrix: `O((nR)² + nR·D_group)`, never `D²`. The forward pass's size per sample comes from a
/// forward pass of one (zero) sample.
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
        features += match f.shape {
            Some(sh) => {
                n * r * sh.groups * sh.o * sh.l + if f.weight().is_some() { n * sh.groups * sh.j * sh.l } else { 0 }
            }
            None => n * r * f.per.iter().map(|p| net.layout.entries[p.0].len).sum::<usize>(),
        };
    }
    let stop = lowest_node(net, &feats);
    let one = net.forward(&vec![T::zero(); net.num_params()], &vec![T::zero(); net.in_size()], 1);
    let tape = n * one.bytes().div_ceil(b);
    drop(one);
    let mut widest = net.out_size();
    for (l, layer) in net.layers.iter().enumerate() {
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

/// Flop counts of the factored and the per-sample ("materialized") Gram of a factored node for
/// `n` samples with `r` columns each.
pub(crate) fn conv_costs(n: usize, r: usize, groups: usize, jg: usize, og: usize, l: usize) -> (f64, f64) {
    let (n, r, g, jg, og, l) = (n as f64, r as f64, groups as f64, jg as f64, og as f64, l as f64);
    let pairs = n * (n + 1.0) / 2.0;
    let unfolded = pairs * g * (l * l * jg + r * og * l * l + r * r * og * l);
    let materialized = n * r * g * og * jg * l + (n * r) * (n * r) * g * og * jg;
    (unfolded, materialized)
}

/// The lowest node any feature reads cotangents from.
fn lowest_node<T: Float>(net: &Network<T>, feats: &[LayerFeat<T>]) -> usize {
    let first_user = |e: usize| net.layout.entries[e].users.iter().copied().min().unwrap_or(usize::MAX);
    feats
        .iter()
        .map(|f| match f.source {
            FeatSource::Node(l) => l,
            FeatSource::Tied(e) => first_user(e),
        })
        .min()
        .unwrap_or(net.layers.len())
}

/// The features of every node with an active, untied parameter and of every active tied
/// tensor, empty, for a pass over `n` samples with `r` columns each.
pub(crate) fn plan<T: Float>(
    net: &Network<T>,
    active: &ActiveSet,
    n: usize,
    r: usize,
    conv: ConvGram,
) -> Vec<LayerFeat<T>> {
    let lay = &net.layout;
    let tied = |i: usize| lay.entries[i].users.len() > 1;
    let mut out = Vec::new();
    for (l, layer) in net.layers.iter().enumerate() {
        if !active.layer_active[l] {
            continue;
        }
        let roles: Vec<Option<usize>> =
            lay.layer_entries[l].iter().map(|&i| (active.sub_offset[i].is_some() && !tied(i)).then_some(i)).collect();
        if roles.iter().all(Option::is_none) {
            continue;
        }
        let shape = layer.grad_factor_shape().filter(|sh| {
            sh.l == 1
                || match conv {
                    ConvGram::Unfolded => true,
                    ConvGram::Materialized => false,
                    ConvGram::Auto => {
                        let (u, m) = conv_costs(n, r, sh.groups, sh.j, sh.o, sh.l);
                        u <= m
                    }
                }
        });
        let per = if shape.is_none() { roles.iter().flatten().map(|&i| (i, Vec::new())).collect() } else { Vec::new() };
        out.push(LayerFeat { source: FeatSource::Node(l), roles, shape, u: Vec::new(), g: Vec::new(), per });
    }
    for (i, so) in active.sub_offset.iter().enumerate() {
        if so.is_some() && tied(i) {
            out.push(LayerFeat {
                source: FeatSource::Tied(i),
                roles: Vec::new(),
                shape: None,
                u: Vec::new(),
                g: Vec::new(),
                per: vec![(i, Vec::new())],
            });
        }
    }
    out
}

/// Backpropagates the output cotangents `cot` (`[n, R, C]`) of one batch and appends each
/// planned feature.
pub(crate) fn collect<T: Float>(
    net: &Network<T>,
    theta: &[T],
    tape: &Tape<T>,
    cot: Vec<T>,
    r: usize,
    feats: &mut [LayerFeat<T>],
) {
    let n = tape.n;
    if feats.is_empty() {
        return;
    }
    let stop = lowest_node(net, feats);
    let cots = net.backward_cotangents(theta, tape, cot, r, stop);
    let lay = &net.layout;
    for f in feats.iter_mut() {
        match f.source {
            FeatSource::Node(l) => {
                let Some(cl) = cots[l + 1].as_deref() else {
                    // no path to the output: zero gradients
                    append_zeros(net, f, n, r);
                    continue;
                };
                let want: Vec<bool> = f.roles.iter().map(Option::is_some).collect();
                let factored = f.shape.is_some();
                let feat = net.with_ctx(l, theta, tape, |c| net.layers[l].gram_features(c, cl, r, factored, &want));
                match feat {
                    GramFeatures::Factored(fx) => {
                        f.u.extend_from_slice(&fx.u);
                        f.g.extend_from_slice(&fx.g);
                    }
                    GramFeatures::PerSample(bufs) => {
                        for (role, b) in bufs.into_iter().enumerate() {
                            if let (Some(Some(e)), Some(b)) = (f.roles.get(role), b) {
                                let p = f.per.iter_mut().find(|p| p.0 == *e).expect("planned tensor");
                                p.1.extend_from_slice(&b);
                            }
                        }
                    }
                }
            }
            FeatSource::Tied(e) => {
                let len = lay.entries[e].len;
                let mut sum = vec![T::zero(); n * r * len];
                for &u in &lay.entries[e].users {
                    let Some(cu) = cots[u + 1].as_deref() else { continue };
                    let mut bufs: Vec<Option<Vec<T>>> =
                        lay.layer_entries[u].iter().map(|&j| (j == e).then(|| vec![T::zero(); n * r * len])).collect();
                    {
                        let mut views: Vec<Option<&mut [T]>> = bufs.iter_mut().map(|b| b.as_deref_mut()).collect();
                        net.with_ctx(u, theta, tape, |c| net.layers[u].vjp_param_per_sample(c, cu, r, &mut views));
                    }
                    for b in bufs.iter().flatten() {
                        ops::axpy(T::one(), b, &mut sum);
                    }
                }
                f.per[0].1.extend_from_slice(&sum);
            }
        }
    }
}

/// Zero features of a batch for a node whose output does not reach the loss.
fn append_zeros<T: Float>(net: &Network<T>, f: &mut LayerFeat<T>, n: usize, r: usize) {
    match f.shape {
        Some(sh) => {
            if f.weight().is_some() {
                f.u.resize(f.u.len() + n * sh.groups * sh.j * sh.l, T::zero());
            }
            f.g.resize(f.g.len() + n * r * sh.groups * sh.o * sh.l, T::zero());
        }
        None => {
            for p in &mut f.per {
                let len = net.layout.entries[p.0].len;
                p.1.resize(p.1.len() + n * r * len, T::zero());
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
    let Some(sh) = f.shape else {
        for (e, rows) in &f.per {
            if want(*e) {
                let len = rows.len() / m.max(1);
                add_lower(out, &syrk_lower(rows, m, len));
            }
        }
        return;
    };
    let want_w = f.weight().is_some_and(want);
    let want_b = f.bias().is_some_and(want);
    if !want_w && !want_b {
        return;
    }
    let (groups, jg, og, l) = (sh.groups, sh.j, sh.o, sh.l);
    let o = groups * og;
    if l == 1 && groups == 1 {
        // G̃[a, b] = (g_aᵀ g_b)·(x_{n_a}ᵀ x_{n_b} + [bias])
        let gg = syrk_lower(&f.g, m, o);
        let xx = if want_w { syrk_lower(&f.u, n, jg) } else { Vec::new() };
        let bias = if want_b { T::one() } else { T::zero() };
        for a in 0..m {
            let na = a / r;
            for b in 0..=a {
                let s = if want_w { xx[na * n + b / r] + bias } else { bias };
                out[a * m + b] += gg[a * m + b] * s;
            }
        }
        return;
    }
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
                    let ua = &f.u[na * cs + gi * jg * l..na * cs + (gi + 1) * jg * l];
                    let ub = &f.u[nb * cs + gi * jg * l..nb * cs + (gi + 1) * jg * l];
                    // K = U_aᵀ U_b: [L, L]
                    gemm(l, l, jg, T::one(), ua, l, Trans::T, ub, l, Trans::N, T::zero(), &mut k, l);
                    // Y_ra = G_{na, ra}[group rows] K: [og, L] per ra
                    for ra in 0..r {
                        let ga = &f.g[(na * r + ra) * gs + gi * og * l..];
                        gemm(og, l, l, T::one(), ga, l, Trans::N, &k, l, Trans::N, T::zero(), &mut y[ra * og * l..], l);
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
