//! The structure of a KFAC operator: which block each active parameter tensor gets (see the
//! module docs of [`crate::kfac`]).
//!
//! * A tensor used once, as the weight or bias of a [`KfacMap`] of its node: that map's
//!   Kronecker block (a [`Plan`]).
//! * A tensor used several times, each time as the weight of a map (tied weights, e.g. a GPT's
//!   token embedding and output layer): the sum of the uses' Kronecker blocks (a [`TiedPlan`]);
//!   likewise each time as a bias.
//! * Any other tensor (LayerNorm, BatchNorm, `parameter` nodes, a tie mixing roles): its exact
//!   dense curvature block (a [`DensePlan`]), at most [`DENSE_MAX`] entries.

use super::factors::ParamRef;
use super::{FisherType, KfacError, KfacOptions};
use crate::Problem;
use curvops_nn::layers::{KfacLayout, KfacMap};
use curvops_nn::ActiveSet;
use curvops_tensor::Float;

/// The largest tensor that gets a dense block (`D_t × D_t`): a dense curvature block of a
/// parameter outside a Kronecker-factored map, and the eigendecomposition of a tied block.
pub const DENSE_MAX: usize = 4096;

/// One Kronecker-factored map of one node with an active weight or bias.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// The node.
    pub layer: usize,
    /// The map's index in the node's [`curvops_nn::layers::Layer::kfac_maps`].
    pub map: usize,
    /// The map.
    pub info: KfacMap,
    /// Block name: the node's name, with `.{map name}` for a node with several maps.
    pub key: String,
    /// The node's type.
    pub kind: &'static str,
    /// The active weight (tied or not).
    pub weight: Option<ParamRef>,
    /// The active bias (tied or not).
    pub bias: Option<ParamRef>,
    /// Index into [`Structure::tied`] when the weight is tied.
    pub weight_tied: Option<usize>,
    /// Index into [`Structure::tied`] when the bias is tied.
    pub bias_tied: Option<usize>,
    /// Weight and bias in one block (both active, neither tied, `joint_bias`).
    pub joint: bool,
}

impl Plan {
    pub fn out(&self) -> usize {
        self.info.out
    }
    pub fn inp(&self) -> usize {
        self.info.inp
    }
    /// Positions `R` sharing the weight.
    pub fn positions(&self) -> usize {
        self.info.positions
    }
    /// Columns of the (possibly augmented) input: `in` or `in + 1`.
    pub fn a_dim(&self) -> usize {
        self.inp() + usize::from(self.joint)
    }
    /// Whether the inputs are laid out `[in, R]` per sample.
    pub fn columns(&self) -> bool {
        self.info.layout == KfacLayout::Columns
    }
    /// The untied active weight.
    pub fn own_weight(&self) -> Option<&ParamRef> {
        self.weight.as_ref().filter(|_| self.weight_tied.is_none())
    }
    /// The untied active bias.
    pub fn own_bias(&self) -> Option<&ParamRef> {
        self.bias.as_ref().filter(|_| self.bias_tied.is_none())
    }
}

/// A tensor with a dense block.
#[derive(Clone, Debug)]
pub(crate) struct DensePlan {
    /// The parameter.
    pub param: ParamRef,
    /// Its size `D_t`.
    pub len: usize,
    /// Every use: (node, role).
    pub uses: Vec<(usize, usize)>,
}

/// A tied tensor used only as map weights (or only as map biases).
#[derive(Clone, Debug)]
pub(crate) struct TiedPlan {
    /// The parameter.
    pub param: ParamRef,
    /// The tensor as a `[rows, cols]` matrix (`shape[0]`, the rest; `cols = 1` for biases).
    pub rows: usize,
    pub cols: usize,
    /// Every use: (index into [`Structure::plans`], as the weight (`true`) or the bias).
    pub uses: Vec<(usize, bool)>,
}

/// A block of [`super::KfacFactors::layers`]: a map's own weight/bias, or a dense tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Block {
    Plan(usize),
    Dense(usize),
}

/// The blocks of an active set.
#[derive(Clone, Debug)]
pub(crate) struct Structure {
    pub plans: Vec<Plan>,
    pub dense: Vec<DensePlan>,
    pub tied: Vec<TiedPlan>,
    /// The order of [`super::KfacFactors::layers`] (by the first offset of the block).
    pub order: Vec<Block>,
}

/// How one use of a tensor relates to the node's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    Weight,
    Bias,
    Other,
}

/// The structure of the KFAC operator for the active parameters; errors name a tensor that
/// cannot get a block.
pub(crate) fn structure<T: Float>(
    p: &Problem<T>,
    active: &ActiveSet,
    opts: &KfacOptions,
) -> Result<Structure, KfacError> {
    let net = &p.net;
    let layout = &net.layout;
    let maps: Vec<Vec<KfacMap>> = net.layers.iter().map(|l| l.kfac_maps()).collect();
    let role_use = |l: usize, r: usize| -> Use {
        for m in &maps[l] {
            if m.weight == r {
                return Use::Weight;
            }
            if m.bias == Some(r) {
                return Use::Bias;
            }
        }
        Use::Other
    };
    // per entry: Some(tied index) when tied among maps; dense plans for the rest
    let mut tied_of: Vec<Option<usize>> = vec![None; layout.entries.len()];
    let mut single: Vec<bool> = vec![false; layout.entries.len()];
    let mut dense = Vec::new();
    let mut tied = Vec::new();
    for (i, e) in layout.entries.iter().enumerate() {
        let Some(off) = active.sub_offset[i] else { continue };
        let param = ParamRef { name: e.name.clone(), offset: off };
        let mut uses = Vec::new();
        for &l in &e.users {
            for (r, &ei) in layout.layer_entries[l].iter().enumerate() {
                if ei == i {
                    uses.push((l, r));
                }
            }
        }
        let kinds: Vec<Use> = uses.iter().map(|&(l, r)| role_use(l, r)).collect();
        let rows = e.shape.first().copied().unwrap_or(1);
        let cols = e.len / rows.max(1);
        if uses.len() == 1 && kinds[0] != Use::Other {
            single[i] = true;
        } else if uses.len() > 1 && kinds.iter().all(|&k| k == Use::Weight) && weights_fit(&maps, &uses, rows) {
            tied_of[i] = Some(tied.len());
            tied.push(TiedPlan { param, rows, cols, uses: Vec::new() });
        } else if uses.len() > 1 && kinds.iter().all(|&k| k == Use::Bias) {
            tied_of[i] = Some(tied.len());
            tied.push(TiedPlan { param, rows: e.len, cols: 1, uses: Vec::new() });
        } else {
            if opts.fisher == FisherType::ForwardOnly {
                return Err(KfacError::Parameter {
                    param: e.name.clone(),
                    msg: format!(
                        "KFAC with Fisher type forward-only has no block for '{}' ({}): it is not the weight or \
                         bias of a linear map",
                        e.name,
                        describe_uses(p, &uses)
                    ),
                });
            }
            if e.len > DENSE_MAX {
                return Err(KfacError::Parameter {
                    param: e.name.clone(),
                    msg: format!(
                        "KFAC: '{}' ({}, {} entries) gets its exact curvature block, which is limited to \
                         {DENSE_MAX} entries",
                        e.name,
                        describe_uses(p, &uses),
                        e.len
                    ),
                });
            }
            dense.push(DensePlan { param, len: e.len, uses });
        }
    }
    let mut plans = Vec::new();
    for (l, ms) in maps.iter().enumerate() {
        for (mi, m) in ms.iter().enumerate() {
            let le = &layout.layer_entries[l];
            let pick = |r: usize| -> (Option<ParamRef>, Option<usize>, bool) {
                let i = le[r];
                match active.sub_offset[i] {
                    Some(off) if single[i] || tied_of[i].is_some() => {
                        (Some(ParamRef { name: layout.entries[i].name.clone(), offset: off }), tied_of[i], true)
                    }
                    _ => (None, None, false),
                }
            };
            let (weight, weight_tied, _) = pick(m.weight);
            let (bias, bias_tied, _) = m.bias.map_or((None, None, false), pick);
            if weight.is_none() && bias.is_none() {
                continue;
            }
            let joint =
                opts.joint_bias && weight.is_some() && bias.is_some() && weight_tied.is_none() && bias_tied.is_none();
            let name = &layout.node_names[l];
            let key = if m.name.is_empty() { name.clone() } else { format!("{name}.{}", m.name) };
            let pi = plans.len();
            if let Some(t) = weight_tied {
                tied[t].uses.push((pi, true));
            }
            if let Some(t) = bias_tied {
                tied[t].uses.push((pi, false));
            }
            plans.push(Plan {
                layer: l,
                map: mi,
                info: m.clone(),
                key,
                kind: net.layers[l].kind(),
                weight,
                bias,
                weight_tied,
                bias_tied,
                joint,
            });
        }
    }
    let mut order: Vec<(usize, Block)> = Vec::new();
    for (i, pl) in plans.iter().enumerate() {
        let first = [pl.own_weight(), pl.own_bias()].into_iter().flatten().map(|r| r.offset).min();
        if let Some(f) = first {
            order.push((f, Block::Plan(i)));
        }
    }
    for (i, d) in dense.iter().enumerate() {
        order.push((d.param.offset, Block::Dense(i)));
    }
    order.sort_by_key(|&(f, _)| f);
    if plans.is_empty() && dense.is_empty() {
        return Err(KfacError::Unsupported("KFAC: no active parameters".into()));
    }
    Ok(Structure { plans, dense, tied, order: order.into_iter().map(|(_, b)| b).collect() })
}

/// Whether every weight use of a tied tensor views it as `[rows, ·]` with the same split
/// (`[out, in]` stored: `out = rows`; stored transposed: `in = rows`).
fn weights_fit(maps: &[Vec<KfacMap>], uses: &[(usize, usize)], rows: usize) -> bool {
    uses.iter().all(|&(l, r)| {
        maps[l].iter().any(|m| m.weight == r && if m.transposed { m.inp == rows } else { m.out == rows })
    })
}

/// `used by node 'ln' (layernorm)` / `tied: used by nodes 'wte' (embedding), 'lm_head' (linear)`.
fn describe_uses<T: Float>(p: &Problem<T>, uses: &[(usize, usize)]) -> String {
    let names: Vec<String> =
        uses.iter().map(|&(l, _)| format!("'{}' ({})", p.net.layout.node_names[l], p.net.layers[l].kind())).collect();
    if uses.len() == 1 {
        format!("used by node {}", names[0])
    } else {
        format!("tied: used by nodes {}", names.join(", "))
    }
}
