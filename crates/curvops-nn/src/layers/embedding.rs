//! `embedding`: `nn.Embedding(num_embeddings, embedding_dim)`, a table lookup
//! `y[…, :] = W[id[…], :]` with `W` `[num, dim]`.
//!
//! The input holds integer ids coded as floats, any per-sample shape `S` (`L` ids); the output
//! is `S + [dim]`. The ids are discrete, so every derivative with respect to the input is zero
//! (`jvp_input`, `vjp_input` and `R(g_x)` return zeros). The map is linear in `W`:
//! * JVP: `dy[…] = dW[id[…]]`;
//! * VJP: `∇W[i] = Σ_{n, l : id_{n,l} = i} g[n, l]` (a scatter-add of the cotangent rows;
//!   repeated ids accumulate); per sample the same without the sum over `n`;
//! * R-op: no second-order terms (`∂²y/∂W² = 0`, `∂²y/∂x∂W = 0` as `x` is discrete), so
//!   `R(∇W) = scatter of R(g)`, and the primal cotangent is never read.
//!
//! **Ids are assumed valid.** The loader checks every id against [`Layer::int_input_bound`]
//! (an integer in `[0, num)`), so the rules do not validate them again. A debug build asserts
//! it; a release build never clamps or remaps an invalid id: the forward pass writes a row of
//! NaN for it (so the loss turns NaN visibly) and the parameter rules skip it.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut, ParamSpec};
use super::{KfacLayout, KfacMap};
use curvops_tensor::{ops, Float};

/// A lookup table of `num` embeddings of size `dim`.
#[derive(Clone, Debug)]
pub struct Embedding {
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    num: usize,
    dim: usize,
    /// Ids per sample `L`.
    len: usize,
}

impl Embedding {
    /// `nn.Embedding(num_embeddings, embedding_dim)` on per-sample id arrays of shape
    /// `in_shape` (any rank, also `[]` for one id per sample).
    pub fn new(in_shape: Vec<usize>, num_embeddings: usize, embedding_dim: usize) -> Result<Self, String> {
        if num_embeddings == 0 {
            return Err("embedding: num_embeddings must be positive".into());
        }
        // ids are exact in the float type only below 2^24 (f32)
        if num_embeddings > 1 << 24 {
            return Err(format!("embedding: num_embeddings {num_embeddings} exceeds 2^24 (ids are coded as floats)"));
        }
        let len = in_shape.iter().product();
        let mut out_shape = in_shape.clone();
        out_shape.push(embedding_dim);
        Ok(Self { in_shape, out_shape, num: num_embeddings, dim: embedding_dim, len })
    }
    /// Number of embeddings (the exclusive bound of the ids).
    pub fn num_embeddings(&self) -> usize {
        self.num
    }
    /// Size of each embedding.
    pub fn embedding_dim(&self) -> usize {
        self.dim
    }
    /// The row of id `v`; `None` for an invalid id (which validated data never holds).
    #[inline]
    fn id<T: Float>(&self, v: T) -> Option<usize> {
        let f = v.as_f64();
        let ok = f >= 0.0 && f < self.num as f64 && f.fract() == 0.0;
        debug_assert!(ok, "embedding: id {f} is not an integer in [0, {})", self.num);
        ok.then_some(f as usize)
    }
    /// Calls `f(t, kk, row)` for every valid id of the batch and each tangent `kk < K`: `t` is
    /// the index of the id's row in a `[N, K, L, dim]` tangent array (`(n·K + kk)·L + pos`),
    /// `row` its table row.
    fn for_each_id<T: Float>(&self, x: &[T], n: usize, k: usize, mut f: impl FnMut(usize, usize, usize)) {
        let l = self.len;
        for s in 0..n {
            for (pos, &v) in x[s * l..(s + 1) * l].iter().enumerate() {
                if let Some(row) = self.id(v) {
                    for kk in 0..k {
                        f((s * k + kk) * l + pos, kk, row);
                    }
                }
            }
        }
    }
    /// `out[kk][row] += g[t]` over all ids (`out` `[K, num·dim]`, or `[N, K, num·dim]` with
    /// `per_sample`).
    fn scatter<T: Float>(&self, x: &[T], n: usize, g: &[T], k: usize, out: &mut [T], per_sample: bool) {
        let (d, nd) = (self.dim, self.num * self.dim);
        self.for_each_id(x, n, k, |t, kk, row| {
            let base = if per_sample { (t / self.len) * nd } else { kk * nd };
            ops::axpy(T::one(), &g[t * d..(t + 1) * d], &mut out[base + row * d..base + (row + 1) * d]);
        });
    }
}

impl<T: Float> Layer<T> for Embedding {
    fn kind(&self) -> &'static str {
        "embedding"
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
    fn int_input_bound(&self) -> Option<usize> {
        Some(self.num)
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec { name: "weight", shape: vec![self.num, self.dim] }]
    }
    /// One map: `y_l = Wᵀ e_{id_l}`, a linear map of one-hot inputs (`in = num`, `out = dim`)
    /// whose weight is stored transposed (`W` is `[num, dim]`), over the `L` ids of a sample.
    /// Inputs are the ids `[N, L]`; output cotangents the node's own `[N, K, L, dim]`. KFAC's
    /// input factor is then diagonal: `A = diag(count of id i) / (N·L)`.
    fn kfac_maps(&self) -> Vec<KfacMap> {
        vec![KfacMap {
            name: "",
            weight: 0,
            bias: None,
            out: self.dim,
            inp: self.num,
            positions: self.len,
            transposed: true,
            layout: KfacLayout::Rows,
            one_hot: true,
        }]
    }
    fn kfac_inputs<'a>(&self, c: &Ctx<'a, T>, _map: usize) -> std::borrow::Cow<'a, [T]> {
        std::borrow::Cow::Borrowed(c.x)
    }
    fn kfac_output_cotangents<'g>(&self, _c: &Ctx<T>, _map: usize, g: &'g [T], _k: usize) -> std::borrow::Cow<'g, [T]> {
        std::borrow::Cow::Borrowed(g)
    }

    /// Looks up every id; assumes validated ids (see the module docs: a row of NaN for an
    /// invalid id in release builds, a failed debug assertion in debug builds).
    fn forward(&self, p: &[T], x: &[T], _n: usize) -> (Vec<T>, Aux<T>) {
        let d = self.dim;
        let mut y = Vec::with_capacity(x.len() * d);
        for &v in x {
            match self.id(v) {
                Some(row) => y.extend_from_slice(&p[row * d..(row + 1) * d]),
                None => y.resize(y.len() + d, T::nan()),
            }
        }
        (y, Aux::None)
    }

    /// Zero: the ids are discrete.
    fn jvp_input(&self, c: &Ctx<T>, _dx: &[T], k: usize) -> Vec<T> {
        vec![T::zero(); c.n * k * self.len * self.dim]
    }

    fn jvp_param(&self, c: &Ctx<T>, dp: &ParamIn<T>, k: usize, dy: &mut [T]) {
        let Some(dw) = dp[0] else { return };
        let (d, nd) = (self.dim, self.num * self.dim);
        self.for_each_id(c.x, c.n, k, |t, kk, row| {
            let src = &dw[kk * nd + row * d..kk * nd + (row + 1) * d];
            ops::axpy(T::one(), src, &mut dy[t * d..(t + 1) * d]);
        });
    }

    /// Zero: the ids are discrete.
    fn vjp_input(&self, c: &Ctx<T>, _g: &[T], k: usize) -> Vec<T> {
        vec![T::zero(); c.n * k * self.len]
    }

    fn vjp_param(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        if let Some(gw) = out[0].as_deref_mut() {
            self.scatter(c.x, c.n, g, k, gw, false);
        }
    }

    fn vjp_param_per_sample(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        if let Some(gw) = out[0].as_deref_mut() {
            gw.fill(T::zero());
            self.scatter(c.x, c.n, g, k, gw, true);
        }
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
        rgrad: &mut ParamOut<T>,
        want_input: bool,
    ) -> Option<Vec<T>> {
        // R(∇W) = scatter of R(g); R(g_x) = 0
        self.vjp_param(c, rg, k, rgrad);
        want_input.then(|| vec![T::zero(); c.n * k * self.len])
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

    #[test]
    fn rules_on_random_shapes() {
        let mut rng = Rng::new(12);
        let cases: [(Vec<usize>, usize, usize); 5] =
            [(vec![5], 7, 3), (vec![2, 3], 4, 5), (vec![], 6, 2), (vec![4, 1, 2], 3, 1), (vec![6], 2, 4)];
        for (shape, num, dim) in cases {
            for n in [1, 3] {
                let l = Embedding::new(shape.clone(), num, dim).unwrap();
                let p = randn(&mut rng, num * dim);
                let ls: usize = shape.iter().product();
                let mut x: Vec<f64> = (0..n * ls).map(|_| rng.below(num as u64) as f64).collect();
                // a repeated id in every sample of length ≥ 2
                if ls >= 2 {
                    for s in 0..n {
                        x[s * ls + ls - 1] = x[s * ls];
                    }
                }
                check_rules(&format!("embedding {shape:?} num={num} dim={dim} n={n}"), &l, &p, &[x], &[false], n, 1e-6);
            }
        }
    }

    #[test]
    fn lookup_scatter_and_zero_input_derivatives() {
        let l = Embedding::new(vec![3], 4, 2).unwrap();
        assert_eq!(Layer::<f64>::int_input_bound(&l), Some(4));
        assert_eq!(Layer::<f64>::out_shape(&l), &[3, 2]);
        let p: Vec<f64> = (0..8).map(|v| v as f64).collect();
        let x = [2.0, 0.0, 2.0];
        let (y, aux) = l.forward(&p, &x, 1);
        assert_eq!(y, vec![4.0, 5.0, 0.0, 1.0, 4.0, 5.0]);
        let xr: &[f64] = &x;
        let c = Ctx { p: &p, x: &x, xs: std::slice::from_ref(&xr), y: &y, aux: &aux, n: 1 };
        let g = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut gw = vec![0.0; 8];
        l.vjp_param(&c, &g, 1, &mut [Some(gw.as_mut_slice())]);
        assert_eq!(gw, vec![3.0, 4.0, 0.0, 0.0, 6.0, 8.0, 0.0, 0.0]);
        assert_eq!(l.jvp_input(&c, &[1.0; 3], 1), vec![0.0; 6]);
        assert_eq!(l.vjp_input(&c, &g, 1), vec![0.0; 3]);
        let mut rw = vec![0.0; 8];
        let rgx = l.hvp_backward(&c, Some(&[1.0; 3]), &[None], &[0.0; 6], &g, 1, &mut [Some(rw.as_mut_slice())], true);
        assert_eq!(rgx, Some(vec![0.0; 3]));
        assert_eq!(rw, gw);
        assert!(!Layer::<f64>::hvp_needs_g(&l, true, true, true));
        assert!(Embedding::new(vec![3], 0, 2).is_err());
    }

    /// Release builds: an invalid id gives a NaN row instead of a clamped lookup (debug builds
    /// assert instead, so this runs only without debug assertions).
    #[cfg(not(debug_assertions))]
    #[test]
    fn invalid_id_gives_nan_in_release() {
        let l = Embedding::new(vec![2], 3, 2).unwrap();
        let p = [1.0f64; 6];
        let (y, _) = l.forward(&p, &[1.0, 3.0], 1);
        assert_eq!(&y[..2], &[1.0, 1.0]);
        assert!(y[2..].iter().all(|v| v.is_nan()));
    }
}
