//! Exact curvature diagonals without forming any `D × D` matrix (BackPACK's `DiagGGNExact`,
//! `DiagGGNMC`, `DiagHessian`, and the empirical-Fisher diagonal), on chains and graphs.
//!
//! Every diagonal here has the form
//!
//! `diag M = Σ_groups Σ_{n,k} w_{nk} (J_{θ,n}ᵀ u_{nk})²`  (elementwise square),
//!
//! where `u_{nk}` are vectors at some value of the graph ("a group" of `K` columns per sample),
//! `J_{θ,n}` the Jacobian of that value of sample `n` with respect to the parameters, and
//! `w_{nk}` scalar weights. The columns are backpropagated through the graph once (cotangents
//! summed where a value fans out); at every node with active parameters its rule
//! [`Layer::sq_grad_diag`] adds `Σ_{n,k} w_{nk} ((∂y_n/∂θ_t)ᵀ g_{nk})²` from the cotangents `g`
//! at its output (linear: one GEMM `Qᵀ X²` for one row per sample, per-sample gradients for
//! several rows; conv2d: one GEMM per sample; other layers: their per-sample gradients,
//! squared). A tensor tied between several nodes has the sum of its uses as per-sample
//! gradient: its users' per-sample gradients are summed before squaring.
//!
//! | diagonal | groups |
//! |---|---|
//! | GGN `c Σ_n J_nᵀ ∇²_f ℓ_n J_n` | the columns of `S_n` (`S_n S_nᵀ = ∇²_f ℓ_n`) at the output, `w = c` |
//! | MC GGN (`fisher-mc`) | the `M` sampled-label gradients (keyed by seed, sample, draw), `w = c/M` |
//! | empirical Fisher `c Σ_n ∇ℓ_n ∇ℓ_nᵀ` | `∇_f ℓ_n` at the output, `w = c` |
//! | Hessian `∇²L` | see below |
//!
//! # The Hessian
//! For a graph, `∇²L = G + Σ_m (∂z_m/∂θ)ᵀ (Σ_o g_{m,o} ∇²_{z_m} y_{m,o}) (∂z_m/∂θ)`, summed over
//! the nodes `m` with arguments `z_m` (inputs and own parameters) and `g_m` the gradient of `L`
//! at node `m`'s output. Two exact methods ([`HessianDiagMethod`]):
//!
//! * **Residual columns** (BackPACK's `DiagHessian`, generalized to graphs): when the only
//!   second derivatives that reach the diagonal are diagonal in a node's input — nodes linear
//!   in their input and, separately, in their parameters (linear, conv2d, pooling, batch norm
//!   in evaluation mode, add, concat, reshapes, embeddings, …, whose mixed `∂²y/∂x∂θ` terms only
//!   couple different tensors), plus elementwise activations with `σ''(x) ⊙ g_y`
//!   ([`Layer::input_hessian_diag`]) — the residual of each such node is a group of unit
//!   columns `e_i` at its input value with signed weights `w_{ni} = σ''(x_{ni}) g_{y,ni}`,
//!   backpropagated from there (in chunks, so the memory stays bounded for wide activations).
//!   Which nodes have second derivatives is read from [`Layer::hvp_needs_g`]: a rule that needs
//!   the primal cotangent with only an input (or only a parameter) direction has second
//!   derivatives in its input (or parameters).
//! * **Hessian-vector products** with blocks of unit vectors (`diag_i = e_iᵀ ∇²L e_i`, chunks of
//!   [`CurvatureOperator::block_chunk`] columns, each one batched pass of the exact R-op over
//!   the data): for every other graph — layer norm, attention, nodes with second derivatives in
//!   their parameters, tied tensors (whose uses couple through mixed terms). Exact, at the cost
//!   of `D / K` Hessian-block products; meant for small `D`.
//!
//! [`HessianDiagMethod::Auto`] takes the residual columns where they are exact
//! ([`hessian_diag_plan`]).
//!
//! All sums run over mini-batches with the data-set reduction factor `c`, so the diagonals do
//! not depend on the batch size (MC draws are keyed by the sample's index in the data set).

use crate::curvature::{Curvature, CurvatureOperator};
use crate::walk::DataWalk;
use crate::Problem;
use curvops_nn::layers::{add_weighted_squares, Aux, Ctx, Layer};
use curvops_nn::{ActiveSet, Network, Tape};
use curvops_tensor::Float;

/// Which diagonal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiagKind {
    /// The generalized Gauss-Newton `c Σ_n J_nᵀ ∇²_f ℓ_n J_n`.
    Ggn,
    /// The Monte-Carlo GGN (`fisher-mc`): `c Σ_n J_nᵀ (1/M Σ_m g_nm g_nmᵀ) J_n`.
    GgnMc {
        /// Draws `M` per sample.
        samples: usize,
        /// Seed of the keyed draws.
        seed: u64,
    },
    /// The empirical Fisher `c Σ_n ∇ℓ_n ∇ℓ_nᵀ`.
    Ef,
    /// The Hessian `∇²L`.
    Hessian,
}

/// How the exact Hessian diagonal is computed (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HessianDiagMethod {
    /// Residual columns where they are exact, else Hessian-vector products.
    Auto,
    /// Residual columns (Hessian-vector products where they would not be exact).
    Residual,
    /// Hessian-vector products with blocks of unit vectors.
    Hvp,
}

/// Elements of a residual chunk `[n, K, size]` held at once (bounds the Hessian's memory).
const CHUNK_ELEMS: usize = 1 << 22;

/// The exact diagonal of `kind` over the active parameters (`[D_S]`), accumulated over
/// batches of `batch_size` samples (0: one batch). See the module docs.
pub fn curvature_diag<T: Float>(p: &Problem<T>, kind: DiagKind, active: &ActiveSet, batch_size: usize) -> Vec<T> {
    curvature_diag_with_loss(p, kind, active, batch_size, &|_, _| {}).0
}

/// [`curvature_diag`], also returning the summed loss `Σ_n ℓ_n` of the same forward passes (for
/// the Hessian by Hessian-vector products: of separate forward passes). `progress(done,
/// total)` reports batches.
pub fn curvature_diag_with_loss<T: Float>(
    p: &Problem<T>,
    kind: DiagKind,
    active: &ActiveSet,
    batch_size: usize,
    progress: &dyn Fn(usize, usize),
) -> (Vec<T>, f64) {
    curvature_diag_on(p, kind, active, &DataWalk::new(&p.data, batch_size), progress)
}

/// [`curvature_diag_with_loss`] on the samples of `walk` (the whole data set or a subset): the
/// diagonal of the curvature of `L_S = c_S Σ_{n ∈ S} ℓ_n` (`c_S` the reduction over `|S|`
/// samples; Monte-Carlo draws keyed by the samples' global indices) and `Σ_{n ∈ S} ℓ_n`.
pub fn curvature_diag_on<T: Float>(
    p: &Problem<T>,
    kind: DiagKind,
    active: &ActiveSet,
    walk: &DataWalk<T>,
    progress: &dyn Fn(usize, usize),
) -> (Vec<T>, f64) {
    if kind == DiagKind::Hessian && hessian_diag_plan(&p.net, active, HessianDiagMethod::Auto) == HessianDiagMethod::Hvp
    {
        let d = hessian_diag_hvp(p, active, walk);
        return (d, summed_loss(p, walk));
    }
    diag_pass(p, kind, active, walk, progress)
}

/// The exact GGN diagonal (BackPACK's `DiagGGNExact`).
pub fn ggn_diag<T: Float>(p: &Problem<T>, active: &ActiveSet, batch_size: usize) -> Vec<T> {
    curvature_diag(p, DiagKind::Ggn, active, batch_size)
}

/// The Monte-Carlo GGN diagonal with `samples` keyed draws per data point (BackPACK's
/// `DiagGGNMC`; the exact diagonal of the `fisher-mc` operator with the same seed).
pub fn ggn_mc_diag<T: Float>(
    p: &Problem<T>,
    active: &ActiveSet,
    batch_size: usize,
    samples: usize,
    seed: u64,
) -> Vec<T> {
    curvature_diag(p, DiagKind::GgnMc { samples, seed }, active, batch_size)
}

/// The empirical-Fisher diagonal `c Σ_n (∇ℓ_n)²`.
pub fn ef_diag<T: Float>(p: &Problem<T>, active: &ActiveSet, batch_size: usize) -> Vec<T> {
    curvature_diag(p, DiagKind::Ef, active, batch_size)
}

/// The exact Hessian diagonal (BackPACK's `DiagHessian`), by [`HessianDiagMethod::Auto`].
pub fn hessian_diag<T: Float>(p: &Problem<T>, active: &ActiveSet, batch_size: usize) -> Vec<T> {
    curvature_diag(p, DiagKind::Hessian, active, batch_size)
}

/// The exact Hessian diagonal by the given method.
pub fn hessian_diag_by<T: Float>(
    p: &Problem<T>,
    active: &ActiveSet,
    batch_size: usize,
    method: HessianDiagMethod,
) -> Vec<T> {
    let walk = DataWalk::new(&p.data, batch_size);
    match hessian_diag_plan(&p.net, active, method) {
        HessianDiagMethod::Hvp => hessian_diag_hvp(p, active, &walk),
        _ => diag_pass(p, DiagKind::Hessian, active, &walk, &|_, _| {}).0,
    }
}

/// The method [`hessian_diag_by`] uses for `method` on this network and parameter set:
/// [`HessianDiagMethod::Residual`] when the residual columns are exact (see the module docs),
/// else [`HessianDiagMethod::Hvp`].
pub fn hessian_diag_plan<T: Float>(
    net: &Network<T>,
    active: &ActiveSet,
    method: HessianDiagMethod,
) -> HessianDiagMethod {
    if method == HessianDiagMethod::Hvp || !residuals_exact(net, active) {
        HessianDiagMethod::Hvp
    } else {
        HessianDiagMethod::Residual
    }
}

/// Whether the residual columns give the exact Hessian diagonal: no active tensor is tied, no
/// node with active parameters has second derivatives in them, and every node whose input
/// depends on the active parameters has either no second derivatives in it or one input with
/// a diagonal input Hessian.
fn residuals_exact<T: Float>(net: &Network<T>, active: &ActiveSet) -> bool {
    let lay = &net.layout;
    if lay.entries.iter().zip(&active.sub_offset).any(|(e, so)| so.is_some() && e.users.len() > 1) {
        return false;
    }
    for (l, layer) in net.layers.iter().enumerate() {
        if !active.upstream[l] {
            continue;
        }
        let ins = &lay.node_inputs[l];
        let rx = ins.iter().any(|&v| v > 0 && active.upstream[v - 1]);
        if active.layer_active[l] && layer.hvp_needs_g(false, true, false) {
            return false;
        }
        if rx && layer.hvp_needs_g(true, false, true) && (ins.len() != 1 || !has_input_hessian_diag(layer.as_ref())) {
            return false;
        }
    }
    true
}

/// Whether a node provides [`Layer::input_hessian_diag`] (asked on an empty batch).
fn has_input_hessian_diag<T: Float>(layer: &dyn Layer<T>) -> bool {
    let empty: [&[T]; 1] = [&[]];
    let c = Ctx { p: &[], x: &[], xs: &empty, y: &[], aux: &Aux::None, n: 0 };
    layer.input_hessian_diag(&c, &[]).is_some()
}

/// `Σ_n ℓ_n` over the walk's samples (forward passes only).
pub(crate) fn summed_loss<T: Float>(p: &Problem<T>, walk: &DataWalk<T>) -> f64 {
    let (net, c) = (&p.net, p.net.out_size());
    walk.batches()
        .iter()
        .map(|b| {
            let f = net.predict(&p.theta, b.x, b.n);
            net.loss.values(&f, b.y, b.n, c).iter().map(|v| v.as_f64()).sum::<f64>()
        })
        .sum()
}

/// The Hessian diagonal from Hessian-vector products with blocks of unit vectors.
fn hessian_diag_hvp<T: Float>(p: &Problem<T>, active: &ActiveSet, walk: &DataWalk<T>) -> Vec<T> {
    let d = active.dim;
    let mut out = vec![T::zero(); d];
    if d == 0 {
        return out;
    }
    let op = CurvatureOperator::on(p, Curvature::Hessian, active.clone(), walk.clone()).with_cache(1 << 30);
    let chunk = op.block_chunk().clamp(1, d);
    let mut block = Vec::new();
    for j0 in (0..d).step_by(chunk) {
        let kk = chunk.min(d - j0);
        block.clear();
        block.resize(kk * d, T::zero());
        for j in 0..kk {
            block[j * d + j0 + j] = T::one();
        }
        let r = op.apply_block(&block, kk);
        for j in 0..kk {
            out[j0 + j] = r[j * d + j0 + j];
        }
    }
    out
}

/// One pass over the data with the groups of `kind` (the Hessian with residual columns; the
/// caller has checked [`residuals_exact`]). Also returns `Σ_n ℓ_n`.
fn diag_pass<T: Float>(
    p: &Problem<T>,
    kind: DiagKind,
    active: &ActiveSet,
    walk: &DataWalk<T>,
    progress: &dyn Fn(usize, usize),
) -> (Vec<T>, f64) {
    let net = &p.net;
    let mut out = vec![T::zero(); active.dim];
    let mut loss = 0.0;
    let cdim = net.out_size();
    let c = walk.factor(net);
    let batches = walk.batches();
    let live = active.dim > 0 && active.first_layer < net.layers.len();
    for (bi, batch) in batches.iter().enumerate() {
        let n = batch.n;
        let tape = net.forward(&p.theta, batch.x, n);
        loss += net.loss.values(tape.output(), batch.y, n, cdim).iter().map(|v| v.as_f64()).sum::<f64>();
        if live {
            let (cols, k, w) = match kind {
                DiagKind::Ggn | DiagKind::Hessian => {
                    let (s, r) = net.loss.hess_factor(tape.output(), batch.y, n, cdim);
                    (s, r, c)
                }
                DiagKind::GgnMc { samples, seed } => (
                    net.loss.sampled_grads_batch(tape.output(), batch, cdim, seed, samples),
                    samples,
                    c / samples as f64,
                ),
                DiagKind::Ef => (net.loss.grad(tape.output(), batch.y, n, cdim), 1, c),
            };
            let weights = vec![T::of(w); n * k];
            let cots = net.backward_cotangents(&p.theta, &tape, cols, k, active.first_layer);
            add_group(net, &p.theta, &tape, &cots, k, &weights, active, &mut out);
            if kind == DiagKind::Hessian {
                let mut g = net.loss.grad(tape.output(), batch.y, n, cdim);
                curvops_tensor::ops::scale(T::of(c), &mut g);
                add_residuals(net, &p.theta, &tape, g, active, &mut out);
            }
        }
        progress(bi + 1, batches.len());
    }
    (out, loss)
}

/// Mutable views of `out` at the given `(offset, len)` ranges (disjoint), in the given order.
fn split_views<'a, T>(out: &'a mut [T], ranges: &[Option<(usize, usize)>]) -> Vec<Option<&'a mut [T]>> {
    let mut order: Vec<usize> = (0..ranges.len()).filter(|&i| ranges[i].is_some()).collect();
    order.sort_by_key(|&i| ranges[i].map(|r| r.0));
    let mut views: Vec<Option<&'a mut [T]>> = (0..ranges.len()).map(|_| None).collect();
    let mut rest: &'a mut [T] = out;
    let mut at = 0;
    for i in order {
        let (off, len) = ranges[i].expect("selected");
        let tail = std::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut(off - at);
        let (mine, tail) = tail.split_at_mut(len);
        views[i] = Some(mine);
        rest = tail;
        at = off + len;
    }
    views
}

/// Adds `Σ_{n,k} w_{nk} (J_{θ,n}ᵀ u_{nk})²` of one group, given the group's cotangents at every
/// node output (`cots[l + 1]`, `[n, K, O_l]`): each node's rule for its untied active tensors,
/// and for each tied tensor the square of the per-sample gradients summed over its uses.
#[allow(clippy::too_many_arguments)]
fn add_group<T: Float>(
    net: &Network<T>,
    theta: &[T],
    tape: &Tape<T>,
    cots: &[Option<Vec<T>>],
    k: usize,
    w: &[T],
    active: &ActiveSet,
    out: &mut [T],
) {
    let lay = &net.layout;
    let n = tape.n;
    let tied = |i: usize| lay.entries[i].users.len() > 1;
    for (l, layer) in net.layers.iter().enumerate() {
        let (true, Some(gl)) = (active.layer_active[l], cots[l + 1].as_deref()) else { continue };
        let ranges: Vec<Option<(usize, usize)>> = lay.layer_entries[l]
            .iter()
            .map(|&i| active.sub_offset[i].filter(|_| !tied(i)).map(|so| (so, lay.entries[i].len)))
            .collect();
        if ranges.iter().all(Option::is_none) {
            continue;
        }
        let mut views = split_views(out, &ranges);
        net.with_ctx(l, theta, tape, |c| layer.sq_grad_diag(c, gl, k, w, &mut views));
    }
    for (i, e) in lay.entries.iter().enumerate() {
        let (Some(so), true) = (active.sub_offset[i], tied(i)) else { continue };
        let mut sum = vec![T::zero(); n * k * e.len];
        for &u in &e.users {
            let Some(gu) = cots[u + 1].as_deref() else { continue };
            let roles = &lay.layer_entries[u];
            let mut bufs: Vec<Option<Vec<T>>> =
                roles.iter().map(|&j| (j == i).then(|| vec![T::zero(); n * k * e.len])).collect();
            {
                let mut views: Vec<Option<&mut [T]>> = bufs.iter_mut().map(|b| b.as_deref_mut()).collect();
                net.with_ctx(u, theta, tape, |c| net.layers[u].vjp_param_per_sample(c, gu, k, &mut views));
            }
            for b in bufs.iter().flatten() {
                curvops_tensor::ops::axpy(T::one(), b, &mut sum);
            }
        }
        add_weighted_squares(&sum, w, &mut out[so..so + e.len]);
    }
}

/// Backpropagates `K` columns per sample injected at value `v` (`[n, K, size_v]`) to every node
/// output above the first active node (`cots[l + 1]`, summed where values fan out); nodes whose
/// output does not depend on the active parameters are skipped.
fn cotangents_from<T: Float>(
    net: &Network<T>,
    theta: &[T],
    tape: &Tape<T>,
    v: usize,
    g: Vec<T>,
    k: usize,
    active: &ActiveSet,
) -> Vec<Option<Vec<T>>> {
    let nl = net.layers.len();
    let stop = active.first_layer;
    let mut cot: Vec<Option<Vec<T>>> = vec![None; nl + 1];
    cot[v] = Some(g);
    for l in (stop..v).rev() {
        if l == stop || !active.upstream[l] {
            continue;
        }
        let Some(gl) = cot[l + 1].as_deref() else { continue };
        let ins = &net.layout.node_inputs[l];
        let want: Vec<bool> = ins.iter().map(|&u| u > stop && active.upstream[u - 1]).collect();
        if !want.iter().any(|&w| w) {
            continue;
        }
        let gx = net.with_ctx(l, theta, tape, |c| net.layers[l].vjp_inputs(c, gl, k, &want));
        for (&u, gu) in ins.iter().zip(gx) {
            if let Some(gu) = gu {
                match &mut cot[u] {
                    Some(acc) => curvops_tensor::ops::axpy(T::one(), &gu, acc),
                    slot => *slot = Some(gu),
                }
            }
        }
    }
    cot
}

/// The Hessian's residual groups: at each node whose input depends on the active parameters
/// and which has second derivatives in it, unit columns at its input value weighted by the
/// diagonal input Hessian `Σ_o g_o ∂²y_o/∂x²` (`g` = `c ∇_f ℓ` backpropagated to the node's
/// output), backpropagated in chunks.
fn add_residuals<T: Float>(
    net: &Network<T>,
    theta: &[T],
    tape: &Tape<T>,
    g: Vec<T>,
    active: &ActiveSet,
    out: &mut [T],
) {
    let lay = &net.layout;
    let n = tape.n;
    let first = active.first_layer;
    // the nodes with residuals
    let nodes: Vec<usize> = (0..net.layers.len())
        .filter(|&m| {
            let ins = &lay.node_inputs[m];
            active.upstream[m]
                && ins.iter().any(|&v| v > 0 && active.upstream[v - 1])
                && net.layers[m].hvp_needs_g(true, false, true)
        })
        .collect();
    if nodes.is_empty() {
        return;
    }
    // first-order cotangents at every node output
    let g1 = net.backward_cotangents(theta, tape, g, 1, first);
    // the widest value the columns pass through (for the chunk size)
    let widest = net.layers.iter().map(|l| l.in_size().max(l.out_size())).max().unwrap_or(1).max(1);
    for m in nodes {
        let Some(gy) = g1[m + 1].as_deref() else { continue };
        let v = lay.node_inputs[m][0];
        let r = net
            .with_ctx(m, theta, tape, |c| net.layers[m].input_hessian_diag(c, gy))
            .expect("a node with second derivatives in its input has a diagonal input Hessian (checked)");
        let size = tape.acts[v].len() / n.max(1);
        let kc = (CHUNK_ELEMS / (n * widest).max(1)).clamp(1, size.max(1));
        for i0 in (0..size).step_by(kc) {
            let kk = kc.min(size - i0);
            if (0..n).all(|s| r[s * size + i0..s * size + i0 + kk].iter().all(|x| *x == T::zero())) {
                continue;
            }
            let mut block = vec![T::zero(); n * kk * size];
            let mut w = vec![T::zero(); n * kk];
            for s in 0..n {
                for j in 0..kk {
                    block[(s * kk + j) * size + i0 + j] = T::one();
                    w[s * kk + j] = r[s * size + i0 + j];
                }
            }
            let cots = cotangents_from(net, theta, tape, v, block, kk, active);
            add_group(net, theta, tape, &cots, kk, &w, active, out);
        }
    }
}
