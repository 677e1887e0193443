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
    /// Key in the weights file (state-dict name), e.g. `"3.weight"` or `"wte.weight"`.
    pub name: String,
    /// The first node that uses it.
    pub layer: usize,
    /// Shape as in PyTorch.
    pub shape: Vec<usize>,
    /// Offset in the flat vector.
    pub offset: usize,
    /// Number of entries.
    pub len: usize,
    /// Other names of a tied tensor: `"{node}.{role}"` of each use whose key differs.
    pub aliases: Vec<String>,
    /// Every node that uses it (more than one for a tied tensor).
    pub users: Vec<usize>,
}

/// The flat parameter layout: tensors in state-dict order, each flattened row-major, and for
/// each node the tensor of each of its roles (several nodes may share a tensor).
#[derive(Clone, Debug, Default)]
pub struct ParamLayout {
    /// All parameter tensors.
    pub entries: Vec<ParamEntry>,
    /// Total number of parameters `D`.
    pub total: usize,
    /// For each node, the entry of each of its roles (in the order of `Layer::params`).
    pub layer_entries: Vec<Vec<usize>>,
    /// For each node, the values it reads (`0` = the model input, `v ≥ 1` = node `v − 1`'s
    /// output).
    pub node_inputs: Vec<Vec<usize>>,
    /// Node names (`"0"`, `"1"`, … for a chain).
    pub node_names: Vec<String>,
    /// For each node whose roles are consecutive in the flat vector: their offset.
    contiguous: Vec<Option<usize>>,
}

impl ParamLayout {
    /// Layout of a chain of layers: layer `l`'s roles are `"{l}.{role}"`.
    pub fn new(specs: &[Vec<ParamSpec>]) -> Self {
        let keys: Vec<Vec<String>> =
            specs.iter().enumerate().map(|(l, ps)| ps.iter().map(|p| format!("{l}.{}", p.name)).collect()).collect();
        let inputs = (0..specs.len()).map(|l| vec![l]).collect();
        let names: Vec<String> = (0..specs.len()).map(|l| l.to_string()).collect();
        Self::graph(specs, &keys, &names, inputs, None).expect("a chain has no ties")
    }

    /// Layout of a graph: node `l` reads the values `inputs[l]`, its role `r` is the tensor
    /// `keys[l][r]`; nodes naming the same key share it. The flat order is `param_order`
    /// (every key once) or first use. Errors name the node whose tie has another shape.
    pub fn graph(
        specs: &[Vec<ParamSpec>],
        keys: &[Vec<String>],
        node_names: &[String],
        inputs: Vec<Vec<usize>>,
        param_order: Option<&[String]>,
    ) -> Result<Self, NnError> {
        let mut entries: Vec<ParamEntry> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut layer_entries = Vec::with_capacity(specs.len());
        for (l, ps) in specs.iter().enumerate() {
            let mut mine = Vec::with_capacity(ps.len());
            for (p, key) in ps.iter().zip(&keys[l]) {
                let own = format!("{}.{}", node_names[l], p.name);
                let i = match index.get(key) {
                    Some(&i) => {
                        let e = &mut entries[i];
                        if e.shape != p.shape {
                            return Err(NnError::Other(format!(
                                "node '{}': role '{}' ties '{key}' with shape {:?}, but node '{}' uses it with shape {:?}",
                                node_names[l], p.name, p.shape, node_names[e.layer], e.shape
                            )));
                        }
                        if !e.users.contains(&l) {
                            e.users.push(l);
                        }
                        i
                    }
                    None => {
                        entries.push(ParamEntry {
                            name: key.clone(),
                            layer: l,
                            shape: p.shape.clone(),
                            offset: 0,
                            len: p.len(),
                            aliases: Vec::new(),
                            users: vec![l],
                        });
                        index.insert(key.clone(), entries.len() - 1);
                        entries.len() - 1
                    }
                };
                if own != *key && !entries[i].aliases.contains(&own) {
                    entries[i].aliases.push(own);
                }
                mine.push(i);
            }
            layer_entries.push(mine);
        }
        // flat order
        let order: Vec<usize> = match param_order {
            None => (0..entries.len()).collect(),
            Some(names) => {
                let mut order = Vec::with_capacity(entries.len());
                let mut seen = vec![false; entries.len()];
                for n in names {
                    let i = *index
                        .get(n)
                        .ok_or_else(|| NnError::Other(format!("param_order: '{n}' is not a parameter of the model")))?;
                    if seen[i] {
                        return Err(NnError::Other(format!("param_order: '{n}' is listed twice")));
                    }
                    seen[i] = true;
                    order.push(i);
                }
                if let Some(i) = seen.iter().position(|s| !s) {
                    return Err(NnError::Other(format!("param_order: '{}' is missing", entries[i].name)));
                }
                order
            }
        };
        // renumber entries into the flat order
        let mut new_index = vec![0; entries.len()];
        let mut sorted = Vec::with_capacity(entries.len());
        let mut off = 0;
        for (pos, &i) in order.iter().enumerate() {
            new_index[i] = pos;
            let mut e = entries[i].clone();
            e.offset = off;
            off += e.len;
            sorted.push(e);
        }
        for le in &mut layer_entries {
            for i in le.iter_mut() {
                *i = new_index[*i];
            }
        }
        let contiguous = layer_entries
            .iter()
            .map(|le| {
                let first = sorted.get(*le.first()?)?.offset;
                let mut at = first;
                for &i in le {
                    if sorted[i].offset != at {
                        return None;
                    }
                    at += sorted[i].len;
                }
                Some(first)
            })
            .collect();
        Ok(Self {
            entries: sorted,
            total: off,
            layer_entries,
            node_inputs: inputs,
            node_names: node_names.to_vec(),
            contiguous,
        })
    }

    /// The entry with this key (or an alias of a tied tensor).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.name == name)
            .or_else(|| self.entries.iter().position(|e| e.aliases.iter().any(|a| a == name)))
    }

    /// Node `l`'s parameters within `θ`, its roles concatenated (borrowed when they are
    /// consecutive in the flat vector).
    pub fn node_params<'a, T: Float>(&self, l: usize, theta: &'a [T]) -> Cow<'a, [T]> {
        match self.contiguous[l] {
            Some(off) => {
                let len: usize = self.layer_entries[l].iter().map(|&i| self.entries[i].len).sum();
                Cow::Borrowed(&theta[off..off + len])
            }
            None if self.layer_entries[l].is_empty() => Cow::Borrowed(&theta[..0]),
            None => {
                let mut v = Vec::new();
                for &i in &self.layer_entries[l] {
                    let e = &self.entries[i];
                    v.extend_from_slice(&theta[e.offset..e.offset + e.len]);
                }
                Cow::Owned(v)
            }
        }
    }

    /// For each node: whether it or a node it depends on has an entry with `mask` set.
    pub fn upstream(&self, node_mask: &[bool]) -> Vec<bool> {
        let mut up = vec![false; node_mask.len()];
        for l in 0..node_mask.len() {
            up[l] = node_mask[l] || self.node_inputs[l].iter().any(|&v| v > 0 && up[v - 1]);
        }
        up
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
    /// The lowest node with an active parameter (`usize::MAX` if none).
    pub first_layer: usize,
    /// Per node: whether any of its parameters is active.
    pub layer_active: Vec<bool>,
    /// Per node: whether it or a node it depends on has an active parameter (its output then
    /// depends on the active parameters).
    pub upstream: Vec<bool>,
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
        let layer_active: Vec<bool> = layout.layer_entries.iter().map(|r| r.iter().any(|&i| mask[i])).collect();
        let first_layer = layer_active.iter().position(|&a| a).unwrap_or(usize::MAX);
        let upstream = layout.upstream(&layer_active);
        Self { sub_offset, dim, first_layer, layer_active, upstream }
    }

    /// The named entries (`--params 4.weight,4.bias`); a name may also be a layer index
    /// (`4`) for all of that layer's parameters. Errors name an unknown parameter.
    pub fn from_names(layout: &ParamLayout, names: &[String]) -> Result<Self, NnError> {
        let mut mask = vec![false; layout.entries.len()];
        for raw in names {
            let name = raw.trim();
            if let Some(i) = layout.find(name) {
                mask[i] = true;
            } else if let Some(r) = layout
                .node_names
                .iter()
                .position(|n| n == name)
                .or_else(|| name.parse::<usize>().ok())
                .and_then(|l| layout.layer_entries.get(l))
            {
                if r.is_empty() {
                    return Err(NnError::Selection(format!("node {name} has no parameters")));
                }
                for i in r.clone() {
                    mask[i] = true;
                }
            } else {
                let known: Vec<&str> = layout.entries.iter().map(|e| e.name.as_str()).collect();
                return Err(NnError::Selection(format!("unknown parameter '{name}' (known: {})", known.join(", "))));
            }
        }
        if !mask.iter().any(|&m| m) {
            return Err(NnError::Selection("no parameters selected".into()));
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

    /// Writes a subset vector `[D_S]` into the active entries of a full vector `[D]` (the
    /// inverse of [`Self::gather`]; inactive entries are left unchanged).
    pub fn scatter<T: Float>(&self, layout: &ParamLayout, sub: &[T], full: &mut [T]) {
        for (e, so) in layout.entries.iter().zip(&self.sub_offset) {
            if let Some(so) = so {
                full[e.offset..e.offset + e.len].copy_from_slice(&sub[*so..*so + e.len]);
            }
        }
    }

    /// The state-dict names and offsets (in the subset vector) of the active entries.
    pub fn names<'a>(&'a self, layout: &'a ParamLayout) -> Vec<(&'a ParamEntry, usize)> {
        layout.entries.iter().zip(&self.sub_offset).filter_map(|(e, so)| so.map(|o| (e, o))).collect()
    }
}

/// What a forward pass keeps: every value of the graph and the nodes' auxiliary data.
#[derive(Clone, Debug)]
pub struct Tape<T> {
    /// `acts[0]` is the model input, `acts[l + 1]` node `l`'s output (for a chain, `acts[l]` is
    /// layer `l`'s input); the last is the network output.
    pub acts: Vec<Vec<T>>,
    /// Per node, what its forward pass kept.
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

/// A network — a directed acyclic graph of nodes in topological (list) order, a chain being
/// the special case — with a loss.
#[derive(Debug)]
pub struct Network<T: Float> {
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    /// Whether the input holds integer ids (token ids, coded as floats).
    pub input_int: bool,
    /// The nodes in order; node `l` reads the values `layout.node_inputs[l]`.
    pub layers: Vec<Box<dyn Layer<T>>>,
    /// Flat parameter layout (and the graph's edges).
    pub layout: ParamLayout,
    /// The loss on the outputs.
    pub loss: Loss,
    /// Non-fatal remarks from loading (printed by the CLI on standard error).
    pub warnings: Vec<String>,
    /// Per value: the last node that reads it (`usize::MAX` for the output and unread values).
    last_use: Vec<usize>,
}

/// Per-tensor parameter inputs of one layer (borrowed when `K = 1`).
type LayerIn<'a, T> = Vec<Option<Cow<'a, [T]>>>;

/// Adds `v` into an accumulator slot (a cotangent summed where a value fans out).
fn accumulate<T: Float>(slot: &mut Option<Vec<T>>, v: Vec<T>) {
    match slot {
        Some(acc) => curvops_tensor::ops::axpy(T::one(), &v, acc),
        None => *slot = Some(v),
    }
}

impl<T: Float> Network<T> {
    /// A chain: layer `l` reads layer `l − 1`'s output (shapes already chained); its roles are
    /// `"{l}.{role}"`.
    pub fn new(input_shape: Vec<usize>, layers: Vec<Box<dyn Layer<T>>>, loss: Loss) -> Self {
        let specs: Vec<Vec<ParamSpec>> = layers.iter().map(|l| l.params()).collect();
        let layout = ParamLayout::new(&specs);
        Self::from_layout(input_shape, false, layers, layout, loss)
    }

    /// A graph from its nodes and layout (see [`ParamLayout::graph`]); node inputs must refer
    /// to earlier values.
    pub fn from_layout(
        input_shape: Vec<usize>,
        input_int: bool,
        layers: Vec<Box<dyn Layer<T>>>,
        layout: ParamLayout,
        loss: Loss,
    ) -> Self {
        let nv = layers.len() + 1;
        let mut last_use = vec![usize::MAX; nv];
        for (l, ins) in layout.node_inputs.iter().enumerate() {
            for &v in ins {
                last_use[v] = l;
            }
        }
        last_use[nv - 1] = usize::MAX;
        Self { input_shape, input_int, layers, layout, loss, warnings: Vec::new(), last_use }
    }

    /// Number of parameters `D`.
    pub fn num_params(&self) -> usize {
        self.layout.total
    }

    /// Per-sample input size.
    pub fn in_size(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Per-sample output shape (`[C]`, or e.g. `[T, V]` for a language model).
    pub fn output_shape(&self) -> Vec<usize> {
        self.layers.last().map_or(self.input_shape.clone(), |l| l.out_shape().to_vec())
    }

    /// Number of outputs `C` per sample (all axes).
    pub fn out_size(&self) -> usize {
        self.layers.last().map_or(self.in_size(), |l| l.out_size())
    }

    /// The values node `l` reads (`0` = the model input, `v` = node `v − 1`'s output).
    pub fn inputs_of(&self, l: usize) -> &[usize] {
        &self.layout.node_inputs[l]
    }

    /// The name of node `l`.
    pub fn node_name(&self, l: usize) -> &str {
        &self.layout.node_names[l]
    }

    /// Whether the network is a chain (each node reads the previous one).
    pub fn is_chain(&self) -> bool {
        self.layout.node_inputs.iter().enumerate().all(|(l, ins)| ins.as_slice() == [l])
    }

    /// Node `l`'s first input on the tape (`[N, I]`; empty for a node without inputs).
    pub fn node_input<'a>(&self, l: usize, tape: &'a Tape<T>) -> &'a [T] {
        self.layout.node_inputs[l].first().map_or(&[][..], |&v| tape.acts[v].as_slice())
    }

    /// The layer's parameters within `θ` (its roles concatenated).
    pub fn params_of<'a>(&self, l: usize, theta: &'a [T]) -> Cow<'a, [T]> {
        self.layout.node_params(l, theta)
    }

    /// Runs `f` with node `l`'s rule context on a tape.
    pub fn with_ctx<R>(&self, l: usize, theta: &[T], tape: &Tape<T>, f: impl FnOnce(&Ctx<T>) -> R) -> R {
        let p = self.layout.node_params(l, theta);
        let xs: Vec<&[T]> = self.layout.node_inputs[l].iter().map(|&v| tape.acts[v].as_slice()).collect();
        let c = Ctx {
            p: &p,
            x: xs.first().copied().unwrap_or(&[]),
            xs: &xs,
            y: &tape.acts[l + 1],
            aux: &tape.aux[l],
            n: tape.n,
        };
        f(&c)
    }

    /// Forward pass on a batch `x` (`[n, I]`), keeping what the derivative rules need.
    pub fn forward(&self, theta: &[T], x: &[T], n: usize) -> Tape<T> {
        let mut acts = Vec::with_capacity(self.layers.len() + 1);
        let mut aux = Vec::with_capacity(self.layers.len());
        acts.push(curvops_tensor::ops::to_vec(x));
        for (l, layer) in self.layers.iter().enumerate() {
            let p = self.layout.node_params(l, theta);
            let xs: Vec<&[T]> = self.layout.node_inputs[l].iter().map(|&v| acts[v].as_slice()).collect();
            let (y, a) = layer.forward_inputs(&p, &xs, n);
            acts.push(y);
            aux.push(a);
        }
        Tape { acts, aux, n }
    }

    /// Network outputs `[n, C]` without keeping a tape (values are freed after their last use).
    pub fn predict(&self, theta: &[T], x: &[T], n: usize) -> Vec<T> {
        let nl = self.layers.len();
        let mut vals: Vec<Option<Cow<[T]>>> = vec![None; nl + 1];
        vals[0] = Some(Cow::Borrowed(x));
        for (l, layer) in self.layers.iter().enumerate() {
            let p = self.layout.node_params(l, theta);
            let y = {
                let xs: Vec<&[T]> = self.layout.node_inputs[l]
                    .iter()
                    .map(|&v| vals[v].as_deref().expect("value computed before use"))
                    .collect();
                layer.forward_inputs(&p, &xs, n).0
            };
            for &v in &self.layout.node_inputs[l] {
                if self.last_use[v] == l {
                    vals[v] = None;
                }
            }
            vals[l + 1] = Some(Cow::Owned(y));
        }
        vals[nl].take().map(Cow::into_owned).unwrap_or_default()
    }

    /// The layer's parameter tangents from a subset block `[K, D_S]`.
    fn gather_layer<'a>(&self, l: usize, block: &'a [T], k: usize, active: &ActiveSet) -> LayerIn<'a, T> {
        let d = active.dim;
        self.layout.layer_entries[l]
            .iter()
            .map(|&i| {
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
        let roles = &self.layout.layer_entries[l];
        let d = active.dim;
        // active roles at increasing offsets can be handed out as disjoint views of `out`
        let increasing = {
            let mut at = 0;
            roles.iter().all(|&i| match active.sub_offset[i] {
                Some(so) if so >= at => {
                    at = so + self.layout.entries[i].len;
                    true
                }
                Some(_) => false,
                None => true,
            })
        };
        if k == 1 && increasing {
            let mut views: Vec<Option<&mut [T]>> = Vec::with_capacity(roles.len());
            let mut rest: &mut [T] = out;
            let mut consumed = 0;
            for &i in roles {
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
            let mut bufs: Vec<Option<Vec<T>>> = roles
                .iter()
                .map(|&i| active.sub_offset[i].map(|_| vec![T::zero(); k * self.layout.entries[i].len]))
                .collect();
            {
                let mut views: Vec<Option<&mut [T]>> = bufs.iter_mut().map(|b| b.as_deref_mut()).collect();
                f(&mut views);
            }
            for (&i, b) in roles.iter().zip(bufs) {
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

    /// Whether a cotangent must flow into value `v` (it depends on the active parameters).
    fn wants_cotangent(&self, v: usize, active: &ActiveSet) -> bool {
        v > 0 && active.upstream[v - 1]
    }

    /// Forward-mode derivative with respect to the active parameters: for `K` parameter
    /// tangents `dθ` (`[K, D_S]`) returns the tangent of every value of the graph (`[N, K, ·]`;
    /// `None` where identically zero; element `0` is the input, the last the output). With
    /// `keep_all = false` only the output tangent is kept.
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
        let mut tan: Vec<Option<Vec<T>>> = vec![None; nl + 1];
        for (l, layer) in self.layers.iter().enumerate() {
            if !active.upstream[l] {
                continue;
            }
            let next = self.with_ctx(l, theta, tape, |c| {
                let ins = &self.layout.node_inputs[l];
                let dxs: Vec<Option<&[T]>> = ins.iter().map(|&v| tan[v].as_deref()).collect();
                if active.layer_active[l] {
                    let dp = self.gather_layer(l, dtheta, k, active);
                    let dpr: Vec<Option<&[T]>> = dp.iter().map(|o| o.as_deref()).collect();
                    layer.jvp_all(c, &dxs, Some(&dpr), k)
                } else {
                    layer.jvp_all(c, &dxs, None, k)
                }
            });
            if !keep_all {
                for &v in &self.layout.node_inputs[l] {
                    if self.last_use[v] == l {
                        tan[v] = None;
                    }
                }
            }
            tan[l + 1] = next;
        }
        if tan[nl].is_none() {
            tan[nl] = Some(vec![T::zero(); tape.n * k * self.out_size()]);
        }
        tan
    }

    /// Reverse-mode derivative: `out += Σ_n J_nᵀ g_{n,k}` for `K` output cotangents `g`
    /// (`[N, K, C]`), into the subset block `out` (`[K, D_S]`). Cotangents are summed where a
    /// value fans out, and a tied tensor's gradient over its uses.
    pub fn vjp(&self, theta: &[T], tape: &Tape<T>, g: Vec<T>, k: usize, active: &ActiveSet, out: &mut [T]) {
        // A node with active parameters gets its parameter and input cotangents from one call
        // of its R-operator with zero tangents (`R(x) = 0`, `dθ = 0`, `R(g) = g`: exactly the
        // linear backward map), which shares the work of the two (attention's core VJP,
        // layernorm's normalization) — for every node whose R-op then does not read the primal
        // cotangent (`hvp_needs_g(false, false, _)`); others use `vjp_param` and `vjp_inputs`.
        let nl = self.layers.len();
        let mut cot: Vec<Option<Vec<T>>> = vec![None; nl + 1];
        cot[nl] = Some(g);
        for l in (0..nl).rev() {
            if !active.upstream[l] {
                continue;
            }
            let Some(gl) = cot[l + 1].take() else { continue };
            let layer = &self.layers[l];
            let ins = &self.layout.node_inputs[l];
            let want: Vec<bool> = ins.iter().map(|&v| self.wants_cotangent(v, active)).collect();
            let want_any = want.iter().any(|&w| w);
            let gx = self.with_ctx(l, theta, tape, |c| {
                if !active.layer_active[l] {
                    return if want_any { layer.vjp_inputs(c, &gl, k, &want) } else { Vec::new() };
                }
                if layer.hvp_needs_g(false, false, want_any) {
                    self.with_layer_out(l, out, k, active, |views| layer.vjp_param(c, &gl, k, views));
                    return if want_any { layer.vjp_inputs(c, &gl, k, &want) } else { Vec::new() };
                }
                let rxs: Vec<Option<&[T]>> = vec![None; ins.len()];
                let dps: Vec<Option<&[T]>> = vec![None; self.layout.layer_entries[l].len()];
                let mut gx = Vec::new();
                self.with_layer_out(l, out, k, active, |views| {
                    gx = layer.hvp_backward_inputs(c, &rxs, &dps, &[], &gl, k, views, &want);
                });
                gx
            });
            drop(gl);
            for (&v, gv) in ins.iter().zip(gx) {
                if let Some(gv) = gv {
                    accumulate(&mut cot[v], gv);
                }
            }
        }
    }

    /// Reverse mode visiting the nodes: calls `f(l, ctx, g_l)` for every node `l` with an active
    /// parameter, in reverse topological order, with the cotangent `g_l` at its output (`[N, K,
    /// O_l]`, summed where the output fans out) for `K` output cotangents `g` (`[N, K, C]`).
    /// Cotangents flow only into values that depend on the active parameters and are freed
    /// once used, so memory stays at the live cotangents (KFAC's gradient factors).
    pub fn backward_visit(
        &self,
        theta: &[T],
        tape: &Tape<T>,
        g: Vec<T>,
        k: usize,
        active: &ActiveSet,
        f: impl FnMut(usize, &Ctx<T>, &[T]),
    ) {
        self.reverse(theta, tape, g, k, active, f);
    }

    /// The reverse sweep shared by [`Self::vjp`] and [`Self::vjp_per_sample`]: calls
    /// `param(l, ctx, g_l)` for every node with active parameters, with the cotangent at its
    /// output.
    fn reverse(
        &self,
        theta: &[T],
        tape: &Tape<T>,
        g: Vec<T>,
        k: usize,
        active: &ActiveSet,
        mut param: impl FnMut(usize, &Ctx<T>, &[T]),
    ) {
        let nl = self.layers.len();
        let mut cot: Vec<Option<Vec<T>>> = vec![None; nl + 1];
        cot[nl] = Some(g);
        for l in (0..nl).rev() {
            if !active.upstream[l] {
                continue;
            }
            let Some(gl) = cot[l + 1].take() else { continue };
            let ins = &self.layout.node_inputs[l];
            let want: Vec<bool> = ins.iter().map(|&v| self.wants_cotangent(v, active)).collect();
            let gx = self.with_ctx(l, theta, tape, |c| {
                if active.layer_active[l] {
                    param(l, c, &gl);
                }
                if want.iter().any(|&w| w) {
                    self.layers[l].vjp_inputs(c, &gl, k, &want)
                } else {
                    Vec::new()
                }
            });
            for (&v, gv) in ins.iter().zip(gx) {
                if let Some(gv) = gv {
                    accumulate(&mut cot[v], gv);
                }
            }
        }
    }

    /// Reverse mode returning the cotangent at every value: element `l + 1` is `∂/∂y_l` (node
    /// `l`'s output) for `K` output cotangents `g` (`[N, K, C]`), for nodes `l ≥ stop` that
    /// reach the output; other elements are `None`. The last element is `g` itself. Used by
    /// rules that need backpropagated vectors per node (KFAC's gradient factor, diagonals).
    pub fn backward_cotangents(
        &self,
        theta: &[T],
        tape: &Tape<T>,
        g: Vec<T>,
        k: usize,
        stop: usize,
    ) -> Vec<Option<Vec<T>>> {
        let nl = self.layers.len();
        let mut cot: Vec<Option<Vec<T>>> = vec![None; nl + 1];
        cot[nl] = Some(g);
        for l in (stop.min(nl)..nl).rev() {
            if l == stop {
                break;
            }
            let Some(gl) = cot[l + 1].as_deref() else { continue };
            let ins = &self.layout.node_inputs[l];
            let want: Vec<bool> = ins.iter().map(|&v| v > stop).collect();
            if !want.iter().any(|&w| w) {
                continue;
            }
            let gx = self.with_ctx(l, theta, tape, |c| self.layers[l].vjp_inputs(c, gl, k, &want));
            for (&v, gv) in ins.iter().zip(gx) {
                if let Some(gv) = gv {
                    accumulate(&mut cot[v], gv);
                }
            }
        }
        cot
    }

    /// Per-sample reverse mode: row `(n, k)` of `out` (`[N·K, D_S]`, overwritten) is
    /// `J_nᵀ g_{n,k}`.
    pub fn vjp_per_sample(&self, theta: &[T], tape: &Tape<T>, g: Vec<T>, k: usize, active: &ActiveSet, out: &mut [T]) {
        let n = tape.n;
        let d = active.dim;
        out.fill(T::zero());
        self.reverse(theta, tape, g, k, active, |l, c, gl| {
            let roles = &self.layout.layer_entries[l];
            let mut bufs: Vec<Option<Vec<T>>> = roles
                .iter()
                .map(|&i| active.sub_offset[i].map(|_| vec![T::zero(); n * k * self.layout.entries[i].len]))
                .collect();
            {
                let mut views: Vec<Option<&mut [T]>> = bufs.iter_mut().map(|b| b.as_deref_mut()).collect();
                self.layers[l].vjp_param_per_sample(c, gl, k, &mut views);
            }
            for (&i, b) in roles.iter().zip(bufs) {
                if let (Some(so), Some(b)) = (active.sub_offset[i], b) {
                    let len = self.layout.entries[i].len;
                    for r in 0..n * k {
                        curvops_tensor::ops::axpy(
                            T::one(),
                            &b[r * len..(r + 1) * len],
                            &mut out[r * d + so..r * d + so + len],
                        );
                    }
                }
            }
        });
    }

    /// Backpropagates the R-operator for `K` Hessian-vector products: given the parameter
    /// tangents `dθ` (`[K, D_S]`), the tangent `rx` of every value from [`Self::jvp`] with
    /// `keep_all`, the output cotangent `g = ∂L/∂f` (`[N, C]`) and its directional derivative
    /// `R(g) = ∇²_f L · R(f)` (`[N, K, C]`), adds `∇²_θ L · dθ` to `out` (`[K, D_S]`).
    /// Primal cotangents and their R-values are summed where a value fans out.
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
        let nl = self.layers.len();
        // which nodes need the primal cotangent at their output: those whose rule reads it,
        // and those it must pass through to reach such a node
        let mut need_g = vec![false; nl];
        for l in 0..nl {
            if !active.upstream[l] {
                continue;
            }
            let ins = &self.layout.node_inputs[l];
            let rx_any = ins.iter().any(|&v| rx[v].is_some());
            let want_any = ins.iter().any(|&v| self.wants_cotangent(v, active));
            need_g[l] = self.layers[l].hvp_needs_g(rx_any, active.layer_active[l], want_any)
                || ins.iter().any(|&v| v > 0 && need_g[v - 1]);
        }
        let mut gc: Vec<Option<Vec<T>>> = vec![None; nl + 1];
        let mut rc: Vec<Option<Vec<T>>> = vec![None; nl + 1];
        gc[nl] = Some(g);
        rc[nl] = Some(rg);
        for l in (0..nl).rev() {
            if !active.upstream[l] {
                continue;
            }
            let Some(rgl) = rc[l + 1].take() else { continue };
            let gl = gc[l + 1].take();
            let layer = &self.layers[l];
            let ins = &self.layout.node_inputs[l];
            let want: Vec<bool> = ins.iter().map(|&v| self.wants_cotangent(v, active)).collect();
            let dp = if active.layer_active[l] {
                self.gather_layer(l, dtheta, k, active)
            } else {
                vec![None; self.layout.layer_entries[l].len()]
            };
            let dpr: Vec<Option<&[T]>> = dp.iter().map(|o| o.as_deref()).collect();
            let rxs: Vec<Option<&[T]>> = ins.iter().map(|&v| rx[v].as_deref()).collect();
            let g_ref: &[T] = gl.as_deref().unwrap_or(&[]);
            let want_g: Vec<bool> =
                ins.iter().zip(&want).map(|(&v, &w)| gl.is_some() && w && v > 0 && need_g[v - 1]).collect();
            let (rgx, gx) = self.with_ctx(l, theta, tape, |c| {
                let mut res = (Vec::new(), Vec::new());
                if active.layer_active[l] {
                    self.with_layer_out(l, out, k, active, |views| {
                        res = layer.hvp_backward_with_vjp(c, &rxs, &dpr, g_ref, &rgl, k, views, &want, &want_g);
                    });
                } else {
                    let mut none: Vec<Option<&mut [T]>> = (0..dpr.len()).map(|_| None).collect();
                    res = layer.hvp_backward_with_vjp(c, &rxs, &dpr, g_ref, &rgl, k, &mut none, &want, &want_g);
                }
                res
            });
            for (&v, r) in ins.iter().zip(rgx) {
                if let Some(r) = r {
                    accumulate(&mut rc[v], r);
                }
            }
            for (&v, gv) in ins.iter().zip(gx) {
                if let Some(gv) = gv {
                    accumulate(&mut gc[v], gv);
                }
            }
        }
    }
}
