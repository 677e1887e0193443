//! `parameter`: a learned tensor `θ` of per-sample shape `shape` as a node of its own (no
//! inputs), e.g. a positional embedding or a class token that other nodes add or concatenate.
//!
//! The output repeats `θ` for every sample: `y_n = θ` (`[N, *shape]`). The map is linear in `θ`
//! and reads no input, so (per tangent `k`):
//! * JVP: `dy_{n,k} = dθ_k`;
//! * VJP: `∇θ_k = Σ_n g_{n,k}`; per sample: `∇θ_{n,k} = g_{n,k}`;
//! * R-op: `R(∇θ_k) = Σ_n R(g)_{n,k}` (no second-order terms, `g` is not read); there is no
//!   input cotangent.
//!
//! The node has no inputs: [`Layer::in_shapes`] is empty, [`Layer::in_shape`] is `[]` and the
//! input size is 0 (a node input `x` is `[N, 0]`, ignored).

use super::{Aux, Ctx, Layer, ParamIn, ParamOut, ParamSpec};
use curvops_tensor::{ops, Float};

/// A learned tensor repeated for every sample (see module docs).
#[derive(Clone, Debug)]
pub struct Parameter {
    shape: Vec<usize>,
}

impl Parameter {
    /// A parameter node of per-sample shape `shape` (role `weight`, of that shape). Errors for a
    /// shape without entries.
    pub fn new(shape: Vec<usize>) -> Result<Self, String> {
        if shape.contains(&0) {
            return Err(format!("parameter shape {shape:?} has no entries"));
        }
        Ok(Self { shape })
    }

    fn size(&self) -> usize {
        self.shape.iter().product()
    }

    /// `dy[n, k] += dθ[k]` for every sample.
    fn add_tangent<T: Float>(&self, dp: &ParamIn<T>, n: usize, k: usize, dy: &mut [T]) {
        if let Some(dw) = dp[0] {
            let s = self.size();
            for row in dy.chunks_exact_mut((k * s).max(1)).take(n) {
                ops::axpy(T::one(), dw, row);
            }
        }
    }
}

impl<T: Float> Layer<T> for Parameter {
    fn kind(&self) -> &'static str {
        "parameter"
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    /// `[]`: the node reads no input.
    fn in_shape(&self) -> &[usize] {
        &[]
    }
    fn out_shape(&self) -> &[usize] {
        &self.shape
    }
    /// Empty: the node reads no input.
    fn in_shapes(&self) -> Vec<Vec<usize>> {
        Vec::new()
    }
    /// 0: the node reads no input.
    fn in_size(&self) -> usize {
        0
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec { name: "weight", shape: self.shape.clone() }]
    }
    /// `y_n = θ` for `n < N`; `x` is ignored.
    fn forward(&self, p: &[T], _x: &[T], n: usize) -> (Vec<T>, Aux<T>) {
        let s = self.size();
        let w = &p[..s];
        let mut y = Vec::with_capacity(n * s);
        for _ in 0..n {
            y.extend_from_slice(w);
        }
        (y, Aux::None)
    }
    fn forward_inputs(&self, p: &[T], _xs: &[&[T]], n: usize) -> (Vec<T>, Aux<T>) {
        self.forward(p, &[], n)
    }
    /// Zero: the output does not depend on any input (`[N, K, O]` zeros).
    fn jvp_input(&self, c: &Ctx<T>, _dx: &[T], k: usize) -> Vec<T> {
        vec![T::zero(); c.n * k * self.size()]
    }
    /// `None`: there is no input.
    fn jvp_inputs(&self, _c: &Ctx<T>, _dxs: &[Option<&[T]>], _k: usize) -> Option<Vec<T>> {
        None
    }
    fn jvp_param(&self, c: &Ctx<T>, dp: &ParamIn<T>, k: usize, dy: &mut [T]) {
        self.add_tangent(dp, c.n, k, dy);
    }
    /// Empty (`[N, K, 0]`): there is no input.
    fn vjp_input(&self, _c: &Ctx<T>, _g: &[T], _k: usize) -> Vec<T> {
        Vec::new()
    }
    /// Empty: there is no input.
    fn vjp_inputs(&self, _c: &Ctx<T>, _g: &[T], _k: usize, _want: &[bool]) -> Vec<Option<Vec<T>>> {
        Vec::new()
    }
    /// `∇θ_k += Σ_n g_{n,k}`.
    fn vjp_param(&self, c: &Ctx<T>, g: &[T], k: usize, out: &mut ParamOut<T>) {
        if let Some(gw) = out[0].as_deref_mut() {
            ops::sum_rows_into(g, c.n, k * self.size(), T::one(), gw);
        }
    }
    /// `∇θ_{n,k} = g_{n,k}`.
    fn vjp_param_per_sample(&self, _c: &Ctx<T>, g: &[T], _k: usize, out: &mut ParamOut<T>) {
        if let Some(gw) = out[0].as_deref_mut() {
            gw.copy_from_slice(g);
        }
    }
    fn hvp_needs_g(&self, _rx: bool, _dp: bool, _want_input: bool) -> bool {
        false
    }
    /// Adds `R(∇θ) = Σ_n R(g)` and returns no input entries.
    fn hvp_backward_inputs(
        &self,
        c: &Ctx<T>,
        _rxs: &[Option<&[T]>],
        _dp: &ParamIn<T>,
        _g: &[T],
        rg: &[T],
        k: usize,
        rgrad: &mut ParamOut<T>,
        _want: &[bool],
    ) -> Vec<Option<Vec<T>>> {
        self.vjp_param(c, rg, k, rgrad);
        Vec::new()
    }
    /// Adds `R(∇θ) = Σ_n R(g)`; `R(g_x)` is empty (`[N, K, 0]`).
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
        self.vjp_param(c, rg, k, rgrad);
        want_input.then(Vec::new)
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
    fn parameter_rules() {
        let mut r = Rng::new(31);
        let mut shapes = vec![vec![5], vec![3, 4], vec![1], vec![2, 1]];
        for _ in 0..3 {
            let rank = 1 + r.below(2) as usize;
            shapes.push((0..rank).map(|_| 1 + r.below(4) as usize).collect());
        }
        for shape in shapes {
            let node = Parameter::new(shape.clone()).unwrap();
            assert!(Layer::<f64>::in_shapes(&node).is_empty());
            assert!(Layer::<f64>::in_shape(&node).is_empty());
            assert_eq!(Layer::<f64>::out_shape(&node), &shape[..]);
            assert_eq!(Layer::<f64>::params(&node), vec![ParamSpec { name: "weight", shape: shape.clone() }]);
            let s: usize = shape.iter().product();
            let p = randn(&mut r, s);
            for n in [1, 3] {
                let (y, _) = node.forward_inputs(&p, &[], n);
                let want: Vec<f64> = (0..n).flat_map(|_| p.clone()).collect();
                assert_eq!(y, want, "forward {shape:?}");
                assert_eq!(Layer::<f64>::forward(&node, &p, &[], n).0, want);
                check_rules(&format!("parameter {shape:?} n={n}"), &node, &p, &[], &[], n, 1e-7);
            }
        }
    }

    #[test]
    fn parameter_single_input_methods() {
        let node = Parameter::new(vec![2, 2]).unwrap();
        let p = [1.0, 2.0, 3.0, 4.0];
        let (n, k) = (2, 2);
        let (y, aux) = node.forward(&p, &[], n);
        let c = Ctx { p: &p, x: &[], xs: &[], y: &y, aux: &aux, n };
        assert!(node.jvp_inputs(&c, &[], k).is_none());
        assert_eq!(node.jvp_input(&c, &[], k), vec![0.0; n * k * 4]);
        assert!(node.vjp_input(&c, &[0.0; 16], k).is_empty());
        assert!(node.vjp_inputs(&c, &[0.0; 16], k, &[]).is_empty());
        let rg: Vec<f64> = (0..16).map(f64::from).collect();
        let mut buf = vec![1.0; k * 4];
        let out = {
            let mut views = [Some(buf.as_mut_slice())];
            node.hvp_backward(&c, None, &[None], &[], &rg, k, &mut views, true)
        };
        assert_eq!(out, Some(Vec::new()));
        // 1 + rg[0, k] + rg[1, k]
        let want: Vec<f64> = (0..8).map(|i| 1.0 + i as f64 + (i + 8) as f64).collect();
        assert_eq!(buf, want);
        assert!(!Layer::<f64>::hvp_needs_g(&node, true, true, true));
        assert!(Parameter::new(vec![3, 0]).is_err());
    }
}
