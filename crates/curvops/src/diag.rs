//! Exact curvature diagonals without forming any `D × D` matrix (BackPACK's `DiagGGNExact`,
//! `DiagGGNMC`, `DiagHessian`, and the empirical-Fisher diagonal).
//!
//! Every diagonal here has the form
//!
//! `diag M = Σ_groups Σ_{n,k} w_{nk} (J_{θ,n}ᵀ u_{nk})²`  (elementwise square),
//!
//! where `u_{nk}` are vectors in the output space of some layer ("a group" of `K` columns per
//! sample), `J_{θ,n}` the Jacobian of that layer output of sample `n` with respect to the
//! parameters below it, and `w_{nk}` scalar weights. The columns are backpropagated through the
//! network once; at each layer with active parameters the squared per-sample parameter
//! gradients are accumulated with their weights:
//!
//! * linear `y = Wx + b`: `diag_W += Σ_n (Σ_k w_{nk} g_{nk}²)ᵀ ⊗ x_n²` — one GEMM
//!   `Qᵀ X²` with `Q[n, o] = Σ_k w_{nk} g_{nk,o}²` (no per-sample gradients are formed), and
//!   `diag_b += Σ_n Q[n, :]`;
//! * conv2d: `diag_W += Σ_{n,k} w_{nk} (G_{nk} colsᵀ_n)²` per group (the layer's per-sample
//!   weight gradient, one GEMM per sample and group), `diag_b += Σ w (Σ_p G_{nk,p})²`;
//! * other layers (batch norm): the layer's per-sample parameter gradients, squared.
//!
//! The groups:
//!
//! | diagonal | groups |
//! |---|---|
//! | GGN `c Σ_n J_nᵀ ∇²_f ℓ_n J_n` | the columns of `S_n` (`S_n S_nᵀ = ∇²_f ℓ_n`) at the output, `w = c` |
//! | MC GGN (`fisher-mc`) | the `M` sampled-label gradients (keyed by seed, sample, draw), `w = c/M` |
//! | empirical Fisher `c Σ_n ∇ℓ_n ∇ℓ_nᵀ` | `∇_f ℓ_n` at the output, `w = c` |
//! | Hessian `∇²L` | the GGN's groups, plus at every activation `y = σ(x)` with `σ'' ≠ 0` the residual `diag(σ''(x) ⊙ g_y)` (`g_y` the gradient of `L` at the activation's output): unit columns `e_i` at the activation's input with signed weights `w_{ni} = σ''(x_{ni}) g_{y,ni}` |
//!
//! The Hessian's residual groups are BackPACK's signed square-root factorization of the
//! Hessian with respect to each layer output: the Hessian at the input of an activation is
//! `D' H_y D' + diag(σ''(x) ⊙ g_y)`, and every other layer type of the engine (linear, conv2d,
//! pooling, batch norm in evaluation mode, flatten, dropout) is linear in its input (max
//! pooling piecewise so), adding no residual. Residual columns are processed in chunks, so the
//! memory stays bounded for wide activations.
//!
//! All sums run over mini-batches with the data-set reduction factor `c`, so the diagonals do
//! not depend on the batch size (MC draws are keyed by the sample's index in the data set).

use crate::Problem;
use curvops_nn::layers::{Activation, Aux, Conv2d, Ctx, Linear};
use curvops_nn::{ActiveSet, Network, Tape};
use curvops_tensor::{gemm, Float, Trans};

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

/// Elements of a residual chunk `[n, K, size]` held at once (bounds the Hessian's memory).
const CHUNK_ELEMS: usize = 1 << 22;

/// The exact diagonal of `kind` over the active parameters (`[D_S]`), accumulated over
/// batches of `batch_size` samples (0: one batch). See the module docs.
pub fn curvature_diag<T: Float>(p: &Problem<T>, kind: DiagKind, active: &ActiveSet, batch_size: usize) -> Vec<T> {
    let net = &p.net;
    let mut out = vec![T::zero(); active.dim];
    let nl = net.layers.len();
    if active.dim == 0 || active.first_layer >= nl {
        return out;
    }
    let cdim = net.out_size();
    let c = net.loss.factor(p.data.n, cdim);
    for batch in p.data.batches(batch_size) {
        let n = batch.n;
        let tape = net.forward(&p.theta, batch.x, n);
        let (cols, k, w) = match kind {
            DiagKind::Ggn | DiagKind::Hessian => {
                let (s, r) = net.loss.hess_factor(tape.output(), batch.y, n, cdim);
                (s, r, c)
            }
            DiagKind::GgnMc { samples, seed } => (
                net.loss.sampled_grads(tape.output(), n, cdim, seed, batch.start, samples),
                samples,
                c / samples as f64,
            ),
            DiagKind::Ef => (net.loss.grad(tape.output(), batch.y, n, cdim), 1, c),
        };
        let weights = vec![T::of(w); n * k];
        backprop_group(net, &p.theta, &tape, nl - 1, cols, k, &weights, active, &mut out);
        if kind == DiagKind::Hessian {
            add_residuals(net, &p.theta, &tape, batch.y, c, active, &mut out);
        }
    }
    out
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

/// The exact Hessian diagonal (BackPACK's `DiagHessian`).
pub fn hessian_diag<T: Float>(p: &Problem<T>, active: &ActiveSet, batch_size: usize) -> Vec<T> {
    curvature_diag(p, DiagKind::Hessian, active, batch_size)
}

/// Backpropagates `K` columns per sample (`g`: `[n, K, ·]` at the output of layer `top`) down to
/// the first active layer, adding `Σ_{n,k} w_{nk} (∂y/∂θ)ᵀ g_{nk})²` of every active layer.
#[allow(clippy::too_many_arguments)]
fn backprop_group<T: Float>(
    net: &Network<T>,
    theta: &[T],
    tape: &Tape<T>,
    top: usize,
    g: Vec<T>,
    k: usize,
    w: &[T],
    active: &ActiveSet,
    out: &mut [T],
) {
    let first = active.first_layer;
    if top < first {
        return;
    }
    if top + 1 == net.layers.len() {
        // from the output: the cotangent at every node, summed where values fan out
        let cots = net.backward_cotangents(theta, tape, g, k, first);
        for l in first..=top {
            if let (true, Some(gl)) = (active.layer_active[l], cots[l + 1].as_deref()) {
                net.with_ctx(l, theta, tape, |c| add_layer_diag(net, l, c, gl, k, w, active, out));
            }
        }
        return;
    }
    // from inside a chain (the Hessian's residual columns)
    let mut g = g;
    for l in (first..=top).rev() {
        net.with_ctx(l, theta, tape, |c| {
            if active.layer_active[l] {
                add_layer_diag(net, l, c, &g, k, w, active, out);
            }
            if l > first {
                g = net.layers[l].vjp_input(c, &g, k);
            }
        });
    }
}

/// `out_t += Σ_{n,k} w_{nk} ((∂y_n/∂θ_t)ᵀ g_{nk})²` for the active tensors `t` of layer `l`.
#[allow(clippy::too_many_arguments)]
fn add_layer_diag<T: Float>(
    net: &Network<T>,
    l: usize,
    c: &Ctx<T>,
    g: &[T],
    k: usize,
    w: &[T],
    active: &ActiveSet,
    out: &mut [T],
) {
    let layer = &net.layers[l];
    let entries = net.layout.layer_entries[l].clone();
    let offs: Vec<Option<usize>> = entries.iter().map(|&i| active.sub_offset[i]).collect();
    let n = c.n;
    let any = layer.as_any();
    if any.downcast_ref::<Linear>().is_some() {
        let (o, i) = (layer.out_size(), layer.in_size());
        // Q[n, o] = Σ_k w g²
        let mut q = vec![T::zero(); n * o];
        for s in 0..n {
            for kk in 0..k {
                let wv = w[s * k + kk];
                let row = &g[(s * k + kk) * o..(s * k + kk + 1) * o];
                for (d, v) in q[s * o..(s + 1) * o].iter_mut().zip(row) {
                    *d += wv * *v * *v;
                }
            }
        }
        if let Some(off) = offs[0] {
            let x2: Vec<T> = c.x.iter().map(|v| *v * *v).collect();
            gemm(o, i, n, T::one(), &q, o, Trans::T, &x2, i, Trans::N, T::one(), &mut out[off..off + o * i], i);
        }
        if let Some(Some(off)) = offs.get(1) {
            for row in q.chunks_exact(o) {
                for (d, v) in out[*off..*off + o].iter_mut().zip(row) {
                    *d += *v;
                }
            }
        }
        return;
    }
    if let Some(conv) = any.downcast_ref::<Conv2d>() {
        let geom = conv.geom();
        let (groups, jg, pp) = (conv.groups(), conv.jg(), geom.out_len());
        let o = layer.out_size() / pp;
        let og = o / groups;
        let cs = groups * jg * pp;
        let cols = match c.aux {
            Aux::Cols(v) => v,
            _ => panic!("conv2d: forward pass did not keep cols"),
        };
        if let Some(off) = offs[0] {
            let mut grad = vec![T::zero(); og * jg];
            for s in 0..n {
                let cn = &cols[s * cs..(s + 1) * cs];
                for kk in 0..k {
                    let wv = w[s * k + kk];
                    if wv == T::zero() {
                        continue;
                    }
                    let gk = &g[(s * k + kk) * o * pp..(s * k + kk + 1) * o * pp];
                    for gi in 0..groups {
                        gemm(
                            og,
                            jg,
                            pp,
                            T::one(),
                            &gk[gi * og * pp..],
                            pp,
                            Trans::N,
                            &cn[gi * jg * pp..],
                            pp,
                            Trans::T,
                            T::zero(),
                            &mut grad,
                            jg,
                        );
                        let dst = &mut out[off + gi * og * jg..off + (gi + 1) * og * jg];
                        for (d, v) in dst.iter_mut().zip(&grad) {
                            *d += wv * *v * *v;
                        }
                    }
                }
            }
        }
        if let Some(Some(off)) = offs.get(1) {
            for s in 0..n {
                for kk in 0..k {
                    let wv = w[s * k + kk];
                    let gk = &g[(s * k + kk) * o * pp..(s * k + kk + 1) * o * pp];
                    for (ch, d) in out[*off..*off + o].iter_mut().enumerate() {
                        let sum: T = gk[ch * pp..(ch + 1) * pp].iter().copied().sum();
                        *d += wv * sum * sum;
                    }
                }
            }
        }
        return;
    }
    // generic: the layer's per-sample parameter gradients
    let lens: Vec<usize> = entries.iter().map(|&i| net.layout.entries[i].len).collect();
    let mut bufs: Vec<Option<Vec<T>>> =
        offs.iter().zip(&lens).map(|(o, &len)| o.map(|_| vec![T::zero(); n * k * len])).collect();
    {
        let mut views: Vec<Option<&mut [T]>> = bufs.iter_mut().map(|b| b.as_deref_mut()).collect();
        layer.vjp_param_per_sample(c, g, k, &mut views);
    }
    for ((b, off), &len) in bufs.iter().zip(&offs).zip(&lens) {
        if let (Some(b), Some(off)) = (b, off) {
            for (r, row) in b.chunks_exact(len).enumerate() {
                let wv = w[r];
                for (d, v) in out[*off..*off + len].iter_mut().zip(row) {
                    *d += wv * *v * *v;
                }
            }
        }
    }
}

/// The Hessian's residual groups: at each smooth activation `m` above the first active layer,
/// unit columns at its input weighted by `σ''(x) ⊙ g_y`, backpropagated in chunks.
fn add_residuals<T: Float>(
    net: &Network<T>,
    theta: &[T],
    tape: &Tape<T>,
    y: curvops_nn::TargetsRef<T>,
    c: f64,
    active: &ActiveSet,
    out: &mut [T],
) {
    let nl = net.layers.len();
    let first = active.first_layer;
    let n = tape.n;
    let cdim = net.out_size();
    // first-order cotangents g_y at the output of every smooth activation above `first`
    let smooth = |l: usize| {
        net.layers[l].as_any().downcast_ref::<Activation>().filter(|a| !a.activation().is_piecewise_linear())
    };
    let lowest = (first + 1..nl).find(|&l| smooth(l).is_some());
    let Some(lowest) = lowest else { return };
    let mut g = net.loss.grad(tape.output(), y, n, cdim);
    curvops_tensor::ops::scale(T::of(c), &mut g);
    let mut at_output: Vec<Option<Vec<T>>> = vec![None; nl];
    for l in (lowest..nl).rev() {
        if smooth(l).is_some() {
            at_output[l] = Some(g.clone());
        }
        if l > lowest {
            g = net.with_ctx(l, theta, tape, |cx| net.layers[l].vjp_input(cx, &g, 1));
        }
    }
    // the widest layer input/output the columns pass through (for the chunk size)
    let widest =
        |top: usize| (first..=top).map(|l| net.layers[l].in_size().max(net.layers[l].out_size())).max().unwrap_or(1);
    for m in lowest..nl {
        let (Some(act), Some(gy)) = (smooth(m), at_output[m].as_ref()) else { continue };
        let kind = act.activation();
        let size = net.layers[m].in_size();
        let (x, yv) = (&tape.acts[m], &tape.acts[m + 1]);
        let r: Vec<T> = (0..n * size).map(|i| kind.d2(x[i], yv[i]) * gy[i]).collect();
        let kc = (CHUNK_ELEMS / (n * widest(m - 1)).max(1)).clamp(1, size);
        for i0 in (0..size).step_by(kc) {
            let kk = kc.min(size - i0);
            if (0..n).all(|s| r[s * size + i0..s * size + i0 + kk].iter().all(|v| *v == T::zero())) {
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
            backprop_group(net, theta, tape, m - 1, block, kk, &w, active, out);
        }
    }
}
