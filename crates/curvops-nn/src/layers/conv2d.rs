//! `conv2d`: `y[o] = b[o] + Σ_{c∈group(o), i, j} W[o, c, i, j] · x[c, ·+i·d, ·+j·d]` with stride,
//! zero padding, dilation, groups and rectangular kernels (PyTorch semantics).
//!
//! With `cols = im2col(x)` (`[C·kh·kw, L]`, L output positions; rows of group `g` contiguous)
//! the layer is the GEMM `Y_g = W_g cols_g + b` per group, where `W_g` is `[O/G, C/G·kh·kw]`.
//! Rules (per sample `n`, tangent `k`, group `g`):
//! * JVP: `dY = W_g im2col(dx)_g + dW_g cols_g + db`.
//! * VJP: `g_x = col2im(W_gᵀ G_g)`, `∇W_g = Σ_n G_{n,g} cols_{n,g}ᵀ`, `∇b = Σ_{n,l} G`.
//! * R-op: `R(g_x) = col2im(W_gᵀ R(G)_g + dW_gᵀ G_g)`,
//!   `R(∇W_g) = Σ_n R(G)_{n,g} cols_{n,g}ᵀ + G_{n,g} im2col(R(x)_n)_gᵀ`.
//!
//! The forward pass keeps `cols` of every sample (`Aux::Cols`), so parameter rules need no
//! second unfolding.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut, ParamSpec};
use super::{GradFactorShape, GradFactors, GramFeatures};
use super::{KfacLayout, KfacMap};
use curvops_tensor::conv::Geom2d;
use curvops_tensor::threads::{for_each_item, for_each_item_with, sum_over_chunks};
use curvops_tensor::{gemm, Float, Trans};

/// A 2-d convolution.
#[derive(Clone, Debug)]
pub struct Conv2d {
    geom: Geom2d,
    out_c: usize,
    groups: usize,
    bias: bool,
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

impl Conv2d {
    /// A convolution on inputs `[C, H, W]` (`geom` carries kernel, stride, padding, dilation).
    pub fn new(geom: Geom2d, out_c: usize, groups: usize, bias: bool) -> Result<Self, String> {
        if groups == 0 || !geom.c.is_multiple_of(groups) || !out_c.is_multiple_of(groups) {
            return Err(format!(
                "in_channels {} and out_channels {} must be divisible by groups {}",
                geom.c, out_c, groups
            ));
        }
        Ok(Self {
            in_shape: vec![geom.c, geom.h, geom.w],
            out_shape: vec![out_c, geom.oh, geom.ow],
            geom,
            out_c,
            groups,
            bias,
        })
    }
    /// The window geometry.
    pub fn geom(&self) -> &Geom2d {
        &self.geom
    }
    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.groups
    }
    /// Whether the layer has a bias.
    pub fn has_bias(&self) -> bool {
        self.bias
    }
    /// Rows of `cols` per group: `C/G · kh · kw`.
    pub fn jg(&self) -> usize {
        self.geom.col_rows() / self.groups
    }
    fn og(&self) -> usize {
        self.out_c / self.groups
    }
    fn wlen(&self) -> usize {
        self.out_c * self.jg()
    }

    /// `dst[(k,o), l] (+)= Σ_j A_k[o, j] cols[j, l]` for `kk` stacked weight-like matrices
    /// `A_k` (`[O, Jg]` each, contiguous) — one GEMM when `G = 1`, else one per (k, group).
    fn weight_times_cols<T: Float>(&self, a: &[T], kk: usize, cols: &[T], dst: &mut [T], beta: T) {
        let (l, jg, og, g) = (self.geom.out_len(), self.jg(), self.og(), self.groups);
        if g == 1 {
            gemm(kk * self.out_c, l, jg, T::one(), a, jg, Trans::N, cols, l, Trans::N, beta, dst, l);
            return;
        }
        for k in 0..kk {
            for gi in 0..g {
                let aoff = k * self.wlen() + gi * og * jg;
                let doff = (k * self.out_c + gi * og) * l;
                gemm(
                    og,
                    l,
                    jg,
                    T::one(),
                    &a[aoff..],
                    jg,
                    Trans::N,
                    &cols[gi * jg * l..],
                    l,
                    Trans::N,
                    beta,
                    &mut dst[doff..],
                    l,
                );
            }
        }
    }

    /// `dcols[j, l] = Σ_o W[o, j] g[o, l]` within each group, for one image (`W` is `[O, Jg]`).
    fn weight_t_times<T: Float>(&self, w: &[T], g: &[T], dcols: &mut [T]) {
        let (l, jg, og) = (self.geom.out_len(), self.jg(), self.og());
        for gi in 0..self.groups {
            gemm(
                jg,
                l,
                og,
                T::one(),
                &w[gi * og * jg..],
                jg,
                Trans::T,
                &g[gi * og * l..],
                l,
                Trans::N,
                T::zero(),
                &mut dcols[gi * jg * l..],
                l,
            );
        }
    }

    /// `out_k[o, j] += Σ_l G_k[o, l] cols[j, l]` (within groups) for `kk` cotangents `G_k`
    /// (`[O, L]` each, contiguous) of one image; `out` holds `kk` weight-shaped blocks.
    fn grad_weight<T: Float>(&self, gk: &[T], kk: usize, cols: &[T], out: &mut [T]) {
        let (l, jg, og, g) = (self.geom.out_len(), self.jg(), self.og(), self.groups);
        if g == 1 {
            gemm(kk * self.out_c, jg, l, T::one(), gk, l, Trans::N, cols, l, Trans::T, T::one(), out, jg);
            return;
        }
        for k in 0..kk {
            for gi in 0..g {
                gemm(
                    og,
                    jg,
                    l,
                    T::one(),
                    &gk[(k * self.out_c + gi * og) * l..],
                    l,
                    Trans::N,
                    &cols[gi * jg * l..],
                    l,
                    Trans::T,
                    T::one(),
                    &mut out[k * self.wlen() + gi * og * jg..],
                    jg,
                );
            }
        }
    }

    fn cols_of<'a, T>(&self, c: &'a Ctx<T>) -> &'a [T] {
        match c.aux {
            Aux::Cols(v) => v,
            _ => panic!("conv2d: forward pass did not keep cols"),
        }
    }

    /// `gb[k, o] += Σ_{n, l} g[n, k, o, l]` (`g` is `[N, K, O, L]`).
    fn grad_bias<T: Float>(&self, g: &[T], n: usize, k: usize, gb: &mut [T]) {
        let l = self.geom.out_len();
        for r in 0..n * k {
            let kk = r % k;
            for o in 0..self.out_c {
                let s: T = g[(r * self.out_c + o) * l..(r * self.out_c + o + 1) * l].iter().copied().sum();
                gb[kk * self.out_c + o] += s;
            }
        }
    }
}

impl<T: Float> Layer<T> for Conv2d {
    fn kind(&self) -> &'static str {
        "conv2d"
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
    fn params(&self) -> Vec<ParamSpec> {
        let mut v = vec![ParamSpec {
            name: "weight",
            shape: vec![self.out_c, self.geom.c / self.groups, self.geom.kh, self.geom.kw],
        }];
        if self.bias {
            v.push(ParamSpec { name: "bias", shape: vec![self.out_c] });
        }
        v
    }

    /// One map: the weight as `[O, C/G·kh·kw]` on the `L` output positions. Inputs are the
    /// unfolded patches `[N, C/G·kh·kw, L]` (with groups, averaged over the `G` channel groups,
    /// as curvlinops' KFAC does); output cotangents the node's own `[N, K, O, L]`.
    fn kfac_maps(&self) -> Vec<KfacMap> {
        vec![KfacMap {
            name: "",
            weight: 0,
            bias: self.bias.then_some(1),
            out: self.out_c,
            inp: self.jg(),
            positions: self.geom.out_len(),
            transposed: false,
            layout: KfacLayout::Columns,
            one_hot: false,
        }]
    }
    fn kfac_inputs<'a>(&self, c: &Ctx<'a, T>, _map: usize) -> std::borrow::Cow<'a, [T]> {
        let cols: &'a [T] = match c.aux {
            Aux::Cols(v) => v,
            _ => panic!("conv2d: forward pass did not keep cols"),
        };
        let g = self.groups;
        if g == 1 {
            return std::borrow::Cow::Borrowed(cols);
        }
        let per = self.jg() * self.geom.out_len();
        let inv = T::of(1.0 / g as f64);
        let mut avg = vec![T::zero(); c.n * per];
        for (dst, src) in avg.chunks_exact_mut(per).zip(cols.chunks_exact(g * per)) {
            for grp in src.chunks_exact(per) {
                for (a, &v) in dst.iter_mut().zip(grp) {
                    *a += v;
                }
            }
            for a in dst.iter_mut() {
                *a *= inv;
            }
        }
        std::borrow::Cow::Owned(avg)
    }
    fn kfac_output_cotangents<'g>(&self, _c: &Ctx<T>, _map: usize, g: &'g [T], _k: usize) -> std::borrow::Cow<'g, [T]> {
        std::borrow::Cow::Borrowed(g)
    }

    fn forward(&self, p: &[T], x: &[T], n: usize) -> (Vec<T>, Aux<T>) {
        let (is, os) = (self.geom.in_len(), self.out_c * self.geom.out_len());
        let cs = self.geom.col_rows() * self.geom.out_len();
        let l = self.geom.out_len();
        let w = &p[..self.wlen()];
        let mut cols = vec![T::zero(); n * cs];
        for_each_item(&mut cols, cs, |s, cn| self.geom.im2col(&x[s * is..(s + 1) * is], cn));
        let mut y = vec![T::zero(); n * os];
        for_each_item(&mut y, os, |s, ys| {
            let beta = if self.bias {
                let b = &p[self.wlen()..self.wlen() + self.out_c];
                for (o, bo) in b.iter().enumerate() {
                    ys[o * l..(o + 1) * l].fill(*bo);
                }
                T::one()
            } else {
                T::zero()
            };
            self.weight_times_cols(w, 1, &cols[s * cs..(s + 1) * cs], ys, beta);
        });
        (y, Aux::Cols(cols))
    }

    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        let (is, os) = (self.geom.in_len(), self.out_c * self.geom.out_len());
        let cs = self.geom.col_rows() * self.geom.out_len();
        let mut dy = vec![T::zero(); c.n * k * os];
        let w = &c.p[..self.wlen()];
        for_each_item_with(
            &mut dy,
            os,
            || vec![T::zero(); cs],
            |cols, m, out| {
                // im2col writes every entry
                self.geom.im2col(&dx[m * is..(m + 1) * is], cols);
                self.weight_times_cols(w, 1, cols, out, T::zero());
            },
        );
        dy
    }

    fn jvp_param(&self, c: &Ctx<T>, dp: &ParamIn<T>, k: usize, dy: &mut [T]) {
        let l = self.geom.out_len();
        let os = self.out_c * l;
        let cs = self.geom.col_rows() * l;
        let cols = self.cols_of(c);
        if let Some(dw) = dp[0] {
            for_each_item(dy, k * os, |s, out| {
                self.weight_times_cols(dw, k, &cols[s * cs..(s + 1) * cs], out, T::one());
            });
        }
        if self.bias {
            if let Some(db) = dp[1] {
                for r in 0..c.n * k {
                    let kk = r % k;
                    for o in 0..self.out_c {
                        let b = db[kk * self.out_c + o];
                        for v in &mut dy[r * os + o * l..r * os + (o + 1) * l] {
                            *v += b;
                        }
                    }
                }
            }
        }
    }

    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        let (is, os) = (self.geom.in_len(), self.out_c * self.geom.out_len());
        let cs = self.geom.col_rows() * self.geom.out_len();
        let mut gx = vec![T::zero(); c.n * k * is];
        let w = &c.p[..self.wlen()];
        for_each_item_with(
            &mut gx,
            is,
            || vec![T::zero(); cs],
            |dcols, m, out| {
                // overwritten by the GEMM (β = 0)
                self.weight_t_times(w, &g[m * os..(m + 1) * os], dcols);
                self.geom.col2im_add(dcols, out);
            },
        );
        gx
    }

    fn vjp_param(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        let l = self.geom.out_len();
        let os = self.out_c * l;
        let cs = self.geom.col_rows() * l;
        if let Some(gw) = out[0].as_deref_mut() {
            let cols = self.cols_of(c);
            sum_over_chunks(c.n, gw, |range, buf| {
                for s in range {
                    self.grad_weight(&g[s * k * os..(s + 1) * k * os], k, &cols[s * cs..(s + 1) * cs], buf);
                }
            });
        }
        if self.bias {
            if let Some(gb) = out[1].as_deref_mut() {
                self.grad_bias(g, c.n, k, gb);
            }
        }
    }

    fn vjp_param_per_sample(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        let l = self.geom.out_len();
        let os = self.out_c * l;
        let cs = self.geom.col_rows() * l;
        let wl = self.wlen();
        if let Some(gw) = out[0].as_deref_mut() {
            let cols = self.cols_of(c);
            for_each_item(gw, k * wl, |s, o| {
                o.fill(T::zero());
                self.grad_weight(&g[s * k * os..(s + 1) * k * os], k, &cols[s * cs..(s + 1) * cs], o);
            });
        }
        if self.bias {
            if let Some(gb) = out[1].as_deref_mut() {
                gb.fill(T::zero());
                for s in 0..c.n {
                    self.grad_bias(
                        &g[s * k * os..(s + 1) * k * os],
                        1,
                        k,
                        &mut gb[s * k * self.out_c..(s + 1) * k * self.out_c],
                    );
                }
            }
        }
    }

    fn hvp_needs_g(&self, rx: bool, dp: bool, want_input: bool) -> bool {
        dp && (rx || want_input)
    }

    fn hvp_backward(
        &self,
        c: &Ctx<T>,
        rx: Option<&[T]>,
        dp: &ParamIn<T>,
        g: &[T],
        rg: &[T],
        k: usize,
        rgrad: &mut ParamOut<T>,
        want_input: bool,
    ) -> Option<Vec<T>> {
        let l = self.geom.out_len();
        let (is, os) = (self.geom.in_len(), self.out_c * l);
        let cs = self.geom.col_rows() * l;
        let wl = self.wlen();
        self.vjp_param(c, rg, k, rgrad);
        if let (Some(rx), Some(gw)) = (rx, rgrad[0].as_deref_mut()) {
            // Σ_n G_n im2col(R(x)_{n,k})ᵀ
            sum_over_chunks(c.n, gw, |range, buf| {
                let mut tmp = vec![T::zero(); cs];
                for s in range {
                    for kk in 0..k {
                        let m = s * k + kk;
                        self.geom.im2col(&rx[m * is..(m + 1) * is], &mut tmp);
                        self.grad_weight(&g[s * os..(s + 1) * os], 1, &tmp, &mut buf[kk * wl..(kk + 1) * wl]);
                    }
                }
            });
        }
        if !want_input {
            return None;
        }
        let mut rgx = self.vjp_input(c, rg, k);
        if let Some(dw) = dp[0] {
            for_each_item_with(
                &mut rgx,
                is,
                || vec![T::zero(); cs],
                |tmp, m, out| {
                    let (s, kk) = (m / k, m % k);
                    // overwritten by the GEMM (β = 0)
                    self.weight_t_times(&dw[kk * wl..(kk + 1) * wl], &g[s * os..(s + 1) * os], tmp);
                    self.geom.col2im_add(tmp, out);
                },
            );
        }
        Some(rgx)
    }

    /// Per sample one GEMM for the `K` weight gradients `G_{nk} colsᵀ_n` (per group), squared
    /// and weighted; the bias gradient of `(n, k)` is `Σ_l G_{nk}[·, l]`.
    fn sq_grad_diag(&self, c: &Ctx<T>, g: &[T], k: usize, w: &[T], out: &mut ParamOut<T>) {
        let l = self.geom.out_len();
        let os = self.out_c * l;
        let cs = self.geom.col_rows() * l;
        let wl = self.wlen();
        if let Some(gw) = out[0].as_deref_mut() {
            let cols = self.cols_of(c);
            sum_over_chunks(c.n, gw, |range, buf| {
                let mut tmp = vec![T::zero(); k * wl];
                for s in range {
                    tmp.fill(T::zero());
                    self.grad_weight(&g[s * k * os..(s + 1) * k * os], k, &cols[s * cs..(s + 1) * cs], &mut tmp);
                    super::add_weighted_squares(&tmp, &w[s * k..(s + 1) * k], buf);
                }
            });
        }
        if self.bias {
            if let Some(gb) = out[1].as_deref_mut() {
                for (r, &wv) in w.iter().enumerate().take(c.n * k) {
                    for (ch, d) in gb.iter_mut().enumerate() {
                        let sum: T = g[r * os + ch * l..r * os + (ch + 1) * l].iter().copied().sum();
                        *d += wv * sum * sum;
                    }
                }
            }
        }
    }

    fn grad_factor_shape(&self) -> Option<GradFactorShape> {
        Some(GradFactorShape { groups: self.groups, j: self.jg(), o: self.og(), l: self.geom.out_len() })
    }

    /// Factored: `U_n` = the unfolded input kept by the forward pass, `G_a` = the cotangent.
    fn gram_features(&self, c: &Ctx<T>, g: &[T], k: usize, factored: bool, want: &[bool]) -> GramFeatures<T> {
        let shape = Layer::<T>::grad_factor_shape(self).expect("conv2d factors");
        if !factored {
            return super::per_sample_gram_features(self, c, g, k, want);
        }
        let u = if want.first().copied().unwrap_or(false) { self.cols_of(c).to_vec() } else { Vec::new() };
        GramFeatures::Factored(GradFactors { shape, u, g: g[..c.n * k * self.out_c * shape.l].to_vec() })
    }
}
