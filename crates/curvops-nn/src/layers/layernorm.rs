//! `layernorm`: `nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)`.
//!
//! The trailing axes `normalized_shape` of each sample (`M` entries) are normalized; a sample
//! holds `R = size / M` such rows. Per row `x` (length `M`, `mean` averages over it):
//!
//! `μ = mean(x)`, `v = mean((x − μ)²)` (biased), `s = 1/√(v + ε)`, `x̂ = (x − μ) s`,
//! `y = x̂ ⊙ w + b`
//!
//! with `w`, `b` of shape `normalized_shape` (`b` only with `bias`; neither without
//! `elementwise_affine`, where `w = 1`, `b = 0`).
//!
//! **First order.** The derivative of `x̂` is the symmetric map
//! `P(d) = s (d − mean(d) − x̂ mean(d ⊙ x̂))` (the centring and the projection off `x̂`, scaled),
//! so
//! * JVP: `dy = w ⊙ P(dx) + dw ⊙ x̂ + db`;
//! * VJP: `g_x = P(ĝ)` with `ĝ = g ⊙ w`; `∇w = Σ g ⊙ x̂`, `∇b = Σ g` (sums over the batch and
//!   the rows; per sample over the rows only).
//!
//! **R-operator.** Along `(R(x), dw, db)` with the cotangent direction `R(g)`, write `r = R(x)`
//! for one row, `a = s mean(x̂ ⊙ r)`, `β = mean(ĝ ⊙ x̂)`. Then `R(v) = (2/s) mean(x̂ ⊙ r)`, so
//! `R(s) = −s² mean(x̂ ⊙ r) = −a s` and
//!
//! `R(x̂) = s (r − mean(r)) − a x̂` (`= P(r)`), `R(ĝ) = R(g) ⊙ w + g ⊙ dw`.
//!
//! Differentiating `g_x = s (ĝ − mean(ĝ) − x̂ β)` (product rule on `s`, `ĝ`, `x̂` and `β`, with
//! `R(β) = mean(R(ĝ) ⊙ x̂) + mean(ĝ ⊙ R(x̂))`):
//!
//! `R(g_x) = P(R(ĝ)) − a g_x − s (R(x̂) β + x̂ mean(ĝ ⊙ R(x̂)))`.
//!
//! The first term is the VJP applied to `R(ĝ)` (it holds the cross term `g ⊙ dw` of
//! `∂²y/∂x∂w`); the last two are the second-order terms `∂²y/∂x²`, present when `R(x) ≠ 0`.
//! For the parameters, `R(∇w) = Σ R(g) ⊙ x̂ + g ⊙ R(x̂)` (the second term is `∂²y/∂w∂x`) and
//! `R(∇b) = Σ R(g)`; they are written whenever wanted, also when `dw`, `db` are `None`.
//!
//! The forward pass keeps `x̂` and `s` (`Aux::Cols([x̂ | s])`, `[N·R, M]` and `[N·R]`) for the
//! rules; they recompute them from the input when given a context without it.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut, ParamSpec};
use curvops_tensor::simd::with_simd;
use curvops_tensor::{ops, Float};
use std::borrow::Cow;

/// Layer normalization over the trailing axes of each sample.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    in_shape: Vec<usize>,
    normalized_shape: Vec<usize>,
    eps: f64,
    affine: bool,
    bias: bool,
    /// Entries per normalized row `M`.
    m: usize,
    /// Rows per sample `R`.
    rows: usize,
}

impl LayerNorm {
    /// `nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)` on per-sample inputs
    /// `in_shape`. `normalized_shape` must be a non-empty suffix of `in_shape` without zero
    /// axes; `bias` only counts with `elementwise_affine` (as in PyTorch).
    pub fn new(
        in_shape: Vec<usize>,
        normalized_shape: Vec<usize>,
        eps: f64,
        elementwise_affine: bool,
        bias: bool,
    ) -> Result<Self, String> {
        if normalized_shape.is_empty() || normalized_shape.contains(&0) {
            return Err(format!(
                "layernorm: normalized_shape {normalized_shape:?} must be non-empty without zero axes"
            ));
        }
        if normalized_shape.len() > in_shape.len() || !in_shape.ends_with(&normalized_shape) {
            return Err(format!(
                "normalized_shape {normalized_shape:?} does not match the trailing axes of the input shape {in_shape:?}"
            ));
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(format!("layernorm: eps {eps} must be finite and non-negative"));
        }
        let m: usize = normalized_shape.iter().product();
        let rows = in_shape[..in_shape.len() - normalized_shape.len()].iter().product();
        Ok(Self {
            in_shape,
            normalized_shape,
            eps,
            affine: elementwise_affine,
            bias: elementwise_affine && bias,
            m,
            rows,
        })
    }
    /// The normalized trailing axes.
    pub fn normalized_shape(&self) -> &[usize] {
        &self.normalized_shape
    }
    /// `ε` added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }
    /// Whether the layer has the elementwise weight (and possibly bias).
    pub fn elementwise_affine(&self) -> bool {
        self.affine
    }
    /// Whether the layer has a bias.
    pub fn has_bias(&self) -> bool {
        self.bias
    }
    /// Rows per sample `R` (product of the axes in front of `normalized_shape`).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Entries per normalized row `M`.
    pub fn row_len(&self) -> usize {
        self.m
    }

    /// `[x̂ | s]`: `x̂` (`[N·R, M]`) and `s` (`[N·R]`) of every row of `x`, in one vector
    /// (what the forward pass keeps; each entry written once).
    fn normalize<T: Float>(&self, x: &[T]) -> Vec<T> {
        let m = self.m;
        let rows = x.len() / m;
        let inv_m = T::one() / T::of(m as f64);
        let eps = T::of(self.eps);
        let mut xh = Vec::with_capacity(x.len() + rows);
        let mut s = Vec::with_capacity(rows);
        with_simd(
            #[inline(always)]
            || {
                for row in x.chunks_exact(m) {
                    let mu = ops::sum(row) * inv_m;
                    let start = xh.len();
                    xh.extend(row.iter().map(|&v| v - mu));
                    let out = &mut xh[start..];
                    let var = ops::dot(out, out) * inv_m;
                    let sr = T::one() / (var + eps).sqrt();
                    for o in out.iter_mut() {
                        *o *= sr;
                    }
                    s.push(sr);
                }
            },
        );
        xh.extend_from_slice(&s);
        xh
    }
    /// `x̂` and `s` of the context's input: kept by the forward pass in `Aux::Cols([x̂ | s])`,
    /// recomputed when the context holds something else.
    fn xhat_s<'a, T: Float>(&self, c: &Ctx<'a, T>) -> (Cow<'a, [T]>, Cow<'a, [T]>) {
        let len = c.x.len();
        match c.aux {
            Aux::Cols(v) if v.len() == len + len / self.m => {
                let (xh, s) = v.split_at(len);
                (Cow::Borrowed(xh), Cow::Borrowed(s))
            }
            _ => {
                let mut xh = self.normalize(c.x);
                let s = xh.split_off(len);
                (Cow::Owned(xh), Cow::Owned(s))
            }
        }
    }
    /// The weight `w` (`None` without affine, i.e. `w = 1`).
    fn weight<'a, T>(&self, p: &'a [T]) -> Option<&'a [T]> {
        self.affine.then(|| &p[..self.m])
    }
    /// Primal row of tangent row `t` of a `[N, K, R, M]` array.
    #[inline]
    fn prow(&self, t: usize, k: usize) -> usize {
        let r = self.rows;
        (t / (k * r)) * r + t % r
    }
}

/// `out = P(d) = s (d − mean(d) − x̂ mean(d ⊙ x̂))` for one row.
#[inline]
fn project<T: Float>(d: &[T], xh: &[T], s: T, inv_m: T, out: &mut [T]) {
    let m1 = ops::sum(d) * inv_m;
    let m2 = ops::dot(d, xh) * inv_m;
    for ((o, &dv), &xv) in out.iter_mut().zip(d).zip(xh) {
        *o = s * (dv - m1 - xv * m2);
    }
}

/// `out = a ⊙ w` (or `a` without a weight).
#[inline]
fn times_w<T: Float>(a: &[T], w: Option<&[T]>, out: &mut [T]) {
    match w {
        Some(w) => {
            for ((o, &av), &wv) in out.iter_mut().zip(a).zip(w) {
                *o = av * wv;
            }
        }
        None => out.copy_from_slice(a),
    }
}

/// `out += a ⊙ b`.
#[inline]
fn add_prod<T: Float>(a: &[T], b: &[T], out: &mut [T]) {
    for ((o, &av), &bv) in out.iter_mut().zip(a).zip(b) {
        *o += av * bv;
    }
}

impl<T: Float> Layer<T> for LayerNorm {
    fn kind(&self) -> &'static str {
        "layernorm"
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn in_shape(&self) -> &[usize] {
        &self.in_shape
    }
    fn out_shape(&self) -> &[usize] {
        &self.in_shape
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut v = Vec::new();
        if self.affine {
            v.push(ParamSpec { name: "weight", shape: self.normalized_shape.clone() });
        }
        if self.bias {
            v.push(ParamSpec { name: "bias", shape: self.normalized_shape.clone() });
        }
        v
    }

    fn forward(&self, p: &[T], x: &[T], _n: usize) -> (Vec<T>, Aux<T>) {
        let m = self.m;
        // x̂ and s for the rules
        let keep = self.normalize(x);
        let xh = &keep[..x.len()];
        let y = match self.weight(p) {
            None => ops::to_vec(xh),
            Some(w) => {
                let b = self.bias.then(|| &p[m..2 * m]);
                let mut y = Vec::with_capacity(xh.len());
                with_simd(
                    #[inline(always)]
                    || {
                        for row in xh.chunks_exact(m) {
                            match b {
                                Some(b) => y.extend(row.iter().zip(w).zip(b).map(|((&v, &wv), &bv)| v * wv + bv)),
                                None => y.extend(row.iter().zip(w).map(|(&v, &wv)| v * wv)),
                            }
                        }
                    },
                );
                y
            }
        };
        (y, Aux::Cols(keep))
    }

    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T> {
        let m = self.m;
        let inv_m = T::one() / T::of(m as f64);
        let (xh, s) = self.xhat_s(c);
        let w = self.weight(c.p);
        let mut out = Vec::with_capacity(dx.len());
        for (t, d) in dx.chunks_exact(m).enumerate() {
            let pr = self.prow(t, k);
            out.resize((t + 1) * m, T::zero());
            let o = &mut out[t * m..];
            project(d, &xh[pr * m..(pr + 1) * m], s[pr], inv_m, o);
            if let Some(w) = w {
                for (ov, &wv) in o.iter_mut().zip(w) {
                    *ov *= wv;
                }
            }
        }
        out
    }

    fn jvp_param(&self, c: &Ctx<T>, dp: &ParamIn<T>, k: usize, dy: &mut [T]) {
        if !self.affine {
            return;
        }
        let m = self.m;
        let dw = dp[0];
        let db = if self.bias { dp[1] } else { None };
        let xh = dw.map(|_| self.xhat_s(c).0);
        for (t, o) in dy.chunks_exact_mut(m).enumerate() {
            let kk = (t / self.rows) % k;
            if let (Some(dw), Some(xh)) = (dw, &xh) {
                let pr = self.prow(t, k);
                add_prod(&dw[kk * m..(kk + 1) * m], &xh[pr * m..(pr + 1) * m], o);
            }
            if let Some(db) = db {
                ops::axpy(T::one(), &db[kk * m..(kk + 1) * m], o);
            }
        }
    }

    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T> {
        let m = self.m;
        let inv_m = T::one() / T::of(m as f64);
        let (xh, s) = self.xhat_s(c);
        let w = self.weight(c.p);
        let mut out = Vec::with_capacity(g.len());
        let mut gh = vec![T::zero(); m];
        for (t, gr) in g.chunks_exact(m).enumerate() {
            let pr = self.prow(t, k);
            times_w(gr, w, &mut gh);
            out.resize((t + 1) * m, T::zero());
            project(&gh, &xh[pr * m..(pr + 1) * m], s[pr], inv_m, &mut out[t * m..]);
        }
        out
    }

    fn vjp_param(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        if !self.affine {
            return;
        }
        let m = self.m;
        let xh = out[0].is_some().then(|| self.xhat_s(c).0);
        for (t, gr) in g.chunks_exact(m).enumerate() {
            let kk = (t / self.rows) % k;
            if let (Some(gw), Some(xh)) = (out[0].as_deref_mut(), &xh) {
                let pr = self.prow(t, k);
                add_prod(gr, &xh[pr * m..(pr + 1) * m], &mut gw[kk * m..(kk + 1) * m]);
            }
            if self.bias {
                if let Some(gb) = out[1].as_deref_mut() {
                    ops::axpy(T::one(), gr, &mut gb[kk * m..(kk + 1) * m]);
                }
            }
        }
    }

    fn vjp_param_per_sample(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        if !self.affine {
            return;
        }
        let m = self.m;
        let xh = out[0].is_some().then(|| self.xhat_s(c).0);
        for o in out.iter_mut().flatten() {
            o.fill(T::zero());
        }
        // tangent row t belongs to sample n and tangent kk: its [N, K, M] block is t / R
        for (t, gr) in g.chunks_exact(m).enumerate() {
            let blk = t / self.rows;
            if let (Some(gw), Some(xh)) = (out[0].as_deref_mut(), &xh) {
                let pr = self.prow(t, k);
                add_prod(gr, &xh[pr * m..(pr + 1) * m], &mut gw[blk * m..(blk + 1) * m]);
            }
            if self.bias {
                if let Some(gb) = out[1].as_deref_mut() {
                    ops::axpy(T::one(), gr, &mut gb[blk * m..(blk + 1) * m]);
                }
            }
        }
    }

    fn hvp_needs_g(&self, rx: bool, dp: bool, want_input: bool) -> bool {
        (rx && want_input) || (self.affine && dp && (rx || want_input))
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
        let m = self.m;
        let inv_m = T::one() / T::of(m as f64);
        let (xh, s) = self.xhat_s(c);
        let w = self.weight(c.p);
        let dw = if self.affine { dp[0] } else { None };
        let want_w = self.affine && rgrad[0].is_some();
        let want_b = self.bias && rgrad[1].is_some();
        let rows = c.n * self.rows;

        // per primal row, for the second-order terms in x: ĝ = g ⊙ w, g_x = P(ĝ), β = mean(ĝ ⊙ x̂)
        let (gh0, gx0, beta) = if rx.is_some() && want_input {
            let mut gh0 = vec![T::zero(); rows * m];
            let mut gx0 = vec![T::zero(); rows * m];
            let mut beta = Vec::with_capacity(rows);
            for pr in 0..rows {
                let sl = pr * m..(pr + 1) * m;
                times_w(&g[sl.clone()], w, &mut gh0[sl.clone()]);
                project(&gh0[sl.clone()], &xh[sl.clone()], s[pr], inv_m, &mut gx0[sl.clone()]);
                beta.push(ops::dot(&gh0[sl.clone()], &xh[sl]) * inv_m);
            }
            (gh0, gx0, beta)
        } else {
            (Vec::new(), Vec::new(), Vec::new())
        };

        // rows of R(g_x) are appended in order, each written right after its (cached) zero-fill
        let mut out = if want_input { Vec::with_capacity(rg.len()) } else { Vec::new() };
        let mut rgh = vec![T::zero(); m];
        let mut dxh = vec![T::zero(); m];
        with_simd(
            #[inline(always)]
            || {
                for (t, rgr) in rg.chunks_exact(m).enumerate() {
                    let pr = self.prow(t, k);
                    let kk = (t / self.rows) % k;
                    let xr = &xh[pr * m..(pr + 1) * m];
                    // the primal cotangent is read only with R(x) or dw (empty otherwise)
                    let gr = g.get(pr * m..(pr + 1) * m).unwrap_or(&[]);
                    let sr = s[pr];
                    // R(x̂) and a = s mean(x̂ ⊙ R(x)) = −R(s)/s
                    let a = match rx {
                        Some(rx) => {
                            let rr = &rx[t * m..(t + 1) * m];
                            let a = sr * ops::dot(xr, rr) * inv_m;
                            project(rr, xr, sr, inv_m, &mut dxh);
                            Some(a)
                        }
                        None => None,
                    };
                    if want_input {
                        // R(ĝ) = R(g) ⊙ w + g ⊙ dw
                        times_w(rgr, w, &mut rgh);
                        if let Some(dw) = dw {
                            add_prod(gr, &dw[kk * m..(kk + 1) * m], &mut rgh);
                        }
                        out.resize((t + 1) * m, T::zero());
                        let o = &mut out[t * m..];
                        project(&rgh, xr, sr, inv_m, o);
                        if let Some(a) = a {
                            let sl = pr * m..(pr + 1) * m;
                            let gamma = ops::dot(&gh0[sl.clone()], &dxh) * inv_m;
                            let (b, gx) = (beta[pr], &gx0[sl]);
                            for (((ov, &gxv), &dv), &xv) in o.iter_mut().zip(gx).zip(&dxh).zip(xr) {
                                *ov -= a * gxv + sr * (dv * b + xv * gamma);
                            }
                        }
                    }
                    if want_w {
                        if let Some(gw) = rgrad[0].as_deref_mut() {
                            let dst = &mut gw[kk * m..(kk + 1) * m];
                            add_prod(rgr, xr, dst);
                            if a.is_some() {
                                add_prod(gr, &dxh, dst);
                            }
                        }
                    }
                    if want_b {
                        if let Some(gb) = rgrad[1].as_deref_mut() {
                            ops::axpy(T::one(), rgr, &mut gb[kk * m..(kk + 1) * m]);
                        }
                    }
                }
            },
        );
        want_input.then_some(out)
    }
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
    fn rules_for_every_option() {
        let mut rng = Rng::new(8);
        // (input shape, normalized shape): R = 1 and R > 1, one and two normalized axes
        let cases: [(Vec<usize>, Vec<usize>); 6] = [
            (vec![6], vec![6]),
            (vec![3, 5], vec![5]),
            (vec![2, 3, 4], vec![4]),
            (vec![3, 4], vec![3, 4]),
            (vec![2, 3, 2], vec![3, 2]),
            (vec![4, 1], vec![1]),
        ];
        for (ci, (shape, ns)) in cases.iter().enumerate() {
            for (affine, bias) in [(true, true), (true, false), (false, true), (false, false)] {
                for eps in [1e-5, 0.3] {
                    for n in [1, 3] {
                        let l = LayerNorm::new(shape.clone(), ns.clone(), eps, affine, bias).unwrap();
                        let p = randn(&mut rng, Layer::<f64>::num_params(&l));
                        let x = randn(&mut rng, n * Layer::<f64>::in_size(&l));
                        let name =
                            format!("layernorm case {ci} {shape:?}/{ns:?} affine={affine} bias={bias} eps={eps} n={n}");
                        // M = 1 normalizes to exactly 0 (x̂ ≡ 0): a constant map, still checked
                        check_rules(&name, &l, &p, &[x], &[true], n, 1e-6);
                    }
                }
            }
        }
    }

    #[test]
    fn forward_matches_definition() {
        let mut rng = Rng::new(2);
        let (m, r, n, eps) = (6, 2, 2, 1e-5);
        let l = LayerNorm::new(vec![r, 2, 3], vec![2, 3], eps, true, true).unwrap();
        let p = randn(&mut rng, 2 * m);
        let x: Vec<f64> = randn(&mut rng, n * r * m).iter().map(|v| 3.0 * v + 1.0).collect();
        let (y, _) = l.forward(&p, &x, n);
        for (row, yr) in x.chunks(m).zip(y.chunks(m)) {
            let mu = row.iter().sum::<f64>() / m as f64;
            let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / m as f64;
            let want: Vec<f64> =
                row.iter().enumerate().map(|(j, v)| (v - mu) / (var + eps).sqrt() * p[j] + p[m + j]).collect();
            assert!(rel_err(yr, &want) < 1e-14);
        }
        // f32 agrees
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let p32: Vec<f32> = p.iter().map(|&v| v as f32).collect();
        let (y32, _) = l.forward(&p32, &x32, n);
        let y32: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
        assert!(rel_err(&y32, &y) < 1e-5);
    }

    #[test]
    fn params_and_errors() {
        let l = LayerNorm::new(vec![5, 6], vec![6], 1e-5, true, true).unwrap();
        let names: Vec<_> = Layer::<f64>::params(&l).into_iter().map(|s| (s.name, s.shape)).collect();
        assert_eq!(names, vec![("weight", vec![6]), ("bias", vec![6])]);
        assert_eq!((l.rows(), l.row_len()), (5, 6));
        let l = LayerNorm::new(vec![5, 6], vec![5, 6], 1e-5, true, false).unwrap();
        assert_eq!(Layer::<f64>::params(&l).len(), 1);
        assert!(!l.has_bias());
        let l = LayerNorm::new(vec![5, 6], vec![6], 1e-5, false, true).unwrap();
        assert!(Layer::<f64>::params(&l).is_empty());
        assert!(!l.has_bias());
        let e = LayerNorm::new(vec![5, 6], vec![8], 1e-5, true, true).unwrap_err();
        assert_eq!(e, "normalized_shape [8] does not match the trailing axes of the input shape [5, 6]");
        assert!(LayerNorm::new(vec![5, 6], vec![5], 1e-5, true, true).is_err());
        assert!(LayerNorm::new(vec![6], vec![2, 6], 1e-5, true, true).is_err());
        assert!(LayerNorm::new(vec![6], vec![], 1e-5, true, true).is_err());
    }

    /// With the parameters held fixed (`dp = None`) the parameter part of the R-op is still
    /// written, and `want_input = false` returns nothing but the same parameter part.
    #[test]
    fn hvp_with_fixed_params_and_without_input() {
        let mut rng = Rng::new(9);
        let (n, k) = (2, 2);
        let l = LayerNorm::new(vec![3, 4], vec![4], 1e-5, true, true).unwrap();
        let p = randn(&mut rng, 8);
        let x = randn(&mut rng, n * 12);
        let (y, aux) = l.forward(&p, &x, n);
        let xr: &[f64] = &x;
        let c = Ctx { p: &p, x: &x, xs: std::slice::from_ref(&xr), y: &y, aux: &aux, n };
        let (g, rg, rx) = (randn(&mut rng, n * 12), randn(&mut rng, n * k * 12), randn(&mut rng, n * k * 12));
        let mut a = [vec![0.0; k * 4], vec![0.0; k * 4]];
        let mut b = a.clone();
        let ra = {
            let [a0, a1] = &mut a;
            l.hvp_backward(
                &c,
                Some(&rx),
                &[None, None],
                &g,
                &rg,
                k,
                &mut [Some(a0.as_mut_slice()), Some(a1.as_mut_slice())],
                true,
            )
        };
        let rb = {
            let [b0, b1] = &mut b;
            l.hvp_backward(
                &c,
                Some(&rx),
                &[None, None],
                &g,
                &rg,
                k,
                &mut [Some(b0.as_mut_slice()), Some(b1.as_mut_slice())],
                false,
            )
        };
        assert!(ra.is_some() && rb.is_none());
        assert_eq!(a, b);
        assert!(a[0].iter().any(|v| *v != 0.0));
    }
}
