//! A sequential network: layers, the flat parameter layout, and whole-network differentiation
//! on a batch (forward, JVP, VJP, per-sample VJP, and the R-op backward for Hessian-vector
//! products).
//!
//! Parameter-space blocks are row-major `[K, D_S]` where `D_S` is the dimension of the
//! [`ActiveSet`] (the parameters being differentiated; all of them by default), in state-dict
//! order. With `K = 1` each parameter tensor is a contiguous slice of the block and is passed
//! to the layers without copying.

use crate::layers::{Aux, Ctx, Layer, ParamSpec};
use crate::loss::Loss;
use crate::NnError;
use curvops_tensor::Float;
use std::borrow::Cow;

/// One parameter tensor in the flat parameter vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamEntry {
    /// State-dict name, e.g. `"3.weight"`.
    pub name: String,
    /// Index of the layer.
    pub layer: usize,
    /// Shape as in PyTorch.
    pub shape: Vec<usize>,
    /// Offset in the flat vector.
    pub offset: usize,
    /// Number of entries.
    pub len: usize,
}

/// The flat parameter layout: tensors in state-dict order, each flattened row-major.
#[derive(Clone, Debug, Default)]
pub struct ParamLayout {
    /// All parameter tensors.
    pub entries: Vec<ParamEntry>,
    /// Total number of parameters `D`.
    pub total: usize,
    /// For each layer, the range of its entries.
    pub layer_entries: Vec<std::ops::Range<usize>>,
    /// For each layer, the offset of its first parameter.
    pub layer_offset: Vec<usize>,
}

impl ParamLayout {
    /// Layout of a list of layers' parameter specs.
    pub fn new(specs: &[Vec<ParamSpec>]) -> Self {
        let mut entries = Vec::new();
        let mut layer_entries = Vec::new();
        let mut layer_offset = Vec::new();
        let mut off = 0;
        for (l, ps) in specs.iter().enumerate() {
            let first = entries.len();
            layer_offset.push(off);
            for p in ps {
                entries.push(ParamEntry {
                    name: format!("{l}.{}", p.name),
                    layer: l,
                    shape: p.shape.clone(),
                    offset: off,
                    len: p.len(),
                });
                off += p.len();
            }
            layer_entries.push(first..entries.len());
        }
        Self { entries, total: off, layer_entries, layer_offset }
    }

    /// The entry with this state-dict name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }
}

/// The parameters being differentiated (`--params`): a subset of the entries, in state-dict
/// order, with their offsets in the subset vector.
#[derive(Clone, Debug)]
pub struct ActiveSet {
    /// Per entry: its offset in the subset vector, or `None` if held fixed.
    pub sub_offset: Vec<Option<usize>>,
    /// Dimension `D_S` of the subset.
    pub dim: usize,
    /// The lowest layer with an active parameter (`usize::MAX` if none).
    pub first_layer: usize,
    /// Per layer: whether any of its parameters is active.
    pub layer_active: Vec<bool>,
}

impl ActiveSet {
    /// All parameters.
    pub fn all(layout: &ParamLayout) -> Self {
        Self::from_mask(layout, &vec![true; layout.entries.len()])
    }

    /// The entries whose mask is true.
    pub fn from_mask(layout: &ParamLayout, mask: &[bool]) -> Self {
        let mut sub_offset = Vec::with_capacity(mask.len());
        let mut dim = 0;
        for (e, &m) in layout.entries.iter().zip(mask) {
            sub_offset.push(m.then_some(dim));
            if m {
                dim += e.len;
            }
        }
        let layer_active: Vec<bool> = layout.layer_entries.iter().map(|r| r.clone().any(|i| mask[i])).collect();
        let first_layer = layer_active.iter().position(|&a| a).unwrap_or(usize::MAX);
        Self { sub_offset, dim, first_layer, layer_active }
    }

    /// The named entries (`--params 4.weight,4.bias`); a name may also be a layer index
    /// (`4`) for all of that layer's parameters. Errors name an unknown parameter.
    pub fn from_names(layout: &ParamLayout, names: &[String]) -> Result<Self, NnError> {
        let mut mask = vec![false; layout.entries.len()];
        for raw in names {
            let name = raw.trim();
            if let Some(i) = layout.find(name) {
                mask[i] = true;
            } else if let Some(r) = name.parse::<usize>().ok().and_then(|l| layout.layer_entries.get(l)) {
                if r.is_empty() {
                    return Err(NnError::Other(format!("--params: layer {name} has no parameters")));
                }
                for i in r.clone() {
                    mask[i] = true;
                }
            } else {
                let known: Vec<&str> = layout.entries.iter().map(|e| e.name.as_str()).collect();
                return Err(NnError::Other(format!(
                    "--params: unknown parameter '{name}' (known: {})",
                    known.join(", ")
                )));
            }
        }
        if !mask.iter().any(|&m| m) {
            return Err(NnError::Other("--params: no parameters selected".into()));
        }
        Ok(Self::from_mask(layout, &mask))
    }

    /// Whether every parameter is active.
    pub fn is_all(&self) -> bool {
        self.sub_offset.iter().all(Option::is_some)
    }

    /// Copies the active entries of a full vector `[D]` into a subset vector `[D_S]`.
    pub fn gather<T: Float>(&self, layout: &ParamLayout, full: &[T]) -> Vec<T> {
        let mut out = vec![T::zero(); self.dim];
        for (e, so) in layout.entries.iter().zip(&self.sub_offset) {
            if let Some(so) = so {
                out[*so..*so + e.len].copy_from_slice(&full[e.offset..e.offset + e.len]);
            }
        }
        out
    }

    /// The state-dict names and offsets (in the subset vector) of the active entries.
    pub fn names<'a>(&'a self, layout: &'a ParamLayout) -> Vec<(&'a ParamEntry, usize)> {
        layout.entries.iter().zip(&self.sub_offset).filter_map(|(e, so)| so.map(|o| (e, o))).collect()
    }
}

/// What a forward pass keeps: every layer's input (and the network output) and the layers'
/// auxiliary data.
#[derive(Clone, Debug)]
pub struct Tape<T> {
    /// `acts[l]` is the input of layer `l`; `acts[L]` is the network output.
    pub acts: Vec<Vec<T>>,
    /// Per layer, what its forward pass kept.
    pub aux: Vec<Aux<T>>,
    /// Batch size.
    pub n: usize,
}

impl<T: Float> Tape<T> {
    /// The network output `[N, C]`.
    pub fn output(&self) -> &[T] {
        self.acts.last().expect("tape has the input at least")
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.acts.iter().map(|a| a.len() * T::BYTES).sum::<usize>() + self.aux.iter().map(Aux::bytes).sum::<usize>()
    }
}

/// A sequential network with a loss.
#[derive(Debug)]
pub struct Network<T: Float> {
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    /// The layers in order; layer `i` owns the state-dict keys `"{i}.*"`.
    pub layers: Vec<Box<dyn Layer<T>>>,
    /// Flat parameter layout.
    pub layout: ParamLayout,
    /// The loss on the outputs.
    pub loss: Loss,
    /// Non-fatal remarks from loading (printed by the CLI on standard error).
    pub warnings: Vec<String>,
}

/// Per-tensor parameter inputs of one layer (borrowed when `K = 1`).
type LayerIn<'a, T> = Vec<Option<Cow<'a, [T]>>>;

impl<T: Float> Network<T> {
    /// A network from its layers (shapes already chained) and loss.
    pub fn new(input_shape: Vec<usize>, layers: Vec<Box<dyn Layer<T>>>, loss: Loss) -> Self {
        let specs: Vec<Vec<ParamSpec>> = layers.iter().map(|l| l.params()).collect();
        let layout = ParamLayout::new(&specs);
        Self { input_shape, layers, layout, loss, warnings: Vec::new() }
    }

    /// Number of parameters `D`.
    pub fn num_params(&self) -> usize {
        self.layout.total
    }

    /// Per-sample input size.
    pub fn in_size(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Number of outputs `C`.
    pub fn out_size(&self) -> usize {
        self.layers.last().map_or(self.in_size(), |l| l.out_size())
    }

    fn layer_params<'a>(&self, l: usize, theta: &'a [T]) -> &'a [T] {
        let off = self.layout.layer_offset[l];
        &theta[off..off + self.layers[l].num_params()]
    }

    fn ctx<'a>(&self, l: usize, theta: &'a [T], tape: &'a Tape<T>) -> Ctx<'a, T> {
        Ctx { p: self.layer_params(l, theta), x: &tape.acts[l], xs: &[], y: &tape.acts[l + 1], aux: &tape.aux[l], n: tape.n }
    }

    /// Forward pass on a batch `x` (`[n, I]`), keeping what the derivative rules need.
    pub fn forward(&self, theta: &[T], x: &[T], n: usize) -> Tape<T> {
        let mut acts = Vec::with_capacity(self.layers.len() + 1);
        let mut aux = Vec::with_capacity(self.layers.len());
        acts.push(x.to_vec());
        for (l, layer) in self.layers.iter().enumerate() {
            let (y, a) = layer.forward(self.layer_params(l, theta), &acts[l], n);
            acts.push(y);
            aux.push(a);
        }
        Tape { acts, aux, n }
    }

    /// Network outputs `[n, C]` without keeping a tape.
    pub fn predict(&self, theta: &[T], x: &[T], n: usize) -> Vec<T> {
        let mut cur = x.to_vec();
        for (l, layer) in self.layers.iter().enumerate() {
            cur = layer.forward(self.layer_params(l, theta), &cur, n).0;
        }
        cur
    }

    /// The layer's parameter tangents from a subset block `[K, D_S]`.
    fn gather_layer<'a>(&self, l: usize, block: &'a [T], k: usize, active: &ActiveSet) -> LayerIn<'a, T> {
        let d = active.dim;
        self.layout.layer_entries[l]
            .clone()
            .map(|i| {
                let so = active.sub_offset[i]?;
                let len = self.layout.entries[i].len;
                Some(if k == 1 {
                    Cow::Borrowed(&block[so..so + len])
                } else {
                    let mut v = Vec::with_capacity(k * len);
                    for kk in 0..k {
                        v.extend_from_slice(&block[kk * d + so..kk * d + so + len]);
                    }
                    Cow::Owned(v)
                })
            })
            .collect()
    }

    /// Runs `f` with the layer's parameter outputs; results are added to the subset block
    /// `out` (`[K, D_S]`).
    fn with_layer_out(
        &self,
        l: usize,
        out: &mut [T],
        k: usize,
        active: &ActiveSet,
        f: impl FnOnce(&mut [Option<&mut [T]>]),
    ) {
        let range = self.layout.layer_entries[l].clone();
        let d = active.dim;
        if k == 1 {
            // active entries of a layer are contiguous in the subset vector: split it
            let mut views: Vec<Option<&mut [T]>> = Vec::with_capacity(range.len());
            let mut rest: &mut [T] = out;
            let mut consumed = 0;
            for i in range {
                match active.sub_offset[i] {
                    Some(so) => {
                        let len = self.layout.entries[i].len;
                        let tail = std::mem::take(&mut rest);
                        let (_, tail) = tail.split_at_mut(so - consumed);
                        let (mine, tail) = tail.split_at_mut(len);
                        consumed = so + len;
                        rest = tail;
                        views.push(Some(mine));
                    }
                    None => views.push(None),
                }
            }
            f(&mut views);
        } else {
            let mut bufs: Vec<Option<Vec<T>>> = range
                .clone()
                .map(|i| active.sub_offset[i].map(|_| vec![T::zero(); k * self.layout.entries[i].len]))
                .collect();
            {
                let mut views: Vec<Option<&mut [T]>> = bufs.iter_mut().map(|b| b.as_deref_mut()).collect();
                f(&mut views);
            }
            for (i, b) in range.zip(bufs) {
                if let (Some(so), Some(b)) = (active.sub_offset[i], b) {
                    let len = self.layout.entries[i].len;
                    for kk in 0..k {
                        curvops_tensor::ops::axpy(
                            T::one(),
                            &b[kk * len..(kk + 1) * len],
                            &mut out[kk * d + so..kk * d + so + len],
                        );
                    }
                }
            }
        }
    }

    /// Forward-mode derivative with respect to the active parameters: for `K` parameter
    /// tangents `dθ` (`[K, D_S]`) returns the tangents of every layer input and of the output
    /// (`[N, K, ·]`; `None` where identically zero). With `keep_all = false` only the output
    /// tangent (last element) is kept.
    pub fn jvp(
        &self,
        theta: &[T],
        tape: &Tape<T>,
        dtheta: &[T],
        k: usize,
        active: &ActiveSet,
        keep_all: bool,
    ) -> Vec<Option<Vec<T>>> {
        let nl = self.layers.len();
        let mut kept: Vec<Option<Vec<T>>> = vec![None; nl + 1];
        let mut cur: Option<Vec<T>> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            if l < active.first_layer {
                continue;
            }
            let c = self.ctx(l, theta, tape);
            let mut next = cur.as_ref().map(|dx| layer.jvp_input(&c, dx, k));
            if active.layer_active[l] {
                let dp = self.gather_layer(l, dtheta, k, active);
                let dpr: Vec<Option<&[T]>> = dp.iter().map(|o| o.as_deref()).collect();
                let dy = next.get_or_insert_with(|| vec![T::zero(); tape.n * k * layer.out_size()]);
                layer.jvp_param(&c, &dpr, k, dy);
            }
            if keep_all {
                kept[l] = cur.take();
            }
            cur = next;
        }
        kept[nl] = Some(cur.unwrap_or_else(|| vec![T::zero(); tape.n * k * self.out_size()]));
        kept
    }

    /// Reverse-mode derivative: `out += Σ_n J_nᵀ g_{n,k}` for `K` output cotangents `g`
    /// (`[N, K, C]`), into the subset block `out` (`[K, D_S]`).
    pub fn vjp(&self, theta: &[T], tape: &Tape<T>, g: Vec<T>, k: usize, active: &ActiveSet, out: &mut [T]) {
        let mut g = g;
        for l in (active.first_layer.min(self.layers.len())..self.layers.len()).rev() {
            let layer = &self.layers[l];
            let c = self.ctx(l, theta, tape);
            if active.layer_active[l] {
                self.with_layer_out(l, out, k, active, |views| layer.vjp_param(&c, &g, k, views));
            }
            if l > active.first_layer {
                g = layer.vjp_input(&c, &g, k);
            }
        }
    }

    /// Reverse mode returning the cotangent at every layer's output: element `l + 1` is
    /// `∂/∂y_l` for `K` output cotangents `g` (`[N, K, C]`), for layers `l ≥ stop`; earlier
    /// elements are `None`. Element `L` is `g` itself. Used by rules that need backpropagated
    /// vectors per layer (KFAC's gradient factor, curvature diagonals).
    pub fn backward_cotangents(
        &self,
        theta: &[T],
        tape: &Tape<T>,
        g: Vec<T>,
        k: usize,
        stop: usize,
    ) -> Vec<Option<Vec<T>>> {
        let nl = self.layers.len();
        let mut out: Vec<Option<Vec<T>>> = vec![None; nl + 1];
        let mut cur = g;
        for l in (stop.min(nl)..nl).rev() {
            let next = if l > stop { Some(self.layers[l].vjp_input(&self.ctx(l, theta, tape), &cur, k)) } else { None };
            out[l + 1] = Some(cur);
            match next {
                Some(n) => cur = n,
                None => break,
            }
        }
        out
    }

    /// The layer's parameters within `θ`.
    pub fn params_of<'a>(&self, l: usize, theta: &'a [T]) -> &'a [T] {
        self.layer_params(l, theta)
    }

    /// Per-sample reverse mode: row `(n, k)` of `out` (`[N·K, D_S]`, overwritten) is
    /// `J_nᵀ g_{n,k}`.
    pub fn vjp_per_sample(&self, theta: &[T], tape: &Tape<T>, g: Vec<T>, k: usize, active: &ActiveSet, out: &mut [T]) {
        let n = tape.n;
        let d = active.dim;
        out.fill(T::zero());
        let mut g = g;
        for l in (active.first_layer.min(self.layers.len())..self.layers.len()).rev() {
            let layer = &self.layers[l];
            let c = self.ctx(l, theta, tape);
            if active.layer_active[l] {
                let range = self.layout.layer_entries[l].clone();
                let mut bufs: Vec<Option<Vec<T>>> = range
                    .clone()
                    .map(|i| active.sub_offset[i].map(|_| vec![T::zero(); n * k * self.layout.entries[i].len]))
                    .collect();
                {
                    let mut views: Vec<Option<&mut [T]>> = bufs.iter_mut().map(|b| b.as_deref_mut()).collect();
                    layer.vjp_param_per_sample(&c, &g, k, &mut views);
                }
                for (i, b) in range.zip(bufs) {
                    if let (Some(so), Some(b)) = (active.sub_offset[i], b) {
                        let len = self.layout.entries[i].len;
                        for r in 0..n * k {
                            out[r * d + so..r * d + so + len].copy_from_slice(&b[r * len..(r + 1) * len]);
                        }
                    }
                }
            }
            if l > active.first_layer {
                g = layer.vjp_input(&c, &g, k);
            }
        }
    }

    /// Backpropagates the R-operator for `K` Hessian-vector products: given the parameter
    /// tangents `dθ` (`[K, D_S]`), the tangents `rx` of every layer input from
    /// [`Self::jvp`] with `keep_all`, the output cotangent `g = ∂L/∂f` (`[N, C]`) and its
    /// directional derivative `R(g) = ∇²_f L · R(f)` (`[N, K, C]`), adds `∇²_θ L · dθ` to
    /// `out` (`[K, D_S]`).
    #[allow(clippy::too_many_arguments)]
    pub fn hvp_backward(
        &self,
        theta: &[T],
        tape: &Tape<T>,
        rx: &[Option<Vec<T>>],
        dtheta: &[T],
        g: Vec<T>,
        rg: Vec<T>,
        k: usize,
        active: &ActiveSet,
        out: &mut [T],
    ) {
        let (mut g, mut rg) = (g, rg);
        let first = active.first_layer.min(self.layers.len());
        // the lowest layer that reads the primal cotangent: below it, g is not propagated
        let g_low = (first..self.layers.len())
            .find(|&l| self.layers[l].hvp_needs_g(rx[l].is_some(), active.layer_active[l], l > first))
            .unwrap_or(self.layers.len());
        for l in (first..self.layers.len()).rev() {
            let layer = &self.layers[l];
            let c = self.ctx(l, theta, tape);
            let dp = if active.layer_active[l] {
                self.gather_layer(l, dtheta, k, active)
            } else {
                vec![None; self.layout.layer_entries[l].len()]
            };
            let dpr: Vec<Option<&[T]>> = dp.iter().map(|o| o.as_deref()).collect();
            let want = l > active.first_layer;
            let mut rgx = None;
            if active.layer_active[l] {
                self.with_layer_out(l, out, k, active, |views| {
                    rgx = layer.hvp_backward(&c, rx[l].as_deref(), &dpr, &g, &rg, k, views, want);
                });
            } else {
                let mut none: Vec<Option<&mut [T]>> = (0..dpr.len()).map(|_| None).collect();
                rgx = layer.hvp_backward(&c, rx[l].as_deref(), &dpr, &g, &rg, k, &mut none, want);
            }
            if want {
                if l > g_low {
                    g = layer.vjp_input(&c, &g, 1);
                }
                rg = rgx.expect("hvp_backward returns R(g_x) when asked");
            }
        }
    }
}
