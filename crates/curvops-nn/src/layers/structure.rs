//! Nodes that combine several inputs: `add` (elementwise sum with NumPy broadcasting) and
//! `concat` (concatenation along a per-sample axis).
//!
//! Both are linear maps `y = Σ_i A_i x_i` with constant matrices `A_i` that act on each
//! per-sample row alike. Their rules are therefore (per tangent `k`, all `K` at once, since a
//! batch `[N, S]` and stacked tangents `[N, K, S]` are both just rows of length `S`):
//! * JVP: `dy = Σ_i A_i dx_i` (over the inputs that have a tangent);
//! * VJP: `g_{x_i} = A_iᵀ g`;
//! * R-op: `R(g_{x_i}) = A_iᵀ R(g)`: no second-order terms, the primal `g` is not read.
//!
//! **add.** Shapes broadcast as in NumPy: aligned at the last axis, a missing leading axis or an
//! axis of size 1 is repeated to the output's size. With the output multi-index `o` and
//! `π_i(o)` the multi-index of input `i` (leading axes dropped, broadcast axes set to 0),
//! `y[o] = Σ_i x_i[π_i(o)]` and `g_{x_i}[j] = Σ_{o : π_i(o) = j} g[o]`, i.e. the cotangent
//! summed over the broadcast axes. An input of the output's shape is a plain sum (no index
//! arithmetic); a broadcast one uses the flat index `π_i(o)` precomputed per output entry.
//!
//! **concat** along per-sample axis `d`: with `outer = Π_{a<d} s_a`, `inner = Π_{a>d} s_a`,
//! each sample is `outer` blocks in which the inputs' `s_{i,d}·inner` entries follow one
//! another; the VJP cuts `g` back into those pieces.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut};
use curvops_tensor::{ops, Float};

/// The NumPy broadcast of per-sample shapes (aligned at the last axis; axes of size 1 and
/// missing leading axes are repeated). The error names the first input that does not fit and
/// an earlier input it conflicts with.
pub fn broadcast_shapes(shapes: &[Vec<usize>]) -> Result<Vec<usize>, String> {
    let rank = shapes.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for (i, s) in shapes.iter().enumerate() {
        let off = rank - s.len();
        for (a, &d) in s.iter().enumerate() {
            let o = &mut out[off + a];
            if d == *o || d == 1 {
                continue;
            }
            if *o == 1 {
                *o = d;
                continue;
            }
            // the output's size on this axis came from an earlier input with that size
            let from_end = s.len() - a;
            let want = *o;
            let j = shapes[..i].iter().position(|t| t.len() >= from_end && t[t.len() - from_end] == want).unwrap_or(0);
            return Err(format!(
                "input {i} has shape {s:?}, which does not broadcast with input {j}'s shape {:?}",
                shapes[j]
            ));
        }
    }
    Ok(out)
}

/// For an input of shape `s` broadcast to `out`: the flat input index of each output entry
/// (row-major), i.e. `π(o)` of the module docs.
fn broadcast_map(s: &[usize], out: &[usize]) -> Vec<u32> {
    let rank = out.len();
    let off = rank - s.len();
    // input stride of each output axis (0 where the axis is missing or broadcast)
    let mut stride = vec![0usize; rank];
    let mut st = 1usize;
    for a in (0..s.len()).rev() {
        if s[a] != 1 {
            stride[off + a] = st;
        }
        st *= s[a];
    }
    let size: usize = out.iter().product();
    let mut map = Vec::with_capacity(size);
    let mut idx = vec![0usize; rank];
    let mut cur = 0usize;
    for _ in 0..size {
        map.push(cur as u32);
        // advance the output multi-index (odometer), updating the input offset
        for a in (0..rank).rev() {
            idx[a] += 1;
            cur += stride[a];
            if idx[a] < out[a] {
                break;
            }
            cur -= stride[a] * idx[a];
            idx[a] = 0;
        }
    }
    map
}

/// `add`: the elementwise sum of one or more inputs, broadcast as in NumPy (see module docs).
#[derive(Clone, Debug)]
pub struct Add {
    shapes: Vec<Vec<usize>>,
    sizes: Vec<usize>,
    out_shape: Vec<usize>,
    /// Per input: `None` if its shape is the output's, else `π_i` (flat input index per output
    /// entry).
    maps: Vec<Option<Vec<u32>>>,
}

impl Add {
    /// The sum of inputs of per-sample shapes `shapes` (at least one); the output shape is
    /// their broadcast. Errors when the shapes do not broadcast, naming the inputs.
    pub fn new(shapes: Vec<Vec<usize>>) -> Result<Self, String> {
        if shapes.is_empty() {
            return Err("add needs at least one input".into());
        }
        let out_shape = broadcast_shapes(&shapes)?;
        let out_size: usize = out_shape.iter().product();
        if out_size > u32::MAX as usize {
            return Err(format!("add: output shape {out_shape:?} is too large"));
        }
        let maps = shapes.iter().map(|s| (*s != out_shape).then(|| broadcast_map(s, &out_shape))).collect();
        let sizes = shapes.iter().map(|s| s.iter().product()).collect();
        Ok(Self { shapes, sizes, out_shape, maps })
    }

    /// Number of inputs.
    pub fn num_inputs(&self) -> usize {
        self.shapes.len()
    }

    /// `y += A_i x` on `rows` rows (`x` is `[rows, I_i]`, `y` is `[rows, O]`).
    fn add_into<T: Float>(&self, i: usize, x: &[T], y: &mut [T]) {
        match &self.maps[i] {
            None => ops::axpy(T::one(), x, y),
            Some(m) => {
                let (o, s) = (self.out_size_(), self.sizes[i]);
                for (yr, xr) in y.chunks_exact_mut(o.max(1)).zip(x.chunks_exact(s.max(1))) {
                    for (yv, &j) in yr.iter_mut().zip(m) {
                        *yv += xr[j as usize];
                    }
                }
            }
        }
    }

    /// `Σ_i A_i x_i` over the given inputs on `rows` rows; `None` when none is given.
    fn apply<T: Float>(&self, xs: &[Option<&[T]>], rows: usize) -> Option<Vec<T>> {
        let mut given = xs.iter().enumerate().filter_map(|(i, x)| x.map(|x| (i, x)));
        let (first, x0) = given.next()?;
        let mut y = match (&self.maps[first], given.next()) {
            // the common residual `a + b` (no broadcast): one pass
            (None, Some((j, x1))) if self.maps[j].is_none() => ops::add_new(x0, x1),
            (None, next) => {
                let mut y = ops::to_vec(x0);
                if let Some((j, x1)) = next {
                    self.add_into(j, x1, &mut y);
                }
                y
            }
            (Some(_), next) => {
                let mut y = vec![T::zero(); rows * self.out_size_()];
                self.add_into(first, x0, &mut y);
                if let Some((j, x1)) = next {
                    self.add_into(j, x1, &mut y);
                }
                y
            }
        };
        for (i, x) in given {
            self.add_into(i, x, &mut y);
        }
        Some(y)
    }

    /// `A_iᵀ g` on `rows` rows: `g` summed over the axes input `i` is broadcast along.
    fn adjoint<T: Float>(&self, i: usize, g: &[T], rows: usize) -> Vec<T> {
        match &self.maps[i] {
            None => ops::to_vec(g),
            Some(m) => {
                let (o, s) = (self.out_size_(), self.sizes[i]);
                let mut gx = vec![T::zero(); rows * s];
                for (gr, xr) in g.chunks_exact(o.max(1)).zip(gx.chunks_exact_mut(s.max(1))) {
                    for (&gv, &j) in gr.iter().zip(m) {
                        xr[j as usize] += gv;
                    }
                }
                gx
            }
        }
    }

    fn out_size_(&self) -> usize {
        self.out_shape.iter().product()
    }
}

impl<T: Float> Layer<T> for Add {
    fn kind(&self) -> &'static str {
        "add"
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    /// The shape of the first input.
    fn in_shape(&self) -> &[usize] {
        &self.shapes[0]
    }
    fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }
    fn in_shapes(&self) -> Vec<Vec<usize>> {
        self.shapes.clone()
    }
    /// The one-input forward pass; panics for a node with several inputs (use
    /// [`Layer::forward_inputs`]).
    fn forward(&self, p: &[T], x: &[T], n: usize) -> (Vec<T>, Aux<T>) {
        assert_eq!(self.shapes.len(), 1, "add has {} inputs: use forward_inputs", self.shapes.len());
        self.forward_inputs(p, &[x], n)
    }
    fn forward_inputs(&self, _p: &[T], xs: &[&[T]], n: usize) -> (Vec<T>, Aux<T>) {
        assert_eq!(xs.len(), self.shapes.len(), "add: number of inputs");
        let xs: Vec<Option<&[T]>> = xs.iter().map(|&x| Some(x)).collect();
        (self.apply(&xs, n).unwrap_or_default(), Aux::None)
    }
    /// `(∂y/∂x_0) dx`: the contribution of the first input.
    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        let mut dxs: Vec<Option<&[T]>> = vec![None; self.shapes.len()];
        dxs[0] = Some(dx);
        self.apply(&dxs, c.n * k).unwrap_or_default()
    }
    fn jvp_inputs(&self, c: &Ctx<T>, dxs: &[Option<&[T]>], k: usize) -> Option<Vec<T>> {
        self.apply(dxs, c.n * k)
    }
    /// `(∂y/∂x_0)ᵀ g`.
    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        self.adjoint(0, g, c.n * k)
    }
    fn vjp_inputs(&self, c: &Ctx<T>, g: &[T], k: usize, want: &[bool]) -> Vec<Option<Vec<T>>> {
        (0..self.shapes.len()).map(|i| want[i].then(|| self.adjoint(i, g, c.n * k))).collect()
    }
    fn hvp_needs_g(&self, _rx: bool, _dp: bool, _want_input: bool) -> bool {
        false
    }
    fn hvp_backward_inputs(
        &self,
        c: &Ctx<T>,
        _rxs: &[Option<&[T]>],
        _dp: &ParamIn<T>,
        _g: &[T],
        rg: &[T],
        k: usize,
        _rgrad: &mut ParamOut<T>,
        want: &[bool],
    ) -> Vec<Option<Vec<T>>> {
        self.vjp_inputs(c, rg, k, want)
    }
    /// `R(g_{x_0}) = (∂y/∂x_0)ᵀ R(g)`.
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
        want_input.then(|| self.adjoint(0, rg, c.n * k))
    }
}

/// `concat`: the inputs concatenated along per-sample axis `dim` (see module docs).
#[derive(Clone, Debug)]
pub struct Concat {
    shapes: Vec<Vec<usize>>,
    out_shape: Vec<usize>,
    dim: usize,
    /// `Π_{a<dim} s_a`.
    outer: usize,
    /// Per input: `s_{i,dim} · Π_{a>dim} s_a`, its piece of each outer block.
    chunks: Vec<usize>,
    /// Per input: offset of its piece within an output block.
    offsets: Vec<usize>,
}

impl Concat {
    /// Concatenation of inputs of per-sample shapes `shapes` (at least one, all of one rank)
    /// along axis `dim` (0-based, without the batch axis); all other axes must agree. The error
    /// names the input and axis that do not.
    pub fn new(shapes: Vec<Vec<usize>>, dim: usize) -> Result<Self, String> {
        let Some(s0) = shapes.first() else {
            return Err("concat needs at least one input".into());
        };
        if dim >= s0.len() {
            return Err(format!("concat axis {dim} is out of range for input 0's shape {s0:?}"));
        }
        for (i, s) in shapes.iter().enumerate().skip(1) {
            if s.len() != s0.len() {
                return Err(format!("input {i} has shape {s:?}, whose rank differs from input 0's shape {s0:?}"));
            }
            if let Some(a) = (0..s.len()).find(|&a| a != dim && s[a] != s0[a]) {
                return Err(format!(
                    "input {i} has shape {s:?}, which differs from input 0's shape {s0:?} at axis {a} \
                     (only the concat axis {dim} may differ)"
                ));
            }
        }
        let outer: usize = s0[..dim].iter().product();
        let inner: usize = s0[dim + 1..].iter().product();
        let chunks: Vec<usize> = shapes.iter().map(|s| s[dim] * inner).collect();
        let mut offsets = Vec::with_capacity(shapes.len());
        let mut off = 0;
        for &c in &chunks {
            offsets.push(off);
            off += c;
        }
        let mut out_shape = s0.clone();
        out_shape[dim] = shapes.iter().map(|s| s[dim]).sum();
        Ok(Self { shapes, out_shape, dim, outer, chunks, offsets })
    }

    /// The concatenation axis (per sample, 0-based).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Entries of one output block (`outer` blocks per sample).
    fn block(&self) -> usize {
        self.chunks.iter().sum()
    }

    /// Writes `A_i x` (input `i`'s piece of each block) into `y` (`[rows, O]`).
    fn place<T: Float>(&self, i: usize, x: &[T], y: &mut [T]) {
        let (b, c, off) = (self.block(), self.chunks[i], self.offsets[i]);
        if c == 0 {
            return;
        }
        for (yb, xb) in y.chunks_exact_mut(b).zip(x.chunks_exact(c)) {
            yb[off..off + c].copy_from_slice(xb);
        }
    }

    /// `Σ_i A_i x_i` over the given inputs on `rows` rows (missing inputs are zero); `None` when
    /// none is given.
    fn apply<T: Float>(&self, xs: &[Option<&[T]>], rows: usize) -> Option<Vec<T>> {
        if xs.iter().all(Option::is_none) {
            return None;
        }
        let mut y = vec![T::zero(); rows * self.outer * self.block()];
        for (i, x) in xs.iter().enumerate() {
            if let Some(x) = x {
                self.place(i, x, &mut y);
            }
        }
        Some(y)
    }

    /// `A_iᵀ g`: input `i`'s piece of each block of `g` on `rows` rows.
    fn adjoint<T: Float>(&self, i: usize, g: &[T], rows: usize) -> Vec<T> {
        let (b, c, off) = (self.block(), self.chunks[i], self.offsets[i]);
        let mut gx = Vec::with_capacity(rows * self.outer * c);
        if b > 0 {
            for gb in g.chunks_exact(b) {
                gx.extend_from_slice(&gb[off..off + c]);
            }
        }
        gx
    }
}

impl<T: Float> Layer<T> for Concat {
    fn kind(&self) -> &'static str {
        "concat"
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    /// The shape of the first input.
    fn in_shape(&self) -> &[usize] {
        &self.shapes[0]
    }
    fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }
    fn in_shapes(&self) -> Vec<Vec<usize>> {
        self.shapes.clone()
    }
    /// The one-input forward pass; panics for a node with several inputs (use
    /// [`Layer::forward_inputs`]).
    fn forward(&self, p: &[T], x: &[T], n: usize) -> (Vec<T>, Aux<T>) {
        assert_eq!(self.shapes.len(), 1, "concat has {} inputs: use forward_inputs", self.shapes.len());
        self.forward_inputs(p, &[x], n)
    }
    fn forward_inputs(&self, _p: &[T], xs: &[&[T]], n: usize) -> (Vec<T>, Aux<T>) {
        assert_eq!(xs.len(), self.shapes.len(), "concat: number of inputs");
        let xs: Vec<Option<&[T]>> = xs.iter().map(|&x| Some(x)).collect();
        (self.apply(&xs, n).unwrap_or_default(), Aux::None)
    }
    /// `(∂y/∂x_0) dx`: the first input's pieces, zeros elsewhere.
    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        let mut dxs: Vec<Option<&[T]>> = vec![None; self.shapes.len()];
        dxs[0] = Some(dx);
        self.apply(&dxs, c.n * k).unwrap_or_default()
    }
    fn jvp_inputs(&self, c: &Ctx<T>, dxs: &[Option<&[T]>], k: usize) -> Option<Vec<T>> {
        self.apply(dxs, c.n * k)
    }
    /// `(∂y/∂x_0)ᵀ g`.
    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        self.adjoint(0, g, c.n * k)
    }
    fn vjp_inputs(&self, c: &Ctx<T>, g: &[T], k: usize, want: &[bool]) -> Vec<Option<Vec<T>>> {
        (0..self.shapes.len()).map(|i| want[i].then(|| self.adjoint(i, g, c.n * k))).collect()
    }
    fn hvp_needs_g(&self, _rx: bool, _dp: bool, _want_input: bool) -> bool {
        false
    }
    fn hvp_backward_inputs(
        &self,
        c: &Ctx<T>,
        _rxs: &[Option<&[T]>],
        _dp: &ParamIn<T>,
        _g: &[T],
        rg: &[T],
        k: usize,
        _rgrad: &mut ParamOut<T>,
        want: &[bool],
    ) -> Vec<Option<Vec<T>>> {
        self.vjp_inputs(c, rg, k, want)
    }
    /// `R(g_{x_0}) = (∂y/∂x_0)ᵀ R(g)`.
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
        want_input.then(|| self.adjoint(0, rg, c.n * k))
    }
}

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

    /// Row-major multi-index of flat index `f` in `shape`.
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

    /// Naive broadcast sum, entry by entry from multi-indices.
    fn naive_add(shapes: &[Vec<usize>], xs: &[Vec<f64>], out: &[usize], n: usize) -> Vec<f64> {
        let os = size(out);
        let mut y = vec![0.0; n * os];
        for s in 0..n {
            for o in 0..os {
                let oi = unravel(o, out);
                for (sh, x) in shapes.iter().zip(xs) {
                    let off = out.len() - sh.len();
                    let ii: Vec<usize> =
                        sh.iter().enumerate().map(|(a, &d)| if d == 1 { 0 } else { oi[off + a] }).collect();
                    y[s * os + o] += x[s * size(sh) + ravel(&ii, sh)];
                }
            }
        }
        y
    }

    fn run_add(name: &str, shapes: Vec<Vec<usize>>, expect_out: &[usize], seed: u64) {
        let node = Add::new(shapes.clone()).unwrap();
        assert_eq!(Layer::<f64>::out_shape(&node), expect_out, "{name}: output shape");
        assert_eq!(Layer::<f64>::in_shapes(&node), shapes);
        let mut r = Rng::new(seed);
        for n in [1, 3] {
            let xs: Vec<Vec<f64>> = shapes.iter().map(|s| randn(&mut r, n * size(s))).collect();
            let xr: Vec<&[f64]> = xs.iter().map(|v| v.as_slice()).collect();
            let (y, _) = node.forward_inputs(&[], &xr, n);
            let want = naive_add(&shapes, &xs, expect_out, n);
            assert!(y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-14), "{name}: forward");
            assert_eq!(y.len(), want.len());
            let diff = vec![true; shapes.len()];
            check_rules(&format!("{name} n={n}"), &node, &[], &xs, &diff, n, 1e-7);
            // one input held fixed
            let mut diff = diff;
            diff[0] = false;
            check_rules(&format!("{name} n={n}, input 0 fixed"), &node, &[], &xs, &diff, n, 1e-7);
        }
    }

    #[test]
    fn add_equal_shapes() {
        run_add("add 2 equal", vec![vec![3, 4], vec![3, 4]], &[3, 4], 1);
        run_add("add 3 equal", vec![vec![2, 3, 2]; 3], &[2, 3, 2], 2);
        let mut r = Rng::new(3);
        for t in 0..4 {
            let s: Vec<usize> = (0..1 + t % 3).map(|_| 1 + r.below(4) as usize).collect();
            let m = 2 + t % 2;
            run_add(&format!("add random equal {s:?} x{m}"), vec![s.clone(); m], &s, 10 + t as u64);
        }
    }

    #[test]
    fn add_broadcast() {
        run_add("[5,8]+[8]", vec![vec![5, 8], vec![8]], &[5, 8], 4);
        run_add("[5,8]+[1,8]", vec![vec![5, 8], vec![1, 8]], &[5, 8], 5);
        run_add("[2,3,4]+[3,1]", vec![vec![2, 3, 4], vec![3, 1]], &[2, 3, 4], 6);
        run_add("[3,1]+[2,3,4]", vec![vec![3, 1], vec![2, 3, 4]], &[2, 3, 4], 7);
        run_add("[4,1]+[1,3]", vec![vec![4, 1], vec![1, 3]], &[4, 3], 8);
        run_add("3 inputs", vec![vec![2, 1, 4], vec![3, 1], vec![4]], &[2, 3, 4], 9);
        run_add("scalar", vec![vec![2, 3], vec![]], &[2, 3], 10);
        run_add("one input", vec![vec![2, 3]], &[2, 3], 11);
    }

    #[test]
    fn add_values_by_hand() {
        // [2, 3] + [3]: y[a, b] = x0[a, b] + x1[b]
        let node = Add::new(vec![vec![2, 3], vec![3]]).unwrap();
        let x0 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let x1 = [10.0, 20.0, 30.0];
        let (y, _) = node.forward_inputs(&[], &[&x0, &x1], 1);
        assert_eq!(y, vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
        // vjp of the broadcast input sums over the broadcast axis
        let (yv, aux) = (y.clone(), Aux::None);
        let xs: [&[f64]; 2] = [&x0, &x1];
        let c = Ctx { p: &[], x: &x0, xs: &xs, y: &yv, aux: &aux, n: 1 };
        let g = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let gx = node.vjp_inputs(&c, &g, 1, &[true, true]);
        assert_eq!(gx[0].as_deref(), Some(&g[..]));
        assert_eq!(gx[1].as_deref(), Some(&[5.0, 7.0, 9.0][..]));
        // the single-input rules are input 0's part
        assert_eq!(node.vjp_input(&c, &g, 1), g.to_vec());
        let dy = node.jvp_input(&c, &g, 1);
        assert_eq!(dy, g.to_vec());
        assert!(!Layer::<f64>::hvp_needs_g(&node, true, true, true));
        // one-input node through the single-input methods
        let one = Add::new(vec![vec![3]]).unwrap();
        assert_eq!(Layer::<f64>::forward(&one, &[], &x1, 1).0, x1.to_vec());
    }

    #[test]
    fn add_errors() {
        let e = Add::new(vec![vec![4, 4], vec![4, 3]]).unwrap_err();
        assert_eq!(e, "input 1 has shape [4, 3], which does not broadcast with input 0's shape [4, 4]");
        let e = Add::new(vec![vec![4, 1], vec![1, 3], vec![4, 4]]).unwrap_err();
        assert_eq!(e, "input 2 has shape [4, 4], which does not broadcast with input 1's shape [1, 3]");
        let e = Add::new(vec![vec![2, 3, 4], vec![2, 4]]).unwrap_err();
        assert!(e.contains("input 1") && e.contains("[2, 4]") && e.contains("[2, 3, 4]"), "{e}");
        assert!(Add::new(vec![]).is_err());
    }

    /// Naive concatenation along `dim` from multi-indices.
    fn naive_concat(shapes: &[Vec<usize>], xs: &[Vec<f64>], dim: usize, n: usize) -> Vec<f64> {
        let mut out = shapes[0].clone();
        out[dim] = shapes.iter().map(|s| s[dim]).sum();
        let os = size(&out);
        let mut y = vec![f64::NAN; n * os];
        for s in 0..n {
            for o in 0..os {
                let mut oi = unravel(o, &out);
                let mut i = 0;
                while oi[dim] >= shapes[i][dim] {
                    oi[dim] -= shapes[i][dim];
                    i += 1;
                }
                y[s * os + o] = xs[i][s * size(&shapes[i]) + ravel(&oi, &shapes[i])];
            }
        }
        y
    }

    #[test]
    fn concat_each_axis() {
        let mut r = Rng::new(21);
        for rank in 1..=3 {
            for dim in 0..rank {
                for m in [1, 2, 3] {
                    let base: Vec<usize> = (0..rank).map(|_| 1 + r.below(3) as usize).collect();
                    let shapes: Vec<Vec<usize>> = (0..m)
                        .map(|_| {
                            let mut s = base.clone();
                            s[dim] = 1 + r.below(3) as usize;
                            s
                        })
                        .collect();
                    let node = Concat::new(shapes.clone(), dim).unwrap();
                    let name = format!("concat {shapes:?} dim {dim}");
                    let mut out = base.clone();
                    out[dim] = shapes.iter().map(|s| s[dim]).sum();
                    assert_eq!(Layer::<f64>::out_shape(&node), &out[..], "{name}");
                    for n in [1, 3] {
                        let xs: Vec<Vec<f64>> = shapes.iter().map(|s| randn(&mut r, n * size(s))).collect();
                        let xr: Vec<&[f64]> = xs.iter().map(|v| v.as_slice()).collect();
                        let (y, _) = node.forward_inputs(&[], &xr, n);
                        assert_eq!(y, naive_concat(&shapes, &xs, dim, n), "{name}: forward");
                        if m == 1 {
                            assert_eq!(Layer::<f64>::forward(&node, &[], &xs[0], n).0, y);
                        }
                        let diff = vec![true; m];
                        check_rules(&format!("{name} n={n}"), &node, &[], &xs, &diff, n, 1e-7);
                        if m > 1 {
                            let mut diff = diff;
                            diff[m - 1] = false;
                            check_rules(&format!("{name} n={n}, last fixed"), &node, &[], &xs, &diff, n, 1e-7);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn concat_values_and_errors() {
        // [2, 1] ++ [2, 2] along axis 1
        let node = Concat::new(vec![vec![2, 1], vec![2, 2]], 1).unwrap();
        let (y, _) = node.forward_inputs(&[], &[&[1.0, 2.0], &[3.0, 4.0, 5.0, 6.0]], 1);
        assert_eq!(y, vec![1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
        assert!(!Layer::<f64>::hvp_needs_g(&node, true, true, true));
        let e = Concat::new(vec![vec![2, 4], vec![3, 5]], 1).unwrap_err();
        assert!(e.contains("input 1") && e.contains("axis 0"), "{e}");
        let e = Concat::new(vec![vec![2, 4], vec![2, 4, 1]], 1).unwrap_err();
        assert!(e.contains("input 1") && e.contains("rank"), "{e}");
        assert!(Concat::new(vec![vec![2, 4]], 2).is_err());
        assert!(Concat::new(vec![], 0).is_err());
    }
}
