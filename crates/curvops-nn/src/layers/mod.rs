//! Layers and the derivative rules of each (BackPACK style: one module per layer).
//!
//! Notation for one layer `y = f(x; θ)` on a batch: `x` is `[N, I]`, `y` is `[N, O]` (per-sample
//! sizes `I`, `O`), `θ` is the layer's parameter tensors (weight, then bias, state-dict order).
//! `K` stacked tangents `dx` are `[N, K, I]`; cotangents `g` are `[N, K, O]`.
//!
//! * `jvp_input`: `dy = (∂y/∂x) dx` for each of the K tangents.
//! * `jvp_param`: `dy += (∂y/∂θ) dθ_k`, the parameter tangents given per tensor as `[K, size]`.
//! * `vjp_input`: `g_x = (∂y/∂x)ᵀ g`.
//! * `vjp_param`: `∇θ_k += Σ_n (∂y_n/∂θ)ᵀ g_{n,k}` (summed over the batch), per tensor `[K, size]`.
//! * `vjp_param_per_sample`: the same without the sum over `n`: per tensor `[N, K, size]`.
//! * `hvp_backward`: the R-operator (forward-over-reverse) of backpropagation. Given the primal
//!   output cotangent `g` (`[N, O]`), its directional derivative `R(g)` (`[N, K, O]`), the
//!   directional derivative of the input `R(x)` (`[N, K, I]`, `None` when zero) and the
//!   parameter direction `dθ` (`None` when the layer's parameters are held fixed), it returns
//!   `R(g_x) = R((∂y/∂x)ᵀ g)` and adds `R(∇θ) = R((∂y/∂θ)ᵀ g)` to the parameter output. This
//!   includes all second-order terms (`∂²y/∂x²`, `∂²y/∂x∂θ`), so backpropagating it from the
//!   loss gives exact Hessian-vector products.

pub mod activation;
pub mod attention;
pub mod batchnorm;
pub mod conv2d;
pub mod embedding;
pub mod index;
pub mod layernorm;
pub mod linear;
pub mod parameter;
pub mod pool;
pub mod reshape;
pub mod structure;
#[cfg(test)]
pub(crate) mod testing;

use curvops_tensor::Float;

pub use activation::{Activation, ActivationKind};
pub use batchnorm::BatchNorm;
pub use conv2d::Conv2d;
pub use linear::Linear;
pub use pool::{AvgPool2d, MaxPool2d};
pub use reshape::Identity;

/// A parameter tensor of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// `"weight"` or `"bias"`.
    pub name: &'static str,
    /// Shape as in PyTorch.
    pub shape: Vec<usize>,
}

impl ParamSpec {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True for a tensor without entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a layer keeps from its forward pass besides its input and output.
#[derive(Clone, Debug, Default)]
pub enum Aux<T> {
    /// Nothing.
    #[default]
    None,
    /// Integer indices (max-pool: flat input index of each output's maximum).
    Index(Vec<u32>),
    /// Unfolded input (conv2d: `im2col` of each sample, `[N, C·kh·kw, L]`).
    Cols(Vec<T>),
}

impl<T> Aux<T> {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Aux::None => 0,
            Aux::Index(v) => 4 * v.len(),
            Aux::Cols(v) => std::mem::size_of::<T>() * v.len(),
        }
    }
}

/// A layer's forward pass on a batch, as its rules see it.
#[derive(Clone, Copy)]
pub struct Ctx<'a, T> {
    /// The layer's parameters, all tensors concatenated (in the order of [`Layer::params`]).
    pub p: &'a [T],
    /// The first input `[N, I]` (empty for a node without inputs).
    pub x: &'a [T],
    /// All inputs, `xs[i]` is `[N, I_i]` (`xs[0] == x`); empty for a node without inputs.
    pub xs: &'a [&'a [T]],
    /// Output `[N, O]`.
    pub y: &'a [T],
    /// What the forward pass kept.
    pub aux: &'a Aux<T>,
    /// Batch size.
    pub n: usize,
}

/// Parameter tangents of one layer: per tensor, `[K, size]` or `None` if held fixed.
pub type ParamIn<'a, T> = [Option<&'a [T]>];
/// Parameter outputs of one layer: per tensor, a buffer or `None` if not wanted.
pub type ParamOut<'a, 'b, T> = [Option<&'a mut [T]>];

/// One layer with all its derivative rules. See the module documentation for the notation.
pub trait Layer<T: Float>: Send + Sync + std::fmt::Debug {
    /// The layer type as in `model.json`, e.g. `"conv2d"`.
    fn kind(&self) -> &'static str;
    /// The concrete layer, for rules that need its configuration (e.g. KFAC needs a
    /// convolution's geometry): `layer.as_any().downcast_ref::<Conv2d>()`.
    fn as_any(&self) -> &dyn std::any::Any;
    /// Per-sample input shape.
    fn in_shape(&self) -> &[usize];
    /// Per-sample output shape.
    fn out_shape(&self) -> &[usize];
    /// Per-sample shapes of all inputs, in the order of the node's `inputs` (default: the one
    /// input of [`Layer::in_shape`]; empty for a node that reads nothing, such as `parameter`).
    fn in_shapes(&self) -> Vec<Vec<usize>> {
        vec![self.in_shape().to_vec()]
    }
    /// Per-sample input size `I`.
    fn in_size(&self) -> usize {
        self.in_shape().iter().product()
    }
    /// Per-sample output size `O`.
    fn out_size(&self) -> usize {
        self.out_shape().iter().product()
    }
    /// For a node that reads integer ids (token ids coded as floats, e.g. `embedding`): the
    /// exclusive upper bound of valid ids; the loader checks the data against it.
    fn int_input_bound(&self) -> Option<usize> {
        None
    }
    /// Parameter tensors in state-dict order (empty for parameter-free layers).
    fn params(&self) -> Vec<ParamSpec> {
        Vec::new()
    }
    /// Total number of parameters.
    fn num_params(&self) -> usize {
        self.params().iter().map(ParamSpec::len).sum()
    }
    /// Forward pass: `y = f(x; θ)` (`[N, O]`) and what the rules need later.
    fn forward(&self, p: &[T], x: &[T], n: usize) -> (Vec<T>, Aux<T>);
    /// `dy = (∂y/∂x) dx` for `K` tangents `[N, K, I]` → `[N, K, O]`.
    fn jvp_input(&self, c: &Ctx<T>, dx: &[T], k: usize) -> Vec<T>;
    /// `dy += (∂y/∂θ) dθ` for `K` parameter tangents (per tensor `[K, size]`).
    fn jvp_param(&self, _c: &Ctx<T>, _dp: &ParamIn<T>, _k: usize, _dy: &mut [T]) {}
    /// `g_x = (∂y/∂x)ᵀ g` for `K` cotangents `[N, K, O]` → `[N, K, I]`.
    fn vjp_input(&self, c: &Ctx<T>, g: &[T], k: usize) -> Vec<T>;
    /// `out_t += Σ_n (∂y_n/∂θ_t)ᵀ g_n` for each wanted tensor `t` (`[K, size_t]`).
    fn vjp_param(&self, _c: &Ctx<T>, _g: &[T], _k: usize, _out: &mut ParamOut<T>) {}
    /// `out_t[n] = (∂y_n/∂θ_t)ᵀ g_n` for each wanted tensor `t` (`[N, K, size_t]`, overwritten).
    fn vjp_param_per_sample(&self, _c: &Ctx<T>, _g: &[T], _k: usize, _out: &mut ParamOut<T>) {}
    /// Whether [`Layer::hvp_backward`] reads the primal cotangent `g`, given whether `R(x)` is
    /// nonzero (`rx`), the parameters are active (`dp`) and `R(g_x)` is wanted. When no layer
    /// below needs it, the primal backward pass stops early.
    fn hvp_needs_g(&self, rx: bool, dp: bool, want_input: bool) -> bool {
        let _ = (rx, dp, want_input);
        true
    }
    /// Forward pass on all inputs `xs[i]` (`[N, I_i]`). The default is [`Layer::forward`] on
    /// the one input; nodes with several inputs (or none) override it.
    fn forward_inputs(&self, p: &[T], xs: &[&[T]], n: usize) -> (Vec<T>, Aux<T>) {
        self.forward(p, xs[0], n)
    }
    /// `dy = Σ_i (∂y/∂x_i) dx_i` over the inputs whose tangent is given (`[N, K, I_i]`);
    /// `None` when no input has a tangent. Default: [`Layer::jvp_input`] on the one input.
    fn jvp_inputs(&self, c: &Ctx<T>, dxs: &[Option<&[T]>], k: usize) -> Option<Vec<T>> {
        dxs[0].map(|dx| self.jvp_input(c, dx, k))
    }
    /// `g_{x_i} = (∂y/∂x_i)ᵀ g` for each input with `want[i]` (`[N, K, I_i]`; `None` for the
    /// others). Default: [`Layer::vjp_input`] on the one input.
    fn vjp_inputs(&self, c: &Ctx<T>, g: &[T], k: usize, want: &[bool]) -> Vec<Option<Vec<T>>> {
        vec![want[0].then(|| self.vjp_input(c, g, k))]
    }
    /// The R-operator of [`Layer::hvp_backward`] for a node with several inputs: `rxs[i]` is
    /// `R(x_i)` (or `None` when zero); returns `R(g_{x_i})` for each input with `want[i]`.
    /// Default: [`Layer::hvp_backward`] on the one input.
    fn hvp_backward_inputs(
        &self,
        c: &Ctx<T>,
        rxs: &[Option<&[T]>],
        dp: &ParamIn<T>,
        g: &[T],
        rg: &[T],
        k: usize,
        rgrad: &mut ParamOut<T>,
        want: &[bool],
    ) -> Vec<Option<Vec<T>>> {
        vec![self.hvp_backward(c, rxs[0], dp, g, rg, k, rgrad, want[0])]
    }
    /// R-operator of backpropagation (see module docs). Returns `R(g_x)` when `want_input`.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Option<Vec<T>>;
}

/// `x[n, k, :] *= d[n, :]` style helper: `out[n,k,i] = d[n,i] · v[n,k,i]`.
pub(crate) fn mul_broadcast_k<T: Float>(d: &[T], v: &[T], n: usize, k: usize, s: usize) -> Vec<T> {
    let mut out = vec![T::zero(); n * k * s];
    for i in 0..n {
        let di = &d[i * s..(i + 1) * s];
        for j in 0..k {
            let o = (i * k + j) * s;
            for ((ov, vv), dv) in out[o..o + s].iter_mut().zip(&v[o..o + s]).zip(di) {
                *ov = *vv * *dv;
            }
        }
    }
    out
}
