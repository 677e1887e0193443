//! Layers that pass values through unchanged: `flatten` (row-major over `[C, H, W]`, as
//! `nn.Flatten`) and `dropout` (the identity in evaluation mode). All derivatives are identities.

use super::{Aux, Ctx, Layer, ParamIn, ParamOut};
use curvops_tensor::Float;

/// The identity on values, with a possibly different per-sample shape.
#[derive(Clone, Debug)]
pub struct Identity {
    kind: &'static str,
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

impl Identity {
    /// `flatten`: `[d1, …, dm]` → `[d1·…·dm]`.
    pub fn flatten(in_shape: Vec<usize>) -> Self {
        let n = in_shape.iter().product();
        Self { kind: "flatten", in_shape, out_shape: vec![n] }
    }
    /// `dropout` in evaluation mode.
    pub fn dropout(shape: Vec<usize>) -> Self {
        Self { kind: "dropout", in_shape: shape.clone(), out_shape: shape }
    }
}

impl<T: Float> Layer<T> for Identity {
    fn kind(&self) -> &'static str {
        self.kind
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
    fn forward(&self, _p: &[T], x: &[T], _n: usize) -> (Vec<T>, Aux<T>) {
        (x.to_vec(), Aux::None)
    }
    fn jvp_input(&self, _c: &Ctx<T>, dx: &[T], _k: usize) -> Vec<T> {
        dx.to_vec()
    }
    fn vjp_input(&self, _c: &Ctx<T>, g: &[T], _k: usize) -> Vec<T> {
        g.to_vec()
    }
    fn hvp_needs_g(&self, _rx: bool, _dp: bool, _want_input: bool) -> bool {
        false
    }
    fn hvp_backward(
        &self,
        _c: &Ctx<T>,
        _rx: Option<&[T]>,
        _dp: &ParamIn<T>,
        _g: &[T],
        rg: &[T],
        _k: usize,
        _rgrad: &mut ParamOut<T>,
        want_input: bool,
    ) -> Option<Vec<T>> {
        want_input.then(|| rg.to_vec())
    }
}
