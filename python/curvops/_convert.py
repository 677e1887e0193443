"""From a PyTorch ``nn.Module`` to curvops' graph model (SPEC.md §1).

``convert(model, loss_fn, example_input)`` traces the module with ``torch.fx`` and maps every
node to a node of the graph form. The tracer evaluates each traced operation on the example input
as it records it, so shape arithmetic (``x.shape[1]``, ``x.size(0)``), ``assert`` statements,
``torch._assert`` and masks built from shapes (``torch.triu(torch.ones(T, T), 1)``) are concrete:
they are checked once and become constants. Standard modules are leaves of the trace and map to
one node each; composite modules that ``torch.fx`` cannot trace (``nn.TransformerEncoderLayer``,
``nn.TransformerEncoder``) are expanded here. An operation that has no node in the spec is a
``ValueError`` naming the fx node and its target.

The model is used in evaluation mode (batch norm with running statistics, dropout the identity),
as curvature is computed for a trained model.
"""
import operator
import warnings

import numpy as np

try:
    import torch
    import torch.fx
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is optional for the package
    torch = None


class ConversionError(ValueError):
    """A module, function or option that curvops cannot map (the message names it)."""


# ---- symbolic values ---------------------------------------------------------------------------
class Batched:
    """A spec node's output: one value per sample of per-sample `shape`."""

    def __init__(self, name, shape):
        self.name, self.shape = name, tuple(shape)


class Shared:
    """A spec node's output that is the same for every sample (a `parameter` node and what is
    computed from it); `shape` has no batch axis."""

    def __init__(self, name, shape):
        self.name, self.shape = name, tuple(shape)


class Param:
    """A model parameter read by `get_attr`, not yet a node (its use decides its shape)."""

    def __init__(self, tensor, key):
        self.tensor, self.key = tensor, key


class AttentionOut:
    """The `(output, weights)` tuple of a multi-head attention node."""

    def __init__(self, name, shape, where):
        self.name, self.shape, self.where = name, tuple(shape), where


class SdpaOut:
    """The output of `F.scaled_dot_product_attention` on heads split from one linear map
    (nanoGPT's attention), `[H, T, hd]` per sample, not yet a node: the linear map that merges
    the heads again (`c_proj`) makes it one `multihead_attention` node."""

    def __init__(self, qkv, x, heads, causal, where, cv):
        self.qkv, self.x, self.heads, self.causal, self.where, self.cv = qkv, x, heads, causal, where, cv


class Unsupported:
    """A value that must not be used (the message says why)."""

    def __init__(self, msg):
        self.msg = msg


SYMBOLIC = (Batched, Shared, Param, AttentionOut, SdpaOut, Unsupported)


def _is_sym(v):
    return isinstance(v, SYMBOLIC)


def _contains_sym(v):
    if _is_sym(v):
        return True
    if isinstance(v, (list, tuple)):
        return any(_contains_sym(x) for x in v)
    if isinstance(v, dict):
        return any(_contains_sym(x) for x in v.values())
    return False


# ---- the tracer ----------------------------------------------------------------------------------
def _concrete(a):
    if isinstance(a, torch.fx.Node):
        return a.meta["cv"]
    if isinstance(a, (list, tuple)):
        t = [_concrete(x) for x in a]
        return type(a)(t) if isinstance(a, tuple) and not hasattr(a, "_fields") else t
    if isinstance(a, dict):
        return {k: _concrete(v) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(_concrete(a.start), _concrete(a.stop), _concrete(a.step))
    return a


def _is_static(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if torch is not None and isinstance(v, (torch.Size, torch.device, torch.dtype)):
        return True
    if isinstance(v, (tuple, list)):
        return all(isinstance(x, (bool, int, float)) for x in v)
    return False


EXPANDED = ()
if torch is not None:
    EXPANDED = (nn.TransformerEncoderLayer, nn.TransformerEncoder)

    class _ConcreteTracer(torch.fx.Tracer):
        """An fx tracer that also evaluates every node on the example input (`node.meta["cv"]`),
        so that shapes, asserts and control flow on shapes are concrete."""

        def __init__(self, example):
            super().__init__()
            self.example = list(example)
            self.depth = 0  # > 0 while a node is being evaluated concretely

        def call_module(self, m, forward, args, kwargs):
            if self.depth:
                return forward(*args, **kwargs)
            return super().call_module(m, forward, args, kwargs)

        def getattr(self, attr, attr_val, parameter_proxy_cache):
            if self.depth:
                return attr_val
            return super().getattr(attr, attr_val, parameter_proxy_cache)

        def is_leaf_module(self, m, qualname):
            if isinstance(m, EXPANDED):
                return True
            return super().is_leaf_module(m, qualname)

        def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
            node = super().create_node(kind, target, args, kwargs, name, type_expr)
            self.depth += 1
            try:
                self.evaluate(node, kind, target, args, kwargs)
            finally:
                self.depth -= 1
            return node

        def evaluate(self, node, kind, target, args, kwargs):
            with torch.no_grad():
                if kind == "placeholder":
                    node.meta["cv"] = self.example.pop(0) if self.example else None
                elif kind == "get_attr":
                    obj = self.root
                    for part in str(target).split("."):
                        obj = getattr(obj, part)
                    node.meta["cv"] = obj
                elif kind == "call_module":
                    m = self.root.get_submodule(target)
                    node.meta["cv"] = m(*_concrete(args), **_concrete(kwargs))
                elif kind == "call_function":
                    node.meta["cv"] = target(*_concrete(args), **_concrete(kwargs))
                elif kind == "call_method":
                    a = _concrete(args)
                    node.meta["cv"] = getattr(a[0], target)(*a[1:], **_concrete(kwargs))
                else:
                    node.meta["cv"] = None

        def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
            p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
            v = p.node.meta.get("cv")
            if kind in ("call_function", "call_method") and target is not getattr and _is_static(v):
                # shapes, sizes, flags: specialized to the example input from here on
                return v
            return p

        def to_bool(self, obj):
            return bool(obj.node.meta["cv"])

        def iter(self, obj):
            return iter([obj[i] for i in range(len(obj.node.meta["cv"]))])


# ---- the converter ---------------------------------------------------------------------------------
def _target_name(t):
    if isinstance(t, str):
        return t
    mod = getattr(t, "__module__", None) or ""
    return f"{mod}.{getattr(t, '__name__', repr(t))}".lstrip(".")


class _Converter:
    def __init__(self, model):
        self.model = model
        self.nodes = []
        self.used_names = {"x"}
        # canonical key of each parameter tensor: its first name in named_parameters()
        self.canon = {}
        for name, p in model.named_parameters():
            self.canon.setdefault(id(p), name)
        self.buffer_names = {}
        for name, b in model.named_buffers():
            self.buffer_names.setdefault(id(b), name)
        self.weights = {}  # key -> tensor
        self.module_calls = {}
        self.shared_params = {}  # (key, shape) -> node name
        self.node_keys = {}  # node name -> the weight keys it reads
        self.env = {}

    # -- emitting -------------------------------------------------------------------------------
    def unique(self, base):
        base = str(base)
        name, i = base, 1
        while name in self.used_names:
            name = f"{base}#{i}"
            i += 1
        self.used_names.add(name)
        return name

    def emit(self, type_, inputs, name, **fields):
        node = {"name": name, "type": type_}
        if inputs is not None:
            node["inputs"] = list(inputs)
        node.update(fields)
        self.nodes.append(node)
        return name

    def module_node_name(self, path):
        k = self.module_calls.get(path, 0)
        self.module_calls[path] = k + 1
        return self.unique(path if k == 0 else f"{path}.call{k}")

    def bind_params(self, name, roles):
        """`params` entries for (role, tensor) pairs; records the tensors to pass."""
        mapping = {}
        for role, t in roles:
            if t is None:
                continue
            key = self.canon.get(id(t))
            if key is None:  # a buffer
                key = self.buffer_names.get(id(t))
                if key is None:
                    raise ConversionError(f"node '{name}': tensor of role '{role}' is neither a parameter nor a buffer of the model")
            self.weights[key] = t
            self.node_keys.setdefault(name, []).append(key)
            if key != f"{name}.{role}":
                mapping[role] = key
        return mapping

    def shared_param(self, p, shape, where):
        """A `parameter` node for the model parameter `p` with per-sample `shape`."""
        shape = tuple(int(s) for s in shape)
        t = p.tensor
        if tuple(t.shape) not in (shape, (1,) + shape):
            raise ConversionError(f"{where}: parameter '{p.key}' of shape {list(t.shape)} cannot be used with per-sample shape {list(shape)}")
        cache = (p.key, shape)
        if cache in self.shared_params:
            return self.shared_params[cache]
        name = self.unique(p.key)
        self.weights[p.key] = t
        self.node_keys.setdefault(name, []).append(p.key)
        fields = {"shape": list(shape)}
        if p.key != f"{name}.weight":
            fields["params"] = {"weight": p.key}
        self.emit("parameter", None, name, **fields)
        self.shared_params[cache] = name
        return name

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def where(n):
        return f"fx node '{n.name}' ({n.op} {_target_name(n.target)})"

    def batched(self, v, n, what="input"):
        if isinstance(v, Batched):
            return v
        if isinstance(v, Unsupported):
            raise ConversionError(f"{self.where(n)}: {v.msg}")
        if isinstance(v, AttentionOut):
            raise ConversionError(f"{self.where(n)}: takes the (output, weights) tuple of attention '{v.name}' (index it with [0])")
        if isinstance(v, SdpaOut):
            raise ConversionError(f"{self.where(n)}: uses the output of {v.where} other than merging the heads "
                                  f"(transpose(1, 2), view [T, E]) into one nn.Linear(E, E)")
        raise ConversionError(f"{self.where(n)}: its {what} does not depend on the model input (a constant or a parameter), which curvops cannot map here")

    def out(self, type_, inputs, n, cv, name=None, **fields):
        name = name or self.unique(n.name)
        self.emit(type_, inputs, name, **fields)
        return Batched(name, cv.shape[1:])

    # -- node mapping -------------------------------------------------------------------------------
    def run(self, graph):
        env = self.env
        output = None
        for n in graph.nodes:
            cv = n.meta.get("cv")
            args = torch.fx.node.map_arg(n.args, lambda a: env[a])
            kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: env[a])
            if n.op == "placeholder":
                if not isinstance(cv, torch.Tensor):
                    raise ConversionError(f"{self.where(n)}: the model's input must be one tensor")
                env[n] = Batched("x", cv.shape[1:])
                continue
            if n.op == "output":
                output = args[0]
                continue
            if n.op == "get_attr":
                if isinstance(cv, nn.Parameter) or (isinstance(cv, torch.Tensor) and id(cv) in self.canon):
                    env[n] = Param(cv, self.canon[id(cv)])
                else:
                    env[n] = cv  # a buffer or constant
                continue
            if not _contains_sym(args) and not _contains_sym(kwargs):
                if n.op == "call_module":
                    m = self.model.get_submodule(n.target)
                    if isinstance(m, nn.Embedding):
                        env[n] = self.embedding_of_constant(n, m, args[0])
                        continue
                    if any(True for _ in m.parameters()):
                        raise ConversionError(f"{self.where(n)}: its input does not depend on the model input")
                env[n] = cv  # constant folding: shapes, masks, asserts, aranges
                continue
            if n.op == "call_module":
                env[n] = self.call_module(n, self.model.get_submodule(n.target), args, kwargs, cv)
            elif n.op == "call_function":
                env[n] = self.call_function(n, n.target, args, kwargs, cv)
            elif n.op == "call_method":
                env[n] = self.call_method(n, n.target, args, kwargs, cv)
            else:
                raise ConversionError(f"{self.where(n)}: unsupported fx op")
        return output

    # modules
    def call_module(self, n, m, args, kwargs, cv):
        path = n.target
        if isinstance(m, nn.TransformerEncoderLayer):
            return self.encoder_layer(n, m, path, args, kwargs)
        if isinstance(m, nn.TransformerEncoder):
            return self.encoder(n, m, path, args, kwargs)
        if isinstance(m, nn.Embedding) and not _is_sym(args[0]):
            return self.embedding_of_constant(n, m, args[0])
        if isinstance(args[0], SdpaOut) and isinstance(m, nn.Linear):
            return self.sdpa_projection(n, m, path, args[0], cv)
        x = self.batched(args[0], n)
        if len(args) > 1 and not isinstance(m, nn.MultiheadAttention):
            raise ConversionError(f"{self.where(n)}: {type(m).__name__} called with {len(args)} arguments")
        return self.module(n, m, path, x, args, kwargs, cv)

    def module(self, n, m, path, x, args, kwargs, cv):
        w = self.where(n)
        if isinstance(m, (nn.Dropout, nn.Identity)) or type(m).__name__ in ("Dropout1d", "Dropout2d", "AlphaDropout"):
            return x
        simple = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu"}
        for cls, t in simple.items():
            if type(m) is cls:
                return self.out(t, [x.name], n, cv)
        if isinstance(m, nn.GELU):
            return self.out("gelu", [x.name], n, cv, approximate=m.approximate)
        if isinstance(m, nn.LeakyReLU):
            return self.out("leaky_relu", [x.name], n, cv, negative_slope=float(m.negative_slope))
        if isinstance(m, nn.Flatten):
            return self.reshape(n, x, cv)
        if isinstance(m, nn.Linear):
            name = self.module_node_name(path)
            params = self.bind_params(name, [("weight", m.weight), ("bias", m.bias)])
            f = {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
            if params:
                f["params"] = params
            return self.out("linear", [x.name], n, cv, name=name, **f)
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise ConversionError(f"{w}: Conv2d padding_mode '{m.padding_mode}' (only 'zeros')")
            pad = m.padding
            if isinstance(pad, str):
                if pad == "valid":
                    pad = (0, 0)
                else:  # 'same' (stride 1): symmetric padding where the kernel allows it
                    tot = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
                    if any(t % 2 for t in tot):
                        raise ConversionError(f"{w}: Conv2d padding='same' with an even kernel extent is asymmetric")
                    pad = tuple(t // 2 for t in tot)
            name = self.module_node_name(path)
            params = self.bind_params(name, [("weight", m.weight), ("bias", m.bias)])
            f = {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
                 "stride": list(m.stride), "padding": list(pad), "dilation": list(m.dilation), "groups": m.groups,
                 "bias": m.bias is not None}
            if params:
                f["params"] = params
            return self.out("conv2d", [x.name], n, cv, name=name, **f)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            if m.ceil_mode:
                raise ConversionError(f"{w}: {type(m).__name__} with ceil_mode=True")
            f = {"kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride if m.stride is not None else m.kernel_size),
                 "padding": _pair(m.padding)}
            if isinstance(m, nn.MaxPool2d):
                if _pair(m.dilation) != [1, 1] or m.return_indices:
                    raise ConversionError(f"{w}: MaxPool2d with dilation or return_indices")
                return self.out("maxpool2d", [x.name], n, cv, **f)
            if not m.count_include_pad or m.divisor_override is not None:
                raise ConversionError(f"{w}: AvgPool2d with count_include_pad=False or divisor_override")
            return self.out("avgpool2d", [x.name], n, cv, **f)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.adaptive_avg(n, x, m.output_size, cv)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not m.track_running_stats or m.running_mean is None:
                raise ConversionError(f"{w}: batch norm without running statistics")
            name = self.module_node_name(path)
            params = self.bind_params(name, [("weight", m.weight), ("bias", m.bias),
                                             ("running_mean", m.running_mean), ("running_var", m.running_var)])
            t = "batchnorm1d" if isinstance(m, nn.BatchNorm1d) else "batchnorm2d"
            f = {"num_features": m.num_features, "eps": float(m.eps), "affine": m.affine}
            if params:
                f["params"] = params
            return self.out(t, [x.name], n, cv, name=name, **f)
        if isinstance(m, nn.LayerNorm):
            name = self.module_node_name(path)
            params = self.bind_params(name, [("weight", m.weight), ("bias", m.bias)])
            f = {"normalized_shape": list(m.normalized_shape), "eps": float(m.eps),
                 "elementwise_affine": m.elementwise_affine, "bias": m.bias is not None}
            if params:
                f["params"] = params
            return self.out("layernorm", [x.name], n, cv, name=name, **f)
        if isinstance(m, nn.Embedding):
            self.check_embedding(w, m)
            name = self.module_node_name(path)
            params = self.bind_params(name, [("weight", m.weight)])
            f = {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim}
            if params:
                f["params"] = params
            return self.out("embedding", [x.name], n, cv, name=name, **f)
        if isinstance(m, nn.MultiheadAttention):
            return self.attention(n, m, path, args, kwargs)
        raise ConversionError(f"{w}: module {type(m).__name__} has no curvops node")

    @staticmethod
    def check_embedding(w, m):
        if m.padding_idx is not None or m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
            raise ConversionError(f"{w}: Embedding with padding_idx, max_norm, scale_grad_by_freq or sparse")

    def embedding_of_constant(self, n, m, ids):
        """`wpe(torch.arange(T))`: the first T rows of the table, the same for every sample."""
        w = self.where(n)
        self.check_embedding(w, m)
        if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or not torch.equal(ids.cpu(), torch.arange(ids.numel())):
            raise ConversionError(f"{w}: an Embedding of constant ids other than arange(T)")
        T = ids.numel()
        key = self.canon[id(m.weight)]
        name = self.shared_param(Param(m.weight, key), tuple(m.weight.shape), w)
        if T == m.num_embeddings:
            return Shared(name, m.weight.shape)
        sl = self.emit("slice", [name], self.unique(n.name), dim=0, start=0, end=T)
        return Shared(sl, (T, m.embedding_dim))

    def adaptive_avg(self, n, x, output_size, cv):
        osz = _pair(output_size)
        if osz != [1, 1]:
            if list(x.shape[-2:]) == osz:
                return x
            raise ConversionError(f"{self.where(n)}: AdaptiveAvgPool2d({output_size}) (only output size 1, or the input size)")
        c = x.shape[0]
        mean = self.emit("mean", [x.name], self.unique(n.name), dims=[1, 2])
        return self.out("reshape", [mean], n, cv, name=self.unique(n.name + ".keepdim"), shape=[c, 1, 1])

    def attention(self, n, m, path, args, kwargs, is_causal_hint=None):
        w = self.where(n)
        q = args[0]
        k = args[1] if len(args) > 1 else kwargs.get("key")
        v = args[2] if len(args) > 2 else kwargs.get("value")
        if not (q is k is v):
            raise ConversionError(f"{w}: MultiheadAttention with query, key and value that are not one tensor (only self-attention)")
        x = self.batched(q, n)
        if not m.batch_first:
            raise ConversionError(f"{w}: MultiheadAttention(batch_first=False) (use batch_first=True)")
        if not m._qkv_same_embed_dim or m.in_proj_bias is None or m.bias_k is not None or m.add_zero_attn:
            raise ConversionError(f"{w}: MultiheadAttention with kdim/vdim, bias=False, add_bias_kv or add_zero_attn")
        if m.training and m.dropout > 0:
            warnings.warn(f"{path}: attention dropout is ignored (evaluation mode)")
        names = ["key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal"]
        opt = dict(zip(names, args[3:]))
        opt.update({k2: v2 for k2, v2 in kwargs.items() if k2 in names})
        if opt.get("key_padding_mask") is not None:
            raise ConversionError(f"{w}: MultiheadAttention with key_padding_mask")
        T = x.shape[0]
        causal = False
        mask = opt.get("attn_mask")
        if mask is not None:
            if _is_sym(mask) or not isinstance(mask, torch.Tensor):
                raise ConversionError(f"{w}: an attention mask that depends on the input or parameters")
            hide = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
            if mask.dtype == torch.bool:
                ok = torch.equal(mask.cpu(), hide)
            else:
                mk = mask.cpu()
                ok = bool(torch.all(torch.isneginf(mk[hide]))) and bool(torch.all(mk[~hide] == 0))
            if not ok:
                raise ConversionError(f"{w}: attn_mask other than the causal mask triu(ones(T, T), 1)")
            causal = True
        elif opt.get("is_causal") or is_causal_hint:
            causal = True
        name = self.module_node_name(path)
        params = self.bind_params(name, [("in_proj_weight", m.in_proj_weight), ("in_proj_bias", m.in_proj_bias),
                                         ("out_proj.weight", m.out_proj.weight), ("out_proj.bias", m.out_proj.bias)])
        f = {"embed_dim": m.embed_dim, "num_heads": m.num_heads, "causal": causal}
        if params:
            f["params"] = params
        self.emit("multihead_attention", [x.name], name, **f)
        return AttentionOut(name, x.shape, w)

    def activation(self, n, act, x, cv_shape, base):
        if act is F.relu or isinstance(act, nn.ReLU):
            t, f = "relu", {}
        elif act is F.gelu:
            t, f = "gelu", {"approximate": "none"}
        elif isinstance(act, nn.GELU):
            t, f = "gelu", {"approximate": act.approximate}
        else:
            raise ConversionError(f"{self.where(n)}: TransformerEncoderLayer activation {act!r} (relu or gelu)")
        name = self.unique(base)
        self.emit(t, [x.name], name, **f)
        return Batched(name, cv_shape)

    def encoder_layer(self, n, m, path, args, kwargs, mask=None, is_causal=None):
        """nn.TransformerEncoderLayer written out as its nodes (PyTorch's forward)."""
        w = self.where(n)
        x = self.batched(args[0], n)
        if mask is None:
            mask = args[1] if len(args) > 1 else kwargs.get("src_mask")
        kpm = args[2] if len(args) > 2 else kwargs.get("src_key_padding_mask")
        if is_causal is None:
            is_causal = args[3] if len(args) > 3 else kwargs.get("is_causal", False)
        if kpm is not None:
            raise ConversionError(f"{w}: TransformerEncoderLayer with src_key_padding_mask")
        if not m.self_attn.batch_first:
            raise ConversionError(f"{w}: TransformerEncoderLayer(batch_first=False) (use batch_first=True)")
        shape = x.shape

        def add(a, b, tag):
            name = self.unique(f"{path}.{tag}")
            self.emit("add", [a.name, b.name], name)
            return Batched(name, shape)

        def norm(mod, sub, h):
            name = self.module_node_name(f"{path}.{sub}")
            params = self.bind_params(name, [("weight", mod.weight), ("bias", mod.bias)])
            f = {"normalized_shape": list(mod.normalized_shape), "eps": float(mod.eps),
                 "elementwise_affine": mod.elementwise_affine, "bias": mod.bias is not None}
            if params:
                f["params"] = params
            self.emit("layernorm", [h.name], name, **f)
            return Batched(name, shape)

        def lin(mod, sub, h, out_shape):
            name = self.module_node_name(f"{path}.{sub}")
            params = self.bind_params(name, [("weight", mod.weight), ("bias", mod.bias)])
            f = {"in_features": mod.in_features, "out_features": mod.out_features, "bias": mod.bias is not None}
            if params:
                f["params"] = params
            self.emit("linear", [h.name], name, **f)
            return Batched(name, out_shape)

        def sa(h):
            a = self.attention(n, m.self_attn, f"{path}.self_attn", (h, h, h), {"attn_mask": mask}, is_causal_hint=is_causal)
            return Batched(a.name, shape)

        def ff(h):
            hid = lin(m.linear1, "linear1", h, shape[:-1] + (m.linear1.out_features,))
            act = self.activation(n, m.activation, hid, hid.shape, f"{path}.activation")
            return lin(m.linear2, "linear2", act, shape)

        if m.norm_first:
            x = add(x, sa(norm(m.norm1, "norm1", x)), "add_sa")
            x = add(x, ff(norm(m.norm2, "norm2", x)), "add_ff")
        else:
            x = norm(m.norm1, "norm1", add(x, sa(x), "add_sa"))
            x = norm(m.norm2, "norm2", add(x, ff(x), "add_ff"))
        return x

    def encoder(self, n, m, path, args, kwargs):
        mask = args[1] if len(args) > 1 else kwargs.get("mask")
        kpm = args[2] if len(args) > 2 else kwargs.get("src_key_padding_mask")
        is_causal = args[3] if len(args) > 3 else kwargs.get("is_causal")
        if kpm is not None:
            raise ConversionError(f"{self.where(n)}: TransformerEncoder with src_key_padding_mask")
        x = args[0]
        for i, layer in enumerate(m.layers):
            x = self.encoder_layer(n, layer, f"{path}.layers.{i}", (x,), {}, mask=mask, is_causal=is_causal)
        if m.norm is not None:
            x = self.module(n, m.norm, f"{path}.norm", x, (x,), {}, _Shape(x.shape))
        return x

    # functions
    def call_function(self, n, fn, args, kwargs, cv):
        w = self.where(n)
        if fn in (operator.add, operator.iadd, torch.add):
            if kwargs.get("alpha", 1) != 1:
                raise ConversionError(f"{w}: add with alpha")
            return self.add(n, list(args[:2]), cv)
        if fn is operator.getitem:
            return self.getitem(n, args[0], args[1], cv)
        if fn in (torch.cat, torch.concat):
            xs = args[0] if args else kwargs["tensors"]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            return self.concat(n, xs, dim, cv)
        if fn in (torch.flatten, torch.reshape):
            return self.reshape(n, self.batched(args[0], n), cv)
        if isinstance(args[0] if args else None, SdpaOut) and fn in (torch.flatten, torch.reshape, torch.permute,
                                                                      torch.transpose):
            return args[0]  # heads merged again: checked where the projection reads it
        if fn in (torch.permute,):
            return self.permute(n, self.batched(args[0], n), list(args[1] if len(args) > 1 else kwargs["dims"]), cv)
        if fn in (torch.transpose,):
            return self.transpose(n, self.batched(args[0], n), args[1], args[2], cv)
        if fn is torch.mean:
            return self.mean(n, self.batched(args[0], n), args[1:], kwargs, cv)
        unary = {F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid",
                 F.sigmoid: "sigmoid", F.silu: "silu"}
        if fn in unary:
            if kwargs.get("inplace") or (len(args) > 1 and args[1] is True):
                pass  # in place on a traced value: the same value
            return self.out(unary[fn], [self.batched(args[0], n).name], n, cv)
        if fn is F.gelu:
            return self.out("gelu", [self.batched(args[0], n).name], n, cv, approximate=kwargs.get("approximate", "none"))
        if fn is F.leaky_relu:
            slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
            return self.out("leaky_relu", [self.batched(args[0], n).name], n, cv, negative_slope=float(slope))
        if fn is F.dropout:
            if isinstance(args[0], SdpaOut):
                return args[0]
            return self.batched(args[0], n)
        if fn is F.scaled_dot_product_attention:
            return self.sdpa(n, args, kwargs)
        if fn in (torch.split, torch.chunk, torch.unbind):
            return self.split(n, {torch.split: "split", torch.chunk: "chunk", torch.unbind: "unbind"}[fn], args, kwargs, cv)
        if fn is F.layer_norm:
            return self.functional_layer_norm(n, args, kwargs, cv)
        if fn is F.linear:
            return self.functional_linear(n, args, kwargs, cv)
        if fn is F.adaptive_avg_pool2d:
            return self.adaptive_avg(n, self.batched(args[0], n), args[1] if len(args) > 1 else kwargs["output_size"], cv)
        if fn is getattr:
            v = args[0]
            if args[1] in ("shape", "device", "dtype", "ndim", "is_cuda", "requires_grad"):
                return cv
            raise ConversionError(f"{w}: attribute '{args[1]}' of a traced value {type(v).__name__}")
        raise ConversionError(f"{w}: function {_target_name(fn)} has no curvops node")

    def call_method(self, n, name, args, kwargs, cv):
        w = self.where(n)
        x = args[0]
        if name in ("size", "dim", "numel"):
            return cv
        if isinstance(x, Param) and name == "expand":
            return self.param_expand(n, x, cv)
        if isinstance(x, SdpaOut) and name in ("transpose", "permute", "contiguous", "view", "reshape", "flatten"):
            return x  # heads merged again: checked where the projection reads it
        if name in ("split", "chunk", "unbind"):
            return self.split(n, name, args, kwargs, cv)
        x = self.batched(x, n)
        if name in ("view", "reshape", "flatten", "unsqueeze", "squeeze", "view_as", "reshape_as"):
            return self.reshape(n, x, cv)
        if name in ("contiguous", "clone"):
            return x
        if name in ("float", "double", "to", "type"):
            if isinstance(cv, torch.Tensor) and cv.shape[1:] == x.shape:
                return x
            raise ConversionError(f"{w}: method '{name}' changes more than the dtype")
        if name == "permute":
            dims = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
            return self.permute(n, x, dims, cv)
        if name == "transpose":
            return self.transpose(n, x, args[1], args[2], cv)
        if name == "mean":
            return self.mean(n, x, args[1:], kwargs, cv)
        if name in ("relu", "tanh", "sigmoid"):
            return self.out(name, [x.name], n, cv)
        if name in ("add", "__add__"):
            return self.add(n, [x, args[1]], cv)
        raise ConversionError(f"{w}: method '{name}' has no curvops node")

    # nanoGPT-style attention ----------------------------------------------------------------------
    SHAPE_METHODS = ("view", "reshape", "transpose", "permute", "contiguous", "split", "chunk", "unbind", "flatten",
                     "unflatten")

    def _shape_only(self, node):
        if node.op == "call_method":
            return node.target in self.SHAPE_METHODS
        if node.op == "call_function":
            return node.target in (operator.getitem, torch.split, torch.chunk, torch.unbind, torch.transpose,
                                   torch.permute, torch.reshape, torch.flatten)
        return False

    def _source_linear(self, node):
        """The `nn.Linear` call whose output `node` is a view of (through shape operations only)."""
        while isinstance(node, torch.fx.Node) and self._shape_only(node):
            node = node.args[0]
        if isinstance(node, torch.fx.Node) and node.op == "call_module" and isinstance(
                self.model.get_submodule(node.target), nn.Linear):
            return node
        if isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is F.linear:
            return node
        return None

    def sdpa(self, n, args, kwargs):
        """`F.scaled_dot_product_attention(q, k, v)` with q, k, v the heads of one linear map
        `[T, 3E] -> 3 × [H, T, E/H]` (checked on the example input): half of a
        `multihead_attention` node, completed by the projection that merges the heads."""
        w = self.where(n)
        names = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale"]
        opt = _bound(names, args, kwargs)
        if opt.get("enable_gqa"):
            raise ConversionError(f"{w}: scaled_dot_product_attention with enable_gqa")
        qkv_nodes = [n.args[i] if i < len(n.args) else n.kwargs.get(names[i]) for i in range(3)]
        srcs = [self._source_linear(a) for a in qkv_nodes]
        if srcs[0] is None or not all(s is srcs[0] for s in srcs):
            raise ConversionError(f"{w}: scaled_dot_product_attention whose query, key and value are not split "
                                  f"from one linear map of the same input (nanoGPT's c_attn)")
        lin = srcs[0]
        if lin.op != "call_module":
            raise ConversionError(f"{w}: scaled_dot_product_attention on a functional F.linear (use an nn.Linear)")
        m = self.model.get_submodule(lin.target)
        q = qkv_nodes[0].meta["cv"]
        if q.ndim != 4:
            raise ConversionError(f"{w}: scaled_dot_product_attention on [N, H, T, hd] inputs only, got {list(q.shape)}")
        B, H, T, hd = q.shape
        E = H * hd
        if m.in_features != E or m.out_features != 3 * E:
            raise ConversionError(f"{w}: the linear map '{lin.target}' of query, key and value is "
                                  f"{m.in_features} -> {m.out_features}, expected {E} -> {3 * E}")
        y = lin.meta["cv"]
        for i, a in enumerate(qkv_nodes):
            want = y[..., i * E:(i + 1) * E].reshape(B, T, H, hd).transpose(1, 2)
            if not torch.equal(a.meta["cv"], want):
                raise ConversionError(f"{w}: its {names[i]} is not part {i} of '{lin.target}''s output split into "
                                      f"{H} heads as nn.MultiheadAttention does ([q; k; v], heads contiguous)")
        if m.bias is None:
            raise ConversionError(f"{w}: attention on '{lin.target}' without a bias (multihead_attention has in_proj_bias)")
        scale = opt.get("scale")
        if scale is not None and abs(scale * hd ** 0.5 - 1) > 1e-12:
            raise ConversionError(f"{w}: scaled_dot_product_attention with scale {scale} (only 1/sqrt(head_dim))")
        mask = opt.get("attn_mask")
        causal = bool(opt.get("is_causal", False))
        if mask is not None:
            hide = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
            ok = isinstance(mask, torch.Tensor) and not _is_sym(mask) and mask.shape[-2:] == (T, T)
            if ok:
                mk = mask.cpu().reshape(-1, T, T)
                ok = all(torch.equal(mm, ~hide) for mm in mk) if mask.dtype == torch.bool else all(
                    bool(torch.all(torch.isneginf(mm[hide]))) and bool(torch.all(mm[~hide] == 0)) for mm in mk)
            if not ok:
                raise ConversionError(f"{w}: attn_mask other than the causal mask")
            causal = True
        x = self.batched(self.env[lin.args[0]], n)
        return SdpaOut(m, x, H, causal, w, n.meta["cv"])

    def sdpa_projection(self, n, m, path, a, cv):
        """The output projection of nanoGPT's attention: with the heads' linear map, one
        `multihead_attention` node (in_proj = the heads' linear map, out_proj = this one)."""
        w = self.where(n)
        o = a.cv  # [N, H, T, hd]
        B, H, T, hd = o.shape
        E = H * hd
        xin = n.args[0].meta["cv"]
        if m.in_features != E or m.out_features != E or not torch.equal(xin, o.transpose(1, 2).reshape(B, T, E)):
            raise ConversionError(f"{w}: reads the output of {a.where} other than with its heads merged "
                                  f"(transpose(1, 2), view [T, E]) into an nn.Linear({E}, {E})")
        if m.bias is None:
            raise ConversionError(f"{w}: attention output projection without a bias (multihead_attention has out_proj.bias)")
        name = self.module_node_name(path.rsplit(".", 1)[0] if "." in path else path + ".attn")
        params = self.bind_params(name, [("in_proj_weight", a.qkv.weight), ("in_proj_bias", a.qkv.bias),
                                         ("out_proj.weight", m.weight), ("out_proj.bias", m.bias)])
        f = {"embed_dim": E, "num_heads": H, "causal": a.causal}
        if params:
            f["params"] = params
        return self.out("multihead_attention", [a.x.name], n, cv, name=name, **f)

    def split(self, n, how, args, kwargs, cv):
        """`split`/`chunk`/`unbind` along a per-sample axis: one `slice` (or `select`) per part."""
        w = self.where(n)
        x = self.batched(args[0], n)
        r = len(x.shape) + 1
        if how == "unbind":
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        else:
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        d = dim % r
        if d == 0:
            raise ConversionError(f"{w}: {how} along the batch axis")
        parts = []
        start = 0
        for i, t in enumerate(cv):
            size = t.shape[d] if how != "unbind" else 1
            nm = self.unique(f"{n.name}.{i}")
            if how == "unbind":
                self.emit("select", [x.name], nm, dim=d - 1, index=i)
            else:
                self.emit("slice", [x.name], nm, dim=d - 1, start=start, end=start + size)
            start += size
            parts.append(Batched(nm, t.shape[1:]))
        return tuple(parts)

    def functional_layer_norm(self, n, args, kwargs, cv):
        """`F.layer_norm(x, shape, weight, bias, eps)` with the model's parameters (nanoGPT's
        LayerNorm module): a `layernorm` node named after the weight's module."""
        w = self.where(n)
        x = self.batched(args[0], n)
        opt = _bound(["input", "normalized_shape", "weight", "bias", "eps"], args, kwargs)
        wt, b = opt.get("weight"), opt.get("bias")
        for role, v in (("weight", wt), ("bias", b)):
            if v is not None and not isinstance(v, Param):
                raise ConversionError(f"{w}: F.layer_norm with a {role} that is not a parameter of the model")
        if wt is None and b is not None:
            raise ConversionError(f"{w}: F.layer_norm with a bias but no weight")
        name = self.module_node_name(_module_of(wt, n.name))
        params = self.bind_params(name, [("weight", wt.tensor if wt else None), ("bias", b.tensor if b else None)])
        f = {"normalized_shape": list(opt["normalized_shape"]), "eps": float(opt.get("eps", 1e-5)),
             "elementwise_affine": wt is not None, "bias": b is not None}
        if params:
            f["params"] = params
        return self.out("layernorm", [x.name], n, cv, name=name, **f)

    def functional_linear(self, n, args, kwargs, cv):
        """`F.linear(x, weight, bias)` with the model's parameters: a `linear` node."""
        w = self.where(n)
        x = self.batched(args[0], n)
        opt = _bound(["input", "weight", "bias"], args, kwargs)
        wt, b = opt.get("weight"), opt.get("bias")
        if not isinstance(wt, Param) or (b is not None and not isinstance(b, Param)):
            raise ConversionError(f"{w}: F.linear with a weight or bias that is not a parameter of the model")
        name = self.module_node_name(_module_of(wt, n.name))
        params = self.bind_params(name, [("weight", wt.tensor), ("bias", b.tensor if b else None)])
        out_f, in_f = wt.tensor.shape
        f = {"in_features": int(in_f), "out_features": int(out_f), "bias": b is not None}
        if params:
            f["params"] = params
        return self.out("linear", [x.name], n, cv, name=name, **f)

    def prune(self, out_name):
        """Drops the nodes the output does not depend on (e.g. the slices that attention fused)
        and the weights only they read."""
        by = {d["name"]: d for d in self.nodes}
        live, stack = set(), [out_name]
        while stack:
            nm = stack.pop()
            if nm in live or nm not in by:
                continue
            live.add(nm)
            stack.extend(by[nm].get("inputs", []))
        self.nodes = [d for d in self.nodes if d["name"] in live]
        keep = {k for nm in live for k in self.node_keys.get(nm, [])}
        self.weights = {k: t for k, t in self.weights.items() if k in keep}

    # shape ops
    def reshape(self, n, x, cv):
        shape = list(cv.shape[1:])
        if tuple(shape) == x.shape:
            return x
        return self.out("reshape", [x.name], n, cv, shape=shape)

    def permute(self, n, x, dims, cv):
        r = len(x.shape) + 1
        dims = [d % r for d in dims]
        if dims[0] != 0:
            raise ConversionError(f"{self.where(n)}: a permutation that moves the batch axis")
        per = [d - 1 for d in dims[1:]]
        if per == list(range(len(per))):
            return x
        return self.out("permute", [x.name], n, cv, dims=per)

    def transpose(self, n, x, a, b, cv):
        r = len(x.shape) + 1
        dims = list(range(r))
        a, b = a % r, b % r
        dims[a], dims[b] = dims[b], dims[a]
        return self.permute(n, x, dims, cv)

    def mean(self, n, x, args, kwargs, cv):
        dim = args[0] if args else kwargs.get("dim")
        keep = args[1] if len(args) > 1 else kwargs.get("keepdim", False)
        r = len(x.shape) + 1
        if dim is None:
            raise ConversionError(f"{self.where(n)}: a mean over all axes, the batch axis included")
        dims = sorted(d % r for d in (dim if isinstance(dim, (list, tuple)) else [dim]))
        if 0 in dims:
            raise ConversionError(f"{self.where(n)}: a mean over the batch axis")
        name = self.unique(n.name)
        self.emit("mean", [x.name], name, dims=[d - 1 for d in dims])
        if keep:
            return self.out("reshape", [name], n, cv, name=self.unique(n.name + ".keepdim"), shape=list(cv.shape[1:]))
        return Batched(name, cv.shape[1:])

    def getitem(self, n, x, idx, cv):
        if isinstance(x, AttentionOut):
            if idx == 0:
                return Batched(x.name, x.shape)
            return Unsupported(f"the attention weights of '{x.name}' (curvops' attention returns no weights)")
        if isinstance(x, (list, tuple)):
            return x[idx]
        idx = idx if isinstance(idx, tuple) else (idx,)
        if isinstance(x, Param):
            # `wpe[:T]`: a parameter indexed directly (no batch axis), the same for every sample
            t = x.tensor
            x = Shared(self.shared_param(x, tuple(t.shape), self.where(n)), t.shape)
            items, kind = idx, Shared
        else:
            x = self.batched(x, n)
            if not idx or idx[0] != slice(None):
                raise ConversionError(f"{self.where(n)}: indexing along the batch axis")
            items, kind = idx[1:], Batched
        cur, dim = x, 0
        shape = list(x.shape)
        for it in items:
            if it is Ellipsis:
                raise ConversionError(f"{self.where(n)}: indexing with '...'")
            if isinstance(it, int):
                size = shape[dim]
                if not -size <= it < size:
                    raise ConversionError(f"{self.where(n)}: index {it} out of range {size}")
                name = self.unique(n.name)
                self.emit("select", [cur.name], name, dim=dim, index=it % size)
                shape.pop(dim)
                cur = kind(name, list(shape))
            elif isinstance(it, slice):
                size = shape[dim]
                start, stop, step = it.indices(size)
                if step != 1:
                    raise ConversionError(f"{self.where(n)}: a slice with a step")
                if (start, stop) != (0, size):
                    name = self.unique(n.name)
                    self.emit("slice", [cur.name], name, dim=dim, start=start, end=stop)
                    shape[dim] = stop - start
                    cur = kind(name, list(shape))
                dim += 1
            else:
                raise ConversionError(f"{self.where(n)}: indexing with {type(it).__name__}")
        return cur

    def add(self, n, xs, cv):
        if len(xs) != 2 or not all(_is_sym(v) for v in xs):
            raise ConversionError(f"{self.where(n)}: adding a constant (only sums of traced tensors and parameters map to 'add')")
        batched = [v for v in xs if isinstance(v, Batched)]
        if not batched:
            raise ConversionError(f"{self.where(n)}: a sum of parameters only")
        shape = batched[0].shape
        names = []
        for v in xs:
            if isinstance(v, Param):
                t = v.tensor
                ps = tuple(t.shape[1:]) if t.ndim == len(shape) + 1 else tuple(t.shape)
                names.append(self.shared_param(v, ps, self.where(n)))
            elif isinstance(v, (Batched, Shared)):
                names.append(v.name)
            else:
                self.batched(v, n)
        return self.out("add", names, n, cv)

    def param_expand(self, n, p, cv):
        """`token.expand(N, -1, -1)`: the parameter without its leading axis of 1, per sample."""
        t = p.tensor
        if t.shape[0] != 1:
            raise ConversionError(f"{self.where(n)}: expand of a parameter whose first axis is not 1")
        return Shared(self.shared_param(p, t.shape[1:], self.where(n)), t.shape[1:])

    def concat(self, n, xs, dim, cv):
        batched = [v for v in xs if isinstance(v, Batched)]
        if not batched:
            raise ConversionError(f"{self.where(n)}: concatenation of constants only")
        r = len(batched[0].shape) + 1
        d = dim % r
        if d == 0:
            raise ConversionError(f"{self.where(n)}: concatenation along the batch axis")
        names = []
        for v in xs:
            if isinstance(v, Param):
                names.append(self.shared_param(v, v.tensor.shape[1:] if v.tensor.ndim == r else v.tensor.shape, self.where(n)))
            elif isinstance(v, (Batched, Shared)):
                names.append(v.name)
            else:
                raise ConversionError(f"{self.where(n)}: concatenation with a constant")
        return self.out("concat", names, n, cv, dim=d - 1)


def _bound(names, args, kwargs):
    """A call's arguments by name: positional `args` matched to `names`, then `kwargs`."""
    opt = dict(zip(names, args))
    opt.update(kwargs)
    return opt


def _module_of(weight, fallback):
    """The node name for a functional call on `weight`: its module's path (the key without
    `.weight`), so that the node's default keys are the parameters' own."""
    if weight is not None and weight.key.endswith(".weight"):
        return weight.key[:-len(".weight")]
    return fallback


class _Shape:
    """Stands in for a concrete value where only `.shape[1:]` is read (expanded modules)."""

    def __init__(self, per_sample):
        self.shape = (None,) + tuple(per_sample)


def _pair(v):
    if isinstance(v, int):
        return [v, v]
    return [int(a) for a in v]


LOSSES = {}
if torch is not None:
    LOSSES = {nn.CrossEntropyLoss: "cross_entropy", nn.MSELoss: "mse", nn.BCEWithLogitsLoss: "bce_with_logits"}


def loss_spec(loss_fn):
    """The spec's `loss` entry for a PyTorch loss module."""
    kind = LOSSES.get(type(loss_fn))
    if kind is None:
        raise ConversionError(f"loss: {type(loss_fn).__name__} (nn.CrossEntropyLoss, nn.MSELoss or nn.BCEWithLogitsLoss)")
    if loss_fn.reduction not in ("mean", "sum"):
        raise ConversionError(f"loss: reduction '{loss_fn.reduction}' (mean or sum)")
    if kind == "cross_entropy":
        if loss_fn.weight is not None or loss_fn.label_smoothing != 0.0:
            raise ConversionError("loss: CrossEntropyLoss with class weights or label smoothing")
    if kind == "bce_with_logits" and (loss_fn.weight is not None or loss_fn.pos_weight is not None):
        raise ConversionError("loss: BCEWithLogitsLoss with weight or pos_weight")
    return {"type": kind, "reduction": loss_fn.reduction}


class Converted:
    """A PyTorch model as a curvops graph model.

    Attributes:
        spec: the model.json content (a dict), without `param_order`.
        weights: key -> tensor (parameters under their canonical key, buffers under theirs).
        keys: id(parameter) -> its canonical key (its first name in `named_parameters()`).
        dtype: the parameters' dtype (`torch.float32` or `torch.float64`).
        input_int: whether the model reads integer token ids.
    """

    def __init__(self, spec, weights, keys, dtype, input_int, class_axis_moved):
        self.spec, self.weights, self.keys, self.dtype = spec, weights, keys, dtype
        self.input_int = input_int
        self.class_axis_moved = class_axis_moved

    @property
    def param_keys(self):
        """The parameters of the graph in its default flat order."""
        seen, out = set(), []
        for k in self.keys.values():
            if k in self.weights and k not in seen:
                seen.add(k)
                out.append(k)
        return out


def convert(model, loss_fn, example_input):
    """Converts `model` (an `nn.Module`) and `loss_fn` into a :class:`Converted` graph model."""
    if torch is None:
        raise ImportError("curvops.from_torch needs PyTorch (pip install torch)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        example_input = torch.as_tensor(np.asarray(example_input))
    loss = loss_spec(loss_fn)
    if model.training and any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in model.modules()):
        warnings.warn("curvops: the model is in training mode; batch norm and dropout are used in evaluation mode "
                      "(call model.eval() to silence this)")
    was_training = model.training
    model.eval()
    try:
        tracer = _ConcreteTracer([example_input])
        try:
            graph = tracer.trace(model)
        except ConversionError:
            raise
        except Exception as e:  # noqa: BLE001 - the tracer's own error, with its message
            raise ConversionError(f"torch.fx could not trace the model: {type(e).__name__}: {e}") from e
        conv = _Converter(model)
        out = conv.run(graph)
    finally:
        model.train(was_training)
    out = conv.batched(out, _Fake("output"), what="output") if not isinstance(out, Batched) else out
    moved = False
    if loss["type"] == "cross_entropy" and len(out.shape) > 1:
        # nn.CrossEntropyLoss reads classes on axis 1: curvops wants them last
        r = len(out.shape)
        name = conv.unique("class_axis_last")
        conv.emit("permute", [out.name], name, dims=list(range(1, r)) + [0])
        moved = True
    if conv.nodes and conv.nodes[-1]["name"] != (name if moved else out.name):
        # the output must be the last node: move it (and its inputs stay earlier)
        last = next(i for i, d in enumerate(conv.nodes) if d["name"] == (name if moved else out.name))
        conv.nodes.append(conv.nodes.pop(last))
    if not conv.nodes:
        raise ConversionError("the model has no operation curvops can map (it returns its input)")
    conv.prune(conv.nodes[-1]["name"])
    input_int = not example_input.is_floating_point()
    spec = {
        "inputs": {"x": {"shape": list(example_input.shape[1:]), "dtype": "int" if input_int else "float"}},
        "nodes": conv.nodes,
        "loss": loss,
    }
    floats = {t.dtype for t in conv.weights.values() if t.is_floating_point()}
    if len(floats) > 1:
        raise ConversionError(f"parameters of several dtypes {sorted(str(f) for f in floats)}")
    dtype = floats.pop() if floats else torch.get_default_dtype()
    if dtype not in (torch.float32, torch.float64):
        raise ConversionError(f"parameters of dtype {dtype} (float32 or float64)")
    return Converted(spec, conv.weights, conv.canon, dtype, input_int, moved)


class _Fake:
    def __init__(self, name):
        self.name, self.op, self.target = name, "output", "output"

