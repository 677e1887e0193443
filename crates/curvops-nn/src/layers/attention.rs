//! `multihead_attention`: self-attention as `nn.MultiheadAttention(E, H, bias=True,
//! batch_first=True)` called with `query = key = value = x` (no dropout), optionally causal.
//!
//! # Forward
//!
//! Per sample the input `X` is `[T, E]` (row-major), `H` heads of width `d = E/H`, `c = 1/√d`:
//!
//! * `A = X W_inᵀ + 1 b_inᵀ` (`[T, 3E]`); `Q, K, V` are its column blocks `[0,E)`, `[E,2E)`,
//!   `[2E,3E)`, and `Q_h, K_h, V_h` the columns `h·d..(h+1)·d` of each.
//! * per head: `S = c Q_h K_hᵀ` (`[T, T]`), `P = softmax(S)` row-wise, `O_h = P V_h`. With
//!   `causal`, row `t` attends to keys `s ≤ t` only (PyTorch's `attn_mask = ones(T,T).triu(1)`):
//!   the softmax runs over the unmasked entries and masked entries of `P` are exactly 0 (no `−∞`
//!   is ever formed, so no `−∞·0`).
//! * `O = [O_1 | … | O_H]` (`[T, E]`), `Y = O W_outᵀ + 1 b_outᵀ`.
//!
//! The forward pass keeps `Aux::Cols([A | P | O])`: `A` `[N·T, 3E]`, `P` `[N, H, T, T]`, `O`
//! `[N·T, E]`.
//!
//! # Rules
//!
//! The softmax Jacobian is symmetric, `J_P v = P ⊙ (v − rowsum(P ⊙ v))`, so it serves as both
//! the JVP and the VJP of the softmax.
//!
//! * JVP: `dA = dX W_inᵀ + X dW_inᵀ + 1 db_inᵀ`, `dS = c (dQ_h K_hᵀ + Q_h dK_hᵀ)`,
//!   `dP = J_P dS`, `dO_h = dP V_h + P dV_h`, `dY = dO W_outᵀ + O dW_outᵀ + 1 db_outᵀ`.
//! * VJP: `gO = G W_out`, `∇W_out = Gᵀ O`, `∇b_out = Σ_t G`; per head `gP = gO_h V_hᵀ`,
//!   `gV_h = Pᵀ gO_h`, `gS = J_P gP`, `gQ_h = c gS K_h`, `gK_h = c gSᵀ Q_h`; then
//!   `G_X = gA W_in`, `∇W_in = gAᵀ X`, `∇b_in = Σ_t gA`.
//! * R-op (forward-over-reverse): with the forward tangents `R(A), R(P), R(O)` of the JVP
//!   (directions `R(X)`, `dW_in`, `db_in`):
//!   * `R(gO) = R(G) W_out + G dW_out`, `R(∇W_out) = R(G)ᵀ O + Gᵀ R(O)`, `R(∇b_out) = Σ_t R(G)`;
//!   * `R(gP) = R(gO_h) V_hᵀ + gO_h R(V_h)ᵀ`, `R(gV_h) = R(P)ᵀ gO_h + Pᵀ R(gO_h)`;
//!   * `R(gS) = R(P) ⊙ (gP − r) + P ⊙ (R(gP) − rowsum(R(P) ⊙ gP + P ⊙ R(gP)))` with
//!     `r = rowsum(P ⊙ gP)` (the softmax's second derivative is the `R(P)` part);
//!   * `R(gQ_h) = c (R(gS) K_h + gS R(K_h))`, `R(gK_h) = c (R(gS)ᵀ Q_h + gSᵀ R(Q_h))`;
//!   * `R(G_X) = R(gA) W_in + gA dW_in`, `R(∇W_in) = R(gA)ᵀ X + gAᵀ R(X)`,
//!     `R(∇b_in) = Σ_t R(gA)`.
//!
//! # Layouts
//!
//! Tangents come as `[N, K, T, S]` ("kt"). Products with a per-sample primal matrix shared by
//! all `K` tangents (`X dW_inᵀ`, `G dW_out`, `gAᵀ R(X)`, …) are cheapest on `[N, T, K, S]` ("tk"):
//! there the `K` tangents form one `[N·T, K·S]` matrix (one GEMM for all of them) and tangent `k`
//! alone is a strided `[N·T, S]` matrix (one GEMM over the whole batch). Row-wise products (with
//! `W_in`, `W_out`) do not care about the layout. The per-sample attention core reads either.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut, ParamSpec};
use super::{KfacLayout, KfacMap};
use curvops_tensor::gemm::gemm_new;
use curvops_tensor::threads::{for_each_item, for_each_item_with};
use curvops_tensor::{gemm, ops, Float, Trans};
use std::borrow::Cow;

/// Multi-head self-attention (`query = key = value = x`) with input and output projections.
///
/// Parameters (state-dict order): `in_proj_weight` `[3E, E]`, `in_proj_bias` `[3E]`,
/// `out_proj.weight` `[E, E]`, `out_proj.bias` `[E]`. Input and output are `[T, E]` per sample.
#[derive(Clone, Debug)]
pub struct MultiheadAttention {
    t: usize,
    e: usize,
    heads: usize,
    causal: bool,
    shape: Vec<usize>,
}

impl MultiheadAttention {
    /// Self-attention over `t` positions of width `e` with `num_heads` heads (`e` must be a
    /// multiple of `num_heads`); with `causal`, position `t` does not attend to positions `s > t`.
    pub fn new(t: usize, e: usize, num_heads: usize, causal: bool) -> Result<Self, String> {
        if t == 0 || e == 0 || num_heads == 0 {
            return Err(format!(
                "multihead_attention: sizes must be positive (seq_len {t}, embed_dim {e}, num_heads {num_heads})"
            ));
        }
        if !e.is_multiple_of(num_heads) {
            return Err(format!("embed_dim {e} is not divisible by num_heads {num_heads}"));
        }
        Ok(Self { t, e, heads: num_heads, causal, shape: vec![t, e] })
    }
    /// The embedding width `E`.
    pub fn embed_dim(&self) -> usize {
        self.e
    }
    /// The number of heads `H`.
    pub fn num_heads(&self) -> usize {
        self.heads
    }
    /// The sequence length `T`.
    pub fn seq_len(&self) -> usize {
        self.t
    }
    /// Whether the attention is causal (position `t` sees positions `s ≤ t` only).
    pub fn causal(&self) -> bool {
        self.causal
    }
    /// The width of one head, `d = E/H`.
    pub fn head_dim(&self) -> usize {
        self.e / self.heads
    }

    /// Score scale `c = 1/√d`.
    fn scale<T: Float>(&self) -> T {
        T::of(1.0 / (self.head_dim() as f64).sqrt())
    }
    /// `(W_in, b_in, W_out, b_out)` from the concatenated parameters.
    fn weights<'a, T>(&self, p: &'a [T]) -> (&'a [T], &'a [T], &'a [T], &'a [T]) {
        let e = self.e;
        let (w_in, rest) = p.split_at(3 * e * e);
        let (b_in, rest) = rest.split_at(3 * e);
        let (w_out, b_out) = rest.split_at(e * e);
        (w_in, b_in, w_out, &b_out[..e])
    }
    /// The forward quantities kept in `Aux::Cols`.
    fn fwd<'a, T>(&self, c: &Ctx<'a, T>) -> Fwd<'a, T> {
        let Aux::Cols(v) = c.aux else { panic!("multihead_attention: the forward pass keeps Aux::Cols") };
        let (t, e, n) = (self.t, self.e, c.n);
        let (qkv, rest) = v.split_at(n * t * 3 * e);
        let (p, o) = rest.split_at(n * self.heads * t * t);
        Fwd { qkv, p, o, t, e, h: self.heads }
    }

    /// One sample's attention: `P_h = softmax(c Q_h K_hᵀ)` into `p` (`[H, T, T]`) and
    /// `O_h = P_h V_h` into `o` (`[T, E]`), from `a = [Q | K | V]` (`[T, 3E]`).
    fn attend<T: Float>(&self, a: &[T], p: &mut [T], o: &mut [T]) {
        let (t, e, d) = (self.t, self.e, self.head_dim());
        for (h, ph) in p.chunks_exact_mut(t * t).enumerate() {
            let (q, kh, v) = head_cols(a, e, h * d);
            mm([t, t, d], self.scale(), mat(q, 3 * e), mat(kh, 3 * e).tr(), false, ph, t);
            softmax_rows(ph, t, self.causal);
            mm([t, d, t], T::one(), mat(ph, t), mat(v, 3 * e), false, &mut o[h * d..], e);
        }
    }

    /// Attention-core JVP for one sample: `dO` (K blocks of `[T, E]`) from `dA` (K blocks of
    /// `[T, 3E]`), both laid out by `lay`. Every entry of `d_o` is written. `sc`: `T·T` scratch.
    fn core_jvp<T: Float>(&self, a: &[T], p: &[T], da: &[T], d_o: &mut [T], lay: Lay, sc: &mut [T]) {
        let (t, e, d) = (self.t, self.e, self.head_dim());
        let c = self.scale();
        for kk in 0..lay.k {
            let (oa, la) = lay.block(kk, 3 * e);
            let (oo, lo) = lay.block(kk, e);
            for (h, ph) in p.chunks_exact(t * t).enumerate() {
                let (q, kh, v) = head_cols(a, e, h * d);
                let (dq, dk, dv) = head_cols(&da[oa..], e, h * d);
                // dS = c (dQ Kᵀ + Q dKᵀ), dP = J_P dS
                mm([t, t, d], c, mat(dq, la), mat(kh, 3 * e).tr(), false, sc, t);
                mm([t, t, d], c, mat(q, 3 * e), mat(dk, la).tr(), true, sc, t);
                softmax_jac(ph, sc, t, self.causal);
                // dO_h = dP V + P dV
                let out = &mut d_o[oo + h * d..];
                mm([t, d, t], T::one(), mat(sc, t), mat(v, 3 * e), false, out, lo);
                mm([t, d, t], T::one(), mat(ph, t), mat(dv, la), true, out, lo);
            }
        }
    }

    /// Attention-core VJP for one sample: `gA` (K blocks of `[T, 3E]`) from `gO` (K blocks of
    /// `[T, E]`), both laid out by `lay`. Every entry of `ga` is written. `sc`: `T·T` scratch.
    fn core_vjp<T: Float>(&self, a: &[T], p: &[T], go: &[T], ga: &mut [T], lay: Lay, sc: &mut [T]) {
        let (t, e, d) = (self.t, self.e, self.head_dim());
        let c = self.scale();
        for kk in 0..lay.k {
            let (oa, la) = lay.block(kk, 3 * e);
            let (og, lg) = lay.block(kk, e);
            for (h, ph) in p.chunks_exact(t * t).enumerate() {
                let (q, kh, v) = head_cols(a, e, h * d);
                let goh = &go[og + h * d..];
                // gP = gO_h Vᵀ, gV = Pᵀ gO_h
                mm([t, t, d], T::one(), mat(goh, lg), mat(v, 3 * e).tr(), false, sc, t);
                mm([t, d, t], T::one(), mat(ph, t).tr(), mat(goh, lg), false, &mut ga[oa + 2 * e + h * d..], la);
                // gS = J_P gP, gQ = c gS K, gK = c gSᵀ Q
                softmax_jac(ph, sc, t, self.causal);
                mm([t, d, t], c, mat(sc, t), mat(kh, 3 * e), false, &mut ga[oa + h * d..], la);
                mm([t, d, t], c, mat(sc, t).tr(), mat(q, 3 * e), false, &mut ga[oa + e + h * d..], la);
            }
        }
    }

    /// The R-op of the attention core for one sample with a nonzero forward tangent `R(A)`
    /// (all tangent buffers "tk"): writes the primal `gA` (`[T, 3E]`), `R(O)` (`[T, K, E]`) and
    /// `R(gA)` (`[T, K, 3E]`) where wanted. `R(gO)` must be given when `R(gA)` is wanted.
    fn core_hvp<T: Float>(&self, s: &HvpIn<T>, k: usize, out: HvpOut<T>, sc: &mut HvpScratch<T>) {
        let (t, e, d) = (self.t, self.e, self.head_dim());
        let c = self.scale();
        let one = T::one();
        let lay = Lay { k, t, tk: true };
        let HvpOut { mut ga, mut ro, mut rga } = out;
        let HvpScratch { gp, gs, r, rp, rgp } = sc;
        for (h, ph) in s.p.chunks_exact(t * t).enumerate() {
            let (q, kh, v) = head_cols(s.a, e, h * d);
            let goh = &s.go[h * d..];
            // primal: gP = gO_h Vᵀ, r = rowsum(P ⊙ gP), gS = P ⊙ (gP − r)
            mm([t, t, d], one, mat(goh, e), mat(v, 3 * e).tr(), false, gp, t);
            softmax_vjp_parts(ph, gp, r, gs, t, self.causal);
            if let Some(ga) = ga.as_deref_mut() {
                mm([t, d, t], one, mat(ph, t).tr(), mat(goh, e), false, &mut ga[2 * e + h * d..], 3 * e);
                mm([t, d, t], c, mat(gs, t), mat(kh, 3 * e), false, &mut ga[h * d..], 3 * e);
                mm([t, d, t], c, mat(gs, t).tr(), mat(q, 3 * e), false, &mut ga[e + h * d..], 3 * e);
            }
            for kk in 0..k {
                let (oa, la) = lay.block(kk, 3 * e);
                let (oo, lo) = lay.block(kk, e);
                let (rq, rk, rv) = head_cols(&s.ra[oa..], e, h * d);
                // R(S) = c (R(Q) Kᵀ + Q R(K)ᵀ), R(P) = J_P R(S)
                mm([t, t, d], c, mat(rq, la), mat(kh, 3 * e).tr(), false, rp, t);
                mm([t, t, d], c, mat(q, 3 * e), mat(rk, la).tr(), true, rp, t);
                softmax_jac(ph, rp, t, self.causal);
                if let Some(ro) = ro.as_deref_mut() {
                    // R(O_h) = R(P) V + P R(V)
                    let out = &mut ro[oo + h * d..];
                    mm([t, d, t], one, mat(rp, t), mat(v, 3 * e), false, out, lo);
                    mm([t, d, t], one, mat(ph, t), mat(rv, la), true, out, lo);
                }
                let (Some(rga), Some(rgo)) = (rga.as_deref_mut(), s.rgo) else { continue };
                let rgoh = &rgo[oo + h * d..];
                // R(gP) = R(gO_h) Vᵀ + gO_h R(V)ᵀ
                mm([t, t, d], one, mat(rgoh, lo), mat(v, 3 * e).tr(), false, rgp, t);
                mm([t, t, d], one, mat(goh, e), mat(rv, la).tr(), true, rgp, t);
                // R(gV) = R(P)ᵀ gO_h + Pᵀ R(gO_h)
                let out = &mut rga[oa + 2 * e + h * d..];
                mm([t, d, t], one, mat(rp, t).tr(), mat(goh, e), false, out, la);
                mm([t, d, t], one, mat(ph, t).tr(), mat(rgoh, lo), true, out, la);
                // R(gS), then R(gQ) = c (R(gS) K + gS R(K)), R(gK) = c (R(gS)ᵀ Q + gSᵀ R(Q))
                softmax_rvjp(ph, rp, gp, r, rgp, t, self.causal);
                let out = &mut rga[oa + h * d..];
                mm([t, d, t], c, mat(rgp, t), mat(kh, 3 * e), false, out, la);
                mm([t, d, t], c, mat(gs, t), mat(rk, la), true, out, la);
                let out = &mut rga[oa + e + h * d..];
                mm([t, d, t], c, mat(rgp, t).tr(), mat(q, 3 * e), false, out, la);
                mm([t, d, t], c, mat(gs, t).tr(), mat(rq, la), true, out, la);
            }
        }
    }

    /// [`Self::core_jvp`] over the batch: `dO` from `dA`, laid out by `lay`.
    fn batch_jvp<T: Float>(&self, f: &Fwd<T>, da: &[T], lay: Lay) -> Vec<T> {
        let (t, e) = (self.t, self.e);
        let (ia, io) = (lay.k * t * 3 * e, lay.k * t * e);
        let mut d_o = vec![T::zero(); f.n() * io];
        for_each_item_with(
            &mut d_o,
            io,
            || vec![T::zero(); t * t],
            |sc, s, out| self.core_jvp(f.a(s), f.p(s), &da[s * ia..(s + 1) * ia], out, lay, sc),
        );
        d_o
    }

    /// [`Self::core_vjp`] over the batch: `gA` from `gO`, laid out by `lay`.
    fn batch_vjp<T: Float>(&self, f: &Fwd<T>, go: &[T], lay: Lay) -> Vec<T> {
        let (t, e) = (self.t, self.e);
        let (ia, io) = (lay.k * t * 3 * e, lay.k * t * e);
        let mut ga = vec![T::zero(); f.n() * ia];
        for_each_item_with(
            &mut ga,
            ia,
            || vec![T::zero(); t * t],
            |sc, s, out| self.core_vjp(f.a(s), f.p(s), &go[s * io..(s + 1) * io], out, lay, sc),
        );
        ga
    }
}

impl<T: Float> Layer<T> for MultiheadAttention {
    fn kind(&self) -> &'static str {
        "multihead_attention"
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
        let e = self.e;
        vec![
            ParamSpec { name: "in_proj_weight", shape: vec![3 * e, e] },
            ParamSpec { name: "in_proj_bias", shape: vec![3 * e] },
            ParamSpec { name: "out_proj.weight", shape: vec![e, e] },
            ParamSpec { name: "out_proj.bias", shape: vec![e] },
        ]
    }

    /// Two maps over the `T` tokens (curvlinops treats them as two `nn.Linear` layers):
    /// * `in_proj`: `A = X W_inᵀ + 1 b_inᵀ`, input `X` (`[N, T, E]`), output cotangent the
    ///   cotangent at `A = [Q | K | V]`, `gA` (`[N, K, T, 3E]`), from the node's output cotangent
    ///   `G` by the backward pass of the rest of the node (`gO = G W_out`, then the attention
    ///   core's VJP, see the module docs);
    /// * `out_proj`: `Y = O W_outᵀ + 1 b_outᵀ`, input the concatenated heads `O` (`[N, T, E]`,
    ///   kept by the forward pass), output cotangent `G` itself.
    fn kfac_maps(&self) -> Vec<KfacMap> {
        let (t, e) = (self.t, self.e);
        let map = |name, weight, out| KfacMap {
            name,
            weight,
            bias: Some(weight + 1),
            out,
            inp: e,
            positions: t,
            transposed: false,
            layout: KfacLayout::Rows,
            one_hot: false,
        };
        vec![map("in_proj", 0, 3 * e), map("out_proj", 2, e)]
    }
    fn kfac_inputs<'a>(&self, c: &Ctx<'a, T>, map: usize) -> Cow<'a, [T]> {
        match map {
            0 => Cow::Borrowed(c.x),
            _ => Cow::Borrowed(self.fwd(c).o),
        }
    }
    fn kfac_output_cotangents<'g>(&self, c: &Ctx<T>, map: usize, g: &'g [T], k: usize) -> Cow<'g, [T]> {
        if map != 0 {
            return Cow::Borrowed(g);
        }
        let (t, e) = (self.t, self.e);
        let (_, _, w_out, _) = self.weights(c.p);
        let go = gemm_new(c.n * k * t, e, e, g, e, Trans::N, w_out, e, Trans::N);
        Cow::Owned(self.batch_vjp(&self.fwd(c), &go, Lay { k, t, tk: false }))
    }

    fn forward(&self, p: &[T], x: &[T], n: usize) -> (Vec<T>, Aux<T>) {
        let (t, e, h) = (self.t, self.e, self.heads);
        let nt = n * t;
        let (w_in, b_in, w_out, b_out) = self.weights(p);
        let mut aux = vec![T::zero(); nt * 3 * e + n * h * t * t + nt * e];
        let (qkv, rest) = aux.split_at_mut(nt * 3 * e);
        let (pr, o) = rest.split_at_mut(n * h * t * t);
        gemm(nt, 3 * e, e, T::one(), x, e, Trans::N, w_in, e, Trans::T, T::zero(), qkv, 3 * e);
        add_rows(b_in, qkv);
        let qkv: &[T] = qkv;
        {
            let mut items: Vec<(&mut [T], &mut [T])> = pr.chunks_mut(h * t * t).zip(o.chunks_mut(t * e)).collect();
            for_each_item(&mut items, 1, |s, it| {
                let (ps, os) = &mut it[0];
                self.attend(&qkv[s * t * 3 * e..(s + 1) * t * 3 * e], ps, os);
            });
        }
        let mut y = gemm_new(nt, e, e, o, e, Trans::N, w_out, e, Trans::T);
        add_rows(b_out, &mut y);
        (y, Aux::Cols(aux))
    }

    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        let (t, e) = (self.t, self.e);
        let rows = c.n * k * t;
        let (w_in, _, w_out, _) = self.weights(c.p);
        let da = gemm_new(rows, 3 * e, e, dx, e, Trans::N, w_in, e, Trans::T);
        let d_o = self.batch_jvp(&self.fwd(c), &da, Lay { k, t, tk: false });
        gemm_new(rows, e, e, &d_o, e, Trans::N, w_out, e, Trans::T)
    }

    fn jvp_param(&self, c: &Ctx<T>, dp: &ParamIn<T>, k: usize, dy: &mut [T]) {
        let (t, e) = (self.t, self.e);
        let nt = c.n * t;
        let (_, _, w_out, _) = self.weights(c.p);
        let f = self.fwd(c);
        if dp.iter().all(Option::is_none) {
            return;
        }
        // dY in the tk layout [N·T, K·E]
        let mut dy_tk = if dp[0].is_some() || dp[1].is_some() {
            // dA = X dW_inᵀ + 1 db_inᵀ (tk), dO = core JVP, dY = dO W_outᵀ
            let mut da = match dp[0] {
                Some(dw) => gemm_new(nt, k * 3 * e, e, c.x, e, Trans::N, dw, e, Trans::T),
                None => vec![T::zero(); nt * k * 3 * e],
            };
            if let Some(db) = dp[1] {
                add_rows(db, &mut da);
            }
            let d_o = self.batch_jvp(&f, &da, Lay { k, t, tk: true });
            gemm_new(nt * k, e, e, &d_o, e, Trans::N, w_out, e, Trans::T)
        } else {
            vec![T::zero(); nt * k * e]
        };
        if let Some(dw) = dp[2] {
            gemm(nt, k * e, e, T::one(), f.o, e, Trans::N, dw, e, Trans::T, T::one(), &mut dy_tk, k * e);
        }
        if let Some(db) = dp[3] {
            add_rows(db, &mut dy_tk);
        }
        swap_mid(&dy_tk, t, k, e, dy, true);
    }

    /// With both an input tangent and a tangent of `W_in`/`b_in`, the two tangents of `A` are
    /// summed first (`dA = dX W_inᵀ + X dW_inᵀ + 1 db_inᵀ`), so the core JVP and the `W_out`
    /// product run once instead of once for each.
    fn jvp_all(&self, c: &Ctx<T>, dxs: &[Option<&[T]>], dp: Option<&ParamIn<T>>, k: usize) -> Option<Vec<T>> {
        let (Some(dx), Some(dp)) = (dxs[0], dp) else { return super::jvp_all_default(self, c, dxs, dp, k) };
        if dp[0].is_none() && dp[1].is_none() {
            return super::jvp_all_default(self, c, dxs, Some(dp), k);
        }
        let (t, e) = (self.t, self.e);
        let nt = c.n * t;
        let one = T::one();
        let (w_in, _, w_out, _) = self.weights(c.p);
        let f = self.fwd(c);
        // dA in the tk layout [N·T, K·3E]
        let mut da = match dp[0] {
            Some(dw) => gemm_new(nt, k * 3 * e, e, c.x, e, Trans::N, dw, e, Trans::T),
            None => vec![T::zero(); nt * k * 3 * e],
        };
        if let Some(db) = dp[1] {
            add_rows(db, &mut da);
        }
        if k == 1 {
            gemm(nt, 3 * e, e, one, dx, e, Trans::N, w_in, e, Trans::T, one, &mut da, 3 * e);
        } else {
            let dxa = gemm_new(nt * k, 3 * e, e, dx, e, Trans::N, w_in, e, Trans::T);
            swap_mid(&dxa, k, t, 3 * e, &mut da, true);
        }
        let d_o = self.batch_jvp(&f, &da, Lay { k, t, tk: true });
        let mut dy_tk = gemm_new(nt * k, e, e, &d_o, e, Trans::N, w_out, e, Trans::T);
        if let Some(dw) = dp[2] {
            gemm(nt, k * e, e, one, f.o, e, Trans::N, dw, e, Trans::T, one, &mut dy_tk, k * e);
        }
        if let Some(db) = dp[3] {
            add_rows(db, &mut dy_tk);
        }
        if k == 1 || t == 1 {
            return Some(dy_tk);
        }
        let mut dy = vec![T::zero(); dy_tk.len()];
        swap_mid(&dy_tk, t, k, e, &mut dy, false);
        Some(dy)
    }

    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        let (t, e) = (self.t, self.e);
        let rows = c.n * k * t;
        let (w_in, _, w_out, _) = self.weights(c.p);
        let go = gemm_new(rows, e, e, g, e, Trans::N, w_out, e, Trans::N);
        let ga = self.batch_vjp(&self.fwd(c), &go, Lay { k, t, tk: false });
        gemm_new(rows, e, 3 * e, &ga, 3 * e, Trans::N, w_in, e, Trans::N)
    }

    fn vjp_param(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        let (t, e) = (self.t, self.e);
        let nt = c.n * t;
        let (_, _, w_out, _) = self.weights(c.p);
        let f = self.fwd(c);
        let g_tk = swap_layout(g, k, t, e);
        if let Some(gw) = out[2].as_deref_mut() {
            // [K·E, N·T] × [N·T, E]
            mm([k * e, e, nt], T::one(), mat(&g_tk, k * e).tr(), mat(f.o, e), true, gw, e);
        }
        if let Some(gb) = out[3].as_deref_mut() {
            ops::sum_rows_into(&g_tk, nt, k * e, T::one(), gb);
        }
        if out[0].is_none() && out[1].is_none() {
            return;
        }
        let go = gemm_new(nt * k, e, e, &g_tk, e, Trans::N, w_out, e, Trans::N);
        let ga = self.batch_vjp(&f, &go, Lay { k, t, tk: true });
        if let Some(gw) = out[0].as_deref_mut() {
            mm([k * 3 * e, e, nt], T::one(), mat(&ga, k * 3 * e).tr(), mat(c.x, e), true, gw, e);
        }
        if let Some(gb) = out[1].as_deref_mut() {
            ops::sum_rows_into(&ga, nt, k * 3 * e, T::one(), gb);
        }
    }

    fn vjp_param_per_sample(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        let (t, e) = (self.t, self.e);
        let (_, _, w_out, _) = self.weights(c.p);
        let f = self.fwd(c);
        let [gw_in, gb_in, gw_out, gb_out] = out else { panic!("multihead_attention: 4 parameter tensors") };
        let g_tk = swap_layout(g, k, t, e);
        per_sample_linear(&g_tk, f.o, t, k * e, e, gw_out.as_deref_mut(), gb_out.as_deref_mut());
        if gw_in.is_none() && gb_in.is_none() {
            return;
        }
        let go = gemm_new(c.n * t * k, e, e, &g_tk, e, Trans::N, w_out, e, Trans::N);
        let ga = self.batch_vjp(&f, &go, Lay { k, t, tk: true });
        per_sample_linear(&ga, c.x, t, k * 3 * e, e, gw_in.as_deref_mut(), gb_in.as_deref_mut());
    }

    fn hvp_needs_g(&self, rx: bool, dp: bool, _want_input: bool) -> bool {
        // without R(x) and dθ the R-op is the linear backward map applied to R(g)
        rx || dp
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
        self.hvp_impl(c, rx, dp, g, rg, k, rgrad, want_input, None)
    }

    /// When the R-op runs the core with a nonzero `R(A)`, the primal `gA` comes out of the same
    /// per-head pass ([`MultiheadAttention::core_hvp`]), so the primal input cotangent
    /// `G_X = gA W_in` costs one GEMM instead of a second core VJP.
    fn hvp_backward_with_vjp(
        &self,
        c: &Ctx<T>,
        rxs: &[Option<&[T]>],
        dp: &ParamIn<T>,
        g: &[T],
        rg: &[T],
        k: usize,
        rgrad: &mut ParamOut<T>,
        want: &[bool],
        want_g: &[bool],
    ) -> (super::InputCotangents<T>, super::InputCotangents<T>) {
        if !want_g[0] {
            return (vec![self.hvp_impl(c, rxs[0], dp, g, rg, k, rgrad, want[0], None)], Vec::new());
        }
        let mut gx = None;
        let rgx = self.hvp_impl(c, rxs[0], dp, g, rg, k, rgrad, want[0], Some(&mut gx));
        let gx = gx.unwrap_or_else(|| self.vjp_input(c, g, 1));
        (vec![rgx], vec![Some(gx)])
    }
}

impl MultiheadAttention {
    /// [`Layer::hvp_backward`]; with `gx_out`, also stores the primal input cotangent
    /// `G_X = gA W_in` there when the R-op computed `gA` on its way (a nonzero `R(A)`), and
    /// leaves it `None` otherwise.
    #[allow(clippy::too_many_arguments)]
    fn hvp_impl<T: Float>(
        &self,
        c: &Ctx<T>,
        rx: Option<&[T]>,
        dp: &ParamIn<T>,
        g: &[T],
        rg: &[T],
        k: usize,
        rgrad: &mut ParamOut<T>,
        want_input: bool,
        gx_out: Option<&mut Option<Vec<T>>>,
    ) -> Option<Vec<T>> {
        let (t, e, n) = (self.t, self.e, c.n);
        let nt = n * t;
        let one = T::one();
        let (w_in, _, w_out, _) = self.weights(c.p);
        let f = self.fwd(c);
        let (dw_in, db_in, dw_out) = (dp[0], dp[1], dp[2]);
        // whether the forward tangent R(A) (hence R(P), R(O)) is nonzero
        let has_ra = rx.is_some() || dw_in.is_some() || db_in.is_some();
        let need_rga = want_input || rgrad[0].is_some() || rgrad[1].is_some();
        let need_ro = has_ra && rgrad[2].is_some();
        // the primal gA enters R(G_X) (through dW_in) and R(∇W_in) (through R(X))
        let need_ga =
            has_ra && ((want_input && dw_in.is_some()) || (rgrad[0].is_some() && rx.is_some()) || gx_out.is_some());

        let rg_tk = swap_layout(rg, k, t, e);
        let rx_tk = rx.map(|r| swap_layout(r, k, t, e));
        // out_proj, first part: R(∇W_out) += R(G)ᵀ O, R(∇b_out) += Σ R(G)
        if let Some(gw) = rgrad[2].as_deref_mut() {
            mm([k * e, e, nt], one, mat(&rg_tk, k * e).tr(), mat(f.o, e), true, gw, e);
        }
        if let Some(gb) = rgrad[3].as_deref_mut() {
            ops::sum_rows_into(&rg_tk, nt, k * e, one, gb);
        }
        if !need_rga && !need_ro {
            return None;
        }

        // R(gO) = R(G) W_out + G dW_out (tk)
        let rgo = need_rga.then(|| {
            let mut rgo = gemm_new(nt * k, e, e, &rg_tk, e, Trans::N, w_out, e, Trans::N);
            if let Some(dw) = dw_out {
                for kk in 0..k {
                    mm([nt, e, e], one, mat(g, e), mat(&dw[kk * e * e..], e), true, &mut rgo[kk * e..], k * e);
                }
            }
            rgo
        });

        let (ga, ro, rga) = if has_ra {
            // R(A) = R(X) W_inᵀ + X dW_inᵀ + 1 db_inᵀ (tk)
            let mut ra = match &rx_tk {
                Some(rx) => gemm_new(nt * k, 3 * e, e, rx, e, Trans::N, w_in, e, Trans::T),
                None => vec![T::zero(); nt * k * 3 * e],
            };
            if let Some(dw) = dw_in {
                gemm(nt, k * 3 * e, e, one, c.x, e, Trans::N, dw, e, Trans::T, one, &mut ra, k * 3 * e);
            }
            if let Some(db) = db_in {
                add_rows(db, &mut ra);
            }
            let go = gemm_new(nt, e, e, g, e, Trans::N, w_out, e, Trans::N);
            let mut ga = need_ga.then(|| vec![T::zero(); nt * 3 * e]);
            let mut ro = need_ro.then(|| vec![T::zero(); nt * k * e]);
            let mut rga = need_rga.then(|| vec![T::zero(); nt * k * 3 * e]);
            {
                let mut items: Vec<_> = opt_chunks(&mut ga, t * 3 * e, n)
                    .into_iter()
                    .zip(opt_chunks(&mut ro, t * k * e, n))
                    .zip(opt_chunks(&mut rga, t * k * 3 * e, n))
                    .collect();
                for_each_item_with(
                    &mut items,
                    1,
                    || HvpScratch::new(t),
                    |sc, s, it| {
                        let ((ga, ro), rga) = &mut it[0];
                        let inp = HvpIn {
                            a: f.a(s),
                            p: f.p(s),
                            go: &go[s * t * e..(s + 1) * t * e],
                            ra: &ra[s * t * k * 3 * e..(s + 1) * t * k * 3 * e],
                            rgo: rgo.as_deref().map(|r| &r[s * t * k * e..(s + 1) * t * k * e]),
                        };
                        let out = HvpOut { ga: ga.as_deref_mut(), ro: ro.as_deref_mut(), rga: rga.as_deref_mut() };
                        self.core_hvp(&inp, k, out, sc);
                    },
                );
            }
            (ga, ro, rga)
        } else {
            // R(A) = 0: the R-op of the core is its VJP applied to R(gO)
            let rga = rgo.as_deref().map(|rgo| self.batch_vjp(&f, rgo, Lay { k, t, tk: true }));
            (None, None, rga)
        };

        if let (Some(slot), Some(ga)) = (gx_out, ga.as_deref()) {
            *slot = Some(gemm_new(nt, e, 3 * e, ga, 3 * e, Trans::N, w_in, e, Trans::N));
        }
        // out_proj, second part: R(∇W_out) += Gᵀ R(O)
        if let (Some(ro), Some(gw)) = (ro.as_deref(), rgrad[2].as_deref_mut()) {
            for kk in 0..k {
                mm([e, e, nt], one, mat(g, e).tr(), mat(&ro[kk * e..], k * e), true, &mut gw[kk * e * e..], e);
            }
        }
        let rga = rga?;
        // in_proj: R(∇W_in) += R(gA)ᵀ X + gAᵀ R(X), R(∇b_in) += Σ R(gA)
        if let Some(gw) = rgrad[0].as_deref_mut() {
            mm([k * 3 * e, e, nt], one, mat(&rga, k * 3 * e).tr(), mat(c.x, e), true, gw, e);
            if let (Some(ga), Some(rx)) = (ga.as_deref(), rx_tk.as_deref()) {
                for kk in 0..k {
                    let out = &mut gw[kk * 3 * e * e..];
                    mm([3 * e, e, nt], one, mat(ga, 3 * e).tr(), mat(&rx[kk * e..], k * e), true, out, e);
                }
            }
        }
        if let Some(gb) = rgrad[1].as_deref_mut() {
            ops::sum_rows_into(&rga, nt, k * 3 * e, one, gb);
        }
        if !want_input {
            return None;
        }
        // R(G_X) = R(gA) W_in + gA dW_in (tk), returned as kt
        let mut rgx = gemm_new(nt * k, e, 3 * e, &rga, 3 * e, Trans::N, w_in, e, Trans::N);
        if let (Some(dw), Some(ga)) = (dw_in, ga.as_deref()) {
            for kk in 0..k {
                let dwk = &dw[kk * 3 * e * e..];
                mm([nt, e, 3 * e], one, mat(ga, 3 * e), mat(dwk, e), true, &mut rgx[kk * e..], k * e);
            }
        }
        if k == 1 || t == 1 {
            return Some(rgx);
        }
        let mut out = vec![T::zero(); rgx.len()];
        swap_mid(&rgx, t, k, e, &mut out, false);
        Some(out)
    }
}

/// The forward quantities of a batch (see the module docs).
struct Fwd<'a, T> {
    /// `A = [Q | K | V]`, `[N·T, 3E]`.
    qkv: &'a [T],
    /// Attention probabilities `[N, H, T, T]`.
    p: &'a [T],
    /// Concatenated head outputs `O`, `[N·T, E]`.
    o: &'a [T],
    t: usize,
    e: usize,
    h: usize,
}

impl<'a, T> Fwd<'a, T> {
    fn n(&self) -> usize {
        self.o.len() / (self.t * self.e)
    }
    /// Sample `s`'s `A` (`[T, 3E]`).
    fn a(&self, s: usize) -> &'a [T] {
        let l = self.t * 3 * self.e;
        &self.qkv[s * l..(s + 1) * l]
    }
    /// Sample `s`'s probabilities (`[H, T, T]`).
    fn p(&self, s: usize) -> &'a [T] {
        let l = self.h * self.t * self.t;
        &self.p[s * l..(s + 1) * l]
    }
}

/// Where tangent `k`'s `[T, S]` block lies in one sample's chunk of a `K`-tangent buffer.
#[derive(Clone, Copy)]
struct Lay {
    k: usize,
    t: usize,
    /// `[T, K, S]` per sample ("tk") rather than `[K, T, S]` ("kt").
    tk: bool,
}

impl Lay {
    /// Offset of tangent `kk`'s block (row width `s`) in a sample's chunk, and its row stride.
    fn block(self, kk: usize, s: usize) -> (usize, usize) {
        if self.tk {
            (kk * s, self.k * s)
        } else {
            (kk * self.t * s, s)
        }
    }
}

/// Inputs of [`MultiheadAttention::core_hvp`] for one sample.
struct HvpIn<'a, T> {
    /// `A` `[T, 3E]`.
    a: &'a [T],
    /// `P` `[H, T, T]`.
    p: &'a [T],
    /// Primal `gO = G W_out` `[T, E]`.
    go: &'a [T],
    /// `R(A)` `[T, K, 3E]`.
    ra: &'a [T],
    /// `R(gO)` `[T, K, E]` (needed for `R(gA)`).
    rgo: Option<&'a [T]>,
}

/// Outputs of [`MultiheadAttention::core_hvp`] for one sample (each where wanted).
struct HvpOut<'a, T> {
    /// Primal `gA` `[T, 3E]`.
    ga: Option<&'a mut [T]>,
    /// `R(O)` `[T, K, E]`.
    ro: Option<&'a mut [T]>,
    /// `R(gA)` `[T, K, 3E]`.
    rga: Option<&'a mut [T]>,
}

/// Per-worker scratch of [`MultiheadAttention::core_hvp`]: `T × T` matrices and a row vector.
struct HvpScratch<T> {
    gp: Vec<T>,
    gs: Vec<T>,
    r: Vec<T>,
    rp: Vec<T>,
    rgp: Vec<T>,
}

impl<T: Float> HvpScratch<T> {
    fn new(t: usize) -> Self {
        let z = || vec![T::zero(); t * t];
        Self { gp: z(), gs: z(), r: vec![T::zero(); t], rp: z(), rgp: z() }
    }
}

/// A matrix operand of [`mm`]: row-major storage with row stride `ld`, used as stored or
/// transposed.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    s: &'a [T],
    ld: usize,
    t: Trans,
}

/// The matrix stored in `s` with row stride `ld`.
fn mat<T>(s: &[T], ld: usize) -> Mat<'_, T> {
    Mat { s, ld, t: Trans::N }
}

impl<T> Mat<'_, T> {
    /// The transpose.
    fn tr(self) -> Self {
        Mat { t: Trans::T, ..self }
    }
}

/// `C ← α op(A) op(B)` (`C += …` with `acc`), `C` `[m, n]` with row stride `ldc`,
/// `[m, n, inner] = dims` (the project's faer GEMM).
#[inline]
fn mm<T: Float>(dims: [usize; 3], alpha: T, a: Mat<T>, b: Mat<T>, acc: bool, c: &mut [T], ldc: usize) {
    let [m, n, k] = dims;
    let beta = if acc { T::one() } else { T::zero() };
    gemm(m, n, k, alpha, a.s, a.ld, a.t, b.s, b.ld, b.t, beta, c, ldc);
}

/// Head `h`'s `Q_h, K_h, V_h` (each starting at column `col = h·d` of its block) in a row-major
/// `[·, 3E]` matrix `a` (whatever its row stride).
fn head_cols<T>(a: &[T], e: usize, col: usize) -> (&[T], &[T], &[T]) {
    (&a[col..], &a[e + col..], &a[2 * e + col..])
}

/// Number of keys row `t` attends to.
#[inline]
fn row_len(t: usize, tl: usize, causal: bool) -> usize {
    if causal {
        t + 1
    } else {
        tl
    }
}

/// Row-wise softmax of the `T × T` scores `s` in place, over the unmasked entries of each row;
/// masked entries (`s > t` when causal) become exactly 0.
fn softmax_rows<T: Float>(s: &mut [T], tl: usize, causal: bool) {
    for (t, row) in s.chunks_exact_mut(tl).enumerate() {
        let (v, masked) = row.split_at_mut(row_len(t, tl, causal));
        let mut mx = v[0];
        for &x in v.iter() {
            if x > mx {
                mx = x;
            }
        }
        for x in v.iter_mut() {
            *x -= mx;
        }
        curvops_tensor::vmath::exp_inplace(v);
        let sum = ops::sum(v);
        ops::scale(T::one() / sum, v);
        masked.fill(T::zero());
    }
}

/// Softmax JVP and VJP in place (its Jacobian is symmetric): `v ← P ⊙ (v − rowsum(P ⊙ v))`
/// row-wise over the unmasked entries; masked entries become exactly 0.
fn softmax_jac<T: Float>(p: &[T], v: &mut [T], tl: usize, causal: bool) {
    for (t, (pr, vr)) in p.chunks_exact(tl).zip(v.chunks_exact_mut(tl)).enumerate() {
        let l = row_len(t, tl, causal);
        let rs = ops::dot(&pr[..l], &vr[..l]);
        for (x, &pv) in vr[..l].iter_mut().zip(&pr[..l]) {
            *x = pv * (*x - rs);
        }
        vr[l..].fill(T::zero());
    }
}

/// Softmax VJP keeping its parts: `r = rowsum(P ⊙ gP)` and `gS = P ⊙ (gP − r)`.
fn softmax_vjp_parts<T: Float>(p: &[T], gp: &[T], r: &mut [T], gs: &mut [T], tl: usize, causal: bool) {
    ops::copy(gp, gs);
    for (t, rt) in r.iter_mut().enumerate() {
        let l = row_len(t, tl, causal);
        *rt = ops::dot(&p[t * tl..t * tl + l], &gp[t * tl..t * tl + l]);
    }
    softmax_jac(p, gs, tl, causal);
}

/// R-op of the softmax VJP in place: `R(gS) = R(P) ⊙ (gP − r) + P ⊙ (R(gP) − rowsum(R(P) ⊙ gP
/// + P ⊙ R(gP)))`, with `rgp = R(gP)` on entry and `R(gS)` on return (masked entries exactly 0).
fn softmax_rvjp<T: Float>(p: &[T], rp: &[T], gp: &[T], r: &[T], rgp: &mut [T], tl: usize, causal: bool) {
    for (t, &rt) in r.iter().enumerate() {
        let l = row_len(t, tl, causal);
        let row = t * tl..t * tl + l;
        let (pr, rpr, gpr) = (&p[row.clone()], &rp[row.clone()], &gp[row.clone()]);
        let rgr = &mut rgp[t * tl..(t + 1) * tl];
        let q = ops::dot(rpr, gpr) + ops::dot(pr, &rgr[..l]);
        for (i, x) in rgr[..l].iter_mut().enumerate() {
            *x = rpr[i] * (gpr[i] - rt) + pr[i] * (*x - q);
        }
        rgr[l..].fill(T::zero());
    }
}

/// `rows[r, :] += b` for every row of the row-major `rows` (`b.len()` columns).
fn add_rows<T: Float>(b: &[T], rows: &mut [T]) {
    for row in rows.chunks_exact_mut(b.len()) {
        ops::axpy(T::one(), b, row);
    }
}

/// Swaps the two middle axes: `dst[n, j, i, :] = src[n, i, j, :]` (or `+=` with `add`) for
/// `src` `[N, A, B, S]` and `dst` `[N, B, A, S]`.
fn swap_mid<T: Float>(src: &[T], a: usize, b: usize, s: usize, dst: &mut [T], add: bool) {
    let blk = a * b * s;
    for (sn, dn) in src.chunks_exact(blk).zip(dst.chunks_exact_mut(blk)) {
        for i in 0..a {
            for j in 0..b {
                let from = &sn[(i * b + j) * s..(i * b + j + 1) * s];
                let to = &mut dn[(j * a + i) * s..(j * a + i + 1) * s];
                if add {
                    ops::axpy(T::one(), from, to);
                } else {
                    to.copy_from_slice(from);
                }
            }
        }
    }
}

/// `[N, A, B, S]` as `[N, B, A, S]` (kt → tk with `(A, B) = (K, T)`, and back with `(T, K)`);
/// borrowed when the two layouts coincide.
fn swap_layout<T: Float>(v: &[T], a: usize, b: usize, s: usize) -> Cow<'_, [T]> {
    if a == 1 || b == 1 {
        return Cow::Borrowed(v);
    }
    let mut d = vec![T::zero(); v.len()];
    swap_mid(v, a, b, s, &mut d, false);
    Cow::Owned(d)
}

/// Per-sample gradients of a linear map `Y = Z Wᵀ + 1 bᵀ` (per sample `Z` `[T, I]`) from
/// cotangents `g` in the tk layout (per sample `[T, K·O]`, `ko = K·O`): `∇W[n] = g_nᵀ Z_n`
/// (`[K·O, I]`) and `∇b[n] = Σ_t g_n[t]` (`[K·O]`), overwritten.
fn per_sample_linear<T: Float>(
    g: &[T],
    z: &[T],
    t: usize,
    ko: usize,
    i: usize,
    gw: Option<&mut [T]>,
    gb: Option<&mut [T]>,
) {
    if let Some(gw) = gw {
        for_each_item(gw, ko * i, |s, out| {
            let (gs, zs) = (&g[s * t * ko..(s + 1) * t * ko], &z[s * t * i..(s + 1) * t * i]);
            mm([ko, i, t], T::one(), mat(gs, ko).tr(), mat(zs, i), false, out, i);
        });
    }
    if let Some(gb) = gb {
        for (s, out) in gb.chunks_exact_mut(ko).enumerate() {
            out.fill(T::zero());
            ops::sum_rows_into(&g[s * t * ko..(s + 1) * t * ko], t, ko, T::one(), out);
        }
    }
}

/// Per-sample chunks of `len` entries of an optional buffer (`None` for each of the `n` samples
/// when absent).
fn opt_chunks<T>(v: &mut Option<Vec<T>>, len: usize, n: usize) -> Vec<Option<&mut [T]>> {
    match v {
        Some(v) => v.chunks_mut(len).map(Some).collect(),
        None => (0..n).map(|_| None).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{check_rules, rel_err};
    use curvops_tensor::rng::Rng;

    fn randn(r: &mut Rng, n: usize, s: f64) -> Vec<f64> {
        (0..n).map(|_| s * r.normal()).collect()
    }

    /// Parameters with `W ~ N(0, 1/E)` scaled so that the softmax is far from saturation.
    fn params(r: &mut Rng, e: usize) -> Vec<f64> {
        let ws = 0.7 / (e as f64).sqrt();
        let mut p = randn(r, 3 * e * e, ws);
        p.extend(randn(r, 3 * e, 0.3));
        p.extend(randn(r, e * e, ws));
        p.extend(randn(r, e, 0.3));
        p
    }

    /// Independent reference: explicit loops, f64.
    fn naive(l: &MultiheadAttention, p: &[f64], x: &[f64], n: usize) -> Vec<f64> {
        let (t, e, h, d) = (l.seq_len(), l.embed_dim(), l.num_heads(), l.head_dim());
        let w_in = &p[..3 * e * e];
        let b_in = &p[3 * e * e..3 * e * e + 3 * e];
        let w_out = &p[3 * e * e + 3 * e..4 * e * e + 3 * e];
        let b_out = &p[4 * e * e + 3 * e..];
        let mut y = vec![0.0; n * t * e];
        for s in 0..n {
            let xs = &x[s * t * e..(s + 1) * t * e];
            let mut a = vec![0.0; t * 3 * e];
            for i in 0..t {
                for j in 0..3 * e {
                    a[i * 3 * e + j] = b_in[j] + (0..e).map(|m| xs[i * e + m] * w_in[j * e + m]).sum::<f64>();
                }
            }
            let mut o = vec![0.0; t * e];
            for hh in 0..h {
                for i in 0..t {
                    let mut sc = vec![f64::NEG_INFINITY; t];
                    for j in 0..t {
                        if l.causal() && j > i {
                            continue;
                        }
                        let dotp: f64 = (0..d).map(|m| a[i * 3 * e + hh * d + m] * a[j * 3 * e + e + hh * d + m]).sum();
                        sc[j] = dotp / (d as f64).sqrt();
                    }
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = sc.iter().map(|v| (v - mx).exp()).collect();
                    let z: f64 = w.iter().sum();
                    for m in 0..d {
                        o[i * e + hh * d + m] = (0..t).map(|j| w[j] / z * a[j * 3 * e + 2 * e + hh * d + m]).sum();
                    }
                }
            }
            for i in 0..t {
                for j in 0..e {
                    y[(s * t + i) * e + j] = b_out[j] + (0..e).map(|m| o[i * e + m] * w_out[j * e + m]).sum::<f64>();
                }
            }
        }
        y
    }

    #[test]
    fn constructor_checks_sizes() {
        let err = MultiheadAttention::new(4, 10, 3, false).unwrap_err();
        assert_eq!(err, "embed_dim 10 is not divisible by num_heads 3");
        assert!(MultiheadAttention::new(0, 6, 2, false).is_err());
        assert!(MultiheadAttention::new(3, 0, 2, false).is_err());
        assert!(MultiheadAttention::new(3, 6, 0, false).is_err());
        let l = MultiheadAttention::new(5, 12, 3, true).unwrap();
        assert_eq!((l.seq_len(), l.embed_dim(), l.num_heads(), l.head_dim(), l.causal()), (5, 12, 3, 4, true));
        let names: Vec<&str> = Layer::<f64>::params(&l).iter().map(|s| s.name).collect();
        assert_eq!(names, ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]);
        assert_eq!(Layer::<f64>::num_params(&l), 4 * 144 + 4 * 12);
        assert_eq!(Layer::<f64>::kind(&l), "multihead_attention");
        assert_eq!(Layer::<f64>::in_shape(&l), [5, 12]);
    }

    #[test]
    fn forward_matches_naive_and_mask() {
        let mut r = Rng::new(3);
        for &(t, e, h, causal, n) in
            &[(1, 6, 1, false, 2), (5, 6, 2, true, 3), (4, 12, 3, false, 2), (6, 12, 4, true, 1)]
        {
            let l = MultiheadAttention::new(t, e, h, causal).unwrap();
            let p = params(&mut r, e);
            let x = randn(&mut r, n * t * e, 1.0);
            let (y, aux) = Layer::<f64>::forward(&l, &p, &x, n);
            let err = rel_err(&y, &naive(&l, &p, &x, n));
            assert!(err < 1e-13, "forward (t {t}, e {e}, h {h}, causal {causal}): {err:.2e}");
            // masked probabilities are exactly zero, every row sums to one
            let Aux::Cols(v) = &aux else { panic!() };
            let pr = &v[n * t * 3 * e..n * t * 3 * e + n * h * t * t];
            for (row, pv) in pr.chunks_exact(t).enumerate() {
                let i = row % t;
                assert!((pv.iter().sum::<f64>() - 1.0).abs() < 1e-14);
                if causal {
                    assert!(pv[i + 1..].iter().all(|&z| z == 0.0));
                }
            }
        }
    }

    #[test]
    fn causal_first_position_sees_only_itself() {
        // large weights: saturated scores must not produce NaN; y_0 depends on x_0 only
        let mut r = Rng::new(5);
        let (t, e, n) = (4, 6, 1);
        let l = MultiheadAttention::new(t, e, 2, true).unwrap();
        let p: Vec<f64> = params(&mut r, e).iter().map(|v| 40.0 * v).collect();
        let mut x = randn(&mut r, n * t * e, 1.0);
        let (y0, _) = Layer::<f64>::forward(&l, &p, &x, n);
        assert!(y0.iter().all(|v| v.is_finite()));
        for v in &mut x[e..] {
            *v += 1.0;
        }
        let (y1, _) = Layer::<f64>::forward(&l, &p, &x, n);
        assert_eq!(y0[..e], y1[..e]);
    }

    #[test]
    fn f32_forward_agrees_with_f64() {
        let mut r = Rng::new(9);
        let (t, e, h, n) = (5, 12, 3, 2);
        for causal in [false, true] {
            let l = MultiheadAttention::new(t, e, h, causal).unwrap();
            let p = params(&mut r, e);
            let x = randn(&mut r, n * t * e, 1.0);
            let (y64, _) = Layer::<f64>::forward(&l, &p, &x, n);
            let p32: Vec<f32> = p.iter().map(|&v| v as f32).collect();
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let (y32, _) = Layer::<f32>::forward(&l, &p32, &x32, n);
            let y32: Vec<f64> = y32.iter().map(|&v| f64::from(v)).collect();
            let err = rel_err(&y32, &y64);
            assert!(err < 1e-5, "f32 vs f64 (causal {causal}): {err:.2e}");
        }
    }

    #[test]
    fn rules_against_finite_differences() {
        let mut r = Rng::new(11);
        let cases = [
            (1, 6, 1, false, 1),
            (1, 6, 2, true, 3),
            (3, 6, 1, true, 3),
            (3, 6, 2, false, 1),
            (3, 12, 3, true, 1),
            (5, 6, 3, false, 3),
            (5, 12, 2, true, 3),
            (5, 12, 3, false, 3),
            (5, 6, 2, true, 1),
        ];
        for &(t, e, h, causal, n) in &cases {
            let l = MultiheadAttention::new(t, e, h, causal).unwrap();
            let p = params(&mut r, e);
            let x = randn(&mut r, n * t * e, 1.0);
            let name = format!("multihead_attention(t {t}, e {e}, h {h}, causal {causal}, n {n})");
            check_rules(&name, &l, &p, &[x], &[true], n, 1e-6);
        }
    }

    #[test]
    fn fused_jvp_equals_input_plus_parameter_jvp() {
        // jvp_all sums the tangents of A before the core JVP: it must equal jvp_inputs +
        // jvp_param for every subset of parameter tangents, K = 1 and K > 1, with and without dx
        let mut r = Rng::new(23);
        for &(t, e, h, n, causal) in &[(4, 6, 2, 3, true), (3, 6, 1, 2, false), (1, 6, 2, 2, true)] {
            let l = MultiheadAttention::new(t, e, h, causal).unwrap();
            let p = params(&mut r, e);
            let x = randn(&mut r, n * t * e, 1.0);
            let (y, aux) = Layer::<f64>::forward(&l, &p, &x, n);
            let xs = [x.as_slice()];
            let c = Ctx { p: &p, x: &x, xs: &xs, y: &y, aux: &aux, n };
            let sizes: Vec<usize> = Layer::<f64>::params(&l).iter().map(|s| s.len()).collect();
            for k in [1, 3] {
                let dx = randn(&mut r, n * k * t * e, 1.0);
                let dps: Vec<Vec<f64>> = sizes.iter().map(|&s| randn(&mut r, k * s, 1.0)).collect();
                for mask in 0..16u32 {
                    let dp: Vec<Option<&[f64]>> =
                        (0..4).map(|i| (mask >> i & 1 == 1).then_some(dps[i].as_slice())).collect();
                    for with_dx in [false, true] {
                        let dxs = [with_dx.then_some(dx.as_slice())];
                        let fused = Layer::<f64>::jvp_all(&l, &c, &dxs, Some(&dp), k).unwrap();
                        let mut want = if with_dx { l.jvp_input(&c, &dx, k) } else { vec![0.0; fused.len()] };
                        l.jvp_param(&c, &dp, k, &mut want);
                        let err = rel_err(&fused, &want);
                        assert!(err < 1e-13, "t {t} k {k} mask {mask} dx {with_dx}: {err:.2e}");
                    }
                }
            }
        }
    }

    #[test]
    fn hvp_with_vjp_equals_the_separate_rules() {
        // the primal input cotangent from the R-op's pass equals vjp_input, and the R-op's
        // results are those of hvp_backward, whichever tangents are nonzero
        let mut r = Rng::new(29);
        let (t, e, h, n, k) = (4, 6, 2, 2, 2);
        for causal in [false, true] {
            let l = MultiheadAttention::new(t, e, h, causal).unwrap();
            let p = params(&mut r, e);
            let x = randn(&mut r, n * t * e, 1.0);
            let (y, aux) = Layer::<f64>::forward(&l, &p, &x, n);
            let xs = [x.as_slice()];
            let c = Ctx { p: &p, x: &x, xs: &xs, y: &y, aux: &aux, n };
            let g = randn(&mut r, n * t * e, 1.0);
            let rg = randn(&mut r, n * k * t * e, 1.0);
            let rx = randn(&mut r, n * k * t * e, 1.0);
            let sizes: Vec<usize> = Layer::<f64>::params(&l).iter().map(|s| s.len()).collect();
            let dps: Vec<Vec<f64>> = sizes.iter().map(|&s| randn(&mut r, k * s, 1.0)).collect();
            let gx_want = l.vjp_input(&c, &g, 1);
            for mask in 0..16u32 {
                let dp: Vec<Option<&[f64]>> =
                    (0..4).map(|i| (mask >> i & 1 == 1).then_some(dps[i].as_slice())).collect();
                for with_rx in [false, true] {
                    let rxs = [with_rx.then_some(rx.as_slice())];
                    let (rgx_want, bufs_want) = run_hvp(&l, &c, rxs[0], &dp, &g, &rg, k, [true; 4], true);
                    let mut bufs: Vec<Vec<f64>> = sizes.iter().map(|&s| vec![0.5; k * s]).collect();
                    let (rgx, gx) = {
                        let mut views: Vec<Option<&mut [f64]>> =
                            bufs.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
                        l.hvp_backward_with_vjp(&c, &rxs, &dp, &g, &rg, k, &mut views, &[true], &[true])
                    };
                    let tag = format!("causal {causal} mask {mask} rx {with_rx}");
                    assert!(rel_err(rgx[0].as_ref().unwrap(), rgx_want.as_ref().unwrap()) < 1e-13, "R(g_x), {tag}");
                    assert!(rel_err(gx[0].as_ref().unwrap(), &gx_want) < 1e-13, "g_x, {tag}");
                    for i in 0..4 {
                        assert!(rel_err(&bufs[i], &bufs_want[i]) < 1e-13, "R(∇θ_{i}), {tag}");
                    }
                }
            }
        }
    }

    /// Runs `hvp_backward` with the given options; returns `(R(g_x), R(∇θ) per tensor)`.
    #[allow(clippy::type_complexity)]
    fn run_hvp(
        l: &MultiheadAttention,
        c: &Ctx<f64>,
        rx: Option<&[f64]>,
        dp: &[Option<&[f64]>],
        g: &[f64],
        rg: &[f64],
        k: usize,
        wanted: [bool; 4],
        want_input: bool,
    ) -> (Option<Vec<f64>>, Vec<Vec<f64>>) {
        let mut bufs: Vec<Vec<f64>> = Layer::<f64>::params(l).iter().map(|s| vec![0.5; k * s.len()]).collect();
        let rgx = {
            let mut views: Vec<Option<&mut [f64]>> =
                bufs.iter_mut().zip(wanted).map(|(b, w)| w.then_some(b.as_mut_slice())).collect();
            l.hvp_backward(c, rx, dp, g, rg, k, &mut views, want_input)
        };
        (rgx, bufs)
    }

    #[test]
    fn hvp_options_agree_with_the_full_rule() {
        // held-fixed tensors (None) equal zero tangents, rx None equals a zero R(x), outputs that
        // are not wanted do not change the others, and results are added to the buffers
        let mut r = Rng::new(21);
        let (t, e, h, n, k) = (4, 6, 2, 3, 3);
        for causal in [false, true] {
            let l = MultiheadAttention::new(t, e, h, causal).unwrap();
            let p = params(&mut r, e);
            let x = randn(&mut r, n * t * e, 1.0);
            let (y, aux) = Layer::<f64>::forward(&l, &p, &x, n);
            let xs = [x.as_slice()];
            let c = Ctx { p: &p, x: &x, xs: &xs, y: &y, aux: &aux, n };
            let g = randn(&mut r, n * t * e, 1.0);
            let rg = randn(&mut r, n * k * t * e, 1.0);
            let rx = randn(&mut r, n * k * t * e, 1.0);
            let zx = vec![0.0; rx.len()];
            let sizes: Vec<usize> = Layer::<f64>::params(&l).iter().map(|s| s.len()).collect();
            let dps: Vec<Vec<f64>> = sizes.iter().map(|&s| randn(&mut r, k * s, 1.0)).collect();
            let zeros: Vec<Vec<f64>> = sizes.iter().map(|&s| vec![0.0; k * s]).collect();
            for mask in 0..16u32 {
                let on = |i: usize| mask >> i & 1 == 1;
                let dp_none: Vec<Option<&[f64]>> = (0..4).map(|i| on(i).then_some(dps[i].as_slice())).collect();
                let dp_zero: Vec<Option<&[f64]>> =
                    (0..4).map(|i| Some(if on(i) { dps[i].as_slice() } else { zeros[i].as_slice() })).collect();
                for with_rx in [false, true] {
                    let (rx_o, rx_z) =
                        if with_rx { (Some(rx.as_slice()), rx.as_slice()) } else { (None, zx.as_slice()) };
                    let (full_x, full) = run_hvp(&l, &c, Some(rx_z), &dp_zero, &g, &rg, k, [true; 4], true);
                    let full_x = full_x.unwrap();
                    let (gx, all) = run_hvp(&l, &c, rx_o, &dp_none, &g, &rg, k, [true; 4], true);
                    assert!(rel_err(&gx.unwrap(), &full_x) < 1e-12, "R(g_x), mask {mask}, rx {with_rx}");
                    for i in 0..4 {
                        assert!(rel_err(&all[i], &full[i]) < 1e-12, "R(∇θ_{i}), mask {mask}, rx {with_rx}");
                    }
                    for wm in 0..16u32 {
                        let wanted = [wm & 1 == 1, wm & 2 == 2, wm & 4 == 4, wm & 8 == 8];
                        let (gx, part) = run_hvp(&l, &c, rx_o, &dp_none, &g, &rg, k, wanted, false);
                        assert!(gx.is_none());
                        for i in 0..4 {
                            if wanted[i] {
                                assert!(rel_err(&part[i], &full[i]) < 1e-12, "R(∇θ_{i}) alone, mask {mask}");
                            } else {
                                assert!(part[i].iter().all(|&v| v == 0.5));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_threads() {
        let mut r = Rng::new(31);
        let (t, e, h, n, k) = (5, 12, 3, 4, 2);
        let l = MultiheadAttention::new(t, e, h, true).unwrap();
        let p = params(&mut r, e);
        let x = randn(&mut r, n * t * e, 1.0);
        let g = randn(&mut r, n * t * e, 1.0);
        let rg = randn(&mut r, n * k * t * e, 1.0);
        let rx = randn(&mut r, n * k * t * e, 1.0);
        let sizes: Vec<usize> = Layer::<f64>::params(&l).iter().map(|s| s.len()).collect();
        let dps: Vec<Vec<f64>> = sizes.iter().map(|&s| randn(&mut r, k * s, 1.0)).collect();
        let dp: Vec<Option<&[f64]>> = dps.iter().map(|v| Some(v.as_slice())).collect();
        let run = || {
            let (y, aux) = Layer::<f64>::forward(&l, &p, &x, n);
            let xs = [x.as_slice()];
            let c = Ctx { p: &p, x: &x, xs: &xs, y: &y, aux: &aux, n };
            let (gx, grads) = run_hvp(&l, &c, Some(&rx), &dp, &g, &rg, k, [true; 4], true);
            let mut ps: Vec<Vec<f64>> = sizes.iter().map(|&s| vec![0.0; n * k * s]).collect();
            {
                let mut views: Vec<Option<&mut [f64]>> = ps.iter_mut().map(|b| Some(b.as_mut_slice())).collect();
                l.vjp_param_per_sample(&c, &rg, k, &mut views);
            }
            let dy = l.jvp_input(&c, &rx, k);
            (y.clone(), gx, grads, ps, dy)
        };
        curvops_tensor::threads::set_threads(1);
        let a = run();
        curvops_tensor::threads::set_threads(3);
        let b = run();
        curvops_tensor::threads::set_threads(1);
        assert!(a == b, "results differ between 1 and 3 threads");
    }
}
