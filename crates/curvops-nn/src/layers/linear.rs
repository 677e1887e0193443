//! `linear`: `y = W x + b` with `W` `[out, in]`, `b` `[out]` (bias optional).
//!
//! On a batch `Y = X Wᵀ + 1 bᵀ`. Rules (per tangent `k`):
//! * JVP: `dY_k = dX_k Wᵀ + X dW_kᵀ + 1 db_kᵀ` — the parameter part for all `K` tangents is one
//!   GEMM `X [dW_1; …; dW_K]ᵀ`, whose `[N, K·out]` result is exactly the `[N, K, out]` layout.
//! * VJP: `G_x = G W`, `∇W_k = G_kᵀ X` (one GEMM over all `k`), `∇b_k = Σ_n G_{n,k}`.
//! * Per sample: `∇W_{n,k} = g_{n,k} x_nᵀ`, `∇b_{n,k} = g_{n,k}`.
//! * R-op: `R(G_x) = R(G) W + G dW`, `R(∇W) = R(G)ᵀ X + Gᵀ R(X)`, `R(∇b) = Σ_n R(G)`.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut, ParamSpec};
use curvops_tensor::gemm::gemm_new;
use curvops_tensor::{gemm, ops, Float, Trans};

/// A fully connected layer.
#[derive(Clone, Debug)]
pub struct Linear {
    in_f: usize,
    out_f: usize,
    bias: bool,
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

impl Linear {
    /// `in_features → out_features`, with or without bias.
    pub fn new(in_f: usize, out_f: usize, bias: bool) -> Self {
        Self { in_f, out_f, bias, in_shape: vec![in_f], out_shape: vec![out_f] }
    }
    /// Whether the layer has a bias.
    pub fn has_bias(&self) -> bool {
        self.bias
    }
    fn w<'a, T>(&self, p: &'a [T]) -> &'a [T] {
        &p[..self.in_f * self.out_f]
    }
}

impl<T: Float> Layer<T> for Linear {
    fn kind(&self) -> &'static str {
        "linear"
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
        let mut v = vec![ParamSpec { name: "weight", shape: vec![self.out_f, self.in_f] }];
        if self.bias {
            v.push(ParamSpec { name: "bias", shape: vec![self.out_f] });
        }
        v
    }

    fn forward(&self, p: &[T], x: &[T], n: usize) -> (Vec<T>, Aux<T>) {
        let (i, o) = (self.in_f, self.out_f);
        let mut y = gemm_new(n, o, i, x, i, Trans::N, self.w(p), i, Trans::T);
        if self.bias {
            let b = &p[i * o..i * o + o];
            for row in y.chunks_exact_mut(o) {
                ops::axpy(T::one(), b, row);
            }
        }
        (y, Aux::None)
    }

    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        let (i, o) = (self.in_f, self.out_f);
        gemm_new(c.n * k, o, i, dx, i, Trans::N, self.w(c.p), i, Trans::T)
    }

    fn jvp_param(&self, c: &Ctx<T>, dp: &ParamIn<T>, k: usize, dy: &mut [T]) {
        let (i, o, n) = (self.in_f, self.out_f, c.n);
        if let Some(dw) = dp[0] {
            // [N, in] × [in, K·out]
            gemm(n, k * o, i, T::one(), c.x, i, Trans::N, dw, i, Trans::T, T::one(), dy, k * o);
        }
        if self.bias {
            if let Some(db) = dp[1] {
                for r in 0..n {
                    ops::axpy(T::one(), db, &mut dy[r * k * o..(r + 1) * k * o]);
                }
            }
        }
    }

    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        let (i, o) = (self.in_f, self.out_f);
        gemm_new(c.n * k, i, o, g, o, Trans::N, self.w(c.p), i, Trans::N)
    }

    fn vjp_param(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        let (i, o, n) = (self.in_f, self.out_f, c.n);
        if let Some(gw) = out[0].as_deref_mut() {
            // [K·out, N] × [N, in]
            gemm(k * o, i, n, T::one(), g, k * o, Trans::T, c.x, i, Trans::N, T::one(), gw, i);
        }
        if self.bias {
            if let Some(gb) = out[1].as_deref_mut() {
                ops::sum_rows_into(g, n, k * o, T::one(), gb);
            }
        }
    }

    fn vjp_param_per_sample(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        let (i, o, n) = (self.in_f, self.out_f, c.n);
        if let Some(gw) = out[0].as_deref_mut() {
            for r in 0..n {
                // [K·out, 1] × [1, in]: outer product
                gemm(
                    k * o,
                    i,
                    1,
                    T::one(),
                    &g[r * k * o..(r + 1) * k * o],
                    1,
                    Trans::N,
                    &c.x[r * i..(r + 1) * i],
                    i,
                    Trans::N,
                    T::zero(),
                    &mut gw[r * k * o * i..(r + 1) * k * o * i],
                    i,
                );
            }
        }
        if self.bias {
            if let Some(gb) = out[1].as_deref_mut() {
                gb.copy_from_slice(g);
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
        let (i, o, n) = (self.in_f, self.out_f, c.n);
        // R(∇θ) = vjp_param(R(G)) + Gᵀ R(X)
        self.vjp_param(c, rg, k, rgrad);
        if let (Some(rx), Some(gw)) = (rx, rgrad[0].as_deref_mut()) {
            for kk in 0..k {
                gemm(
                    o,
                    i,
                    n,
                    T::one(),
                    g,
                    o,
                    Trans::T,
                    &rx[kk * i..],
                    k * i,
                    Trans::N,
                    T::one(),
                    &mut gw[kk * o * i..(kk + 1) * o * i],
                    i,
                );
            }
        }
        if !want_input {
            return None;
        }
        let mut rgx = self.vjp_input(c, rg, k);
        if let Some(dw) = dp[0] {
            for kk in 0..k {
                gemm(
                    n,
                    i,
                    o,
                    T::one(),
                    g,
                    o,
                    Trans::N,
                    &dw[kk * o * i..(kk + 1) * o * i],
                    i,
                    Trans::N,
                    T::one(),
                    &mut rgx[kk * i..],
                    k * i,
                );
            }
        }
        Some(rgx)
    }
}
