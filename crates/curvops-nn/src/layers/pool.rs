//! `maxpool2d` and `avgpool2d` (PyTorch semantics, `ceil_mode = false`,
//! `count_include_pad = true`).
//!
//! * Max pooling: `y[c, o] = x[c, a(o)]` with `a(o)` the first maximal element of the window in
//!   row-major order (padding never wins). Piecewise linear: `dy = dx[a]`, `g_x[a(o)] += g[o]`,
//!   `R(g_x) = g_x(R(g))` (no second-order term).
//! * Average pooling: `y[c, o] = (1/(kh·kw)) Σ_window x` with zeros in the padding. Linear.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut};
use curvops_tensor::conv::Geom2d;
use curvops_tensor::simd::with_simd;
use curvops_tensor::Float;

/// Max pooling over `kh × kw` windows (optionally dilated).
#[derive(Clone, Debug)]
pub struct MaxPool2d {
    geom: Geom2d,
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

impl MaxPool2d {
    /// Max pooling with the given geometry (`geom.c` = channels).
    pub fn new(geom: Geom2d) -> Result<Self, String> {
        if geom.ph > geom.kh / 2 || geom.pw > geom.kw / 2 {
            return Err("padding must be at most half of kernel_size".into());
        }
        Ok(Self { in_shape: vec![geom.c, geom.h, geom.w], out_shape: vec![geom.c, geom.oh, geom.ow], geom })
    }
    /// The window geometry.
    pub fn geom(&self) -> &Geom2d {
        &self.geom
    }
    fn idx<'a, T>(&self, c: &'a Ctx<T>) -> &'a [u32] {
        match c.aux {
            Aux::Index(v) => v,
            _ => panic!("maxpool2d: forward pass did not keep indices"),
        }
    }
    fn gather<T: Float>(&self, idx: &[u32], v: &[T], n: usize, k: usize) -> Vec<T> {
        let (is, os) = (self.geom.in_len(), self.geom.c * self.geom.out_len());
        let mut out = vec![T::zero(); n * k * os];
        for s in 0..n {
            let ids = &idx[s * os..(s + 1) * os];
            for kk in 0..k {
                let m = s * k + kk;
                let src = &v[m * is..(m + 1) * is];
                for (o, &a) in out[m * os..(m + 1) * os].iter_mut().zip(ids) {
                    *o = src[a as usize];
                }
            }
        }
        out
    }
    fn scatter<T: Float>(&self, idx: &[u32], g: &[T], n: usize, k: usize) -> Vec<T> {
        let (is, os) = (self.geom.in_len(), self.geom.c * self.geom.out_len());
        let mut out = vec![T::zero(); n * k * is];
        for s in 0..n {
            let ids = &idx[s * os..(s + 1) * os];
            for kk in 0..k {
                let m = s * k + kk;
                let dst = &mut out[m * is..(m + 1) * is];
                for (gv, &a) in g[m * os..(m + 1) * os].iter().zip(ids) {
                    dst[a as usize] += *gv;
                }
            }
        }
        out
    }
}

impl<T: Float> Layer<T> for MaxPool2d {
    fn kind(&self) -> &'static str {
        "maxpool2d"
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
    fn forward(&self, _p: &[T], x: &[T], n: usize) -> (Vec<T>, Aux<T>) {
        let g = &self.geom;
        let (is, os, hw) = (g.in_len(), g.c * g.out_len(), g.h * g.w);
        // For tap column j, the outputs whose tap lies inside the image form a contiguous range.
        let ox_range = |j: usize| -> (usize, usize) {
            let inside = |ox: usize| {
                let z = (ox * g.sw + j * g.dw) as isize - g.pw as isize;
                z >= 0 && (z as usize) < g.w
            };
            let lo = (0..g.ow).find(|&o| inside(o)).unwrap_or(g.ow);
            let hi = (lo..g.ow).rev().find(|&o| inside(o)).map_or(lo, |o| o + 1);
            (lo, hi)
        };
        let jranges: Vec<(usize, usize)> = (0..g.kw).map(ox_range).collect();
        let mut y = vec![T::zero(); n * os];
        let mut idx = vec![0u32; n * os];
        let mut best = vec![T::zero(); g.ow];
        let mut arg = vec![0usize; g.ow];
        for (s, xs) in x.chunks_exact(is).take(n).enumerate() {
            with_simd(
                #[inline(always)]
                || {
                    for c in 0..g.c {
                        let xc = &xs[c * hw..(c + 1) * hw];
                        for oy in 0..g.oh {
                            best.fill(T::neg_infinity());
                            // sentinel: the window's first tap inside the image (never -inf in valid data)
                            let i0 = (0..g.kh).find_map(|i| g.in_row(oy, i)).expect("window has a valid row");
                            for (ox, a) in arg.iter_mut().enumerate() {
                                let j0 = (0..g.kw).find_map(|j| g.in_col(ox, j)).expect("window has a valid column");
                                *a = i0 * g.w + j0;
                            }
                            // taps in row-major order; for each, all outputs of the row at once with
                            // branch-free selects: strict `>` keeps the first maximal element
                            for i in 0..g.kh {
                                let Some(yy) = g.in_row(oy, i) else { continue };
                                let row = &xc[yy * g.w..(yy + 1) * g.w];
                                for (j, &(lo, hi)) in jranges.iter().enumerate() {
                                    if hi <= lo {
                                        continue;
                                    }
                                    let first = lo * g.sw + j * g.dw - g.pw;
                                    let base = yy * g.w + first;
                                    let seg = &row[first..first + (hi - lo - 1) * g.sw + 1];
                                    max_update(seg, base, g.sw, &mut best[lo..hi], &mut arg[lo..hi]);
                                }
                            }
                            let o = s * os + (c * g.oh + oy) * g.ow;
                            y[o..o + g.ow].copy_from_slice(&best);
                            for (d, &a) in idx[o..o + g.ow].iter_mut().zip(&arg) {
                                *d = (c * hw + a) as u32;
                            }
                        }
                    }
                },
            );
        }
        (y, Aux::Index(idx))
    }
    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        self.gather(self.idx(c), dx, c.n, k)
    }
    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        self.scatter(self.idx(c), g, c.n, k)
    }
    fn hvp_needs_g(&self, _rx: bool, _dp: bool, _want_input: bool) -> bool {
        false
    }
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
        want_input.then(|| self.scatter(self.idx(c), rg, c.n, k))
    }
}

/// `best[t] ← max(best[t], seg[t·stride])`, remembering the flat index `base + t·stride` of a
/// new maximum (strict `>`: the first maximal element is kept; NaN wins). Branch-free: the
/// comparisons are data dependent and would mispredict as branches.
#[inline(always)]
fn max_update<T: Float>(seg: &[T], base: usize, stride: usize, best: &mut [T], arg: &mut [usize]) {
    let n = best.len();
    let seg = &seg[..(n - 1) * stride + 1];
    for (t, (b, a)) in best.iter_mut().zip(arg.iter_mut()).enumerate() {
        let v = seg[t * stride];
        let take = (v > *b) | (v.is_nan() & !b.is_nan());
        *b = T::select(take, v, *b);
        let m = (take as usize).wrapping_neg();
        *a = ((base + t * stride) & m) | (*a & !m);
    }
}

/// Average pooling over `kh × kw` windows, zero padding counted in the divisor.
#[derive(Clone, Debug)]
pub struct AvgPool2d {
    geom: Geom2d,
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

impl AvgPool2d {
    /// Average pooling with the given geometry (`geom.c` = channels, no dilation).
    pub fn new(geom: Geom2d) -> Result<Self, String> {
        if geom.ph > geom.kh / 2 || geom.pw > geom.kw / 2 {
            return Err("padding must be at most half of kernel_size".into());
        }
        Ok(Self { in_shape: vec![geom.c, geom.h, geom.w], out_shape: vec![geom.c, geom.oh, geom.ow], geom })
    }
    /// `y = A x` on `m` images.
    fn apply<T: Float>(&self, x: &[T], m: usize) -> Vec<T> {
        let g = &self.geom;
        let (is, os, hw) = (g.in_len(), g.c * g.out_len(), g.h * g.w);
        let scale = T::one() / T::of((g.kh * g.kw) as f64);
        let mut y = vec![T::zero(); m * os];
        for s in 0..m {
            let xs = &x[s * is..(s + 1) * is];
            for c in 0..g.c {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = T::zero();
                        for i in 0..g.kh {
                            let Some(yy) = g.in_row(oy, i) else { continue };
                            for j in 0..g.kw {
                                if let Some(xx) = g.in_col(ox, j) {
                                    acc += xs[c * hw + yy * g.w + xx];
                                }
                            }
                        }
                        y[s * os + (c * g.oh + oy) * g.ow + ox] = acc * scale;
                    }
                }
            }
        }
        y
    }
    /// `x = Aᵀ y` on `m` images.
    fn apply_t<T: Float>(&self, gy: &[T], m: usize) -> Vec<T> {
        let g = &self.geom;
        let (is, os, hw) = (g.in_len(), g.c * g.out_len(), g.h * g.w);
        let scale = T::one() / T::of((g.kh * g.kw) as f64);
        let mut gx = vec![T::zero(); m * is];
        for s in 0..m {
            let xs = &mut gx[s * is..(s + 1) * is];
            for c in 0..g.c {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let v = gy[s * os + (c * g.oh + oy) * g.ow + ox] * scale;
                        for i in 0..g.kh {
                            let Some(yy) = g.in_row(oy, i) else { continue };
                            for j in 0..g.kw {
                                if let Some(xx) = g.in_col(ox, j) {
                                    xs[c * hw + yy * g.w + xx] += v;
                                }
                            }
                        }
                    }
                }
            }
        }
        gx
    }
}

impl<T: Float> Layer<T> for AvgPool2d {
    fn kind(&self) -> &'static str {
        "avgpool2d"
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
    fn forward(&self, _p: &[T], x: &[T], n: usize) -> (Vec<T>, Aux<T>) {
        (self.apply(x, n), Aux::None)
    }
    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        self.apply(dx, c.n * k)
    }
    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        self.apply_t(g, c.n * k)
    }
    fn hvp_needs_g(&self, _rx: bool, _dp: bool, _want_input: bool) -> bool {
        false
    }
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
        want_input.then(|| self.apply_t(rg, c.n * k))
    }
}
