//! `linear`: `y = x Wᵀ + b` on the last axis of inputs of any rank (as `nn.Linear`), optionally
//! with the weight stored transposed (Hugging Face `Conv1D`).
//!
//! A sample of shape `[*, in]` holds `R` rows (`R` = product of the leading axes, `R = 1` for
//! a rank-1 input); the output is `[*, out]`. Write `M` (`[in, out]`) for the matrix that maps
//! a row: `M = Wᵀ` with the weight stored as `W` `[out, in]` (the default), `M = W` with the
//! weight stored as `[in, out]` (`transposed`). `b` is `[out]` (optional). With the rows of the
//! whole batch stacked, `X` is `[N·R, in]` and
//!
//! `Y = X M + 1 bᵀ`.
//!
//! Tangents and cotangents are laid out `[N, K, R, ·]` (the crate's `[N, K, S]`). Rules, per
//! tangent `k` (sums over `n` and the rows `r`):
//! * JVP: `dY_k = dX_k M + X dM_k + 1 db_kᵀ`. The parameter part for all `K` tangents is one
//!   GEMM `X [dM_1 … dM_K]` (`[N·R, K·out]`, i.e. `[N, R, K, out]`, reordered to
//!   `[N, K, R, out]` when `R > 1`).
//! * VJP: `G_x = G Mᵀ` (one GEMM over all `N·K·R` rows), `∇M_k = Xᵀ G_k` (stored as
//!   `∇W_k = G_kᵀ X` without `transposed`), `∇b_k = Σ_{n,r} G_{n,k,r}`.
//! * Per sample: `∇M_{n,k} = Σ_r x_{n,r} g_{n,k,r}ᵀ`, `∇b_{n,k} = Σ_r g_{n,k,r}`.
//! * R-op (the layer is bilinear in `(x, θ)`, so the only second-order terms are the mixed
//!   ones): `R(G_x) = R(G) Mᵀ + G dMᵀ`, `R(∇M) = Xᵀ R(G) + R(X)ᵀ G`, `R(∇b) = Σ R(G)`.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut, ParamSpec};
use super::{GradFactorShape, GradFactors, GramFeatures};
use super::{KfacLayout, KfacMap};
use curvops_tensor::gemm::gemm_new;
use curvops_tensor::{gemm, ops, Float, Trans};
use std::borrow::Cow;

/// A fully connected layer on the last axis of its input.
#[derive(Clone, Debug)]
pub struct Linear {
    in_f: usize,
    out_f: usize,
    bias: bool,
    transposed: bool,
    rows: usize,
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

/// `[N, A, B, F]` → `[N, B, A, F]` (swaps the two middle axes of each of the `n` blocks);
/// borrowed when `A` or `B` is 1 (the layout is then unchanged).
fn swap_mid<T: Float>(v: &[T], n: usize, a: usize, b: usize, f: usize) -> Cow<'_, [T]> {
    debug_assert_eq!(v.len(), n * a * b * f);
    if a == 1 || b == 1 {
        return Cow::Borrowed(v);
    }
    let per = a * b * f;
    let mut out = Vec::with_capacity(v.len());
    for blk in v.chunks_exact(per.max(1)).take(n) {
        for j in 0..b {
            for l in 0..a {
                out.extend_from_slice(&blk[(l * b + j) * f..(l * b + j + 1) * f]);
            }
        }
    }
    Cow::Owned(out)
}

/// `dst[n, b, a, :] += src[n, a, b, :]` (`src` `[N, A, B, F]`, `dst` `[N, B, A, F]`).
fn add_swap_mid<T: Float>(src: &[T], n: usize, a: usize, b: usize, f: usize, dst: &mut [T]) {
    debug_assert_eq!(src.len(), n * a * b * f);
    debug_assert_eq!(dst.len(), src.len());
    let per = a * b * f;
    for i in 0..n {
        let s = &src[i * per..(i + 1) * per];
        let d = &mut dst[i * per..(i + 1) * per];
        for l in 0..a {
            for j in 0..b {
                ops::axpy(
                    T::one(),
                    &s[(l * b + j) * f..(l * b + j + 1) * f],
                    &mut d[(j * a + l) * f..(j * a + l + 1) * f],
                );
            }
        }
    }
}

impl Linear {
    /// `in_features → out_features` on rank-1 inputs `[in_f]`, with or without bias; the weight
    /// is stored `[out, in]`.
    pub fn new(in_f: usize, out_f: usize, bias: bool) -> Self {
        Self { in_f, out_f, bias, transposed: false, rows: 1, in_shape: vec![in_f], out_shape: vec![out_f] }
    }

    /// A linear map of the last axis of inputs `in_shape = [*, in_features]` (any rank ≥ 1) to
    /// `out_features`: the output is `[*, out_features]`. With `transposed` the weight is stored
    /// `[in, out]` (Hugging Face `Conv1D`), else `[out, in]` (`nn.Linear`). Checking that the
    /// last axis is the expected `in_features` is the caller's job; an empty shape is an error.
    pub fn with_shape(in_shape: Vec<usize>, out_features: usize, bias: bool, transposed: bool) -> Result<Self, String> {
        let Some((&in_f, lead)) = in_shape.split_last() else {
            return Err("linear: the input shape must have at least one axis (the features)".into());
        };
        let rows = lead.iter().product();
        let mut out_shape = lead.to_vec();
        out_shape.push(out_features);
        Ok(Self { in_f, out_f: out_features, bias, transposed, rows, in_shape, out_shape })
    }
    /// Whether the layer has a bias.
    pub fn has_bias(&self) -> bool {
        self.bias
    }
    /// Whether the weight is stored `[in, out]` (Hugging Face `Conv1D`) instead of `[out, in]`.
    pub fn transposed(&self) -> bool {
        self.transposed
    }
    /// Rows per sample `R` (product of the input's leading axes; 1 for a rank-1 input).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Size of the last input axis.
    pub fn in_features(&self) -> usize {
        self.in_f
    }
    /// Size of the last output axis.
    pub fn out_features(&self) -> usize {
        self.out_f
    }
    fn w<'a, T>(&self, p: &'a [T]) -> &'a [T] {
        &p[..self.in_f * self.out_f]
    }
    /// Row stride and operation giving `op(W) = M` (`[in, out]`) from the stored weight.
    fn m_op(&self) -> (usize, Trans) {
        if self.transposed {
            (self.out_f, Trans::N)
        } else {
            (self.in_f, Trans::T)
        }
    }
    /// Row stride and operation giving `op(W) = Mᵀ` (`[out, in]`) from the stored weight.
    fn mt_op(&self) -> (usize, Trans) {
        if self.transposed {
            (self.out_f, Trans::T)
        } else {
            (self.in_f, Trans::N)
        }
    }
    /// `db` `[K, out]` added to every row of `dy` `[N, K, R, out]`.
    fn add_bias_rows<T: Float>(&self, db: &[T], n: usize, k: usize, dy: &mut [T]) {
        let (o, r) = (self.out_f, self.rows);
        for s in 0..n {
            for kk in 0..k {
                let b = &db[kk * o..(kk + 1) * o];
                let base = (s * k + kk) * r * o;
                for row in dy[base..base + r * o].chunks_exact_mut(o.max(1)) {
                    ops::axpy(T::one(), b, row);
                }
            }
        }
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
        let shape = if self.transposed { vec![self.in_f, self.out_f] } else { vec![self.out_f, self.in_f] };
        let mut v = vec![ParamSpec { name: "weight", shape }];
        if self.bias {
            v.push(ParamSpec { name: "bias", shape: vec![self.out_f] });
        }
        v
    }

    /// One map: the `R` rows of a sample are the positions sharing `W` (`[out, in]`, or stored
    /// `[in, out]` when transposed); inputs are the input rows `[N, R, in]`, output cotangents
    /// the node's own `[N, K, R, out]`.
    fn kfac_maps(&self) -> Vec<KfacMap> {
        vec![KfacMap {
            name: "",
            weight: 0,
            bias: self.bias.then_some(1),
            out: self.out_f,
            inp: self.in_f,
            positions: self.rows,
            transposed: self.transposed,
            layout: KfacLayout::Rows,
            one_hot: false,
        }]
    }
    fn kfac_inputs<'a>(&self, c: &Ctx<'a, T>, _map: usize) -> Cow<'a, [T]> {
        Cow::Borrowed(c.x)
    }
    fn kfac_output_cotangents<'g>(&self, _c: &Ctx<T>, _map: usize, g: &'g [T], _k: usize) -> Cow<'g, [T]> {
        Cow::Borrowed(g)
    }

    fn forward(&self, p: &[T], x: &[T], n: usize) -> (Vec<T>, Aux<T>) {
        let (i, o) = (self.in_f, self.out_f);
        let (ld, t) = self.m_op();
        let mut y = gemm_new(n * self.rows, o, i, x, i, Trans::N, self.w(p), ld, t);
        if self.bias {
            let b = &p[i * o..i * o + o];
            for row in y.chunks_exact_mut(o.max(1)) {
                ops::axpy(T::one(), b, row);
            }
        }
        (y, Aux::None)
    }

    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        let (i, o) = (self.in_f, self.out_f);
        let (ld, t) = self.m_op();
        gemm_new(c.n * k * self.rows, o, i, dx, i, Trans::N, self.w(c.p), ld, t)
    }

    fn jvp_param(&self, c: &Ctx<T>, dp: &ParamIn<T>, k: usize, dy: &mut [T]) {
        let (i, o, n, r) = (self.in_f, self.out_f, c.n, self.rows);
        if let Some(dw) = dp[0] {
            // B = [dM_1 … dM_K] as an [in, K·out] matrix
            let (b, ldb, tb): (Cow<[T]>, usize, Trans) = if self.transposed {
                // dW [K, in, out] → [in, K, out]
                (swap_mid(dw, 1, k, i, o), k * o, Trans::N)
            } else {
                // dW [K·out, in], transposed
                (Cow::Borrowed(dw), i, Trans::T)
            };
            if r == 1 {
                // [N, in] × [in, K·out] is exactly the [N, K, out] layout
                gemm(n, k * o, i, T::one(), c.x, i, Trans::N, &b, ldb, tb, T::one(), dy, k * o);
            } else {
                let tmp = gemm_new(n * r, k * o, i, c.x, i, Trans::N, &b, ldb, tb); // [N, R, K, out]
                add_swap_mid(&tmp, n, r, k, o, dy);
            }
        }
        if self.bias {
            if let Some(db) = dp[1] {
                self.add_bias_rows(db, n, k, dy);
            }
        }
    }

    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        let (i, o) = (self.in_f, self.out_f);
        let (ld, t) = self.mt_op();
        gemm_new(c.n * k * self.rows, i, o, g, o, Trans::N, self.w(c.p), ld, t)
    }

    fn vjp_param(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        let (i, o, n, r) = (self.in_f, self.out_f, c.n, self.rows);
        let want_b = self.bias && out.get(1).is_some_and(Option::is_some);
        if out[0].is_none() && !want_b {
            return;
        }
        // G as [N·R, K·out] (rows of the batch, all tangents side by side)
        let gp = swap_mid(g, n, k, r, o);
        if let Some(gw) = out[0].as_deref_mut() {
            if self.transposed {
                // ∇W_k [in, out] += Xᵀ G_k
                for kk in 0..k {
                    gemm(
                        i,
                        o,
                        n * r,
                        T::one(),
                        c.x,
                        i,
                        Trans::T,
                        &gp[kk * o..],
                        k * o,
                        Trans::N,
                        T::one(),
                        &mut gw[kk * i * o..(kk + 1) * i * o],
                        o,
                    );
                }
            } else {
                // [K·out, N·R] × [N·R, in]
                gemm(k * o, i, n * r, T::one(), &gp, k * o, Trans::T, c.x, i, Trans::N, T::one(), gw, i);
            }
        }
        if want_b {
            if let Some(gb) = out[1].as_deref_mut() {
                ops::sum_rows_into(&gp, n * r, k * o, T::one(), gb);
            }
        }
    }

    fn vjp_param_per_sample(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        let (i, o, n, r) = (self.in_f, self.out_f, c.n, self.rows);
        if let Some(gw) = out[0].as_deref_mut() {
            let gp = swap_mid(g, n, k, r, o); // [N, R, K·out]
            for s in 0..n {
                let gs = &gp[s * r * k * o..(s + 1) * r * k * o];
                let xs = &c.x[s * r * i..(s + 1) * r * i];
                let dst = &mut gw[s * k * o * i..(s + 1) * k * o * i];
                if self.transposed {
                    for kk in 0..k {
                        // [in, R] × [R, out]
                        gemm(
                            i,
                            o,
                            r,
                            T::one(),
                            xs,
                            i,
                            Trans::T,
                            &gs[kk * o..],
                            k * o,
                            Trans::N,
                            T::zero(),
                            &mut dst[kk * i * o..(kk + 1) * i * o],
                            o,
                        );
                    }
                } else {
                    // [K·out, R] × [R, in] (an outer product for R = 1)
                    gemm(k * o, i, r, T::one(), gs, k * o, Trans::T, xs, i, Trans::N, T::zero(), dst, i);
                }
            }
        }
        if self.bias {
            if let Some(gb) = out[1].as_deref_mut() {
                if r == 1 {
                    gb.copy_from_slice(g);
                } else {
                    gb.fill(T::zero());
                    for (dst, src) in gb.chunks_exact_mut(o.max(1)).zip(g.chunks_exact((r * o).max(1))) {
                        ops::sum_rows_into(src, r, o, T::one(), dst);
                    }
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
        let (i, o, n, r) = (self.in_f, self.out_f, c.n, self.rows);
        // R(∇θ) = vjp_param(R(G)) + the R(X) term of ∇M
        self.vjp_param(c, rg, k, rgrad);
        if let (Some(rx), Some(gw)) = (rx, rgrad[0].as_deref_mut()) {
            let rxp = swap_mid(rx, n, k, r, i); // [N·R, K·in]
            for kk in 0..k {
                let dst = &mut gw[kk * o * i..(kk + 1) * o * i];
                if self.transposed {
                    // R(X_k)ᵀ G: [in, N·R] × [N·R, out]
                    gemm(i, o, n * r, T::one(), &rxp[kk * i..], k * i, Trans::T, g, o, Trans::N, T::one(), dst, o);
                } else {
                    // Gᵀ R(X_k): [out, N·R] × [N·R, in]
                    gemm(o, i, n * r, T::one(), g, o, Trans::T, &rxp[kk * i..], k * i, Trans::N, T::one(), dst, i);
                }
            }
        }
        if !want_input {
            return None;
        }
        let mut rgx = self.vjp_input(c, rg, k);
        if let Some(dw) = dp[0] {
            let (ld, t) = self.mt_op();
            // G dM_kᵀ for each k, as [N·R, K·in]
            let mut tmp = if r == 1 { Vec::new() } else { vec![T::zero(); n * r * k * i] };
            for kk in 0..k {
                let dwk = &dw[kk * o * i..(kk + 1) * o * i];
                let (dst, beta): (&mut [T], T) =
                    if r == 1 { (&mut rgx[kk * i..], T::one()) } else { (&mut tmp[kk * i..], T::zero()) };
                gemm(n * r, i, o, T::one(), g, o, Trans::N, dwk, ld, t, beta, dst, k * i);
            }
            if r > 1 {
                add_swap_mid(&tmp, n, r, k, i, &mut rgx);
            }
        }
        Some(rgx)
    }

    /// `R = 1`: the per-sample gradients are rank one, `∇W = g xᵀ`, so `Σ_k w (∇W)² = q (x²)ᵀ`
    /// with `q_n = Σ_k w_nk g_nk²`, and over the batch one GEMM `Qᵀ X²` (`∇b`: `Σ_n q_n`).
    /// `R > 1`: `∇W = Σ_r g_r x_rᵀ` does not factor after squaring; the per-sample gradients are
    /// formed for chunks of samples (`[chunk, K, size]`) and squared.
    fn sq_grad_diag(&self, c: &Ctx<T>, g: &[T], k: usize, w: &[T], out: &mut ParamOut<T>) {
        let (i, o, n, r) = (self.in_f, self.out_f, c.n, self.rows);
        if r > 1 {
            let per = k * (i * o + o);
            let chunk = ((1usize << 20) / per.max(1)).clamp(1, n.max(1));
            for s0 in (0..n).step_by(chunk) {
                let m = chunk.min(n - s0);
                let xs = [&c.x[s0 * r * i..(s0 + m) * r * i]];
                let cs = Ctx { p: c.p, x: xs[0], xs: &xs, y: &c.y[s0 * r * o..(s0 + m) * r * o], aux: c.aux, n: m };
                let gs = &g[s0 * k * r * o..(s0 + m) * k * r * o];
                super::sq_grad_diag_per_sample(self, &cs, gs, k, &w[s0 * k..(s0 + m) * k], out);
            }
            return;
        }
        let want_b = self.bias && out.get(1).is_some_and(Option::is_some);
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
        if let Some(gw) = out[0].as_deref_mut() {
            let x2: Vec<T> = c.x.iter().map(|v| *v * *v).collect();
            if self.transposed {
                gemm(i, o, n, T::one(), &x2, i, Trans::T, &q, o, Trans::N, T::one(), gw, o);
            } else {
                gemm(o, i, n, T::one(), &q, o, Trans::T, &x2, i, Trans::N, T::one(), gw, i);
            }
        }
        if want_b {
            if let Some(gb) = out[1].as_deref_mut() {
                ops::sum_rows_into(&q, n, o, T::one(), gb);
            }
        }
    }

    fn grad_factor_shape(&self) -> Option<GradFactorShape> {
        Some(GradFactorShape { groups: 1, j: self.in_f, o: self.out_f, l: self.rows })
    }

    /// Factored: `U_n = X_nᵀ` (`[in, R]`), `G_a = g_aᵀ` (`[out, R]`).
    fn gram_features(&self, c: &Ctx<T>, g: &[T], k: usize, factored: bool, want: &[bool]) -> GramFeatures<T> {
        if !factored {
            return super::per_sample_gram_features(self, c, g, k, want);
        }
        let (i, o, n, r) = (self.in_f, self.out_f, c.n, self.rows);
        let u = if want.first().copied().unwrap_or(false) { transpose_blocks(c.x, n, r, i) } else { Vec::new() };
        let g = transpose_blocks(g, n * k, r, o);
        GramFeatures::Factored(GradFactors { shape: GradFactorShape { groups: 1, j: i, o, l: r }, u, g })
    }
}

/// `[B, R, F]` → `[B, F, R]` (a copy; no reordering for `R = 1`).
fn transpose_blocks<T: Float>(v: &[T], b: usize, r: usize, f: usize) -> Vec<T> {
    if r == 1 {
        return v[..b * f].to_vec();
    }
    let mut out = vec![T::zero(); b * r * f];
    for blk in 0..b {
        let (src, dst) = (&v[blk * r * f..(blk + 1) * r * f], &mut out[blk * r * f..(blk + 1) * r * f]);
        for rr in 0..r {
            for ff in 0..f {
                dst[ff * r + rr] = src[rr * f + ff];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{check_rules, rel_err};
    use curvops_tensor::rng::Rng;

    fn randn(r: &mut Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| r.normal()).collect()
    }

    #[test]
    fn rules_on_every_rank_and_layout() {
        let mut rng = Rng::new(3);
        let shapes: [Vec<usize>; 5] = [vec![5], vec![1], vec![3, 4], vec![2, 3, 5], vec![1, 2]];
        for (si, shape) in shapes.iter().enumerate() {
            for bias in [true, false] {
                for transposed in [false, true] {
                    for n in [1, 3] {
                        let out_f = 1 + (si + n) % 4;
                        let l = Linear::with_shape(shape.clone(), out_f, bias, transposed).unwrap();
                        let p = randn(&mut rng, Layer::<f64>::num_params(&l));
                        let x = randn(&mut rng, n * Layer::<f64>::in_size(&l));
                        let name = format!("linear {shape:?}→{out_f} bias={bias} transposed={transposed} n={n}");
                        check_rules(&name, &l, &p, &[x], &[true], n, 1e-6);
                    }
                }
            }
        }
    }

    #[test]
    fn shapes_and_accessors() {
        let l = Linear::with_shape(vec![2, 3, 5], 4, true, true).unwrap();
        assert_eq!(Layer::<f64>::out_shape(&l), &[2, 3, 4]);
        assert_eq!((l.rows(), l.in_features(), l.out_features(), l.transposed(), l.has_bias()), (6, 5, 4, true, true));
        let specs = Layer::<f64>::params(&l);
        assert_eq!(specs[0].shape, vec![5, 4]);
        assert_eq!(specs[1].shape, vec![4]);
        let l = Linear::new(3, 2, false);
        assert_eq!(Layer::<f64>::params(&l)[0].shape, vec![2, 3]);
        assert_eq!((l.rows(), l.transposed()), (1, false));
        assert!(Linear::with_shape(vec![], 3, true, false).is_err());
    }

    /// The transposed layout with weight `Wᵀ` is the same map as the default one with `W`, rule
    /// by rule (parameter-space outputs transposed accordingly).
    #[test]
    fn transposed_equals_default_with_transposed_weight() {
        let mut rng = Rng::new(11);
        let (shape, i, o, n, k) = (vec![3, 4], 4, 5, 2, 2);
        let a = Linear::with_shape(shape.clone(), o, true, false).unwrap();
        let b = Linear::with_shape(shape, o, true, true).unwrap();
        let tr = |w: &[f64], rows: usize, cols: usize| -> Vec<f64> {
            let mut t = vec![0.0; w.len()];
            for r in 0..rows {
                for c in 0..cols {
                    t[c * rows + r] = w[r * cols + c];
                }
            }
            t
        };
        // [K, rows, cols] → [K, cols, rows]
        let tr_k = |w: &[f64], kk: usize, rows: usize, cols: usize| -> Vec<f64> {
            w.chunks_exact(rows * cols).take(kk).flat_map(|m| tr(m, rows, cols)).collect()
        };
        let wa = randn(&mut rng, o * i);
        let bias = randn(&mut rng, o);
        let pa: Vec<f64> = wa.iter().chain(&bias).copied().collect();
        let pb: Vec<f64> = tr(&wa, o, i).iter().chain(&bias).copied().collect();
        let x = randn(&mut rng, n * 12);
        let (ya, _) = a.forward(&pa, &x, n);
        let (yb, _) = b.forward(&pb, &x, n);
        assert!(rel_err(&yb, &ya) < 1e-14);
        let xr: &[f64] = &x;
        let ca = Ctx { p: &pa, x: &x, xs: std::slice::from_ref(&xr), y: &ya, aux: &Aux::None, n };
        let cb = Ctx { p: &pb, x: &x, xs: std::slice::from_ref(&xr), y: &yb, aux: &Aux::None, n };
        let g = randn(&mut rng, n * k * 3 * o);
        // parameter tangents
        let dwa = randn(&mut rng, k * o * i);
        let dwb = tr_k(&dwa, k, o, i);
        let db = randn(&mut rng, k * o);
        let mut ja = vec![0.0; n * k * 3 * o];
        let mut jb = ja.clone();
        a.jvp_param(&ca, &[Some(dwa.as_slice()), Some(db.as_slice())], k, &mut ja);
        b.jvp_param(&cb, &[Some(dwb.as_slice()), Some(db.as_slice())], k, &mut jb);
        assert!(rel_err(&jb, &ja) < 1e-14);
        assert!(rel_err(&b.vjp_input(&cb, &g, k), &a.vjp_input(&ca, &g, k)) < 1e-14);
        let (mut ga, mut gb) = (vec![0.0; k * o * i], vec![0.0; k * o * i]);
        a.vjp_param(&ca, &g, k, &mut [Some(ga.as_mut_slice()), None]);
        b.vjp_param(&cb, &g, k, &mut [Some(gb.as_mut_slice()), None]);
        assert!(rel_err(&gb, &tr_k(&ga, k, o, i)) < 1e-14);
        let (mut pa_s, mut pb_s) = (vec![0.0; n * k * o * i], vec![0.0; n * k * o * i]);
        a.vjp_param_per_sample(&ca, &g, k, &mut [Some(pa_s.as_mut_slice()), None]);
        b.vjp_param_per_sample(&cb, &g, k, &mut [Some(pb_s.as_mut_slice()), None]);
        assert!(rel_err(&pb_s, &tr_k(&pa_s, n * k, o, i)) < 1e-14);
        // R-op
        let g1 = randn(&mut rng, n * 3 * o);
        let rx = randn(&mut rng, n * k * 12);
        let (mut ra, mut rb) = (vec![0.0; k * o * i], vec![0.0; k * o * i]);
        let xa = a.hvp_backward(
            &ca,
            Some(rx.as_slice()),
            &[Some(dwa.as_slice()), Some(db.as_slice())],
            &g1,
            &g,
            k,
            &mut [Some(ra.as_mut_slice()), None],
            true,
        );
        let xb = b.hvp_backward(
            &cb,
            Some(rx.as_slice()),
            &[Some(dwb.as_slice()), Some(db.as_slice())],
            &g1,
            &g,
            k,
            &mut [Some(rb.as_mut_slice()), None],
            true,
        );
        assert!(rel_err(&xb.unwrap(), &xa.unwrap()) < 1e-14);
        assert!(rel_err(&rb, &tr_k(&ra, k, o, i)) < 1e-14);
    }

    /// Rows of a rank-3 input are independent rank-1 applications of the same layer.
    #[test]
    fn rows_are_rank1_applications() {
        let mut rng = Rng::new(5);
        let l = Linear::with_shape(vec![2, 3, 4], 3, true, false).unwrap();
        let l1 = Linear::new(4, 3, true);
        let p = randn(&mut rng, 15);
        let x = randn(&mut rng, 2 * 24);
        let (y, _) = l.forward(&p, &x, 2);
        let (y1, _) = l1.forward(&p, &x, 12);
        assert!(rel_err(&y, &y1) < 1e-14);
    }
}
