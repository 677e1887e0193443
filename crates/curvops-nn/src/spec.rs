//! `model.json`: parsing, validation and building the network (SPEC.md §1).
//!
//! Field names and defaults are those of `torch.nn`. Unknown layer types or fields, missing
//! required fields, values of the wrong type and layer sizes that do not chain are errors that
//! name the layer (index and type) and the field.

use crate::layers::ParamSpec;
use crate::layers::{Activation, ActivationKind, AvgPool2d, BatchNorm, Conv2d, Identity, Layer, Linear, MaxPool2d};
use crate::loss::{Loss, LossKind, Reduction};
use crate::network::{Network, ParamLayout};
use crate::NnError;
use curvops_tensor::conv::Geom2d;
use curvops_tensor::Float;
use serde_json::{Map, Value};

/// One layer of the specification.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerSpec {
    /// `linear` (on the last axis of an input of any rank).
    Linear {
        /// `in_features`.
        in_f: usize,
        /// `out_features`.
        out_f: usize,
        /// `bias`.
        bias: bool,
        /// `transposed`: the weight is stored as `[in, out]` (Hugging Face's `Conv1D`).
        transposed: bool,
    },
    /// `conv2d`.
    Conv2d {
        /// `in_channels`.
        in_c: usize,
        /// `out_channels`.
        out_c: usize,
        /// `kernel_size`.
        kernel: (usize, usize),
        /// `stride`.
        stride: (usize, usize),
        /// `padding`.
        padding: (usize, usize),
        /// `dilation`.
        dilation: (usize, usize),
        /// `groups`.
        groups: usize,
        /// `bias`.
        bias: bool,
    },
    /// `maxpool2d`.
    MaxPool2d {
        /// `kernel_size`.
        kernel: (usize, usize),
        /// `stride` (default: kernel_size).
        stride: (usize, usize),
        /// `padding`.
        padding: (usize, usize),
        /// `dilation`.
        dilation: (usize, usize),
    },
    /// `avgpool2d`.
    AvgPool2d {
        /// `kernel_size`.
        kernel: (usize, usize),
        /// `stride` (default: kernel_size).
        stride: (usize, usize),
        /// `padding`.
        padding: (usize, usize),
    },
    /// `batchnorm1d` (`dim = 1`) or `batchnorm2d` (`dim = 2`).
    BatchNorm {
        /// 1 or 2.
        dim: usize,
        /// `num_features`.
        num_features: usize,
        /// `eps`.
        eps: f64,
        /// `affine`.
        affine: bool,
    },
    /// `dropout` (identity in evaluation mode).
    Dropout,
    /// `flatten` (`start_dim = 1`, `end_dim = −1`).
    Flatten,
    /// `flatten` with other `start_dim` / `end_dim` (counting the batch axis, as `nn.Flatten`).
    FlattenDims {
        /// `start_dim`.
        start: i64,
        /// `end_dim`.
        end: i64,
    },
    /// `add` of two or more inputs (broadcast).
    Add,
    /// `concat` along per-sample axis `dim`.
    Concat {
        /// `dim`.
        dim: usize,
    },
    /// `parameter`: a learned tensor of `shape`.
    Parameter {
        /// `shape`.
        shape: Vec<usize>,
    },
    /// `slice` along `dim`, Python's `[start:end]`.
    Slice {
        /// `dim`.
        dim: usize,
        /// `start`.
        start: i64,
        /// `end`.
        end: i64,
    },
    /// `layernorm`.
    LayerNorm {
        /// `normalized_shape`.
        normalized: Vec<usize>,
        /// `eps`.
        eps: f64,
        /// `elementwise_affine`.
        affine: bool,
        /// `bias`.
        bias: bool,
    },
    /// `embedding`.
    Embedding {
        /// `num_embeddings`.
        num: usize,
        /// `embedding_dim`.
        dim: usize,
    },
    /// `multihead_attention` (self-attention on `[T, E]`).
    Attention {
        /// `embed_dim`.
        embed_dim: usize,
        /// `num_heads`.
        heads: usize,
        /// `causal`.
        causal: bool,
    },
    /// `mean` over per-sample axes `dims`.
    Mean {
        /// `dims`.
        dims: Vec<usize>,
    },
    /// `select` of `index` along `dim`.
    Select {
        /// `dim`.
        dim: usize,
        /// `index`.
        index: i64,
    },
    /// `reshape` to `shape` (one entry may be −1).
    Reshape {
        /// `shape`.
        shape: Vec<i64>,
    },
    /// `permute` of the per-sample axes.
    Permute {
        /// `dims`.
        dims: Vec<usize>,
    },
    /// An elementwise activation.
    Activation(ActivationKind),
}

/// A parsed `model.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    /// Layers in order.
    pub layers: Vec<LayerSpec>,
    /// The loss.
    pub loss: Loss,
}

struct Fields<'a> {
    path: &'a str,
    what: String,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> NnError {
        NnError::spec(self.path, format!("{}: {msg}", self.what))
    }
    fn allow(&self, allowed: &[&str]) -> Result<(), NnError> {
        for k in self.obj.keys() {
            if k != "type" && !allowed.contains(&k.as_str()) {
                return Err(self.err(format!("unknown field '{k}' (allowed: {})", allowed.join(", "))));
            }
        }
        Ok(())
    }
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn uint_of(&self, key: &str, v: &Value) -> Result<usize, NnError> {
        v.as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| self.err(format!("'{key}' must be a non-negative integer, got {v}")))
    }
    fn uint(&self, key: &str, default: Option<usize>) -> Result<usize, NnError> {
        match (self.get(key), default) {
            (Some(v), _) => self.uint_of(key, v),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.err(format!("missing required field '{key}'"))),
        }
    }
    fn pos(&self, key: &str, default: Option<usize>) -> Result<usize, NnError> {
        let v = self.uint(key, default)?;
        if v == 0 {
            return Err(self.err(format!("'{key}' must be positive")));
        }
        Ok(v)
    }
    fn pair(&self, key: &str, default: Option<(usize, usize)>) -> Result<(usize, usize), NnError> {
        match (self.get(key), default) {
            (Some(Value::Array(a)), _) => {
                if a.len() != 2 {
                    return Err(self.err(format!("'{key}' must be an integer or a list of two integers")));
                }
                Ok((self.uint_of(key, &a[0])?, self.uint_of(key, &a[1])?))
            }
            (Some(v), _) => {
                let x = self.uint_of(key, v)?;
                Ok((x, x))
            }
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.err(format!("missing required field '{key}'"))),
        }
    }
    fn boolean(&self, key: &str, default: bool) -> Result<bool, NnError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(format!("'{key}' must be true or false, got {v}"))),
        }
    }
    fn number(&self, key: &str, default: f64) -> Result<f64, NnError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| self.err(format!("'{key}' must be a number, got {v}"))),
        }
    }
    fn int(&self, key: &str, default: i64) -> Result<i64, NnError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| self.err(format!("'{key}' must be an integer, got {v}"))),
        }
    }
    fn req_int(&self, key: &str) -> Result<i64, NnError> {
        match self.get(key) {
            None => Err(self.err(format!("missing required field '{key}'"))),
            Some(v) => v.as_i64().ok_or_else(|| self.err(format!("'{key}' must be an integer, got {v}"))),
        }
    }
    /// A list of integers (or one integer when `scalar_ok`).
    fn ints(&self, key: &str, scalar_ok: bool) -> Result<Vec<i64>, NnError> {
        match self.get(key) {
            None => Err(self.err(format!("missing required field '{key}'"))),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_i64().ok_or_else(|| self.err(format!("'{key}' must be a list of integers, got {x} in it")))
                })
                .collect(),
            Some(v) if scalar_ok && v.as_i64().is_some() => Ok(vec![v.as_i64().unwrap_or_default()]),
            Some(v) => Err(self.err(format!("'{key}' must be a list of integers, got {v}"))),
        }
    }
    fn uints(&self, key: &str, scalar_ok: bool) -> Result<Vec<usize>, NnError> {
        self.ints(key, scalar_ok)?
            .into_iter()
            .map(|x| {
                usize::try_from(x).map_err(|_| self.err(format!("'{key}' must hold non-negative integers, got {x}")))
            })
            .collect()
    }
    /// A field accepted only with its default value (PyTorch options we do not support).
    fn only(&self, key: &str, ok: &Value, why: &str) -> Result<(), NnError> {
        match self.get(key) {
            Some(v) if v != ok => Err(self.err(format!("{key}={v} is not supported ({why})"))),
            _ => Ok(()),
        }
    }
}

fn parse_layer(path: &str, i: usize, v: &Value) -> Result<LayerSpec, NnError> {
    let obj = v.as_object().ok_or_else(|| NnError::spec(path, format!("layer {i}: must be an object")))?;
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| NnError::spec(path, format!("layer {i}: missing string field 'type'")))?;
    parse_fields(path, format!("layer {i} ({ty})"), ty, obj, false)
}

/// Parses one layer's or node's type-specific fields (`graph`: the node types of graph models
/// are allowed).
fn parse_fields(
    path: &str,
    what: String,
    ty: &str,
    obj: &Map<String, Value>,
    graph: bool,
) -> Result<LayerSpec, NnError> {
    let f = Fields { path, what, obj };
    let t = Value::Bool(true);
    let fal = Value::Bool(false);
    Ok(match ty {
        "linear" => {
            f.allow(&["in_features", "out_features", "bias", "transposed"])?;
            LayerSpec::Linear {
                in_f: f.pos("in_features", None)?,
                out_f: f.pos("out_features", None)?,
                bias: f.boolean("bias", true)?,
                transposed: f.boolean("transposed", false)?,
            }
        }
        "conv2d" => {
            f.allow(&[
                "in_channels",
                "out_channels",
                "kernel_size",
                "stride",
                "padding",
                "dilation",
                "groups",
                "bias",
                "padding_mode",
            ])?;
            f.only("padding_mode", &Value::String("zeros".into()), "only zero padding")?;
            if let Some(Value::String(s)) = f.get("padding") {
                return Err(f.err(format!("padding='{s}' is not supported; give integers")));
            }
            LayerSpec::Conv2d {
                in_c: f.pos("in_channels", None)?,
                out_c: f.pos("out_channels", None)?,
                kernel: f.pair("kernel_size", None)?,
                stride: f.pair("stride", Some((1, 1)))?,
                padding: f.pair("padding", Some((0, 0)))?,
                dilation: f.pair("dilation", Some((1, 1)))?,
                groups: f.pos("groups", Some(1))?,
                bias: f.boolean("bias", true)?,
            }
        }
        "maxpool2d" => {
            f.allow(&["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"])?;
            f.only("ceil_mode", &fal, "ceil_mode=false only")?;
            f.only("return_indices", &fal, "return_indices=false only")?;
            let kernel = f.pair("kernel_size", None)?;
            LayerSpec::MaxPool2d {
                kernel,
                stride: f.pair("stride", Some(kernel))?,
                padding: f.pair("padding", Some((0, 0)))?,
                dilation: f.pair("dilation", Some((1, 1)))?,
            }
        }
        "avgpool2d" => {
            f.allow(&["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"])?;
            f.only("ceil_mode", &fal, "ceil_mode=false only")?;
            f.only("count_include_pad", &t, "count_include_pad=true only")?;
            f.only("divisor_override", &Value::Null, "no divisor_override")?;
            let kernel = f.pair("kernel_size", None)?;
            LayerSpec::AvgPool2d {
                kernel,
                stride: f.pair("stride", Some(kernel))?,
                padding: f.pair("padding", Some((0, 0)))?,
            }
        }
        "batchnorm1d" | "batchnorm2d" => {
            f.allow(&["num_features", "eps", "affine", "momentum", "track_running_stats"])?;
            f.only("track_running_stats", &t, "evaluation mode needs running statistics")?;
            let eps = f.number("eps", 1e-5)?;
            if eps < 0.0 {
                return Err(f.err("'eps' must be non-negative"));
            }
            let _ = f.number("momentum", 0.1)?;
            LayerSpec::BatchNorm {
                dim: if ty == "batchnorm1d" { 1 } else { 2 },
                num_features: f.pos("num_features", None)?,
                eps,
                affine: f.boolean("affine", true)?,
            }
        }
        "dropout" => {
            f.allow(&["p", "inplace"])?;
            let p = f.number("p", 0.5)?;
            if !(0.0..=1.0).contains(&p) {
                return Err(f.err(format!("'p' must be in [0, 1], got {p}")));
            }
            f.boolean("inplace", false)?;
            LayerSpec::Dropout
        }
        "flatten" => {
            f.allow(&["start_dim", "end_dim"])?;
            let (start, end) = (f.int("start_dim", 1)?, f.int("end_dim", -1)?);
            if (start, end) == (1, -1) {
                LayerSpec::Flatten
            } else {
                LayerSpec::FlattenDims { start, end }
            }
        }
        "relu" | "tanh" | "sigmoid" | "silu" => {
            f.allow(&["inplace"])?;
            f.boolean("inplace", false)?;
            LayerSpec::Activation(match ty {
                "relu" => ActivationKind::Relu,
                "tanh" => ActivationKind::Tanh,
                "sigmoid" => ActivationKind::Sigmoid,
                _ => ActivationKind::Silu,
            })
        }
        "gelu" => {
            f.allow(&["approximate"])?;
            match f.get("approximate") {
                None => LayerSpec::Activation(ActivationKind::Gelu),
                Some(Value::String(s)) if s == "none" => LayerSpec::Activation(ActivationKind::Gelu),
                Some(Value::String(s)) if s == "tanh" => LayerSpec::Activation(ActivationKind::GeluTanh),
                Some(v) => return Err(f.err(format!("'approximate' must be \"none\" or \"tanh\", got {v}"))),
            }
        }
        _ if graph && GRAPH_TYPES.contains(&ty) => parse_graph_fields(&f, ty)?,
        "leaky_relu" => {
            f.allow(&["negative_slope", "inplace"])?;
            f.boolean("inplace", false)?;
            LayerSpec::Activation(ActivationKind::LeakyRelu(f.number("negative_slope", 0.01)?))
        }
        other => {
            let more = if graph { format!(", {}", GRAPH_TYPES.join(", ")) } else { String::new() };
            let hint = if !graph && GRAPH_TYPES.contains(&other) { " (a graph node type: use 'nodes')" } else { "" };
            return Err(f.err(format!(
                "unknown layer type '{other}'{hint} (known: linear, conv2d, maxpool2d, avgpool2d, batchnorm1d, batchnorm2d, dropout, flatten, relu, tanh, sigmoid, gelu, silu, leaky_relu{more})"
            )));
        }
    })
}

/// Node types that only graph models (`nodes`) have.
pub const GRAPH_TYPES: [&str; 12] = [
    "add",
    "concat",
    "parameter",
    "slice",
    "layernorm",
    "embedding",
    "multihead_attention",
    "mean",
    "select",
    "reshape",
    "permute",
    "identity",
];

fn parse_graph_fields(f: &Fields, ty: &str) -> Result<LayerSpec, NnError> {
    let t = Value::Bool(true);
    let fal = Value::Bool(false);
    Ok(match ty {
        "add" => {
            f.allow(&[])?;
            LayerSpec::Add
        }
        "identity" => {
            f.allow(&[])?;
            LayerSpec::Dropout
        }
        "concat" => {
            f.allow(&["dim"])?;
            LayerSpec::Concat { dim: f.uint("dim", None)? }
        }
        "parameter" => {
            f.allow(&["shape"])?;
            LayerSpec::Parameter { shape: f.uints("shape", false)? }
        }
        "slice" => {
            f.allow(&["dim", "start", "end"])?;
            LayerSpec::Slice { dim: f.uint("dim", None)?, start: f.int("start", 0)?, end: f.int("end", i64::MAX)? }
        }
        "layernorm" => {
            f.allow(&["normalized_shape", "eps", "elementwise_affine", "bias"])?;
            let eps = f.number("eps", 1e-5)?;
            if eps < 0.0 {
                return Err(f.err("'eps' must be non-negative"));
            }
            LayerSpec::LayerNorm {
                normalized: f.uints("normalized_shape", true)?,
                eps,
                affine: f.boolean("elementwise_affine", true)?,
                bias: f.boolean("bias", true)?,
            }
        }
        "embedding" => {
            f.allow(&["num_embeddings", "embedding_dim", "padding_idx", "max_norm", "scale_grad_by_freq", "sparse"])?;
            f.only("padding_idx", &Value::Null, "padding_idx is not supported")?;
            f.only("max_norm", &Value::Null, "max_norm is not supported")?;
            f.only("scale_grad_by_freq", &fal, "scale_grad_by_freq is not supported")?;
            f.only("sparse", &fal, "sparse gradients are not supported")?;
            LayerSpec::Embedding { num: f.pos("num_embeddings", None)?, dim: f.pos("embedding_dim", None)? }
        }
        "multihead_attention" => {
            f.allow(&[
                "embed_dim",
                "num_heads",
                "causal",
                "bias",
                "batch_first",
                "dropout",
                "kdim",
                "vdim",
                "add_bias_kv",
                "add_zero_attn",
            ])?;
            f.only("bias", &t, "bias=true only")?;
            f.only("batch_first", &t, "batch_first=true only")?;
            f.only("kdim", &Value::Null, "kdim is not supported (self-attention)")?;
            f.only("vdim", &Value::Null, "vdim is not supported (self-attention)")?;
            f.only("add_bias_kv", &fal, "add_bias_kv is not supported")?;
            f.only("add_zero_attn", &fal, "add_zero_attn is not supported")?;
            if f.number("dropout", 0.0)? != 0.0 {
                // evaluation mode: dropout is inactive, as for `dropout` layers
            }
            LayerSpec::Attention {
                embed_dim: f.pos("embed_dim", None)?,
                heads: f.pos("num_heads", None)?,
                causal: f.boolean("causal", false)?,
            }
        }
        "mean" => {
            f.allow(&["dims", "keepdim"])?;
            f.only("keepdim", &fal, "keepdim=false only")?;
            LayerSpec::Mean { dims: f.uints("dims", true)? }
        }
        "select" => {
            f.allow(&["dim", "index"])?;
            LayerSpec::Select { dim: f.uint("dim", None)?, index: f.req_int("index")? }
        }
        "reshape" => {
            f.allow(&["shape"])?;
            LayerSpec::Reshape { shape: f.ints("shape", false)? }
        }
        "permute" => {
            f.allow(&["dims"])?;
            LayerSpec::Permute { dims: f.uints("dims", false)? }
        }
        _ => return Err(f.err(format!("unknown node type '{ty}'"))),
    })
}

fn parse_loss(path: &str, v: Option<&Value>) -> Result<Loss, NnError> {
    let obj = v.and_then(Value::as_object).ok_or_else(|| NnError::spec(path, "missing object field 'loss'"))?;
    let f = Fields { path, what: "loss".into(), obj };
    f.allow(&["reduction"])?;
    let kind = match obj.get("type").and_then(Value::as_str) {
        Some("mse") => LossKind::Mse,
        Some("cross_entropy") => LossKind::CrossEntropy,
        Some("bce_with_logits") => LossKind::BceWithLogits,
        Some(other) => {
            return Err(f.err(format!("unknown loss type '{other}' (known: mse, cross_entropy, bce_with_logits)")))
        }
        None => return Err(f.err("missing string field 'type'")),
    };
    let reduction = match f.get("reduction") {
        None => Reduction::Mean,
        Some(Value::String(s)) if s == "mean" => Reduction::Mean,
        Some(Value::String(s)) if s == "sum" => Reduction::Sum,
        Some(other) => return Err(f.err(format!("reduction must be \"mean\" or \"sum\", got {other}"))),
    };
    Ok(Loss { kind, reduction, positions: 1 })
}

/// One node of a graph model.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    /// Unique name; parameters are `"{name}.{role}"` unless `params` maps the role.
    pub name: String,
    /// Type and fields.
    pub layer: LayerSpec,
    /// Names of the nodes (or `x`) it reads.
    pub inputs: Vec<String>,
    /// Role → weights-file key (ties and renamed tensors).
    pub params: Vec<(String, String)>,
}

/// A parsed `model.json` in graph form. A `layers` list is the chain of nodes named `"0"`,
/// `"1"`, … each reading the one before.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphSpec {
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    /// Whether the input holds integer (token) ids.
    pub input_int: bool,
    /// The nodes in order; the last is the output.
    pub nodes: Vec<NodeSpec>,
    /// The flat parameter order, when the file gives it.
    pub param_order: Option<Vec<String>>,
    /// The loss.
    pub loss: Loss,
    /// Whether the file used the `layers` form (its messages then say "layer i").
    pub chain: bool,
}

impl From<&ModelSpec> for GraphSpec {
    fn from(m: &ModelSpec) -> Self {
        let nodes = m
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| NodeSpec {
                name: i.to_string(),
                layer: l.clone(),
                inputs: vec![if i == 0 { "x".to_string() } else { (i - 1).to_string() }],
                params: Vec::new(),
            })
            .collect();
        GraphSpec {
            input_shape: m.input_shape.clone(),
            input_int: false,
            nodes,
            param_order: None,
            loss: m.loss,
            chain: true,
        }
    }
}

fn positive_shape(path: &str, what: &str, v: Option<&Value>) -> Result<Vec<usize>, NnError> {
    let shape: Vec<usize> = v
        .and_then(Value::as_array)
        .ok_or_else(|| NnError::spec(path, format!("missing list field '{what}'")))?
        .iter()
        .map(|x| x.as_u64().filter(|&x| x > 0).map(|x| x as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| NnError::spec(path, format!("'{what}' must be a list of positive integers")))?;
    Ok(shape)
}

/// Parses the text of a `model.json` (`path` is used in messages): the `layers` form or the
/// graph form with `nodes` (SPEC.md §1).
pub fn parse_model(text: &str, path: &str) -> Result<GraphSpec, NnError> {
    let v: Value = serde_json::from_str(text).map_err(|e| NnError::spec(path, format!("invalid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| NnError::spec(path, "top level must be an object"))?;
    if !obj.contains_key("nodes") {
        for k in obj.keys() {
            if !["input_shape", "layers", "loss", "inputs"].contains(&k.as_str()) {
                return Err(NnError::spec(path, format!("unknown field '{k}' (allowed: input_shape, layers, loss)")));
            }
        }
    }
    if obj.contains_key("nodes") && obj.contains_key("layers") {
        return Err(NnError::spec(path, "give either 'layers' or 'nodes', not both"));
    }
    for k in obj.keys() {
        if !["input_shape", "inputs", "layers", "nodes", "loss", "param_order"].contains(&k.as_str()) {
            return Err(NnError::spec(
                path,
                format!("unknown field '{k}' (allowed: inputs, input_shape, nodes, param_order, loss)"),
            ));
        }
    }
    // the input
    let (input_shape, input_int) = match (obj.get("inputs"), obj.get("input_shape")) {
        (Some(_), Some(_)) => return Err(NnError::spec(path, "give either 'inputs' or 'input_shape', not both")),
        (None, None) => return Err(NnError::spec(path, "missing list field 'input_shape'")),
        (None, Some(s)) => (positive_shape(path, "input_shape", Some(s))?, false),
        (Some(inp), None) => {
            let m = inp.as_object().ok_or_else(|| NnError::spec(path, "'inputs' must be an object"))?;
            if m.len() != 1 || !m.contains_key("x") {
                let names: Vec<&String> = m.keys().collect();
                return Err(NnError::spec(path, format!("'inputs' must have one entry named 'x', got {names:?}")));
            }
            let x = m["x"].as_object().ok_or_else(|| NnError::spec(path, "inputs.x must be an object"))?;
            for k in x.keys() {
                if k != "shape" && k != "dtype" {
                    return Err(NnError::spec(path, format!("inputs.x: unknown field '{k}' (allowed: shape, dtype)")));
                }
            }
            let shape = positive_shape(path, "inputs.x.shape", x.get("shape"))?;
            let int = match x.get("dtype").and_then(|d| if d.is_null() { None } else { Some(d) }) {
                None => false,
                Some(Value::String(d)) if d == "float" => false,
                Some(Value::String(d)) if d == "int" => true,
                Some(d) => {
                    return Err(NnError::spec(path, format!("inputs.x.dtype must be \"float\" or \"int\", got {d}")))
                }
            };
            (shape, int)
        }
    };
    if input_shape.is_empty() {
        return Err(NnError::spec(path, "'input_shape' must not be empty"));
    }
    let loss = parse_loss(path, obj.get("loss"))?;
    if let Some(layers) = obj.get("layers") {
        let layers = layers
            .as_array()
            .ok_or_else(|| NnError::spec(path, "'layers' must be a list"))?
            .iter()
            .enumerate()
            .map(|(i, l)| parse_layer(path, i, l))
            .collect::<Result<Vec<_>, _>>()?;
        if obj.contains_key("param_order") {
            return Err(NnError::spec(path, "'param_order' needs the graph form ('nodes')"));
        }
        let mut g = GraphSpec::from(&ModelSpec { input_shape, layers, loss });
        g.input_int = input_int;
        return Ok(g);
    }
    let list = obj
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or_else(|| NnError::spec(path, "missing list field 'layers' (or 'nodes' for a graph model)"))?;
    if list.is_empty() {
        return Err(NnError::spec(path, "'nodes' must not be empty"));
    }
    let mut nodes: Vec<NodeSpec> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let o = v.as_object().ok_or_else(|| NnError::spec(path, format!("node {i}: must be an object")))?;
        let name = match o.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(NnError::spec(path, format!("node {i}: 'name' must be a non-empty string, got {other}")))
            }
            None => return Err(NnError::spec(path, format!("node {i}: missing string field 'name'"))),
        };
        if name == "x" {
            return Err(NnError::spec(path, format!("node {i}: the name 'x' is the model input")));
        }
        if nodes.iter().any(|n| n.name == name) {
            return Err(NnError::spec(path, format!("node '{name}': the name is used twice")));
        }
        let ty = o
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| NnError::spec(path, format!("node '{name}': missing string field 'type'")))?;
        let what = format!("node '{name}' ({ty})");
        let inputs: Vec<String> = match o.get("inputs") {
            None if ty == "parameter" => Vec::new(),
            None => vec![nodes.last().map_or("x".to_string(), |n| n.name.clone())],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        NnError::spec(path, format!("{what}: 'inputs' must be a list of names, got {x}"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(Value::String(s)) => vec![s.clone()],
            Some(other) => {
                return Err(NnError::spec(path, format!("{what}: 'inputs' must be a list of names, got {other}")))
            }
        };
        let params: Vec<(String, String)> = match o.get("params") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(role, key)| {
                    key.as_str().map(|k| (role.clone(), k.to_string())).ok_or_else(|| {
                        NnError::spec(
                            path,
                            format!("{what}: params.{role} must be a string (a weights key), got {key}"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(NnError::spec(path, format!("{what}: 'params' must be an object, got {other}"))),
        };
        let mut rest = o.clone();
        for k in ["name", "inputs", "params"] {
            rest.remove(k);
        }
        let layer = parse_fields(path, what, ty, &rest, true)?;
        nodes.push(NodeSpec { name, layer, inputs, params });
    }
    let param_order = match obj.get("param_order") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        NnError::spec(path, format!("'param_order' must be a list of parameter keys, got {x}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => return Err(NnError::spec(path, format!("'param_order' must be a list, got {other}"))),
    };
    Ok(GraphSpec { input_shape, input_int, nodes, param_order, loss, chain: false })
}

/// What a weights file holds for batch-norm layer `i` with `c` channels.
#[derive(Clone, Debug)]
pub struct BnBuffers {
    /// Running mean.
    pub mean: Vec<f64>,
    /// Running variance.
    pub var: Vec<f64>,
    /// Whether the file also holds affine parameters (`{i}.weight`, `{i}.bias`).
    pub has_affine: bool,
}

/// Supplies the buffers of the batch-norm node of the given name (`"3"` for layer 3 of a chain)
/// with `c` channels.
pub type BnStats<'a> = dyn Fn(&str, usize) -> Result<BnBuffers, NnError> + 'a;

impl ModelSpec {
    /// Builds the chain network, checking that layer sizes chain; `bn_stats` supplies the
    /// running statistics of batch-norm layers.
    pub fn build<T: Float>(&self, path: &str, bn_stats: &BnStats) -> Result<Network<T>, NnError> {
        GraphSpec::from(self).build(path, bn_stats)
    }
}

/// NumPy broadcasting of two per-sample shapes (aligned at the last axis).
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let x = if i < r - a.len() { 1 } else { a[i - (r - a.len())] };
        let y = if i < r - b.len() { 1 } else { b[i - (r - b.len())] };
        out[i] = if x == y || y == 1 {
            x
        } else if x == 1 {
            y
        } else {
            return None;
        };
    }
    Some(out)
}

impl GraphSpec {
    /// Builds the network: resolves inputs, checks shapes node by node, lays out the parameters
    /// (ties, `param_order`); `bn_stats` supplies the running statistics of batch-norm nodes.
    /// Errors name the node and the field.
    pub fn build<T: Float>(&self, path: &str, bn_stats: &BnStats) -> Result<Network<T>, NnError> {
        let mut shapes: Vec<Vec<usize>> = vec![self.input_shape.clone()];
        let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        index.insert("x", 0);
        let mut layers: Vec<Box<dyn Layer<T>>> = Vec::with_capacity(self.nodes.len());
        let mut node_inputs: Vec<Vec<usize>> = Vec::with_capacity(self.nodes.len());
        let mut keys: Vec<Vec<String>> = Vec::with_capacity(self.nodes.len());
        let mut warnings = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let ty = layer_type(&node.layer);
            let what = if self.chain { format!("layer {i} ({ty})") } else { format!("node '{}' ({ty})", node.name) };
            let err = |msg: String| NnError::spec(path, format!("{what}: {msg}"));
            // resolve inputs
            let mut ins = Vec::with_capacity(node.inputs.len());
            for name in &node.inputs {
                match index.get(name.as_str()) {
                    Some(&v) => ins.push(v),
                    None if self.nodes.iter().any(|n| &n.name == name) => {
                        return Err(err(format!(
                            "input '{name}' is used before it is defined (list nodes in execution order)"
                        )))
                    }
                    None => return Err(err(format!("unknown input '{name}' (no node or model input of that name)"))),
                }
            }
            let in_names: Vec<&str> = node.inputs.iter().map(String::as_str).collect();
            let n_in = ins.len();
            let arity = |want: usize| -> Result<(), NnError> {
                if n_in != want {
                    return Err(err(format!("expects {want} input(s), got {n_in}")));
                }
                Ok(())
            };
            let reads_int = ins.contains(&0) && self.input_int;
            if reads_int && !matches!(node.layer, LayerSpec::Embedding { .. }) {
                return Err(err("reads the integer input 'x' (token ids): only an embedding node can".into()));
            }
            let layer: Box<dyn Layer<T>> = match &node.layer {
                LayerSpec::Add => {
                    if n_in < 2 {
                        return Err(err(format!("needs two or more inputs, got {n_in}")));
                    }
                    let mut acc = shapes[ins[0]].clone();
                    for j in 1..n_in {
                        acc = broadcast_shapes(&acc, &shapes[ins[j]]).ok_or_else(|| {
                            err(format!(
                                "input '{}' has shape {:?}, which does not match input '{}' of shape {:?}",
                                in_names[j], shapes[ins[j]], in_names[0], shapes[ins[0]]
                            ))
                        })?;
                    }
                    let sh: Vec<Vec<usize>> = ins.iter().map(|&v| shapes[v].clone()).collect();
                    Box::new(crate::layers::structure::Add::new(sh).map_err(err)?)
                }
                LayerSpec::Concat { dim } => {
                    if n_in < 2 {
                        return Err(err(format!("needs two or more inputs, got {n_in}")));
                    }
                    let s0 = &shapes[ins[0]];
                    if *dim >= s0.len() {
                        return Err(err(format!(
                            "dim {dim} is out of range for input '{}' of shape {s0:?}",
                            in_names[0]
                        )));
                    }
                    for j in 1..n_in {
                        let sj = &shapes[ins[j]];
                        let ok = sj.len() == s0.len() && (0..s0.len()).all(|a| a == *dim || sj[a] == s0[a]);
                        if !ok {
                            return Err(err(format!(
                                "input '{}' has shape {sj:?}, which does not match input '{}' of shape {s0:?} outside dim {dim}",
                                in_names[j], in_names[0]
                            )));
                        }
                    }
                    let sh: Vec<Vec<usize>> = ins.iter().map(|&v| shapes[v].clone()).collect();
                    Box::new(crate::layers::structure::Concat::new(sh, *dim).map_err(err)?)
                }
                LayerSpec::Parameter { shape } => {
                    arity(0)?;
                    Box::new(crate::layers::parameter::Parameter::new(shape.clone()).map_err(err)?)
                }
                other => {
                    arity(1)?;
                    let shape = shapes[ins[0]].clone();
                    build_single::<T>(other, shape, &node.name, reads_int, &err, bn_stats, &mut warnings, &what)?
                }
            };
            // parameter keys of the roles
            let roles = layer.params();
            for (role, _) in &node.params {
                if !roles.iter().any(|r| r.name == role.as_str()) {
                    let known: Vec<&str> = roles.iter().map(|r| r.name).collect();
                    return Err(err(format!("params: unknown role '{role}' (roles: {})", known.join(", "))));
                }
            }
            keys.push(
                roles
                    .iter()
                    .map(|r| {
                        node.params
                            .iter()
                            .find(|(role, _)| role == r.name)
                            .map_or_else(|| format!("{}.{}", node.name, r.name), |(_, k)| k.clone())
                    })
                    .collect(),
            );
            shapes.push(layer.out_shape().to_vec());
            index.insert(node.name.as_str(), shapes.len() - 1);
            node_inputs.push(ins);
            layers.push(layer);
        }
        let out_shape = shapes.last().cloned().unwrap_or_default();
        if self.chain && out_shape.len() != 1 {
            return Err(NnError::spec(
                path,
                format!(
                    "the network output must be a vector per sample, got shape {out_shape:?} (add a flatten layer)"
                ),
            ));
        }
        let mut loss = self.loss;
        if loss.kind == crate::loss::LossKind::CrossEntropy && out_shape.len() > 1 {
            loss.positions = out_shape[..out_shape.len() - 1].iter().product();
        }
        if out_shape.is_empty() && loss.kind == crate::loss::LossKind::CrossEntropy {
            return Err(NnError::spec(
                path,
                "cross_entropy needs an output with a class axis, got a scalar per sample",
            ));
        }
        let specs: Vec<Vec<ParamSpec>> = layers.iter().map(|l| l.params()).collect();
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let layout = ParamLayout::graph(&specs, &keys, &names, node_inputs, self.param_order.as_deref())
            .map_err(|e| NnError::spec(path, e.to_string()))?;
        let mut net = Network::from_layout(self.input_shape.clone(), self.input_int, layers, layout, loss);
        net.warnings = warnings;
        Ok(net)
    }
}

/// Builds a node with one input of per-sample shape `shape`.
#[allow(clippy::too_many_arguments)]
fn build_single<T: Float>(
    ls: &LayerSpec,
    shape: Vec<usize>,
    name: &str,
    reads_int: bool,
    err: &dyn Fn(String) -> NnError,
    bn_stats: &BnStats,
    warnings: &mut Vec<String>,
    what: &str,
) -> Result<Box<dyn Layer<T>>, NnError> {
    let image = |extra: &str| -> Result<(usize, usize, usize), NnError> {
        if shape.len() != 3 {
            return Err(err(format!("expects a [C, H, W] input, got shape {shape:?} {extra}")));
        }
        Ok((shape[0], shape[1], shape[2]))
    };
    Ok(match ls {
        LayerSpec::Linear { in_f, out_f, bias, transposed } => {
            if shape.last() != Some(in_f) {
                let hint =
                    if shape.len() > 1 { " (its last axis must be in_features; add a flatten layer?)" } else { "" };
                return Err(err(format!("in_features {in_f} does not match the incoming shape {shape:?}{hint}")));
            }
            if shape.len() == 1 && !transposed {
                Box::new(Linear::new(*in_f, *out_f, *bias))
            } else {
                Box::new(Linear::with_shape(shape, *out_f, *bias, *transposed).map_err(err)?)
            }
        }
        LayerSpec::Conv2d { in_c, out_c, kernel, stride, padding, dilation, groups, bias } => {
            let (c, h, w) = image("")?;
            if c != *in_c {
                return Err(err(format!("in_channels {in_c} does not match the incoming shape {shape:?}")));
            }
            let g = Geom2d::new(c, h, w, *kernel, *stride, *padding, *dilation).map_err(err)?;
            Box::new(Conv2d::new(g, *out_c, *groups, *bias).map_err(err)?)
        }
        LayerSpec::MaxPool2d { kernel, stride, padding, dilation } => {
            let (c, h, w) = image("")?;
            let g = Geom2d::new(c, h, w, *kernel, *stride, *padding, *dilation).map_err(err)?;
            Box::new(MaxPool2d::new(g).map_err(err)?)
        }
        LayerSpec::AvgPool2d { kernel, stride, padding } => {
            let (c, h, w) = image("")?;
            let g = Geom2d::new(c, h, w, *kernel, *stride, *padding, (1, 1)).map_err(err)?;
            Box::new(AvgPool2d::new(g).map_err(err)?)
        }
        LayerSpec::BatchNorm { dim, num_features, eps, affine } => {
            let ok = match dim {
                1 => shape.len() == 1 || shape.len() == 2,
                _ => shape.len() == 3,
            };
            if !ok || shape[0] != *num_features {
                let want = if *dim == 1 { "[C] or [C, L]" } else { "[C, H, W]" };
                return Err(err(format!(
                    "num_features {num_features} needs an input {want} with C = {num_features}, got {shape:?}"
                )));
            }
            let BnBuffers { mean, var, has_affine } = bn_stats(name, *num_features)?;
            // PyTorch would refuse such a state dict; a model built with affine=True
            // wrote it, so its parameters are used (and a warning says so)
            let affine = if !*affine && has_affine {
                warnings.push(format!(
                    "{what}: model.json says affine=false but the weights hold {name}.weight and {name}.bias; using them as affine parameters"
                ));
                true
            } else {
                *affine
            };
            let kind = if *dim == 1 { "batchnorm1d" } else { "batchnorm2d" };
            Box::new(BatchNorm::new(kind, shape, mean, var, *eps, affine))
        }
        LayerSpec::Dropout => Box::new(Identity::dropout(shape)),
        LayerSpec::Flatten => Box::new(Identity::flatten(shape)),
        LayerSpec::FlattenDims { start, end } => Box::new(Identity::flatten_dims(shape, *start, *end).map_err(err)?),
        LayerSpec::Activation(k) => Box::new(Activation::new(*k, shape)),
        LayerSpec::Slice { dim, start, end } => {
            Box::new(crate::layers::index::Slice::new(shape, *dim, *start, *end).map_err(err)?)
        }
        LayerSpec::LayerNorm { normalized, eps, affine, bias } => Box::new(
            crate::layers::layernorm::LayerNorm::new(shape, normalized.clone(), *eps, *affine, *bias).map_err(err)?,
        ),
        LayerSpec::Embedding { num, dim } => {
            if !reads_int {
                return Err(err("reads token ids: its input must be the model input 'x' with dtype \"int\"".into()));
            }
            Box::new(crate::layers::embedding::Embedding::new(shape, *num, *dim).map_err(err)?)
        }
        LayerSpec::Attention { embed_dim, heads, causal } => {
            if shape.len() != 2 || shape[1] != *embed_dim {
                return Err(err(format!(
                    "expects a [T, {embed_dim}] input (embed_dim {embed_dim}), got shape {shape:?}"
                )));
            }
            Box::new(
                crate::layers::attention::MultiheadAttention::new(shape[0], *embed_dim, *heads, *causal)
                    .map_err(err)?,
            )
        }
        LayerSpec::Mean { dims } => Box::new(crate::layers::index::Mean::new(shape, dims.clone()).map_err(err)?),
        LayerSpec::Select { dim, index } => {
            Box::new(crate::layers::index::Select::new(shape, *dim, *index).map_err(err)?)
        }
        LayerSpec::Reshape { shape: target } => Box::new(Identity::reshape(shape, target.clone()).map_err(err)?),
        LayerSpec::Permute { dims } => Box::new(crate::layers::index::Permute::new(shape, dims.clone()).map_err(err)?),
        LayerSpec::Add | LayerSpec::Concat { .. } | LayerSpec::Parameter { .. } => {
            return Err(err("internal: a multi-input node was built as a single-input one".into()))
        }
    })
}

/// The `model.json` type name of a layer spec.
pub fn layer_type(ls: &LayerSpec) -> &'static str {
    match ls {
        LayerSpec::Linear { .. } => "linear",
        LayerSpec::Conv2d { .. } => "conv2d",
        LayerSpec::MaxPool2d { .. } => "maxpool2d",
        LayerSpec::AvgPool2d { .. } => "avgpool2d",
        LayerSpec::BatchNorm { dim: 1, .. } => "batchnorm1d",
        LayerSpec::BatchNorm { .. } => "batchnorm2d",
        LayerSpec::Dropout => "dropout",
        LayerSpec::Flatten | LayerSpec::FlattenDims { .. } => "flatten",
        LayerSpec::Add => "add",
        LayerSpec::Concat { .. } => "concat",
        LayerSpec::Parameter { .. } => "parameter",
        LayerSpec::Slice { .. } => "slice",
        LayerSpec::LayerNorm { .. } => "layernorm",
        LayerSpec::Embedding { .. } => "embedding",
        LayerSpec::Attention { .. } => "multihead_attention",
        LayerSpec::Mean { .. } => "mean",
        LayerSpec::Select { .. } => "select",
        LayerSpec::Reshape { .. } => "reshape",
        LayerSpec::Permute { .. } => "permute",
        LayerSpec::Activation(k) => k.name(),
    }
}
