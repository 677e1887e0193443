"""A converted model bound to data and a parameter list: the Python side of `_curvops.Problem`."""
import json

import numpy as np

from . import _curvops
from ._convert import ConversionError, convert
from ._operator import LinearOperator

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


def _np(a, dtype=None):
    if torch is not None and isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    return np.ascontiguousarray(a)


def _is_array(a):
    return isinstance(a, np.ndarray) or (torch is not None and isinstance(a, torch.Tensor))


def collect_data(data):
    """`(X, y)` from tensors or arrays, or from any iterable of `(X, y)` batches (a DataLoader).
    Returns `(X, y, first_batch_size)`."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and _is_array(data[0]) and _is_array(data[1]):
        X, y = data
        return X, y, None
    xs, ys, first = [], [], None
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"data: expected (X, y) or an iterable of (X, y) batches, got {type(data).__name__}") from None
    for i, batch in enumerate(it):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"data: batch {i} is not an (X, y) pair")
        X, y = batch
        if isinstance(X, dict) or isinstance(y, dict):
            raise TypeError(f"data: batch {i} holds a dict (curvops reads tensors)")
        xs.append(X if _is_array(X) else np.asarray(X))
        ys.append(y if _is_array(y) else np.asarray(y))
        if first is None:
            first = len(X)
    if not xs:
        raise ValueError("data: no batches")
    if torch is not None and all(isinstance(x, torch.Tensor) for x in xs):
        return torch.cat([x.detach().cpu() for x in xs]), torch.cat([y.detach().cpu() for y in ys]), first
    return np.concatenate([_np(x) for x in xs]), np.concatenate([_np(y) for y in ys]), first


def _params_list(params, converted):
    """The caller's parameters as canonical keys, in the caller's order."""
    if params is None:
        return None
    if isinstance(params, dict):
        params = list(params.values())
    keys = []
    for i, p in enumerate(params):
        k = converted.keys.get(id(p))
        if k is None:
            raise ValueError(f"params: entry {i} (shape {list(getattr(p, 'shape', []))}) is not a parameter of the model")
        if k not in converted.weights:
            raise ValueError(f"params: '{k}' is not used by the model's forward pass")
        if k in keys:
            raise ValueError(f"params: '{k}' is given twice")
        keys.append(k)
    return keys


class Problem:
    """A PyTorch model, its loss, data and the parameters to differentiate, in curvops.

    `Problem(model, loss_fn, data, params=None, example_input=None)` converts `model` with
    :func:`curvops.from_torch` (unless `model` is already converted), reads the data once
    (tensors, arrays, or any iterable of `(X, y)` batches), and reads the parameters' values now:
    a model that changes later needs a new `Problem`. Every operator's coordinates follow the
    order of `params` (all of the model's parameters, in `named_parameters()` order, when None).
    """

    def __init__(self, model, loss_fn, data, params=None, example_input=None, batch_size=None):
        X, y, first = collect_data(data)
        if hasattr(model, "spec") and hasattr(model, "weights"):
            conv = model
        else:
            ex = example_input if example_input is not None else X[:1]
            if torch is not None and not isinstance(ex, torch.Tensor):
                ex = torch.as_tensor(np.asarray(ex))
            conv = convert(model, loss_fn, ex)
        self.converted = conv
        self.batch_size = int(batch_size or first or 0)
        keys = _params_list(params, conv)
        all_keys = conv.param_keys
        order = (keys or []) + [k for k in all_keys if k not in (keys or [])]
        if keys is None:
            order = [conv.keys[id(p)] for p in _named_params(model, conv)]
            order += [k for k in all_keys if k not in order]
        self.param_keys = keys if keys is not None else order
        self._all = keys is None or len(keys) == len(all_keys)
        spec = dict(conv.spec)
        spec["param_order"] = order
        self.model_json = json.dumps(spec)
        npdt = np.float32 if conv.dtype == torch.float32 else np.float64
        self.np_dtype = npdt
        weights = {k: _np(t, npdt if t.is_floating_point() else None) for k, t in conv.weights.items()}
        Xn = _np(X, np.int64 if conv.input_int else npdt)
        yn = _np(y)
        if yn.dtype.kind in "iu":
            yn = yn.astype(np.int64)
        else:
            yn = yn.astype(npdt)
            if conv.class_axis_moved and yn.ndim > 2:  # soft labels [N, C, T] -> [N, T, C]
                yn = np.ascontiguousarray(np.moveaxis(yn, 1, -1))
        self._raw = _curvops.Problem(self.model_json, weights, Xn, yn, "float32" if npdt is np.float32 else "float64")
        self.torch_dtype = conv.dtype

    # -- facts -------------------------------------------------------------------------------
    @property
    def num_data(self):
        return self._raw.n

    @property
    def dim(self):
        """Parameters differentiated (the operators' size)."""
        return sum(int(np.prod(s)) for k, s, _ in self._raw.param_order() if k in self.param_keys)

    def _params_arg(self):
        return None if self._all else list(self.param_keys)

    # -- operators ---------------------------------------------------------------------------
    def operator(self, kind, **kw):
        """An operator of the library: `kind` is hessian, ggn, ef, fisher-mc, jacobian,
        jacobian-t, kfac or ekfac; keywords as `_curvops.Problem.operator` (blocks, subset,
        damping, samples, seed, fisher_type, kfac_approx, joint_bias, damping_mode, cache_bytes)."""
        kw.setdefault("batch_size", self.batch_size)
        raw = self._raw.operator(kind, params=self._params_arg(), **kw)
        return LinearOperator(raw, self.torch_dtype)

    def hessian(self, **kw):
        return self.operator("hessian", **kw)

    def ggn(self, **kw):
        return self.operator("ggn", **kw)

    def ef(self, **kw):
        return self.operator("ef", **kw)

    def fisher_mc(self, mc_samples=1, seed=0, **kw):
        return self.operator("fisher-mc", samples=mc_samples, seed=seed, **kw)

    def jacobian(self, **kw):
        return self.operator("jacobian", **kw)

    def kfac(self, fisher_type="type-2", kfac_approx="expand", mc_samples=1, seed=0, **kw):
        return self.operator("kfac", fisher_type=fisher_type, kfac_approx=kfac_approx, samples=mc_samples, seed=seed, **kw)

    def ekfac(self, fisher_type="type-2", kfac_approx="expand", mc_samples=1, seed=0, **kw):
        return self.operator("ekfac", fisher_type=fisher_type, kfac_approx=kfac_approx, samples=mc_samples, seed=seed, **kw)

    # -- other quantities --------------------------------------------------------------------
    def loss_and_grad(self):
        """`(L, ∇L)` over the data (numpy), in the order of `params`."""
        return self._raw.loss_and_grad(params=self._params_arg(), batch_size=self.batch_size)

    def per_sample_grads(self):
        """`[N, D]`: the gradient of each sample's loss (summed over its outputs)."""
        return self._raw.per_sample_grads(params=self._params_arg(), batch_size=self.batch_size)

    def diag(self, kind="ggn", mc_samples=1, seed=0):
        """The exact diagonal of `kind` (ggn, fisher-mc, ef, hessian)."""
        return self._raw.diag(kind, params=self._params_arg(), batch_size=self.batch_size, samples=mc_samples, seed=seed)

    def vivit(self, k=10, blocks=None, mc_samples=None, seed=0, subsample=None):
        """ViViT: the top-`k` GGN eigenpairs from the Gram matrix of its low-rank factor.

        Returns `(values [K], vectors [D, K], groups)`; `blocks` is None (the whole GGN),
        "layer" or "param" (eigenpairs of each diagonal block, `groups` names each pair's block);
        `mc_samples` uses the MC-Fisher factor (M sampled labels per sample) instead of the exact
        one, `subsample` a random subset of that many samples. Vectors follow `params`' order."""
        vals, vecs, groups, _ = self._raw.vivit(k, params=self._params_arg(), blocks=blocks, mc_samples=mc_samples,
                                                seed=seed, subsample=subsample, batch_size=self.batch_size)
        return vals, np.ascontiguousarray(vecs.T), groups

    def outputs(self, x=None):
        """The network's outputs for `x` (numpy, `[N, *output_shape]`; the data when None)."""
        if x is not None:
            x = _np(x, np.int64 if self.converted.input_int else self.np_dtype)
        out = self._raw.outputs(x, batch_size=self.batch_size)
        if self.converted.class_axis_moved:  # back to the module's layout [N, C, T...]
            out = np.ascontiguousarray(np.moveaxis(out, -1, 1))
        return out


def _named_params(model, conv):
    if hasattr(model, "named_parameters"):
        return [p for _, p in model.named_parameters() if conv.keys.get(id(p)) in conv.weights]
    return []


def from_torch(model, loss_fn, example_input):
    """Converts an `nn.Module` and its loss into curvops' graph model (see `curvops._convert`).

    Returns a `Converted` object (its `.spec` is the model.json content); pass it to
    :class:`Problem` with data to get operators."""
    if torch is not None and not isinstance(example_input, torch.Tensor):
        example_input = torch.as_tensor(np.asarray(example_input))
    return convert(model, loss_fn, example_input)


__all__ = ["Problem", "from_torch", "collect_data", "ConversionError"]
