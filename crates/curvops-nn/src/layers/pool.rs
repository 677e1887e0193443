//! `maxpool2d` and `avgpool2d` (PyTorch semantics, `ceil_mode = false`,
//! `count_include_pad = true`).
//!
//! * Max pooling: `y[c, o] = x[c, a(o)]` with `a(o)` the first maximal element of the window in
//!   row-major order (padding never wins). Piecewise linear: `dy = dx[a]`, `g_x[a(o)] += g[o]`,
//!   `R(g_x) = g_x(R(g))` (no second-order term).
//! * Average pooling: `y[c, o] = (1/(kh·kw)) Σ_window x` with zeros in the padding. Linear.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut};
use curvops_tensor::conv::Geom2d;
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
        let mut y = Vec::with_capacity(n * os);
        let mut idx = Vec::with_capacity(n * os);
        let (h, w) = (g.h as isize, g.w as isize);
        for xs in x.chunks_exact(is).take(n) {
            for c in 0..g.c {
                let xc = &xs[c * hw..(c + 1) * hw];
                for oy in 0..g.oh {
                    let y0 = (oy * g.sh) as isize - g.ph as isize;
                    for ox in 0..g.ow {
                        let x0 = (ox * g.sw) as isize - g.pw as isize;
                        // first maximal element in row-major window order (strict >)
                        let mut best = T::neg_infinity();
                        let mut arg = usize::MAX;
                        for i in 0..g.kh {
                            let yy = y0 + (i * g.dh) as isize;
                            if yy < 0 || yy >= h {
                                continue;
                            }
                            let row = yy as usize * g.w;
                            for j in 0..g.kw {
                                let xx = x0 + (j * g.dw) as isize;
                                if xx < 0 || xx >= w {
                                    continue;
                                }
                                let a = row + xx as usize;
                                let v = xc[a];
                                if arg == usize::MAX || v > best || (v.is_nan() && !best.is_nan()) {
                                    best = v;
                                    arg = a;
                                }
                            }
                        }
                        debug_assert!(arg != usize::MAX, "maxpool2d: empty window");
                        y.push(best);
                        idx.push((c * hw + arg) as u32);
                    }
                }
            }
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
