//! The data pass of KFAC: the input factors `A` (from the forward pass) and the gradient
//! factors `B` (from the backpropagated cotangents), accumulated over mini-batches and
//! normalized by the data-set size (see the module docs of [`crate::kfac`] for the formulas).

use super::kernels::{gram_lower_acc, mat_from_rows, symmetrize_lower};
use super::{FisherType, KfacApprox, KfacError, KfacOptions};
use crate::Problem;
use curvops_nn::data::Batch;
use curvops_nn::layers::{Aux, Conv2d, Linear};
use curvops_nn::{ActiveSet, Tape};
use curvops_tensor::{Float, Trans};
use faer::Mat;
use std::borrow::Cow;

/// A parameter tensor of a Kronecker block: its state-dict name and its offset in the active
/// (`--params`) vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamRef {
    /// State-dict name, e.g. `"0.weight"`.
    pub name: String,
    /// Offset in the active vector.
    pub offset: usize,
}

/// The Kronecker factors of one `linear` / `conv2d` layer.
#[derive(Clone, Debug)]
pub struct LayerFactors<T: Float> {
    /// Index of the layer in the network.
    pub layer: usize,
    /// `"linear"` or `"conv2d"`.
    pub kind: &'static str,
    /// Rows of the weight matrix (output channels).
    pub out: usize,
    /// Columns of the weight matrix (`in_features`, or `C/G·kh·kw` for a convolution).
    pub inp: usize,
    /// The weight, if active.
    pub weight: Option<ParamRef>,
    /// The bias, if active.
    pub bias: Option<ParamRef>,
    /// Weight and bias in one block (`A` then includes the constant input 1 as its last row).
    pub joint: bool,
    /// The input factor `A` (`[in, in]`, `[in+1, in+1]` when joint); `None` without an active
    /// weight.
    pub a: Option<Mat<T>>,
    /// The gradient factor `B` (`[out, out]`).
    pub b: Mat<T>,
    /// A low-rank factor `U` with `A = UᵀU` (`[r, dim A]`), kept by the fit when the data has
    /// few input rows (`r·(2·dim A + out) < dim A·(dim A + out)`); products then cost
    /// `O(out·r·(2·dim A + out))` instead of `O(out·dim A·(dim A + out))`.
    pub a_rows: Option<Mat<T>>,
    /// A low-rank factor `V` with `B = VᵀV`, likewise.
    pub b_rows: Option<Mat<T>>,
}

/// Fitted KFAC factors of the active layers, in layer order.
#[derive(Clone, Debug)]
pub struct KfacFactors<T: Float> {
    /// Per layer with an active parameter.
    pub layers: Vec<LayerFactors<T>>,
    /// Dimension of the active vector `D_S`.
    pub dim: usize,
    /// The options of the fit.
    pub options: KfacOptions,
    /// Data points `N` of the fit.
    pub n_data: usize,
}

/// How a layer's input is unfolded.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Geometry {
    Linear,
    /// `groups`, rows per group `jg` of the unfolded input, output positions `l`.
    Conv {
        groups: usize,
        jg: usize,
        l: usize,
    },
}

/// One layer of the data pass.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub layer: usize,
    pub kind: &'static str,
    pub geo: Geometry,
    pub out: usize,
    pub inp: usize,
    pub weight: Option<ParamRef>,
    pub bias: Option<ParamRef>,
    pub joint: bool,
}

impl Plan {
    /// Output positions `P` (1 for linear layers).
    pub fn positions(&self) -> usize {
        match self.geo {
            Geometry::Linear => 1,
            Geometry::Conv { l, .. } => l,
        }
    }
    /// Columns of the (possibly augmented) input: `in` or `in + 1`.
    pub fn a_dim(&self) -> usize {
        self.inp + usize::from(self.joint)
    }

    /// The layer input of sample `s` as `[inp, P]` (row-major): the unfolded patches averaged
    /// over channel groups for a convolution (curvlinops' `extract_patches`), `x_s` for a
    /// linear layer.
    pub fn patches<'a, T: Float>(&self, tape: &'a Tape<T>, s: usize) -> Cow<'a, [T]> {
        match self.geo {
            Geometry::Linear => {
                let x = &tape.acts[self.layer];
                Cow::Borrowed(&x[s * self.inp..(s + 1) * self.inp])
            }
            Geometry::Conv { groups, jg, l } => {
                let cols = match &tape.aux[self.layer] {
                    Aux::Cols(c) => c,
                    _ => panic!("conv2d: forward pass did not keep cols"),
                };
                let cs = groups * jg * l;
                let cn = &cols[s * cs..(s + 1) * cs];
                if groups == 1 {
                    return Cow::Borrowed(cn);
                }
                let mut avg = cn[..jg * l].to_vec();
                for g in 1..groups {
                    for (a, v) in avg.iter_mut().zip(&cn[g * jg * l..(g + 1) * jg * l]) {
                        *a += *v;
                    }
                }
                let inv = T::of(1.0 / groups as f64);
                for a in &mut avg {
                    *a *= inv;
                }
                Cow::Owned(avg)
            }
        }
    }
}

/// The layers of the active parameters; a parameter of another layer type is an error naming it.
pub(crate) fn plan_layers<T: Float>(
    p: &Problem<T>,
    active: &ActiveSet,
    joint_bias: bool,
) -> Result<Vec<Plan>, KfacError> {
    let net = &p.net;
    let mut plans = Vec::new();
    for (l, layer) in net.layers.iter().enumerate() {
        let range = net.layout.layer_entries[l].clone();
        let act: Vec<usize> = range.iter().copied().filter(|&i| active.sub_offset[i].is_some()).collect();
        if act.is_empty() {
            continue;
        }
        let any = layer.as_any();
        let geo = if any.downcast_ref::<Linear>().is_some() {
            Geometry::Linear
        } else if let Some(c) = any.downcast_ref::<Conv2d>() {
            Geometry::Conv { groups: c.groups(), jg: c.jg(), l: c.geom().out_len() }
        } else {
            let e = &net.layout.entries[act[0]];
            return Err(KfacError::Unsupported(format!(
                "KFAC supports the parameters of linear and conv2d layers only: '{}' belongs to a {} layer \
                 (restrict the operator with --params)",
                e.name,
                layer.kind()
            )));
        };
        let mut weight = None;
        let mut bias = None;
        let mut shape = Vec::new();
        for i in range {
            let e = &net.layout.entries[i];
            if e.name.ends_with(".weight") {
                shape = e.shape.clone();
            }
            if let Some(off) = active.sub_offset[i] {
                let r = Some(ParamRef { name: e.name.clone(), offset: off });
                if e.name.ends_with(".weight") {
                    weight = r;
                } else {
                    bias = r;
                }
            }
        }
        let out = shape[0];
        let inp: usize = shape[1..].iter().product();
        let joint = joint_bias && weight.is_some() && bias.is_some();
        plans.push(Plan { layer: l, kind: layer.kind(), geo, out, inp, weight, bias, joint });
    }
    if plans.is_empty() {
        return Err(KfacError::Unsupported("KFAC: no active parameters".into()));
    }
    Ok(plans)
}

/// One pass over the data: `fwd(plan index, plan, tape, batch)` after each forward pass, and
/// `bwd(plan index, plan, tape, cotangents, R, batch)` with the cotangents at each planned
/// layer's output (`[n, R, out_size]`, already scaled by the loss factors of the Fisher type;
/// see the module docs). No backward pass for `forward-only`.
pub(crate) fn data_pass<T: Float>(
    p: &Problem<T>,
    plans: &[Plan],
    opts: &KfacOptions,
    mut fwd: impl FnMut(usize, &Plan, &Tape<T>, &Batch<T>),
    mut bwd: impl FnMut(usize, &Plan, &Tape<T>, &[T], usize, &Batch<T>),
) {
    let net = &p.net;
    let theta = &p.theta;
    let cdim = net.out_size();
    let c = net.loss.factor(p.data.n, cdim);
    let stop = plans.iter().map(|pl| pl.layer).min().expect("a planned layer");
    let mut by_layer: Vec<Option<usize>> = vec![None; net.layers.len()];
    for (i, pl) in plans.iter().enumerate() {
        by_layer[pl.layer] = Some(i);
    }
    let bs = pass_batch_size(p, stop, opts);
    let timing = std::env::var("KFAC_TIMING").is_ok();
    let mut tf = 0.0;
    let mut ta = 0.0;
    let mut tb = 0.0;
    let mut tv = 0.0;
    for batch in p.data.batches(bs) {
        let n = batch.n;
        let t0 = std::time::Instant::now();
        let tape = net.forward(theta, batch.x, n);
        tf += t0.elapsed().as_secs_f64();
        let t0 = std::time::Instant::now();
        for (i, pl) in plans.iter().enumerate() {
            fwd(i, pl, &tape, &batch);
        }
        ta += t0.elapsed().as_secs_f64();
        let (mut cot, r) = match opts.fisher {
            FisherType::ForwardOnly => continue,
            FisherType::Type2 => {
                let (mut s, r) = net.loss.hess_factor(tape.output(), batch.y, n, cdim);
                curvops_tensor::ops::scale(T::of(c.sqrt()), &mut s);
                (s, r)
            }
            FisherType::Mc { samples, seed } => {
                let mut g = net.loss.sampled_grads(tape.output(), n, cdim, seed, batch.start, samples);
                curvops_tensor::ops::scale(T::of((c / samples as f64).sqrt()), &mut g);
                (g, samples)
            }
            FisherType::Empirical => {
                let mut g = net.loss.grad(tape.output(), batch.y, n, cdim);
                curvops_tensor::ops::scale(T::of(c.sqrt()), &mut g);
                (g, 1)
            }
        };
        for l in (stop..net.layers.len()).rev() {
            let t0 = std::time::Instant::now();
            if let Some(i) = by_layer[l] {
                bwd(i, &plans[i], &tape, &cot, r, &batch);
            }
            tb += t0.elapsed().as_secs_f64();
            if timing {
                eprintln!("  B layer {l} {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
            }
            let t0 = std::time::Instant::now();
            if l > stop {
                cot = net.with_ctx(l, theta, &tape, |ctx| net.layers[l].vjp_input(ctx, &cot, r));
                if timing {
                    eprintln!("  vjp layer {l} {} {:.2} ms", net.layers[l].kind(), t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            tv += t0.elapsed().as_secs_f64();
        }
    }
    if timing {
        eprintln!("fwd {:.2} A {:.2} B {:.2} vjp {:.2} ms", tf * 1e3, ta * 1e3, tb * 1e3, tv * 1e3);
    }
}

/// Elements of the largest per-layer buffer of the data pass (cotangents `[n, R, size]`,
/// unfolded inputs): the pass splits batches further so that buffers stay in the allocator's
/// reuse range and in cache (the factors are sums over data points normalized by the data-set
/// size, so the split does not change them beyond rounding).
const PASS_ELEMS: usize = 1 << 21;

/// The batch size of the data pass: `--batch-size` (all data if 0), capped so that the largest
/// buffer of a batch has at most [`PASS_ELEMS`] entries.
fn pass_batch_size<T: Float>(p: &Problem<T>, stop: usize, opts: &KfacOptions) -> usize {
    let net = &p.net;
    let r = match opts.fisher {
        FisherType::Type2 => net.out_size(),
        FisherType::Mc { samples, .. } => samples,
        FisherType::Empirical | FisherType::ForwardOnly => 1,
    }
    .max(1);
    let mut per_sample = 1;
    for (l, layer) in net.layers.iter().enumerate() {
        let cols = match &layer.as_any().downcast_ref::<Conv2d>() {
            Some(c) => c.geom().col_rows() * c.geom().out_len(),
            None => 0,
        };
        let cot = if l >= stop { r * layer.in_size().max(layer.out_size()) } else { 0 };
        per_sample = per_sample.max(cols).max(cot).max(layer.out_size());
    }
    let cap = (PASS_ELEMS / per_sample).max(1);
    let n = p.data.n.max(1);
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
struct RowGram<T: Float> {
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
        self.buf.extend_from_slice(&rows[..k * self.d]);
        self.count += k;
        self.maybe_flush();
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

/// Adds a batch's layer inputs as rows (`a_{np}`, or `ā_n` for reduce).
fn add_input_stats<T: Float>(st: &mut RowGram<T>, pl: &Plan, tape: &Tape<T>, n: usize, approx: KfacApprox) {
    let d = pl.inp;
    let pp = pl.positions();
    match (pl.geo, approx) {
        (Geometry::Linear, _) => st.push_rows(&tape.acts[pl.layer], n),
        (Geometry::Conv { .. }, KfacApprox::Expand) => {
            for s in 0..n {
                st.push_cols(&pl.patches(tape, s), pp);
            }
        }
        (Geometry::Conv { .. }, KfacApprox::Reduce) => {
            let inv = T::of(1.0 / pp as f64);
            let mut abar = vec![T::zero(); n * d];
            for s in 0..n {
                let a = pl.patches(tape, s);
                for j in 0..d {
                    abar[s * d + j] = a[j * pp..(j + 1) * pp].iter().copied().sum::<T>() * inv;
                }
            }
            st.push_rows(&abar, n);
        }
    }
}

/// Adds a batch's cotangents (`[rows, out, P]`) as rows (`g_{nrp}`, or `Σ_p g_{nrp}` for reduce).
fn add_grad_stats<T: Float>(st: &mut RowGram<T>, pl: &Plan, cot: &[T], rows: usize, approx: KfacApprox) {
    let (o, pp) = (pl.out, pl.positions());
    if pp == 1 {
        st.push_rows(cot, rows);
        return;
    }
    match approx {
        KfacApprox::Expand => {
            for m in 0..rows {
                st.push_cols(&cot[m * o * pp..(m + 1) * o * pp], pp);
            }
        }
        KfacApprox::Reduce => {
            let mut gsum = vec![T::zero(); rows * o];
            for (m, gs) in gsum.chunks_exact_mut(o).enumerate() {
                for (j, v) in gs.iter_mut().enumerate() {
                    let base = (m * o + j) * pp;
                    *v = cot[base..base + pp].iter().copied().sum();
                }
            }
            st.push_rows(&gsum, rows);
        }
    }
}

/// Fits KFAC's factors on the problem's data for the active parameters (see the module docs
/// of [`crate::kfac`]). Errors name a parameter of an unsupported layer type.
pub fn fit_kfac<T: Float>(p: &Problem<T>, active: &ActiveSet, opts: &KfacOptions) -> Result<KfacFactors<T>, KfacError> {
    if let FisherType::Mc { samples: 0, .. } = opts.fisher {
        return Err(KfacError::Unsupported("KFAC with --fisher mc needs --mc-samples ≥ 1".into()));
    }
    let plans = plan_layers(p, active, opts.joint_bias)?;
    let mut a_stats: Vec<Option<RowGram<T>>> = plans
        .iter()
        .map(|pl| pl.weight.as_ref().map(|_| RowGram::new(pl.inp, keep_right(pl.inp, pl.out), pl.joint)))
        .collect();
    let mut b_stats: Vec<RowGram<T>> = plans.iter().map(|pl| RowGram::new(pl.out, pl.out / 2, false)).collect();
    let approx = opts.approx;
    let a_ptr = &mut a_stats;
    let b_ptr = &mut b_stats;
    data_pass(
        p,
        &plans,
        opts,
        |i, pl, tape, batch| {
            if let Some(st) = a_ptr[i].as_mut() {
                add_input_stats(st, pl, tape, batch.n, approx);
            }
        },
        |i, pl, _tape, cot, r, batch| add_grad_stats(&mut b_ptr[i], pl, cot, batch.n * r, approx),
    );
    let layers = plans
        .into_iter()
        .zip(a_stats)
        .zip(b_stats)
        .map(|((pl, ast), bst)| {
            let (b, b_rows) = if opts.fisher == FisherType::ForwardOnly {
                (Mat::identity(pl.out, pl.out), None)
            } else {
                let (g, _, k, rows) = bst.finish();
                (g, rows.map(|r| mat_from_rows(&r, k, pl.out)))
            };
            let (a, a_rows) = match ast {
                None => (None, None),
                Some(st) => {
                    let (sum, vec, count, rows) = st.finish();
                    let inv = T::of(1.0 / count as f64);
                    let d = pl.a_dim();
                    let a = Mat::from_fn(d, d, |i, j| {
                        if i < pl.inp && j < pl.inp {
                            sum[(i, j)] * inv
                        } else if i < pl.inp {
                            vec[i] * inv
                        } else if j < pl.inp {
                            vec[j] * inv
                        } else {
                            T::one()
                        }
                    });
                    // A = UᵀU with U = [rows | 1] / √count
                    let s = T::of(1.0 / (count as f64).sqrt());
                    let u =
                        rows.map(|r| Mat::from_fn(count, d, |i, j| if j < pl.inp { r[i * pl.inp + j] * s } else { s }));
                    (Some(a), u)
                }
            };
            LayerFactors {
                layer: pl.layer,
                kind: pl.kind,
                out: pl.out,
                inp: pl.inp,
                weight: pl.weight,
                bias: pl.bias,
                joint: pl.joint,
                a,
                b,
                a_rows,
                b_rows,
            }
        })
        .collect();
    Ok(KfacFactors { layers, dim: active.dim, options: *opts, n_data: p.data.n })
}
