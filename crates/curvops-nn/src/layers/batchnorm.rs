//! `batchnorm1d` / `batchnorm2d` in evaluation mode (running statistics):
//! `y = γ_c x̂ + β_c` with `x̂ = (x − μ_c) s_c`, `s_c = 1/√(v_c + ε)` per channel `c`.
//!
//! The running mean `μ` and variance `v` are buffers (held fixed); `γ`, `β` are the parameters
//! (absent with `affine = false`, where `y = x̂`). The map is affine in `x` and bilinear in
//! `(γ, x)`. With `a_c = γ_c s_c`:
//! * JVP: `dy = a_c dx + dγ_c x̂ + dβ_c`.
//! * VJP: `g_x = a_c g`, `∇γ_c = Σ g x̂`, `∇β_c = Σ g` (sums over batch and positions).
//! * R-op: `R(g_x) = a_c R(g) + dγ_c s_c g`, `R(∇γ_c) = Σ R(g) x̂ + g R(x) s_c`.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut, ParamSpec};
use curvops_tensor::Float;

/// Batch normalization with frozen statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    kind: &'static str,
    shape: Vec<usize>,
    mean: Vec<f64>,
    var: Vec<f64>,
    eps: f64,
    affine: bool,
}

impl BatchNorm {
    /// `kind` is `"batchnorm1d"` or `"batchnorm2d"`; `shape` = `[C, …]` per sample.
    pub fn new(kind: &'static str, shape: Vec<usize>, mean: Vec<f64>, var: Vec<f64>, eps: f64, affine: bool) -> Self {
        Self { kind, shape, mean, var, eps, affine }
    }
    fn channels(&self) -> usize {
        self.shape[0]
    }
    fn spatial(&self) -> usize {
        self.shape[1..].iter().product()
    }
    /// `s_c = 1/√(v_c + ε)`.
    fn inv_std<T: Float>(&self) -> Vec<T> {
        self.var.iter().map(|&v| T::of(1.0 / (v + self.eps).sqrt())).collect()
    }
    /// Per-channel slope `a_c`.
    fn slope<T: Float>(&self, p: &[T]) -> Vec<T> {
        let s = self.inv_std::<T>();
        if self.affine {
            s.iter().zip(p).map(|(&s, &g)| s * g).collect()
        } else {
            s
        }
    }
    /// `out[m, c, ·] = a_c v[m, c, ·]` for `m` rows.
    fn scale_rows<T: Float>(&self, a: &[T], v: &[T], m: usize) -> Vec<T> {
        let (c, s) = (self.channels(), self.spatial());
        let mut out = vec![T::zero(); v.len()];
        for r in 0..m {
            for ch in 0..c {
                let o = (r * c + ch) * s;
                for (d, x) in out[o..o + s].iter_mut().zip(&v[o..o + s]) {
                    *d = a[ch] * *x;
                }
            }
        }
        out
    }
    /// `x̂` of the batch.
    fn xhat<T: Float>(&self, x: &[T], n: usize) -> Vec<T> {
        let (c, s) = (self.channels(), self.spatial());
        let inv = self.inv_std::<T>();
        let mut out = vec![T::zero(); x.len()];
        for r in 0..n {
            for ch in 0..c {
                let o = (r * c + ch) * s;
                let mu = T::of(self.mean[ch]);
                for (d, v) in out[o..o + s].iter_mut().zip(&x[o..o + s]) {
                    *d = (*v - mu) * inv[ch];
                }
            }
        }
        out
    }
    /// `out[k, c] += Σ_{n, ·} u[n, k, c, ·] · w[n, c, ·]` (`w` broadcast over k).
    fn channel_dot<T: Float>(&self, u: &[T], w: Option<&[T]>, n: usize, k: usize, out: &mut [T]) {
        let (c, s) = (self.channels(), self.spatial());
        for r in 0..n {
            for kk in 0..k {
                for ch in 0..c {
                    let o = ((r * k + kk) * c + ch) * s;
                    let uu = &u[o..o + s];
                    let v: T = match w {
                        Some(w) => {
                            let ww = &w[(r * c + ch) * s..(r * c + ch + 1) * s];
                            uu.iter().zip(ww).map(|(a, b)| *a * *b).sum()
                        }
                        None => uu.iter().copied().sum(),
                    };
                    out[kk * c + ch] += v;
                }
            }
        }
    }
}

impl<T: Float> Layer<T> for BatchNorm {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn training_note(&self) -> Option<&'static str> {
        Some("batch norm is trained in evaluation mode (running statistics kept fixed)")
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn in_shape(&self) -> &[usize] {
        &self.shape
    }
    fn out_shape(&self) -> &[usize] {
        &self.shape
    }
    fn params(&self) -> Vec<ParamSpec> {
        if self.affine {
            vec![
                ParamSpec { name: "weight", shape: vec![self.channels()] },
                ParamSpec { name: "bias", shape: vec![self.channels()] },
            ]
        } else {
            Vec::new()
        }
    }
    fn forward(&self, p: &[T], x: &[T], n: usize) -> (Vec<T>, Aux<T>) {
        let (c, s) = (self.channels(), self.spatial());
        let mut y = self.xhat(x, n);
        if self.affine {
            for r in 0..n {
                for ch in 0..c {
                    let o = (r * c + ch) * s;
                    for v in &mut y[o..o + s] {
                        *v = *v * p[ch] + p[c + ch];
                    }
                }
            }
        }
        (y, Aux::None)
    }
    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        self.scale_rows(&self.slope(c.p), dx, c.n * k)
    }
    fn jvp_param(&self, c: &Ctx<T>, dp: &ParamIn<T>, k: usize, dy: &mut [T]) {
        if !self.affine {
            return;
        }
        let (ch_n, s) = (self.channels(), self.spatial());
        let xh = dp[0].map(|_| self.xhat(c.x, c.n));
        for r in 0..c.n {
            for kk in 0..k {
                for ch in 0..ch_n {
                    let o = ((r * k + kk) * ch_n + ch) * s;
                    let dst = &mut dy[o..o + s];
                    if let (Some(dg), Some(xh)) = (dp[0], &xh) {
                        let g = dg[kk * ch_n + ch];
                        for (d, v) in dst.iter_mut().zip(&xh[(r * ch_n + ch) * s..(r * ch_n + ch + 1) * s]) {
                            *d += g * *v;
                        }
                    }
                    if let Some(db) = dp[1] {
                        let b = db[kk * ch_n + ch];
                        for d in dst.iter_mut() {
                            *d += b;
                        }
                    }
                }
            }
        }
    }
    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        self.scale_rows(&self.slope(c.p), g, c.n * k)
    }
    fn vjp_param(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        if !self.affine {
            return;
        }
        if let Some(gg) = out[0].as_deref_mut() {
            self.channel_dot(g, Some(&self.xhat(c.x, c.n)), c.n, k, gg);
        }
        if let Some(gb) = out[1].as_deref_mut() {
            self.channel_dot(g, None, c.n, k, gb);
        }
    }
    fn vjp_param_per_sample(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        if !self.affine {
            return;
        }
        let (ch, s) = (self.channels(), self.spatial());
        let xh = self.xhat(c.x, c.n);
        for t in 0..2 {
            if let Some(o) = out[t].as_deref_mut() {
                o.fill(T::zero());
                for r in 0..c.n {
                    let gs = &g[r * k * ch * s..(r + 1) * k * ch * s];
                    let w = (t == 0).then(|| &xh[r * ch * s..(r + 1) * ch * s]);
                    self.channel_dot(gs, w, 1, k, &mut o[r * k * ch..(r + 1) * k * ch]);
                }
            }
        }
    }
    fn hvp_needs_g(&self, rx: bool, dp: bool, want_input: bool) -> bool {
        self.affine && dp && (rx || want_input)
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
        let (ch_n, s) = (self.channels(), self.spatial());
        let inv = self.inv_std::<T>();
        self.vjp_param(c, rg, k, rgrad);
        if self.affine {
            if let (Some(rx), Some(gg)) = (rx, rgrad[0].as_deref_mut()) {
                // Σ g R(x) s_c
                let gs: Vec<T> = self.scale_rows(&inv, g, c.n);
                self.channel_dot(rx, Some(&gs), c.n, k, gg);
            }
        }
        if !want_input {
            return None;
        }
        let mut out = self.scale_rows(&self.slope(c.p), rg, c.n * k);
        if self.affine {
            if let Some(dg) = dp[0] {
                for r in 0..c.n {
                    for kk in 0..k {
                        for ch in 0..ch_n {
                            let f = dg[kk * ch_n + ch] * inv[ch];
                            let o = ((r * k + kk) * ch_n + ch) * s;
                            let gsrc = &g[(r * ch_n + ch) * s..(r * ch_n + ch + 1) * s];
                            for (d, gv) in out[o..o + s].iter_mut().zip(gsrc) {
                                *d += f * *gv;
                            }
                        }
                    }
                }
            }
        }
        Some(out)
    }
}
