//! The data pass of KFAC: the input factors `A` (from the forward pass), the gradient factors
//! `B` (from the cotangents backpropagated through the graph) and the dense blocks of the
//! tensors outside Kronecker-factored maps, accumulated over mini-batches and normalized by the
//! data-set size (see the module docs of [`crate::kfac`] for the formulas).
//!
//! Which layer does what is the layers' business ([`curvops_nn::layers::Layer::kfac_maps`],
//! `kfac_inputs`, `kfac_output_cotangents`); this module only accumulates the statistics.

use super::kernels::{gram_lower_acc, mat_from_rows, symmetrize_lower};
use super::plan::{structure, Block, Plan, Structure};
use super::{FisherType, KfacApprox, KfacError, KfacOptions};
use crate::walk::DataWalk;
use crate::Problem;
use curvops_nn::data::Batch;
use curvops_nn::ActiveSet;
use curvops_tensor::{Float, Trans};
use faer::Mat;
use std::sync::Arc;

/// A Kronecker factor and its low-rank root, if kept (`M`, `U` with `M = UᵀU`).
type FactorPair<T> = (Mat<T>, Option<Mat<T>>);

/// A parameter tensor of a block: its state-dict name and its offset in the active
/// (`--params`) vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamRef {
    /// State-dict name, e.g. `"0.weight"`.
    pub name: String,
    /// Offset in the active vector.
    pub offset: usize,
}

/// One block of the operator that belongs to one map or one tensor: the Kronecker factors of a
/// map's (untied) weight and bias, or the dense curvature block of a tensor outside the maps
/// (`kind == "dense"`: `bias` names the tensor, `b` is its `D_t × D_t` block, `a` is `None`).
#[derive(Clone, Debug)]
pub struct LayerFactors<T: Float> {
    /// Index of the node in the network.
    pub layer: usize,
    /// The node's type (`"linear"`, `"conv2d"`, `"multihead_attention"`, `"embedding"`), or
    /// `"dense"` for a dense block.
    pub kind: &'static str,
    /// Name of the block (the prefix of its keys in a factors file): the node's name (with
    /// `.in_proj` / `.out_proj` for attention), or the tensor's name for a dense block.
    pub key: String,
    /// Rows of the weight matrix (output features); `D_t` for a dense block.
    pub out: usize,
    /// Columns of the weight matrix (input features, or `C/G·kh·kw` for a convolution).
    pub inp: usize,
    /// Whether the weight is stored `[in, out]` (its block is then `A ⊗ B` on the stored layout).
    pub transposed: bool,
    /// The weight, if active.
    pub weight: Option<ParamRef>,
    /// The bias (or the dense block's tensor), if active.
    pub bias: Option<ParamRef>,
    /// Weight and bias in one block (`A` then includes the constant input 1 as its last row).
    pub joint: bool,
    /// The input factor `A` (`[in, in]`, `[in+1, in+1]` when joint); `None` without an active
    /// weight.
    pub a: Option<Arc<Mat<T>>>,
    /// The gradient factor `B` (`[out, out]`), or the dense block.
    pub b: Arc<Mat<T>>,
    /// A low-rank factor `U` with `A = UᵀU` (`[r, dim A]`), kept by the fit when the data has
    /// few input rows (`r·(2·dim A + out) < dim A·(dim A + out)`); products then cost
    /// `O(out·r·(2·dim A + out))` instead of `O(out·dim A·(dim A + out))`.
    pub a_rows: Option<Arc<Mat<T>>>,
    /// A low-rank factor `V` with `B = VᵀV`, likewise.
    pub b_rows: Option<Arc<Mat<T>>>,
}

/// One use of a tied tensor: the Kronecker factors of one map whose weight (or bias) it is.
#[derive(Clone, Debug)]
pub struct TiedUse<T: Float> {
    /// The node.
    pub layer: usize,
    /// The map's block name (as [`LayerFactors::key`]).
    pub key: String,
    /// Whether this map stores the tensor transposed (`[in, out]`).
    pub transposed: bool,
    /// The map's input factor (`None` for a bias use).
    pub a: Option<Mat<T>>,
    /// The map's gradient factor.
    pub b: Mat<T>,
}

impl<T: Float> TiedUse<T> {
    /// The use's block on the tensor as `[rows, cols]`, `left ⊗ right`: `(B, A)` for a weight
    /// stored `[out, in]`, `(A, B)` stored `[in, out]`, `(B, [1])` for a bias.
    pub fn left_right(&self) -> (&Mat<T>, Option<&Mat<T>>) {
        match (&self.a, self.transposed) {
            (Some(a), true) => (a, Some(&self.b)),
            (Some(a), false) => (&self.b, Some(a)),
            (None, _) => (&self.b, None),
        }
    }
}

/// A tensor shared by several maps (tied weights): its block is the sum over the uses of
/// each use's Kronecker block, `Σ_u L_u ⊗ R_u` on the tensor as a `[rows, cols]` matrix.
#[derive(Clone, Debug)]
pub struct TiedFactors<T: Float> {
    /// The tensor.
    pub param: ParamRef,
    /// `shape[0]` (the bias length for a tied bias).
    pub rows: usize,
    /// The product of the other axes (1 for a bias).
    pub cols: usize,
    /// The uses, in node order.
    pub uses: Vec<TiedUse<T>>,
}

/// Fitted KFAC factors of the active parameters.
#[derive(Clone, Debug)]
pub struct KfacFactors<T: Float> {
    /// The blocks of maps and of dense tensors, by their first offset.
    pub layers: Vec<LayerFactors<T>>,
    /// Tied tensors.
    pub tied: Vec<TiedFactors<T>>,
    /// Dimension of the active vector `D_S`.
    pub dim: usize,
    /// The options of the fit.
    pub options: KfacOptions,
    /// Data points `N` of the fit.
    pub n_data: usize,
}

/// What a data pass hands out (all sums; normalization happens when the fit finishes).
pub(crate) trait PassSink<T: Float> {
    /// A batch's inputs of plan `i` (layout of [`curvops_nn::layers::Layer::kfac_inputs`]),
    /// `n` samples; only called when [`PassSink::wants_inputs`].
    fn inputs(&mut self, _i: usize, _a: &[T], _n: usize) {}
    /// Whether [`PassSink::inputs`] is wanted.
    fn wants_inputs(&self) -> bool {
        true
    }
    /// The output cotangents of plan `i` (`[n, r, R, out]` rows or `[n, r, out, R]`
    /// columns, scaled by the loss factors) with its inputs `a` when [`PassSink::wants_a`].
    fn cotangents(&mut self, i: usize, a: Option<&[T]>, g: &[T], r: usize, n: usize);
    /// Whether [`PassSink::cotangents`] needs the inputs.
    fn wants_a(&self) -> bool {
        false
    }
    /// Whether dense blocks are wanted.
    fn wants_dense(&self) -> bool {
        true
    }
    /// `count` per-sample gradient rows `[count, D_t]` of dense tensor `i` (scaled).
    fn dense_rows(&mut self, _i: usize, _rows: &[T], _count: usize) {}
    /// A full `D_t × D_t` contribution of dense tensor `i`.
    fn dense_gram(&mut self, _i: usize, _g: &[T]) {}
}

/// Positions of the network output: the product of all but its last axis (1 for vectors).
pub(crate) fn output_positions<T: Float>(p: &Problem<T>) -> usize {
    let s = p.net.output_shape();
    if s.len() <= 1 {
        1
    } else {
        s[..s.len() - 1].iter().product()
    }
}

/// The columns of the loss-Hessian factor with each column summed over the output positions
/// (curvlinops' KFAC for sequence outputs: one backward pass per column `j` for all
/// positions), `[n, V, C]` with `V = C / positions`, unscaled.
pub(crate) fn type2_columns<T: Float>(p: &Problem<T>, batch: &Batch<T>, out: &[T]) -> (Vec<T>, usize) {
    let net = &p.net;
    let c = net.out_size();
    let pos = output_positions(p);
    if pos <= 1 || net.loss.positions > 1 {
        return net.loss.hess_factor_position_summed(out, batch.y, batch.n, c);
    }
    // per-entry factors (MSE, BCE on [T, V] outputs): columns indexed (t, j), summed over t
    let (s, r) = net.loss.hess_factor(out, batch.y, batch.n, c);
    debug_assert_eq!(r, c);
    let v = c / pos;
    let mut summed = vec![T::zero(); batch.n * v * c];
    for n in 0..batch.n {
        for t in 0..pos {
            for j in 0..v {
                let src = &s[(n * c + t * v + j) * c..(n * c + t * v + j + 1) * c];
                curvops_tensor::ops::axpy(T::one(), src, &mut summed[(n * v + j) * c..(n * v + j + 1) * c]);
            }
        }
    }
    (summed, v)
}

/// Cotangents per sample of the backward pass of each Fisher type (`R`), see the module docs.
fn pass_columns<T: Float>(p: &Problem<T>, fisher: FisherType) -> usize {
    match fisher {
        FisherType::Type2 => p.net.out_size() / output_positions(p),
        FisherType::Mc { samples, .. } => samples,
        FisherType::Empirical | FisherType::ForwardOnly => 1,
    }
    .max(1)
}

/// Whether the dense blocks come from forward-mode products (type-2 on outputs with several
/// positions, where the backward pass's columns are summed over positions and the exact GGN
/// block needs every position's columns).
fn dense_by_jvp<T: Float>(p: &Problem<T>, fisher: FisherType) -> bool {
    fisher == FisherType::Type2 && output_positions(p) > 1
}

/// One pass over the data (see [`PassSink`]). No backward pass for `forward-only`.
pub(crate) fn data_pass<T: Float>(
    p: &Problem<T>,
    walk: &DataWalk<T>,
    active: &ActiveSet,
    st: &Structure,
    opts: &KfacOptions,
    sink: &mut impl PassSink<T>,
) {
    let net = &p.net;
    let theta = &p.theta;
    let cdim = net.out_size();
    let c = net.loss.factor(walk.n(), cdim);
    let nl = net.layers.len();
    let mut plans_at: Vec<Vec<usize>> = vec![Vec::new(); nl];
    for (i, pl) in st.plans.iter().enumerate() {
        plans_at[pl.layer].push(i);
    }
    let want_dense = sink.wants_dense() && !st.dense.is_empty();
    let by_jvp = dense_by_jvp(p, opts.fisher);
    // dense roles per node (backward route)
    let mut dense_at: Vec<Vec<(usize, usize)>> = vec![Vec::new(); nl];
    if want_dense && !by_jvp {
        for (i, d) in st.dense.iter().enumerate() {
            for &(l, r) in &d.uses {
                dense_at[l].push((i, r));
            }
        }
    }
    // one active set per dense tensor (forward route)
    let dense_active: Vec<ActiveSet> = if want_dense && by_jvp {
        st.dense
            .iter()
            .map(|d| {
                let i = net.layout.find(&d.param.name).expect("a parameter of the network");
                let mut mask = vec![false; net.layout.entries.len()];
                mask[i] = true;
                ActiveSet::from_mask(&net.layout, &mask)
            })
            .collect()
    } else {
        Vec::new()
    };
    let bs = pass_batch_size(p, walk.n(), active, st, opts, want_dense);
    let wants_inputs = sink.wants_inputs();
    let wants_a = sink.wants_a();
    for batch in walk.batches_of(bs) {
        let n = batch.n;
        let tape = net.forward(theta, batch.x, n);
        if wants_inputs {
            for (i, pl) in st.plans.iter().enumerate() {
                if pl.weight.is_some() {
                    net.with_ctx(pl.layer, theta, &tape, |ctx| {
                        let a = net.layers[pl.layer].kfac_inputs(ctx, pl.map);
                        sink.inputs(i, &a, n);
                    });
                }
            }
        }
        let (mut g, r) = match opts.fisher {
            FisherType::ForwardOnly => continue,
            FisherType::Type2 => type2_columns(p, &batch, tape.output()),
            FisherType::Mc { samples, seed } => {
                (net.loss.sampled_grads_batch(tape.output(), &batch, cdim, seed, samples), samples)
            }
            FisherType::Empirical => (net.loss.grad(tape.output(), batch.y, n, cdim), 1),
        };
        let scale = match opts.fisher {
            FisherType::Mc { samples, .. } => (c / samples as f64).sqrt(),
            _ => c.sqrt(),
        };
        curvops_tensor::ops::scale(T::of(scale), &mut g);
        let mut dense_buf: Vec<Option<Vec<T>>> = vec![None; st.dense.len()];
        net.backward_visit(theta, &tape, g, r, active, |l, ctx, gl| {
            let layer = &net.layers[l];
            for &i in &plans_at[l] {
                let pl = &st.plans[i];
                let cot = layer.kfac_output_cotangents(ctx, pl.map, gl, r);
                if wants_a && pl.weight.is_some() {
                    let a = layer.kfac_inputs(ctx, pl.map);
                    sink.cotangents(i, Some(&a), &cot, r, n);
                } else {
                    sink.cotangents(i, None, &cot, r, n);
                }
            }
            if dense_at[l].is_empty() {
                return;
            }
            let roles = net.layout.layer_entries[l].len();
            let mut bufs: Vec<Option<Vec<T>>> = vec![None; roles];
            for &(di, role) in &dense_at[l] {
                bufs[role] = Some(vec![T::zero(); n * r * st.dense[di].len]);
            }
            {
                let mut views: Vec<Option<&mut [T]>> = bufs.iter_mut().map(|b| b.as_deref_mut()).collect();
                layer.vjp_param_per_sample(ctx, gl, r, &mut views);
            }
            for &(di, role) in &dense_at[l] {
                let b = bufs[role].take().expect("requested");
                match &mut dense_buf[di] {
                    Some(acc) => curvops_tensor::ops::axpy(T::one(), &b, acc),
                    slot => *slot = Some(b),
                }
            }
        });
        for (di, b) in dense_buf.into_iter().enumerate() {
            if let Some(b) = b {
                sink.dense_rows(di, &b, n * r);
            }
        }
        for (di, act) in dense_active.iter().enumerate() {
            let gram = dense_block_by_jvp(p, &tape, &batch, act, st.dense[di].len, c);
            sink.dense_gram(di, &gram);
        }
    }
}

/// `c Σ_n J_nᵀ ∇²_f ℓ_n J_n` restricted to one tensor (`D_t × D_t`, row-major) on a batch:
/// forward-mode products `J_n e_i` for every entry `i` of the tensor, the loss-Hessian products
/// of those, and one GEMM per sample.
fn dense_block_by_jvp<T: Float>(
    p: &Problem<T>,
    tape: &curvops_nn::Tape<T>,
    batch: &Batch<T>,
    act: &ActiveSet,
    k: usize,
    c: f64,
) -> Vec<T> {
    let net = &p.net;
    let cdim = net.out_size();
    let n = batch.n;
    let mut eye = vec![T::zero(); k * k];
    for i in 0..k {
        eye[i * k + i] = T::one();
    }
    let mut tans = net.jvp(&p.theta, tape, &eye, k, act, false);
    let jt = tans.pop().flatten().unwrap_or_else(|| vec![T::zero(); n * k * cdim]); // [n, K, C]
    let hv = net.loss.hess_vp(tape.output(), batch.y, &jt, n, cdim, k);
    let mut g = vec![T::zero(); k * k];
    for s in 0..n {
        let (a, b) = (&jt[s * k * cdim..(s + 1) * k * cdim], &hv[s * k * cdim..(s + 1) * k * cdim]);
        curvops_tensor::gemm(k, k, cdim, T::of(c), a, cdim, Trans::N, b, cdim, Trans::T, T::one(), &mut g, k);
    }
    g
}

/// Elements of the largest per-sample buffer of the data pass (cotangents `[n, R, size]`,
/// unfolded inputs): the pass splits batches further so that buffers stay in the allocator's
/// reuse range and in cache (the factors are sums over data points normalized by the data-set
/// size, so the split does not change them beyond rounding).
const PASS_ELEMS: usize = 1 << 21;

/// The batch size of the data pass: `--batch-size` (all data if 0), capped so that the largest
/// buffer of a batch has at most [`PASS_ELEMS`] entries.
fn pass_batch_size<T: Float>(
    p: &Problem<T>,
    n_data: usize,
    active: &ActiveSet,
    st: &Structure,
    opts: &KfacOptions,
    want_dense: bool,
) -> usize {
    let net = &p.net;
    let r = pass_columns(p, opts.fisher);
    let backward = opts.fisher != FisherType::ForwardOnly;
    let mut per_sample = 1;
    let mut largest = 1;
    for (l, layer) in net.layers.iter().enumerate() {
        let size = layer.in_size().max(layer.out_size());
        largest = largest.max(size);
        let cot = if backward && active.upstream[l] { r * size } else { 0 };
        per_sample = per_sample.max(cot).max(layer.out_size());
    }
    for pl in &st.plans {
        let m = &pl.info;
        per_sample = per_sample.max(m.positions * m.inp);
        if backward {
            per_sample = per_sample.max(r * m.positions * m.out);
        }
    }
    if want_dense {
        let by_jvp = dense_by_jvp(p, opts.fisher);
        for d in &st.dense {
            per_sample = per_sample.max(if by_jvp { d.len * largest } else { r * d.len });
        }
    }
    let cap = (PASS_ELEMS / per_sample).max(1);
    let n = n_data.max(1);
    let want = if opts.batch_size == 0 { n } else { opts.batch_size };
    want.min(cap)
}

/// Buffered rows of a Gram matrix are flushed into it once there are this many entries (or `d`
/// rows, if more).
const GRAM_BUFFER_ELEMS: usize = 1 << 20;

/// A running Gram matrix `Σ r rᵀ` (and `Σ r`) of rows `r ∈ ℝ^d`. Rows are buffered and
/// multiplied in blocks of at least `d` rows (one compute-bound GEMM instead of one
/// memory-bound update per small batch); when the data has few rows in total they are kept as
/// a low-rank factor (`Σ r rᵀ = Uᵀ U`) for cheaper products.
pub(crate) struct RowGram<T: Float> {
    d: usize,
    /// Rows are kept as a low-rank factor when there are fewer than this many in total.
    keep_below: usize,
    gram: Mat<T>,
    buf: Vec<T>,
    /// `Σ r`, accumulated only when asked for (the joint-bias input factor needs it).
    sum: Option<Vec<T>>,
    count: usize,
    flushed: bool,
}

impl<T: Float> RowGram<T> {
    /// A Gram matrix of rows of length `d` whose rows are kept as a factor `U` (`Σ r rᵀ = UᵀU`)
    /// when there are fewer than `keep_below` of them.
    fn new(d: usize, keep_below: usize, want_sum: bool) -> Self {
        Self {
            d,
            keep_below,
            gram: Mat::zeros(d, d),
            buf: Vec::new(),
            sum: want_sum.then(|| vec![T::zero(); d]),
            count: 0,
            flushed: false,
        }
    }
    fn flush_rows(&self) -> usize {
        self.d.max(GRAM_BUFFER_ELEMS / self.d.max(1))
    }
    /// Appends `k` rows given row-major (`[k, d]`).
    fn push_rows(&mut self, rows: &[T], k: usize) {
        if k == 0 {
            return;
        }
        if !self.flushed && self.buf.is_empty() && self.count + k >= self.keep_below && k >= self.flush_rows() {
            // a large block that will not be kept: one GEMM on it directly
            self.flushed = true;
            self.add_direct(rows, k);
            return;
        }
        if self.flushed && k >= self.flush_rows() {
            self.flush();
            self.add_direct(rows, k);
            return;
        }
        self.buf.extend_from_slice(&rows[..k * self.d]);
        self.count += k;
        self.maybe_flush();
    }
    /// `Σ r rᵀ += XᵀX` for `k` rows `X` without buffering.
    fn add_direct(&mut self, rows: &[T], k: usize) {
        let d = self.d;
        gram_lower_acc(&mut self.gram, rows, k, d, d, Trans::N, T::one());
        if let Some(sum) = self.sum.as_mut() {
            for row in rows[..k * d].chunks_exact(d) {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += *v;
                }
            }
        }
        self.count += k;
    }
    /// Appends the `k` columns of a row-major `[d, k]` matrix as rows.
    fn push_cols(&mut self, m: &[T], k: usize) {
        if self.flushed || self.count + k >= self.keep_below {
            // the rows will not be kept: add `M Mᵀ` directly (one GEMM on the given layout,
            // no transposition into the buffer)
            self.flush();
            let d = self.d;
            gram_lower_acc(&mut self.gram, m, k, d, k, Trans::T, T::one());
            if let Some(sum) = self.sum.as_mut() {
                for (s, row) in sum.iter_mut().zip(m.chunks_exact(k)) {
                    *s += row_sum(row);
                }
            }
            self.count += k;
            self.flushed = true;
            return;
        }
        let (d, start) = (self.d, self.buf.len());
        self.buf.resize(start + k * d, T::zero());
        let dst = &mut self.buf[start..];
        for j in 0..d {
            for (t, v) in m[j * k..(j + 1) * k].iter().enumerate() {
                dst[t * d + j] = *v;
            }
        }
        self.count += k;
        self.maybe_flush();
    }
    fn maybe_flush(&mut self) {
        if self.buf.len() / self.d.max(1) >= self.flush_rows() {
            self.flush();
        }
    }
    fn flush(&mut self) {
        let k = self.buf.len() / self.d.max(1);
        if k > 0 {
            gram_lower_acc(&mut self.gram, &self.buf, k, self.d, self.d, Trans::N, T::one());
            if let Some(sum) = self.sum.as_mut() {
                for row in self.buf.chunks_exact(self.d) {
                    for (s, v) in sum.iter_mut().zip(row) {
                        *s += *v;
                    }
                }
            }
            self.buf.clear();
            self.flushed = true;
        }
    }
    /// `(Σ r rᵀ, Σ r, number of rows, the rows if they are kept)`.
    fn finish(mut self) -> (Mat<T>, Vec<T>, usize, Option<Vec<T>>) {
        let keep = (!self.flushed && self.count < self.keep_below).then(|| self.buf.clone());
        self.flush();
        symmetrize_lower(&mut self.gram);
        let sum = self.sum.take().unwrap_or_default();
        (self.gram, sum, self.count, keep)
    }
}

/// `Σ_i x_i` with eight independent partial sums (vectorizable; a fixed order, so the result
/// does not depend on anything but the input).
fn row_sum<T: Float>(x: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += *v;
        }
    }
    let mut s = chunks.remainder().iter().fold(T::zero(), |a, v| a + *v);
    for a in acc {
        s += a;
    }
    s
}

/// Row count below which a right factor `A = UᵀU` (`n × n`, acting on `[m, n]` matrices) is
/// applied through `U`: `r·(2n + m) < n·(n + m)` (see `kernels::left_right`; a left factor
/// `B = VᵀV` (`m × m`) pays off below `m/2` rows).
fn keep_right(n: usize, m: usize) -> usize {
    n * (n + m) / (2 * n + m).max(1)
}

/// The statistics of an input factor.
enum AStats<T: Float> {
    /// Dense inputs (and one-hot inputs with `reduce`): a Gram matrix of rows.
    Gram(RowGram<T>),
    /// One-hot inputs with `expand`: the count of each id (`Σ e e ᵀ = diag(counts)`) and the
    /// number of rows.
    Counts(Vec<T>, usize),
}

/// `id` of a one-hot input coded as a float.
#[inline]
fn id_of<T: Float>(v: T) -> usize {
    v.as_f64() as usize
}

/// Adds a batch's inputs as rows: `a_{nr}` (expand), `ā_n = 1/R Σ_r a_{nr}` (reduce).
fn add_input_stats<T: Float>(st: &mut AStats<T>, pl: &Plan, a: &[T], n: usize, approx: KfacApprox) {
    let (d, pp) = (pl.inp(), pl.positions());
    let inv = T::of(1.0 / pp as f64);
    match st {
        AStats::Counts(counts, rows) => {
            for &v in &a[..n * pp] {
                counts[id_of(v)] += T::one();
            }
            *rows += n * pp;
        }
        AStats::Gram(g) if pl.info.one_hot => {
            // reduce: the id histogram of each sample / R
            let mut h = vec![T::zero(); n * d];
            for s in 0..n {
                for &v in &a[s * pp..(s + 1) * pp] {
                    h[s * d + id_of(v)] += inv;
                }
            }
            g.push_rows(&h, n);
        }
        AStats::Gram(g) => match (pl.columns(), approx, pp) {
            (_, _, 1) | (false, KfacApprox::Expand, _) => g.push_rows(a, n * pp),
            (true, KfacApprox::Expand, _) => {
                for s in 0..n {
                    g.push_cols(&a[s * d * pp..(s + 1) * d * pp], pp);
                }
            }
            (cols, KfacApprox::Reduce, _) => {
                let mut abar = vec![T::zero(); n * d];
                for s in 0..n {
                    let x = &a[s * d * pp..(s + 1) * d * pp];
                    let dst = &mut abar[s * d..(s + 1) * d];
                    if cols {
                        for (j, v) in dst.iter_mut().enumerate() {
                            *v = row_sum(&x[j * pp..(j + 1) * pp]) * inv;
                        }
                    } else {
                        for row in x.chunks_exact(d) {
                            curvops_tensor::ops::axpy(inv, row, dst);
                        }
                    }
                }
                g.push_rows(&abar, n);
            }
        },
    }
}

/// The cotangents summed over positions: `Σ_r g_{m, r}` for `rows` blocks (`[rows, out]`).
pub(crate) fn sum_positions<T: Float>(pl: &Plan, g: &[T], rows: usize) -> Vec<T> {
    let (o, pp) = (pl.out(), pl.positions());
    let mut out = vec![T::zero(); rows * o];
    for (m, dst) in out.chunks_exact_mut(o.max(1)).enumerate() {
        let blk = &g[m * o * pp..(m + 1) * o * pp];
        if pl.columns() {
            for (j, v) in dst.iter_mut().enumerate() {
                *v = row_sum(&blk[j * pp..(j + 1) * pp]);
            }
        } else {
            for row in blk.chunks_exact(o) {
                curvops_tensor::ops::axpy(T::one(), row, dst);
            }
        }
    }
    out
}

/// Adds a batch's cotangents (`rows` blocks of `R` positions) as rows: `g_{mr}` (expand),
/// `Σ_r g_{mr}` (reduce).
fn add_grad_stats<T: Float>(st: &mut RowGram<T>, pl: &Plan, g: &[T], rows: usize, approx: KfacApprox) {
    let (o, pp) = (pl.out(), pl.positions());
    match (pp, pl.columns(), approx) {
        (1, _, _) | (_, false, KfacApprox::Expand) => st.push_rows(g, rows * pp),
        (_, true, KfacApprox::Expand) => {
            for m in 0..rows {
                st.push_cols(&g[m * o * pp..(m + 1) * o * pp], pp);
            }
        }
        (_, _, KfacApprox::Reduce) => st.push_rows(&sum_positions(pl, g, rows), rows),
    }
}

/// The statistics of a KFAC fit.
struct KfacSink<T: Float> {
    plans: Vec<Plan>,
    a: Vec<Option<AStats<T>>>,
    b: Vec<RowGram<T>>,
    /// Dense blocks: lower-triangle Gram of gradient rows, and full forward-mode sums.
    dense_rows: Vec<Mat<T>>,
    dense_full: Vec<Vec<T>>,
    approx: KfacApprox,
}

impl<T: Float> PassSink<T> for KfacSink<T> {
    fn inputs(&mut self, i: usize, a: &[T], n: usize) {
        if let Some(st) = self.a[i].as_mut() {
            add_input_stats(st, &self.plans[i], a, n, self.approx);
        }
    }
    fn cotangents(&mut self, i: usize, _a: Option<&[T]>, g: &[T], r: usize, n: usize) {
        add_grad_stats(&mut self.b[i], &self.plans[i], g, n * r, self.approx);
    }
    fn dense_rows(&mut self, i: usize, rows: &[T], count: usize) {
        let d = self.dense_rows[i].nrows();
        gram_lower_acc(&mut self.dense_rows[i], rows, count, d, d, Trans::N, T::one());
    }
    fn dense_gram(&mut self, i: usize, g: &[T]) {
        curvops_tensor::ops::axpy(T::one(), g, &mut self.dense_full[i]);
    }
}

/// The finished input factor of a plan: `A` (normalized, augmented by the constant input when
/// joint) and the low-rank factor `U` if kept.
fn finish_a<T: Float>(pl: &Plan, st: AStats<T>) -> (Mat<T>, Option<Mat<T>>) {
    let inp = pl.inp();
    let d = pl.a_dim();
    let (gram, sum, count, rows): (Mat<T>, Vec<T>, usize, Option<Vec<T>>) = match st {
        AStats::Gram(g) => g.finish(),
        AStats::Counts(counts, rows) => {
            let mut g = Mat::zeros(inp, inp);
            for (i, &c) in counts.iter().enumerate() {
                g[(i, i)] = c;
            }
            (g, counts, rows, None)
        }
    };
    let inv = T::of(1.0 / count.max(1) as f64);
    let a = if d == inp {
        // no constant input: A = Σ a aᵀ / count in place (no second d × d matrix)
        let mut a = gram;
        for j in 0..d {
            for v in a.col_as_slice_mut(j) {
                *v *= inv;
            }
        }
        a
    } else {
        // joint bias: A = [Σ a aᵀ, Σ a; (Σ a)ᵀ, count] / count
        let mut a = Mat::zeros(d, d);
        for j in 0..inp {
            let (src, dst) = (gram.col_as_slice(j), a.col_as_slice_mut(j));
            for (o, v) in dst[..inp].iter_mut().zip(src) {
                *o = *v * inv;
            }
            dst[inp] = sum[j] * inv;
        }
        let last = a.col_as_slice_mut(inp);
        for (o, v) in last[..inp].iter_mut().zip(&sum) {
            *o = *v * inv;
        }
        last[inp] = T::one();
        a
    };
    // A = UᵀU with U = [rows | 1] / √count (`count × d`, column-major: column j holds input j)
    let s = T::of(1.0 / (count.max(1) as f64).sqrt());
    let u = rows.map(|r| {
        let mut u = Mat::zeros(count, d);
        for j in 0..d {
            let col = u.col_as_slice_mut(j);
            if j < inp {
                for (i, o) in col.iter_mut().enumerate() {
                    *o = r[i * inp + j] * s;
                }
            } else {
                col.fill(s);
            }
        }
        u
    });
    (a, u)
}

/// Fits KFAC's factors on the problem's data for the active parameters (see the module docs
/// of [`crate::kfac`]). Errors name a parameter that cannot get a block.
pub fn fit_kfac<T: Float>(p: &Problem<T>, active: &ActiveSet, opts: &KfacOptions) -> Result<KfacFactors<T>, KfacError> {
    fit_kfac_on(p, &DataWalk::new(&p.data, opts.batch_size), active, opts)
}

/// [`fit_kfac`] on the samples of `walk` (the whole data set or a subset): the factors of
/// `L_S = c_S Σ_{n ∈ S} ℓ_n` with `c_S` the reduction over `|S|` samples, Monte-Carlo labels
/// keyed by the samples' global indices, and batches of at most `opts.batch_size` samples.
pub fn fit_kfac_on<T: Float>(
    p: &Problem<T>,
    walk: &DataWalk<T>,
    active: &ActiveSet,
    opts: &KfacOptions,
) -> Result<KfacFactors<T>, KfacError> {
    if let FisherType::Mc { samples: 0, .. } = opts.fisher {
        return Err(KfacError::Unsupported("KFAC with Fisher type mc needs at least 1 MC sample".into()));
    }
    let st = structure(p, active, opts)?;
    let a: Vec<Option<AStats<T>>> = st
        .plans
        .iter()
        .map(|pl| {
            pl.weight.as_ref().map(|_| {
                if pl.info.one_hot && opts.approx == KfacApprox::Expand {
                    AStats::Counts(vec![T::zero(); pl.inp()], 0)
                } else {
                    let keep =
                        if pl.info.one_hot || pl.weight_tied.is_some() { 0 } else { keep_right(pl.inp(), pl.out()) };
                    AStats::Gram(RowGram::new(pl.inp(), keep, pl.joint))
                }
            })
        })
        .collect();
    let b = st
        .plans
        .iter()
        .map(|pl| {
            let keep = if pl.weight_tied.is_some() || pl.bias_tied.is_some() { 0 } else { pl.out() / 2 };
            RowGram::new(pl.out(), keep, false)
        })
        .collect();
    let mut sink = KfacSink {
        plans: st.plans.clone(),
        a,
        b,
        dense_rows: st.dense.iter().map(|d| Mat::zeros(d.len, d.len)).collect(),
        dense_full: st.dense.iter().map(|d| vec![T::zero(); d.len * d.len]).collect(),
        approx: opts.approx,
    };
    data_pass(p, walk, active, &st, opts, &mut sink);
    let KfacSink { a, b, dense_rows, dense_full, .. } = sink;
    // per plan: (A, U_A), (B, U_B)
    let mut fa: Vec<Option<FactorPair<T>>> = st.plans.iter().zip(a).map(|(pl, s)| s.map(|s| finish_a(pl, s))).collect();
    let mut fb: Vec<Option<FactorPair<T>>> = st
        .plans
        .iter()
        .zip(b)
        .map(|(pl, s)| {
            Some(if opts.fisher == FisherType::ForwardOnly {
                (Mat::identity(pl.out(), pl.out()), None)
            } else {
                let (g, _, k, rows) = s.finish();
                (g, rows.map(|r| mat_from_rows(&r, k, pl.out())))
            })
        })
        .collect();
    // tied tensors take copies of their uses' factors
    let tied = st
        .tied
        .iter()
        .map(|t| TiedFactors {
            param: t.param.clone(),
            rows: t.rows,
            cols: t.cols,
            uses: t
                .uses
                .iter()
                .map(|&(pi, is_weight)| {
                    let pl = &st.plans[pi];
                    TiedUse {
                        layer: pl.layer,
                        key: pl.key.clone(),
                        transposed: pl.info.transposed,
                        a: if is_weight { fa[pi].as_ref().map(|(a, _)| a.clone()) } else { None },
                        b: fb[pi].as_ref().expect("gradient factor").0.clone(),
                    }
                })
                .collect(),
        })
        .collect();
    let mut dense_rows: Vec<Option<Mat<T>>> = dense_rows.into_iter().map(Some).collect();
    let mut layers = Vec::with_capacity(st.order.len());
    for blk in &st.order {
        match *blk {
            Block::Plan(pi) => {
                let pl = &st.plans[pi];
                let weight = pl.own_weight().cloned();
                let (a, a_rows) = match weight {
                    Some(_) => {
                        let (a, u) = fa[pi].take().expect("input factor");
                        (Some(a), u)
                    }
                    None => (None, None),
                };
                let (b, b_rows) = fb[pi].take().expect("gradient factor");
                layers.push(LayerFactors {
                    layer: pl.layer,
                    kind: pl.kind,
                    key: pl.key.clone(),
                    out: pl.out(),
                    inp: pl.inp(),
                    transposed: pl.info.transposed,
                    weight,
                    bias: pl.own_bias().cloned(),
                    joint: pl.joint,
                    a: a.map(Arc::new),
                    b: Arc::new(b),
                    a_rows: a_rows.map(Arc::new),
                    b_rows: b_rows.map(Arc::new),
                });
            }
            Block::Dense(di) => {
                let d = &st.dense[di];
                let mut m = dense_rows[di].take().expect("dense block");
                symmetrize_lower(&mut m);
                let full = &dense_full[di];
                let k = d.len;
                let m = Mat::from_fn(k, k, |i, j| m[(i, j)] + (full[i * k + j] + full[j * k + i]) * T::of(0.5));
                layers.push(dense_layer(d.uses[0].0, &d.param, k, m));
            }
        }
    }
    Ok(KfacFactors { layers, tied, dim: active.dim, options: *opts, n_data: walk.n() })
}

/// The [`LayerFactors`] of a dense block.
pub(crate) fn dense_layer<T: Float>(layer: usize, param: &ParamRef, len: usize, m: Mat<T>) -> LayerFactors<T> {
    LayerFactors {
        layer,
        kind: "dense",
        key: param.name.clone(),
        out: len,
        inp: 0,
        transposed: false,
        weight: None,
        bias: Some(param.clone()),
        joint: false,
        a: None,
        b: Arc::new(m),
        a_rows: None,
        b_rows: None,
    }
}
