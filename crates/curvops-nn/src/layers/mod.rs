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

/// How a layer's KFAC inputs and output cotangents are laid out per sample (`R` positions,
/// `F` features).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KfacLayout {
    /// `[R, F]`: one row per position (linear layers, attention projections, embeddings).
    Rows,
    /// `[F, R]`: one column per position (a convolution's unfolded patches and output maps).
    Columns,
}

/// A linear map inside a layer that KFAC approximates by Kronecker factors (Martens & Grosse
/// 2015; Grosse & Martens 2016 for shared weights).
///
/// Per sample the map sends `R` input vectors `a_r ∈ ℝ^in` (the positions sharing the weight:
/// tokens, convolution patches; `R = 1` for a plain linear layer) to `y_r = W a_r + b ∈ ℝ^out`,
/// where `W` is `[out, in]` (stored row-major as `[out, in]`, or as `[in, out]` when
/// `transposed`) and `b` an optional bias. For cotangents `g_r = ∂/∂y_r` (from
/// [`Layer::kfac_output_cotangents`]) the per-sample gradients are `∇W = Σ_r g_r a_rᵀ` and
/// `∇b = Σ_r g_r`, which is what the factors `A = E[a aᵀ]`, `B = E[g gᵀ]` summarize.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KfacMap {
    /// Name of the map within the layer (`""` for a layer with one map; `"in_proj"`,
    /// `"out_proj"` for attention).
    pub name: &'static str,
    /// Index of the weight in [`Layer::params`].
    pub weight: usize,
    /// Index of the bias in [`Layer::params`], if any.
    pub bias: Option<usize>,
    /// Output features `out` (rows of `W`).
    pub out: usize,
    /// Input features `in` (columns of `W`).
    pub inp: usize,
    /// Positions `R` per sample sharing the weight.
    pub positions: usize,
    /// Whether the weight tensor is stored `[in, out]` (Hugging Face `Conv1D`, an embedding
    /// table) rather than `[out, in]`.
    pub transposed: bool,
    /// Per-sample layout of the inputs and output cotangents.
    pub layout: KfacLayout,
    /// The inputs are one-hot vectors given as ids in `[0, in)` (an embedding lookup
    /// `y_r = W e_{id_r}`): [`Layer::kfac_inputs`] returns the ids `[N, R]`, and the input
    /// factor `1/(N·R) Σ e_id e_idᵀ` is diagonal (the id counts).
    pub one_hot: bool,
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

/// Per input of a node, a cotangent (`None` where not wanted).
pub type InputCotangents<T> = Vec<Option<Vec<T>>>;

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
    /// What training with this node differs in from PyTorch's training mode, if anything (the
    /// engine always runs evaluation mode: batch norm keeps its running statistics, dropout
    /// is the identity); `train` warns with it.
    fn training_note(&self) -> Option<&'static str> {
        None
    }
    /// The Kronecker-factored linear maps of the layer (KFAC, see [`KfacMap`]); none by default.
    fn kfac_maps(&self) -> Vec<KfacMap> {
        Vec::new()
    }
    /// The inputs `a` of map `map` on a batch: `[N, R, in]` ([`KfacLayout::Rows`]) or
    /// `[N, in, R]` ([`KfacLayout::Columns`]); for a [`KfacMap::one_hot`] map the ids `[N, R]`.
    fn kfac_inputs<'a>(&self, c: &Ctx<'a, T>, map: usize) -> std::borrow::Cow<'a, [T]> {
        let _ = c;
        panic!("{}: no Kronecker-factored map {map}", self.kind())
    }
    /// The cotangents `∂/∂y_r` at map `map`'s outputs (`y_r = W a_r + b`) for `K` cotangents `g`
    /// at the node's output (`[N, K, O]`): `[N, K, R, out]` (rows) or `[N, K, out, R]` (columns).
    fn kfac_output_cotangents<'g>(&self, c: &Ctx<T>, map: usize, g: &'g [T], k: usize) -> std::borrow::Cow<'g, [T]> {
        let _ = (c, g, k);
        panic!("{}: no Kronecker-factored map {map}", self.kind())
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
    /// The whole JVP of the node: `dy = Σ_i (∂y/∂x_i) dx_i + (∂y/∂θ) dθ` for the inputs whose
    /// tangent is given and, with `dp`, the parameter tangents (`None`: the parameters are held
    /// fixed); `None` when neither is given. Default: [`Layer::jvp_inputs`], then
    /// [`Layer::jvp_param`] ([`jvp_all_default`]); a layer whose two share work (attention's
    /// core JVP is linear in the tangent of its projections) overrides it.
    fn jvp_all(&self, c: &Ctx<T>, dxs: &[Option<&[T]>], dp: Option<&ParamIn<T>>, k: usize) -> Option<Vec<T>> {
        jvp_all_default(self, c, dxs, dp, k)
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
    /// [`Layer::hvp_backward_inputs`] together with the primal input cotangents
    /// `(∂y/∂x_i)ᵀ g` (one cotangent, `K = 1`) for the inputs with `want_g[i]` — what the HVP's
    /// backward sweep needs from a node. Default: the two calls one after the other; a layer
    /// whose R-op computes the primal backward pass anyway (attention's core VJP) overrides it.
    #[allow(clippy::too_many_arguments)]
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
    ) -> (InputCotangents<T>, InputCotangents<T>) {
        let rgx = self.hvp_backward_inputs(c, rxs, dp, g, rg, k, rgrad, want);
        let gx = if want_g.iter().any(|&w| w) { self.vjp_inputs(c, g, 1, want_g) } else { Vec::new() };
        (rgx, gx)
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

    // Curvature rules built on the derivative rules (exact diagonals, ViViT's Gram matrices).
    // The defaults use `vjp_param_per_sample`; layers with structure override them.

    /// Squared-gradient diagonal: for `K` output cotangents `g` (`[N, K, O]`) with weights `w`
    /// (`[N, K]`), `out_t += Σ_{n,k} w_{nk} ((∂y_n/∂θ_t)ᵀ g_{nk})²` (elementwise square) for each
    /// wanted tensor `t` (`[size_t]`). Summed over the network's layers with the right
    /// cotangents this is every exact diagonal of `curvops::diag` (GGN: the loss-Hessian factor's
    /// columns; EF: the loss gradients; …). Default: the squares of
    /// [`Layer::vjp_param_per_sample`] (memory `N·K·size_t`).
    fn sq_grad_diag(&self, c: &Ctx<T>, g: &[T], k: usize, w: &[T], out: &mut ParamOut<T>) {
        sq_grad_diag_per_sample(self, c, g, k, w, out);
    }

    /// Whether the per-sample parameter gradients factor into per-sample inputs and output
    /// cotangents (see [`GradFactorShape`]; role 0 is then the weight, role 1 the bias if any).
    /// `None` (default) for layers whose per-sample gradients have no such form.
    fn grad_factor_shape(&self) -> Option<GradFactorShape> {
        None
    }

    /// ViViT's Gram features for `K` output cotangents `g` (`[N, K, O]`): what the Gram matrix
    /// `G̃[a, b] = Σ_t ⟨∇θ_t(a), ∇θ_t(b)⟩` of the per-sample gradients `∇θ_t(a) = (∂y_n/∂θ_t)ᵀ g_a`
    /// (`a = (n, k)`) over the wanted tensors is computed from. With `factored` and a
    /// [`Layer::grad_factor_shape`], [`GramFeatures::Factored`] (the factors `U` — only when
    /// the weight is wanted — and `G`, never the gradients); otherwise (default)
    /// [`GramFeatures::PerSample`], the per-sample gradients of the wanted tensors.
    fn gram_features(&self, c: &Ctx<T>, g: &[T], k: usize, factored: bool, want: &[bool]) -> GramFeatures<T> {
        let _ = factored;
        per_sample_gram_features(self, c, g, k, want)
    }

    /// For a node with one input whose second derivatives in that input form a diagonal
    /// (`∂²y_o/∂x_i∂x_j = 0` for `i ≠ j`, e.g. elementwise activations) and no parameters: the
    /// diagonal `d[n, i] = Σ_o g_{n,o} ∂²y_{n,o}/∂x_{n,i}²` for the primal output cotangent `g`
    /// (`[N, O]`) — the node's contribution to the Hessian with respect to its input beyond
    /// `Jᵀ H_y J`. `None` (default) for every other node; callers ask only nodes that have
    /// second derivatives in their input (`hvp_needs_g(true, false, true)`). Whether it is
    /// `Some` must not depend on the data (callers ask once with an empty batch, `n = 0`).
    fn input_hessian_diag(&self, c: &Ctx<T>, g: &[T]) -> Option<Vec<T>> {
        let _ = (c, g);
        None
    }
}

/// How a layer's per-sample parameter gradients factor ([`Layer::grad_factor_shape`]): per
/// channel group `γ` (`groups` of them), the weight gradient for an output cotangent `g_a` of
/// sample `n` is `G_{a,γ} U_{n,γ}ᵀ` (`[o, j]`, up to a fixed permutation of the weight's
/// entries, which leaves inner products unchanged), with `U_{n,γ}` (`[j, l]`) the sample's
/// input at the `l` positions that share the weight and `G_{a,γ}` (`[o, l]`) the cotangent at
/// those positions; the bias gradient is `G_a 1_l` (`[groups·o]`).
///
/// * linear on `[R, in]` inputs: one group, `j = in`, `o = out`, `l = R` (`U_n = X_nᵀ`,
///   `G_a = g_aᵀ`; a transposed weight is the permutation);
/// * conv2d: `groups`, `j = C/G·kh·kw`, `o = O/G`, `l` = output positions, `U_n` = the
///   unfolded input.
///
/// Then `⟨∇W(a), ∇W(b)⟩ = Σ_γ ⟨G_{a,γ} U_{n_a,γ}ᵀ U_{n_b,γ}, G_{b,γ}⟩` needs only `l × l`
/// input Grams, and for `l = 1` it is `(g_aᵀ g_b)(u_{n_a}ᵀ u_{n_b})`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradFactorShape {
    /// Channel groups.
    pub groups: usize,
    /// Input rows per group.
    pub j: usize,
    /// Outputs per group.
    pub o: usize,
    /// Positions that share the weight.
    pub l: usize,
}

/// The factors of [`GradFactorShape`] for a batch of `N` samples with `K` cotangents each.
#[derive(Clone, Debug)]
pub struct GradFactors<T> {
    /// The shape.
    pub shape: GradFactorShape,
    /// `U`: `[N, groups·j, l]` (empty when the weight is not wanted).
    pub u: Vec<T>,
    /// `G`: `[N·K, groups·o, l]`.
    pub g: Vec<T>,
}

/// What a layer contributes to ViViT's Gram matrix ([`Layer::gram_features`]).
#[derive(Clone, Debug)]
pub enum GramFeatures<T> {
    /// Per-sample inputs and output cotangents.
    Factored(GradFactors<T>),
    /// Per role: the per-sample gradients `[N·K, size]` (`None` where not wanted).
    PerSample(Vec<Option<Vec<T>>>),
}

/// [`GramFeatures::PerSample`] from [`Layer::vjp_param_per_sample`] (the default of
/// [`Layer::gram_features`]).
pub fn per_sample_gram_features<T: Float, L: Layer<T> + ?Sized>(
    layer: &L,
    c: &Ctx<T>,
    g: &[T],
    k: usize,
    want: &[bool],
) -> GramFeatures<T> {
    let specs = layer.params();
    let mut bufs: Vec<Option<Vec<T>>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| want.get(i).copied().unwrap_or(false).then(|| vec![T::zero(); c.n * k * s.len()]))
        .collect();
    {
        let mut views: Vec<Option<&mut [T]>> = bufs.iter_mut().map(|b| b.as_deref_mut()).collect();
        layer.vjp_param_per_sample(c, g, k, &mut views);
    }
    GramFeatures::PerSample(bufs)
}

/// The default of [`Layer::sq_grad_diag`]: the weighted squares of
/// [`Layer::vjp_param_per_sample`].
pub fn sq_grad_diag_per_sample<T: Float, L: Layer<T> + ?Sized>(
    layer: &L,
    c: &Ctx<T>,
    g: &[T],
    k: usize,
    w: &[T],
    out: &mut ParamOut<T>,
) {
    let want: Vec<bool> = out.iter().map(Option::is_some).collect();
    let GramFeatures::PerSample(bufs) = per_sample_gram_features(layer, c, g, k, &want) else { unreachable!() };
    for (b, o) in bufs.iter().zip(out.iter_mut()) {
        if let (Some(b), Some(o)) = (b, o.as_deref_mut()) {
            add_weighted_squares(b, w, o);
        }
    }
}

/// The default of [`Layer::jvp_all`]: [`Layer::jvp_inputs`], then [`Layer::jvp_param`] added
/// into it (into zeros without input tangents).
pub fn jvp_all_default<T: Float, L: Layer<T> + ?Sized>(
    layer: &L,
    c: &Ctx<T>,
    dxs: &[Option<&[T]>],
    dp: Option<&ParamIn<T>>,
    k: usize,
) -> Option<Vec<T>> {
    let mut next = if dxs.iter().any(Option::is_some) { layer.jvp_inputs(c, dxs, k) } else { None };
    if let Some(dp) = dp {
        let dy = next.get_or_insert_with(|| vec![T::zero(); c.n * k * layer.out_size()]);
        layer.jvp_param(c, dp, k, dy);
    }
    next
}

/// `out += Σ_r w_r rows_r²` (elementwise) for rows `[R, len]` of length `out.len()`.
pub fn add_weighted_squares<T: Float>(rows: &[T], w: &[T], out: &mut [T]) {
    let len = out.len();
    if len == 0 {
        return;
    }
    for (row, &wv) in rows.chunks_exact(len).zip(w) {
        if wv == T::zero() {
            continue;
        }
        for (d, &v) in out.iter_mut().zip(row) {
            *d += wv * v * v;
        }
    }
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
