"""A drop-in for curvlinops 3.0.1: the same class names and constructor signatures.

    # from curvlinops import GGNLinearOperator, KFACLinearOperator
    from curvops.curvlinops import GGNLinearOperator, KFACLinearOperator

`model_func` must be an `nn.Module` (curvops converts it with `torch.fx`); `params` is a list of
its parameters (or a dict name -> parameter, as in curvlinops' development version) and fixes the
coordinates' order; `data` is any iterable of `(X, y)` batches. Parameters and data are read when
the operator is made: a changed model needs a new operator. `@` takes a tensor `[D]`/`[D, K]`
(or numpy), or curvlinops' tensor-list format, and returns the same form. Monte-Carlo operators
draw their labels from curvops' own keyed generator (`seed`), so they agree with curvlinops in
distribution, not draw by draw. Options curvops cannot serve raise `ValueError`, never give a
different number.
"""
import numpy as np

from ._operator import LinearOperator
from ._problem import Problem

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


class FisherType:
    """curvlinops' Fisher types (strings)."""

    TYPE2 = "type-2"
    MC = "mc"
    EMPIRICAL = "empirical"
    FORWARD_ONLY = "forward-only"


class KFACType:
    """curvlinops' KFAC approximations (strings)."""

    EXPAND = "expand"
    REDUCE = "reduce"


def _param_list(params):
    if isinstance(params, dict):
        return list(params.values())
    return list(params)


class _CurvlinopsOperator(LinearOperator):
    """Common constructor: converts the model, binds the data, builds the operator."""

    _kind = None

    def __init__(self, model_func, loss_func, params, data, progressbar=False, check_deterministic=True,
                 num_data=None, block_sizes=None, batch_size_fn=None, **op_kw):
        if torch is None or not isinstance(model_func, torch.nn.Module):
            raise TypeError("model_func: curvops needs an nn.Module (it converts the module with torch.fx)")
        self._params = _param_list(params)
        self._problem = Problem(model_func, loss_func, data, params=self._params)
        if num_data is not None and num_data != self._problem.num_data:
            raise ValueError(f"num_data: {num_data}, but the data hold {self._problem.num_data} samples")
        if block_sizes is not None:
            sizes = [int(b) for b in block_sizes]
            per_param = [p.numel() for p in self._params]
            if sizes == per_param:
                op_kw["blocks"] = "param"
            elif sizes != [sum(per_param)]:
                raise ValueError("block_sizes: curvops restricts to one block per parameter tensor or none")
        op = self._problem.operator(self._kind, **op_kw)
        super().__init__(op._raw, self._problem.torch_dtype)

    # tensor-list format: a list of tensors shaped like the params (with a trailing K axis)
    def __matmul__(self, X):
        if isinstance(X, (list, tuple)):
            shapes = [tuple(p.shape) for p in self._in_params()]
            if len(X) != len(shapes):
                raise ValueError(f"x: {len(X)} tensors for {len(shapes)} parameters")
            is_vec = tuple(X[0].shape) == shapes[0]
            flat = torch.cat([x.reshape(-1, 1) if is_vec else x.reshape(-1, x.shape[-1]) for x in X])
            Y = LinearOperator.__matmul__(self, flat)
            out, off = [], 0
            for s in self._out_shapes():
                n = int(np.prod(s))
                y = Y[off:off + n]
                out.append(y.reshape(s) if is_vec else y.reshape(*s, Y.shape[-1]))
                off += n
            return out
        return LinearOperator.__matmul__(self, X)

    def _in_params(self):
        return self._params

    def _out_shapes(self):
        return [tuple(p.shape) for p in self._params]


class HessianLinearOperator(_CurvlinopsOperator):
    """The Hessian of the empirical risk (curvlinops' `HessianLinearOperator`)."""

    _kind = "hessian"


class GGNLinearOperator(_CurvlinopsOperator):
    """The generalized Gauss-Newton matrix (curvlinops' `GGNLinearOperator`)."""

    _kind = "ggn"


class EFLinearOperator(_CurvlinopsOperator):
    """The empirical Fisher `c Σ_n ∇ℓ_n ∇ℓ_nᵀ` (curvlinops' `EFLinearOperator`; on sequence
    outputs curvops' sample is the whole sequence, SPEC.md §1)."""

    _kind = "ef"


class FisherMCLinearOperator(_CurvlinopsOperator):
    """The Monte-Carlo Fisher with `mc_samples` label draws per sample."""

    _kind = "fisher-mc"

    def __init__(self, model_func, loss_func, params, data, progressbar=False, check_deterministic=True,
                 seed=2147483647, mc_samples=1, num_data=None, batch_size_fn=None):
        super().__init__(model_func, loss_func, params, data, progressbar, check_deterministic, num_data,
                         None, batch_size_fn, samples=mc_samples, seed=seed)


class _JacobianBase(_CurvlinopsOperator):
    """Jacobian operators take no loss: each batch's X is paired with zero targets of the
    outputs' shape under an MSE loss, which the Jacobian does not read."""

    def __init__(self, model_func, params, data, progressbar=False, check_deterministic=True, num_data=None,
                 batch_size_fn=None):
        pairs = []
        for X, *_ in data:
            with torch.no_grad():
                pairs.append((X, torch.zeros_like(model_func(X))))
        super().__init__(model_func, torch.nn.MSELoss(), params, pairs, progressbar, check_deterministic, num_data,
                         None, batch_size_fn)


class JacobianLinearOperator(_JacobianBase):
    """The Jacobian of the model's outputs `[N·C, D]` (curvlinops' `JacobianLinearOperator`)."""

    _kind = "jacobian"

    def _out_shapes(self):
        return [(self.shape[0],)]


class TransposedJacobianLinearOperator(_JacobianBase):
    """The transposed Jacobian `[D, N·C]`."""

    _kind = "jacobian-t"

    def _in_params(self):
        return [torch.empty(self.shape[1])]


class KFACLinearOperator(_CurvlinopsOperator):
    """KFAC (curvlinops' `KFACLinearOperator`; default `fisher_type` is MC, as there)."""

    _kind = "kfac"

    def __init__(self, model_func, loss_func, params, data, progressbar=False, check_deterministic=True,
                 seed=2147483647, fisher_type=FisherType.MC, mc_samples=1, kfac_approx=KFACType.EXPAND,
                 num_per_example_loss_terms=None, separate_weight_and_bias=True, num_data=None,
                 batch_size_fn=None):
        ft = getattr(fisher_type, "value", fisher_type)
        ka = getattr(kfac_approx, "value", kfac_approx)
        super().__init__(model_func, loss_func, params, data, progressbar, check_deterministic, num_data, None,
                         batch_size_fn, fisher_type=str(ft), kfac_approx=str(ka), samples=mc_samples,
                         seed=seed, joint_bias=not separate_weight_and_bias, damping_mode="same")

    @property
    def trace(self):
        return torch.tensor(self._raw.trace(), dtype=self._torch_dtype)

    @property
    def logdet(self):
        return torch.tensor(self._raw.logdet(0.0), dtype=self._torch_dtype)

    @property
    def det(self):
        return torch.exp(self.logdet)

    @property
    def frobenius_norm(self):
        return torch.tensor(self._raw.frobenius_norm(), dtype=self._torch_dtype)


class EKFACLinearOperator(KFACLinearOperator):
    """EKFAC (curvlinops' `EKFACLinearOperator`)."""

    _kind = "ekfac"


class KFACInverseLinearOperator(LinearOperator):
    """`(KFAC + δ)⁻¹` (curvlinops' `KFACInverseLinearOperator`): `damping` added to each factor
    (`use_heuristic_damping`: π-damping; `use_exact_damping`: to the Kronecker eigenvalues)."""

    def __init__(self, A, damping=0.0, use_heuristic_damping=False, min_damping=1e-8, use_exact_damping=False,
                 cache=True, retry_double_precision=True):
        if isinstance(damping, (tuple, list)):
            raise ValueError("damping: separate dampings for the two factors are not supported by curvops")
        if use_heuristic_damping and use_exact_damping:
            raise ValueError("use_heuristic_damping and use_exact_damping exclude each other")
        if min_damping != 1e-8 and use_heuristic_damping:
            raise ValueError("min_damping: curvops' π-damping uses 1e-8")
        mode = "exact" if use_exact_damping or isinstance(A, EKFACLinearOperator) else (
            "pi" if use_heuristic_damping else "same")
        inv = A.inverse(damping, mode=mode)
        super().__init__(inv._raw, A._torch_dtype)
        self._params = A._params

    __matmul__ = _CurvlinopsOperator.__matmul__
    _in_params = _CurvlinopsOperator._in_params
    _out_shapes = _CurvlinopsOperator._out_shapes


class CGInverseLinearOperator(LinearOperator):
    """`A⁻¹` by conjugate gradients in curvops."""

    def __init__(self, A, eps=1e-10, maxiter=None):
        inv = A.inverse(0.0, method="cg", tol=eps, max_iters=maxiter)
        super().__init__(inv._raw, getattr(A, "_torch_dtype", None))


def _as_curvops(A):
    if isinstance(A, LinearOperator):
        return A
    raise TypeError("curvops' estimators take a curvops operator")


def hutchinson_trace(A, num_matvecs, distribution="rademacher"):
    v, _, _ = _as_curvops(A).trace_estimate("hutchinson", num_matvecs, distribution=distribution)
    return torch.tensor(v)


def hutchpp_trace(A, num_matvecs, distribution="rademacher"):
    v, _, _ = _as_curvops(A).trace_estimate("hutchpp", num_matvecs, distribution=distribution)
    return torch.tensor(v)


def xtrace(A, num_matvecs, distribution="rademacher"):
    v, _, _ = _as_curvops(A).trace_estimate("xtrace", num_matvecs, distribution=distribution)
    return torch.tensor(v)


def hutchinson_diag(A, num_matvecs, distribution="rademacher"):
    d, _ = _as_curvops(A).diag_estimate("hutchinson", num_matvecs, distribution=distribution)
    return torch.from_numpy(d)


def xdiag(A, num_matvecs):
    d, _ = _as_curvops(A).diag_estimate("xdiag", num_matvecs)
    return torch.from_numpy(d)


__all__ = ["HessianLinearOperator", "GGNLinearOperator", "EFLinearOperator", "FisherMCLinearOperator",
           "KFACLinearOperator", "EKFACLinearOperator", "JacobianLinearOperator",
           "TransposedJacobianLinearOperator", "KFACInverseLinearOperator", "CGInverseLinearOperator",
           "FisherType", "KFACType", "hutchinson_trace", "hutchpp_trace", "xtrace", "hutchinson_diag", "xdiag"]
