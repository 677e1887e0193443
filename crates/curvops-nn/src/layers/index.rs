//! Per-sample indexing nodes: `mean` over axes, `select` (one index of an axis, the axis
//! dropped), `slice` (a half-open range of an axis) and `permute` (a permutation of the axes).
//!
//! Each is a constant linear map `y = A x` applied to every per-sample row alike, so a batch
//! `[N, I]` and `K` stacked tangents `[N, K, I]` go through the same kernel on `N` or `N·K` rows:
//! * JVP: `dy = A dx`; VJP: `g_x = Aᵀ g`;
//! * R-op: `R(g_x) = Aᵀ R(g)`: no second-order terms, the primal `g` is not read.
//!
//! | node | `y = A x` | `g_x = Aᵀ g` |
//! |---|---|---|
//! | mean over axes `D` (size `m = Π_{a∈D} s_a`) | `y[o] = (1/m) Σ_{i ↦ o} x[i]` | `g_x[i] = g[o(i)] / m` |
//! | select `(d, j)` | `y[…, ·, …] = x[…, j, …]` | `g` at index `j` of axis `d`, zeros elsewhere |
//! | slice `(d, a:b)` | `y[…, t, …] = x[…, a + t, …]` | `g` at indices `a..b`, zeros elsewhere |
//! | permute `π` | `y[o] = x[σ(o)]` | `g_x[i] = g[σ⁻¹(i)]` |
//!
//! Here `i ↦ o` drops the reduced axes of the input multi-index, and `σ` maps a flat output
//! index to the flat input index with `y[i_{π(0)}, …, i_{π(r−1)}] = x[i_0, …, i_{r−1}]`. Indices
//! follow Python: a negative index or bound counts from the end, slice bounds are clamped to
//! the axis.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut};
use curvops_tensor::{ops, Float};

/// The one-input `Layer` impl of a constant linear per-row map with `apply` (`y = A x` on
/// `rows` rows) and `adjoint` (`Aᵀ g`).
macro_rules! linear_map_layer {
    ($ty:ty, $kind:expr) => {
        impl<T: Float> Layer<T> for $ty {
            fn kind(&self) -> &'static str {
                $kind
            }
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
            fn in_shape(&self) -> &[usize] {
                &self.in_shape
            }
            fn out_shape(&self) -> &[usize] {
                &self.out_shape
            }
            /// `y = A x`.
            fn forward(&self, _p: &[T], x: &[T], n: usize) -> (Vec<T>, Aux<T>) {
                (self.apply(x, n), Aux::None)
            }
            /// `dy = A dx`.
            fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
                self.apply(dx, c.n * k)
            }
            /// `g_x = Aᵀ g`.
            fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
                self.adjoint(g, c.n * k)
            }
            fn hvp_needs_g(&self, _rx: bool, _dp: bool, _want_input: bool) -> bool {
                false
            }
            /// `R(g_x) = Aᵀ R(g)`.
            fn hvp_backward(
                &self,
                c: &Ctx<T>,
                _rx: Option<&[T]>,
                _dp: &ParamIn<T>,
                _g: &[T],
                rg: &[T],
                k: usize,
                _rgrad: &mut ParamOut<T>,
                want_input: bool,
            ) -> Option<Vec<T>> {
                want_input.then(|| self.adjoint(rg, c.n * k))
            }
        }
    };
}

/// `Σ_a idx_a · strides[a]` for every multi-index of `shape`, in row-major order.
fn strided_offsets(shape: &[usize], strides: &[usize]) -> Vec<u32> {
    let size: usize = shape.iter().product();
    let rank = shape.len();
    let mut out = Vec::with_capacity(size);
    let mut idx = vec![0usize; rank];
    let mut cur = 0usize;
    for _ in 0..size {
        out.push(cur as u32);
        for a in (0..rank).rev() {
            idx[a] += 1;
            cur += strides[a];
            if idx[a] < shape[a] {
                break;
            }
            cur -= strides[a] * idx[a];
            idx[a] = 0;
        }
    }
    out
}

/// Row-major strides of `shape`.
fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut st = vec![1usize; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        st[a] = st[a + 1] * shape[a + 1];
    }
    st
}

fn check_u32(what: &str, shape: &[usize]) -> Result<(), String> {
    if shape.iter().product::<usize>() > u32::MAX as usize {
        return Err(format!("{what}: shape {shape:?} is too large"));
    }
    Ok(())
}

/// Python's normalisation of a (possibly negative) slice bound on an axis of size `d`: negative
/// values count from the end, then the bound is clamped to `0..=d`.
fn clamp_bound(i: i64, d: usize) -> usize {
    let d = d as i64;
    let v = if i < 0 { i + d } else { i };
    v.clamp(0, d) as usize
}

/// How a `mean` reduces.
#[derive(Clone, Debug)]
enum MeanPlan {
    /// The reduced axes are one contiguous run: each sample is `[outer, m, inner]`, reduced over
    /// the middle.
    Block { inner: usize },
    /// General: the flat output index of each input entry.
    Map(Vec<u32>),
}

/// `mean`: the mean over some per-sample axes, which are dropped (e.g. global average pooling:
/// `[C, H, W]` over `[1, 2]` → `[C]`). See module docs.
#[derive(Clone, Debug)]
pub struct Mean {
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    dims: Vec<usize>,
    /// Number of entries averaged per output, `m`.
    m: usize,
    plan: MeanPlan,
}

impl Mean {
    /// Mean of per-sample shape `in_shape` over axes `dims` (0-based, without the batch axis; in
    /// any order, at least one). Errors for an out-of-range or repeated axis, or an empty one.
    pub fn new(in_shape: Vec<usize>, dims: Vec<usize>) -> Result<Self, String> {
        if dims.is_empty() {
            return Err("mean needs at least one axis".into());
        }
        let mut reduce = vec![false; in_shape.len()];
        for &d in &dims {
            if d >= in_shape.len() {
                return Err(format!("mean axis {d} is out of range for shape {in_shape:?}"));
            }
            if reduce[d] {
                return Err(format!("mean axis {d} is repeated in {dims:?}"));
            }
            reduce[d] = true;
        }
        check_u32("mean", &in_shape)?;
        let m: usize = dims.iter().map(|&d| in_shape[d]).product();
        if m == 0 {
            return Err(format!("mean over axes {dims:?} of shape {in_shape:?} averages no entries"));
        }
        let out_shape: Vec<usize> = (0..in_shape.len()).filter(|&a| !reduce[a]).map(|a| in_shape[a]).collect();
        let mut sorted = dims.clone();
        sorted.sort_unstable();
        let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
        let plan = if hi - lo + 1 == sorted.len() {
            MeanPlan::Block { inner: in_shape[hi + 1..].iter().product() }
        } else {
            // output stride of each input axis, 0 on the reduced ones
            let ost = row_major_strides(&out_shape);
            let mut strides = vec![0usize; in_shape.len()];
            let mut j = 0;
            for (a, s) in strides.iter_mut().enumerate() {
                if !reduce[a] {
                    *s = ost[j];
                    j += 1;
                }
            }
            MeanPlan::Map(strided_offsets(&in_shape, &strides))
        };
        Ok(Self { in_shape, out_shape, dims: sorted, m, plan })
    }

    /// The reduced axes, ascending.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    fn in_size_(&self) -> usize {
        self.in_shape.iter().product()
    }

    fn out_size_(&self) -> usize {
        self.out_shape.iter().product()
    }

    /// `y = A x` on `rows` rows.
    fn apply<T: Float>(&self, x: &[T], rows: usize) -> Vec<T> {
        let (is, os) = (self.in_size_(), self.out_size_());
        let scale = T::one() / T::of(self.m as f64);
        let mut y = vec![T::zero(); rows * os];
        match &self.plan {
            MeanPlan::Block { inner } => {
                let (m, inner) = (self.m, (*inner).max(1));
                // every (row, outer) block: [m, inner] → [inner]
                for (yb, xb) in y.chunks_exact_mut(inner).zip(x.chunks_exact(m * inner)) {
                    for xr in xb.chunks_exact(inner) {
                        for (a, &b) in yb.iter_mut().zip(xr) {
                            *a += b;
                        }
                    }
                    ops::scale(scale, yb);
                }
            }
            MeanPlan::Map(map) => {
                for (yr, xr) in y.chunks_exact_mut(os.max(1)).zip(x.chunks_exact(is.max(1))) {
                    for (&xv, &o) in xr.iter().zip(map) {
                        yr[o as usize] += xv;
                    }
                    ops::scale(scale, yr);
                }
            }
        }
        y
    }

    /// `Aᵀ g`: each output's cotangent spread evenly (`/ m`) over the entries it averages.
    fn adjoint<T: Float>(&self, g: &[T], rows: usize) -> Vec<T> {
        let (is, os) = (self.in_size_(), self.out_size_());
        let scale = T::one() / T::of(self.m as f64);
        let mut gx = Vec::with_capacity(rows * is);
        match &self.plan {
            MeanPlan::Block { inner } => {
                for gb in g.chunks_exact((*inner).max(1)) {
                    for _ in 0..self.m {
                        gx.extend(gb.iter().map(|&v| v * scale));
                    }
                }
            }
            MeanPlan::Map(map) => {
                for gr in g.chunks_exact(os.max(1)) {
                    gx.extend(map.iter().map(|&o| gr[o as usize] * scale));
                }
            }
        }
        gx
    }
}

linear_map_layer!(Mean, "mean");

/// A contiguous range `start..start + len` of the middle axis of `[outer, d, inner]`.
#[derive(Clone, Debug)]
struct Window {
    d: usize,
    inner: usize,
    start: usize,
    len: usize,
}

impl Window {
    fn new(shape: &[usize], dim: usize, start: usize, len: usize) -> Self {
        Self { d: shape[dim], inner: shape[dim + 1..].iter().product(), start, len }
    }

    /// The window of each `[d, inner]` block (`rows · outer` of them).
    fn apply<T: Float>(&self, x: &[T], _rows: usize) -> Vec<T> {
        let (blk, a, b) = (self.d * self.inner, self.start * self.inner, (self.start + self.len) * self.inner);
        let mut y = Vec::with_capacity(x.len() / blk.max(1) * (b - a));
        if blk > 0 {
            for xb in x.chunks_exact(blk) {
                y.extend_from_slice(&xb[a..b]);
            }
        }
        y
    }

    /// The transpose: `g` written into the window of zero blocks.
    fn adjoint<T: Float>(&self, g: &[T], _rows: usize) -> Vec<T> {
        let (blk, a, w) = (self.d * self.inner, self.start * self.inner, self.len * self.inner);
        if w == 0 {
            return Vec::new();
        }
        let mut gx = vec![T::zero(); g.len() / w * blk];
        for (xb, gb) in gx.chunks_exact_mut(blk).zip(g.chunks_exact(w)) {
            xb[a..a + w].copy_from_slice(gb);
        }
        gx
    }
}

/// `select`: `x.select(dim, index)` per sample, the axis dropped (see module docs).
#[derive(Clone, Debug)]
pub struct Select {
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    dim: usize,
    index: usize,
    w: Window,
}

impl Select {
    /// Index `index` of per-sample axis `dim` (0-based, without the batch axis) of shape
    /// `in_shape`; a negative index counts from the end, as in Python. Errors for an
    /// out-of-range axis or index.
    pub fn new(in_shape: Vec<usize>, dim: usize, index: i64) -> Result<Self, String> {
        if dim >= in_shape.len() {
            return Err(format!("select axis {dim} is out of range for shape {in_shape:?}"));
        }
        let d = in_shape[dim] as i64;
        if index < -d || index >= d {
            return Err(format!("select index {index} is out of range for axis {dim} of size {d}"));
        }
        let index = (if index < 0 { index + d } else { index }) as usize;
        let mut out_shape = in_shape.clone();
        out_shape.remove(dim);
        let w = Window::new(&in_shape, dim, index, 1);
        Ok(Self { in_shape, out_shape, dim, index, w })
    }

    /// The axis and the (non-negative) index selected.
    pub fn dim_index(&self) -> (usize, usize) {
        (self.dim, self.index)
    }

    fn apply<T: Float>(&self, x: &[T], rows: usize) -> Vec<T> {
        self.w.apply(x, rows)
    }

    fn adjoint<T: Float>(&self, g: &[T], rows: usize) -> Vec<T> {
        self.w.adjoint(g, rows)
    }
}

linear_map_layer!(Select, "select");

/// `slice`: `x[…, start:end, …]` on per-sample axis `dim` (step 1; see module docs).
#[derive(Clone, Debug)]
pub struct Slice {
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    dim: usize,
    w: Window,
}

impl Slice {
    /// The half-open range `start..end` of per-sample axis `dim` (0-based, without the batch
    /// axis) of shape `in_shape`, as Python's slicing: negative bounds count from the end and
    /// bounds are clamped to the axis. Errors for an out-of-range axis or an empty result.
    pub fn new(in_shape: Vec<usize>, dim: usize, start: i64, end: i64) -> Result<Self, String> {
        if dim >= in_shape.len() {
            return Err(format!("slice axis {dim} is out of range for shape {in_shape:?}"));
        }
        let d = in_shape[dim];
        let (a, b) = (clamp_bound(start, d), clamp_bound(end, d));
        if b <= a {
            return Err(format!("slice {start}:{end} of axis {dim} (size {d}) of shape {in_shape:?} is empty"));
        }
        let mut out_shape = in_shape.clone();
        out_shape[dim] = b - a;
        let w = Window::new(&in_shape, dim, a, b - a);
        Ok(Self { in_shape, out_shape, dim, w })
    }

    /// The axis and the normalised range `start..end` (`0 ≤ start < end ≤ size`).
    pub fn range(&self) -> (usize, std::ops::Range<usize>) {
        (self.dim, self.w.start..self.w.start + self.w.len)
    }

    fn apply<T: Float>(&self, x: &[T], rows: usize) -> Vec<T> {
        self.w.apply(x, rows)
    }

    fn adjoint<T: Float>(&self, g: &[T], rows: usize) -> Vec<T> {
        self.w.adjoint(g, rows)
    }
}

linear_map_layer!(Slice, "slice");

/// `permute`: `x.permute(dims)` per sample, output axis `j` is input axis `dims[j]` (see module
/// docs). A gather with an index precomputed in the constructor, both ways.
#[derive(Clone, Debug)]
pub struct Permute {
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    dims: Vec<usize>,
    /// Flat input index of each output entry (`σ`).
    fwd: Vec<u32>,
    /// Flat output index of each input entry (`σ⁻¹`).
    inv: Vec<u32>,
}

impl Permute {
    /// Permutation `dims` of the per-sample axes of `in_shape` (0-based, without the batch axis):
    /// output axis `j` is input axis `dims[j]`, e.g. `[T, E]` with `[1, 0]` → `[E, T]`. Errors
    /// if `dims` is not a permutation of `0..rank`.
    pub fn new(in_shape: Vec<usize>, dims: Vec<usize>) -> Result<Self, String> {
        let r = in_shape.len();
        let mut seen = vec![false; r];
        let ok = dims.len() == r && dims.iter().all(|&d| d < r && !std::mem::replace(&mut seen[d], true));
        if !ok {
            return Err(format!("permute dims {dims:?} are not a permutation of the {r} axes of shape {in_shape:?}"));
        }
        check_u32("permute", &in_shape)?;
        let out_shape: Vec<usize> = dims.iter().map(|&d| in_shape[d]).collect();
        let ist = row_major_strides(&in_shape);
        let strides: Vec<usize> = dims.iter().map(|&d| ist[d]).collect();
        let fwd = strided_offsets(&out_shape, &strides);
        let mut inv = vec![0u32; fwd.len()];
        for (o, &i) in fwd.iter().enumerate() {
            inv[i as usize] = o as u32;
        }
        Ok(Self { in_shape, out_shape, dims, fwd, inv })
    }

    /// The permutation (output axis `j` is input axis `dims[j]`).
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    fn gather<T: Float>(idx: &[u32], x: &[T]) -> Vec<T> {
        let s = idx.len();
        let mut y = Vec::with_capacity(x.len());
        if s > 0 {
            for xr in x.chunks_exact(s) {
                y.extend(idx.iter().map(|&i| xr[i as usize]));
            }
        }
        y
    }

    fn apply<T: Float>(&self, x: &[T], _rows: usize) -> Vec<T> {
        Self::gather(&self.fwd, x)
    }

    fn adjoint<T: Float>(&self, g: &[T], _rows: usize) -> Vec<T> {
        Self::gather(&self.inv, g)
    }
}

linear_map_layer!(Permute, "permute");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::check_rules;
    use curvops_tensor::rng::Rng;

    fn randn(r: &mut Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| r.normal()).collect()
    }

    fn size(s: &[usize]) -> usize {
        s.iter().product()
    }

    fn unravel(mut f: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for a in (0..shape.len()).rev() {
            idx[a] = f % shape[a];
            f /= shape[a];
        }
        idx
    }

    fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
    }

    fn random_shape(r: &mut Rng, rank: usize) -> Vec<usize> {
        (0..rank).map(|_| 1 + r.below(4) as usize).collect()
    }

    /// Forward against `naive` (`(out multi-index) ↦ value` per sample), then all rules.
    fn check(name: &str, node: &dyn Layer<f64>, r: &mut Rng, naive: &dyn Fn(&[f64], &[usize]) -> f64) {
        let (is, os) = (node.in_size(), node.out_size());
        let out = node.out_shape().to_vec();
        for n in [1, 3] {
            let x = randn(r, n * is);
            let (y, _) = node.forward(&[], &x, n);
            assert_eq!(y.len(), n * os, "{name}: output size");
            for s in 0..n {
                for o in 0..os {
                    let want = naive(&x[s * is..(s + 1) * is], &unravel(o, &out));
                    let got = y[s * os + o];
                    assert!((got - want).abs() < 1e-13, "{name}: forward at {o}: {got} vs {want}");
                }
            }
            check_rules(&format!("{name} n={n}"), node, &[], &[x], &[true], n, 1e-7);
        }
    }

    #[test]
    fn mean_axes() {
        let mut r = Rng::new(41);
        let mut cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
            (vec![3, 4, 5], vec![1, 2]),
            (vec![4, 3], vec![0]),
            (vec![3, 4, 2], vec![0, 2]),
            (vec![3, 4, 2], vec![2, 0]),
            (vec![2, 3, 4], vec![0, 1, 2]),
            (vec![5], vec![0]),
            (vec![2, 3, 2, 2], vec![1, 3]),
        ];
        for _ in 0..6 {
            let rank = 1 + r.below(4) as usize;
            let s = random_shape(&mut r, rank);
            let mut dims: Vec<usize> = r.permutation(rank);
            dims.truncate(1 + r.below(rank as u64) as usize);
            cases.push((s, dims));
        }
        for (s, dims) in cases {
            let node = Mean::new(s.clone(), dims.clone()).unwrap();
            let keep: Vec<usize> = (0..s.len()).filter(|a| !dims.contains(a)).collect();
            let out: Vec<usize> = keep.iter().map(|&a| s[a]).collect();
            assert_eq!(Layer::<f64>::out_shape(&node), &out[..]);
            let m: usize = dims.iter().map(|&d| s[d]).product();
            let sc = s.clone();
            let naive = move |x: &[f64], oi: &[usize]| {
                let mut acc = 0.0;
                for i in 0..size(&sc) {
                    let ii = unravel(i, &sc);
                    if keep.iter().zip(oi).all(|(&a, &o)| ii[a] == o) {
                        acc += x[i];
                    }
                }
                acc / m as f64
            };
            check(&format!("mean {s:?} over {dims:?}"), &node, &mut r, &naive);
        }
    }

    #[test]
    fn mean_errors() {
        assert!(Mean::new(vec![2, 3], vec![2]).unwrap_err().contains("out of range"));
        assert!(Mean::new(vec![2, 3], vec![1, 1]).unwrap_err().contains("repeated"));
        assert!(Mean::new(vec![2, 3], vec![]).is_err());
        assert!(Mean::new(vec![2, 0], vec![1]).is_err());
        let node = Mean::new(vec![2, 2], vec![1]).unwrap();
        assert_eq!(node.forward(&[], &[1.0, 3.0, 5.0, 9.0], 1).0, vec![2.0, 7.0]);
        assert!(!Layer::<f64>::hvp_needs_g(&node, true, true, true));
    }

    #[test]
    fn select_each_axis() {
        let mut r = Rng::new(42);
        for rank in 1..=3 {
            for dim in 0..rank {
                let s = random_shape(&mut r, rank);
                let d = s[dim] as i64;
                let mut idxs = vec![0, d - 1, -1, -d];
                idxs.push(r.below(d as u64) as i64);
                for index in idxs {
                    let node = Select::new(s.clone(), dim, index).unwrap();
                    let j = if index < 0 { index + d } else { index } as usize;
                    let mut out = s.clone();
                    out.remove(dim);
                    assert_eq!(Layer::<f64>::out_shape(&node), &out[..]);
                    let sc = s.clone();
                    let naive = move |x: &[f64], oi: &[usize]| {
                        let mut ii = oi.to_vec();
                        ii.insert(dim, j);
                        x[ravel(&ii, &sc)]
                    };
                    check(&format!("select {s:?} axis {dim} index {index}"), &node, &mut r, &naive);
                }
            }
        }
    }

    #[test]
    fn select_values_and_errors() {
        let node = Select::new(vec![2, 3], 1, -1).unwrap();
        assert_eq!(node.forward(&[], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 1).0, vec![3.0, 6.0]);
        assert_eq!(node.dim_index(), (1, 2));
        assert!(Select::new(vec![2, 3], 1, 3).is_err());
        assert!(Select::new(vec![2, 3], 1, -4).is_err());
        assert!(Select::new(vec![2, 3], 2, 0).is_err());
    }

    /// Python's `list(range(d))[start:end]`.
    fn py_slice(d: usize, start: i64, end: i64) -> Vec<usize> {
        let norm = |i: i64| -> usize {
            let v = if i < 0 { i + d as i64 } else { i };
            v.max(0).min(d as i64) as usize
        };
        (norm(start)..norm(end)).collect()
    }

    #[test]
    fn slice_each_axis() {
        let mut r = Rng::new(43);
        for rank in 1..=3 {
            for dim in 0..rank {
                let mut s = random_shape(&mut r, rank);
                s[dim] = 4 + r.below(2) as usize;
                let d = s[dim] as i64;
                let bounds = [(0, d), (1, 3), (-3, -1), (-2, d), (1, -1), (-100, 2), (2, 100), (0, 1), (d - 1, d)];
                for (start, end) in bounds {
                    let node = Slice::new(s.clone(), dim, start, end).unwrap();
                    let keep = py_slice(s[dim], start, end);
                    let mut out = s.clone();
                    out[dim] = keep.len();
                    assert_eq!(Layer::<f64>::out_shape(&node), &out[..]);
                    assert_eq!(node.range(), (dim, keep[0]..keep[0] + keep.len()));
                    let sc = s.clone();
                    let naive = move |x: &[f64], oi: &[usize]| {
                        let mut ii = oi.to_vec();
                        ii[dim] = keep[ii[dim]];
                        x[ravel(&ii, &sc)]
                    };
                    check(&format!("slice {s:?} axis {dim} {start}:{end}"), &node, &mut r, &naive);
                }
            }
        }
    }

    #[test]
    fn slice_values_and_errors() {
        let node = Slice::new(vec![2, 4], 1, -3, -1).unwrap();
        let x: Vec<f64> = (0..8).map(f64::from).collect();
        assert_eq!(node.forward(&[], &x, 1).0, vec![1.0, 2.0, 5.0, 6.0]);
        assert!(Slice::new(vec![2, 4], 1, 3, 3).unwrap_err().contains("empty"));
        assert!(Slice::new(vec![2, 4], 1, -1, 1).is_err());
        assert!(Slice::new(vec![2, 4], 1, 4, 10).is_err());
        assert!(Slice::new(vec![2, 4], 2, 0, 1).is_err());
    }

    #[test]
    fn permute_ranks() {
        let mut r = Rng::new(44);
        let mut cases: Vec<Vec<usize>> = vec![vec![0], vec![0, 1], vec![1, 0]];
        for p in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            cases.push(p.to_vec());
        }
        cases.push(r.permutation(4));
        for dims in cases {
            let s = random_shape(&mut r, dims.len());
            let node = Permute::new(s.clone(), dims.clone()).unwrap();
            let out: Vec<usize> = dims.iter().map(|&d| s[d]).collect();
            assert_eq!(Layer::<f64>::out_shape(&node), &out[..]);
            let (sc, dc) = (s.clone(), dims.clone());
            let naive = move |x: &[f64], oi: &[usize]| {
                let mut ii = vec![0; sc.len()];
                for (j, &d) in dc.iter().enumerate() {
                    ii[d] = oi[j];
                }
                x[ravel(&ii, &sc)]
            };
            check(&format!("permute {s:?} by {dims:?}"), &node, &mut r, &naive);
        }
    }

    #[test]
    fn permute_values_and_errors() {
        // [2, 3] → [3, 2]: the transpose
        let node = Permute::new(vec![2, 3], vec![1, 0]).unwrap();
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(node.forward(&[], &x, 1).0, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert!(Permute::new(vec![2, 3], vec![0, 0]).is_err());
        assert!(Permute::new(vec![2, 3], vec![0]).is_err());
        assert!(Permute::new(vec![2, 3], vec![0, 2]).is_err());
        assert!(!Layer::<f64>::hvp_needs_g(&node, true, true, true));
    }
}
