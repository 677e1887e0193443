//! `model.json`: parsing, validation and building the network (SPEC.md §1).
//!
//! Field names and defaults are those of `torch.nn`. Unknown layer types or fields, missing
//! required fields, values of the wrong type and layer sizes that do not chain are errors that
//! name the layer (index and type) and the field.

use crate::layers::{Activation, ActivationKind, AvgPool2d, BatchNorm, Conv2d, Identity, Layer, Linear, MaxPool2d};
use crate::loss::{Loss, LossKind, Reduction};
use crate::network::Network;
use crate::NnError;
use curvops_tensor::conv::Geom2d;
use curvops_tensor::Float;
use serde_json::{Map, Value};

/// One layer of the specification.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerSpec {
    /// `linear`.
    Linear {
        /// `in_features`.
        in_f: usize,
        /// `out_features`.
        out_f: usize,
        /// `bias`.
        bias: bool,
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
    /// `flatten`.
    Flatten,
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
    let f = Fields { path, what: format!("layer {i} ({ty})"), obj };
    let t = Value::Bool(true);
    let fal = Value::Bool(false);
    Ok(match ty {
        "linear" => {
            f.allow(&["in_features", "out_features", "bias"])?;
            LayerSpec::Linear { in_f: f.pos("in_features", None)?, out_f: f.pos("out_features", None)?, bias: f.boolean("bias", true)? }
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
            LayerSpec::AvgPool2d { kernel, stride: f.pair("stride", Some(kernel))?, padding: f.pair("padding", Some((0, 0)))? }
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
            f.only("start_dim", &Value::from(1), "start_dim=1 only")?;
            f.only("end_dim", &Value::from(-1), "end_dim=-1 only")?;
            LayerSpec::Flatten
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
            f.only("approximate", &Value::String("none".into()), "only the exact erf form")?;
            LayerSpec::Activation(ActivationKind::Gelu)
        }
        "leaky_relu" => {
            f.allow(&["negative_slope", "inplace"])?;
            f.boolean("inplace", false)?;
            LayerSpec::Activation(ActivationKind::LeakyRelu(f.number("negative_slope", 0.01)?))
        }
        other => {
            return Err(NnError::spec(
                path,
                format!(
                    "layer {i}: unknown layer type '{other}' (known: linear, conv2d, maxpool2d, avgpool2d, batchnorm1d, batchnorm2d, dropout, flatten, relu, tanh, sigmoid, gelu, silu, leaky_relu)"
                ),
            ))
        }
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
    Ok(Loss { kind, reduction })
}

/// Parses the text of a `model.json` (`path` is used in messages).
pub fn parse_model(text: &str, path: &str) -> Result<ModelSpec, NnError> {
    let v: Value = serde_json::from_str(text).map_err(|e| NnError::spec(path, format!("invalid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| NnError::spec(path, "top level must be an object"))?;
    for k in obj.keys() {
        if !["input_shape", "layers", "loss"].contains(&k.as_str()) {
            return Err(NnError::spec(path, format!("unknown field '{k}' (allowed: input_shape, layers, loss)")));
        }
    }
    let input_shape: Vec<usize> = obj
        .get("input_shape")
        .and_then(Value::as_array)
        .ok_or_else(|| NnError::spec(path, "missing list field 'input_shape'"))?
        .iter()
        .map(|x| x.as_u64().filter(|&x| x > 0).map(|x| x as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| NnError::spec(path, "'input_shape' must be a list of positive integers"))?;
    if input_shape.is_empty() {
        return Err(NnError::spec(path, "'input_shape' must not be empty"));
    }
    let layers = obj
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| NnError::spec(path, "missing list field 'layers'"))?
        .iter()
        .enumerate()
        .map(|(i, l)| parse_layer(path, i, l))
        .collect::<Result<Vec<_>, _>>()?;
    let loss = parse_loss(path, obj.get("loss"))?;
    Ok(ModelSpec { input_shape, layers, loss })
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

/// Supplies the buffers of batch-norm layer `i` with `c` channels.
pub type BnStats<'a> = dyn Fn(usize, usize) -> Result<BnBuffers, NnError> + 'a;

impl ModelSpec {
    /// Builds the network, checking that layer sizes chain; `bn_stats` supplies the running
    /// statistics of batch-norm layers.
    pub fn build<T: Float>(&self, path: &str, bn_stats: &BnStats) -> Result<Network<T>, NnError> {
        let mut shape = self.input_shape.clone();
        let mut layers: Vec<Box<dyn Layer<T>>> = Vec::with_capacity(self.layers.len());
        let mut warnings = Vec::new();
        for (i, ls) in self.layers.iter().enumerate() {
            let name = layer_type(ls);
            let err = |msg: String| NnError::spec(path, format!("layer {i} ({name}): {msg}"));
            let image = |what: &str| -> Result<(usize, usize, usize), NnError> {
                if shape.len() != 3 {
                    return Err(err(format!("expects a [C, H, W] input, got shape {shape:?} {what}")));
                }
                Ok((shape[0], shape[1], shape[2]))
            };
            let layer: Box<dyn Layer<T>> = match ls {
                LayerSpec::Linear { in_f, out_f, bias } => {
                    if shape != [*in_f] {
                        let hint = if shape.len() > 1 { " (add a flatten layer)" } else { "" };
                        return Err(err(format!(
                            "in_features {in_f} does not match the incoming shape {shape:?}{hint}"
                        )));
                    }
                    Box::new(Linear::new(*in_f, *out_f, *bias))
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
                    let BnBuffers { mean, var, has_affine } = bn_stats(i, *num_features)?;
                    // PyTorch would refuse such a state dict; a model built with affine=True
                    // wrote it, so its parameters are used (and a warning says so)
                    let affine = if !*affine && has_affine {
                        warnings.push(format!(
                            "layer {i} ({name}): model.json says affine=false but the weights hold {i}.weight and {i}.bias; using them as affine parameters"
                        ));
                        true
                    } else {
                        *affine
                    };
                    let kind = if *dim == 1 { "batchnorm1d" } else { "batchnorm2d" };
                    Box::new(BatchNorm::new(kind, shape.clone(), mean, var, *eps, affine))
                }
                LayerSpec::Dropout => Box::new(Identity::dropout(shape.clone())),
                LayerSpec::Flatten => Box::new(Identity::flatten(shape.clone())),
                LayerSpec::Activation(k) => Box::new(Activation::new(*k, shape.clone())),
            };
            shape = layer.out_shape().to_vec();
            layers.push(layer);
        }
        if shape.len() != 1 {
            return Err(NnError::spec(
                path,
                format!("the network output must be a vector per sample, got shape {shape:?} (add a flatten layer)"),
            ));
        }
        let mut net = Network::new(self.input_shape.clone(), layers, self.loss);
        net.warnings = warnings;
        Ok(net)
    }
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
        LayerSpec::Flatten => "flatten",
        LayerSpec::Activation(k) => k.name(),
    }
}
