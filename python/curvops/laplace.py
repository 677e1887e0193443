"""`curvops.Laplace`: the Laplace approximation as laplace-torch users know it.

    la = curvops.Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")
    la.fit(train_loader)
    la.optimize_prior_precision()                  # maximizes the marginal likelihood
    probs = la(x, pred_type="glm", link_approx="probit")
    la.log_marginal_likelihood()

Everything numerical is curvops' Laplace library (SPEC.md §4: laplace-torch 0.3's conventions):
`hessian_structure` `full`, `diag`, `kron` (KFAC) or `lowrank`; `subset_of_weights` `all` or
`last_layer` (the parameters of the last node that has any). The curvature is the exact GGN.
"""
import numpy as np

from . import _curvops
from ._problem import Problem, _np

try:
    import torch
    import torch.nn as nn
except ImportError:  # pragma: no cover
    torch = None


class Laplace:
    """A Laplace approximation of a PyTorch model's posterior (see the module docs)."""

    def __init__(self, model, likelihood, subset_of_weights="last_layer", hessian_structure="kron",
                 prior_precision=1.0, sigma_noise=1.0, temperature=1.0, loss_fn=None, rank=10):
        if likelihood not in ("classification", "regression"):
            raise ValueError(f"likelihood: '{likelihood}' (classification or regression)")
        if subset_of_weights not in ("all", "last_layer"):
            raise ValueError(f"subset_of_weights: '{subset_of_weights}' (all or last_layer)")
        if likelihood == "classification" and sigma_noise != 1.0:
            raise ValueError("sigma_noise applies to regression only")
        self.model, self.likelihood = model, likelihood
        self.subset_of_weights, self.hessian_structure = subset_of_weights, hessian_structure
        self.prior_precision = prior_precision
        self.sigma_noise, self.temperature, self.rank = float(sigma_noise), float(temperature), rank
        if loss_fn is None:
            loss_fn = nn.CrossEntropyLoss() if likelihood == "classification" else nn.MSELoss()
        self.loss_fn = loss_fn
        self._core = None

    def fit(self, train_loader):
        """Fits the curvature on the training data (a DataLoader or `(X, y)`)."""
        self.problem = Problem(self.model, self.loss_fn, train_loader)
        self._core = _curvops.Laplace(self.problem._raw, structure=self.hessian_structure,
                                      last_layer=self.subset_of_weights == "last_layer", rank=self.rank,
                                      batch_size=self.problem.batch_size)
        return self

    def _need(self):
        if self._core is None:
            raise ValueError("call fit(train_loader) first")
        return self._core

    def _prior(self, p=None):
        p = self.prior_precision if p is None else p
        if torch is not None and isinstance(p, torch.Tensor):
            p = p.detach().cpu().numpy()
        p = np.atleast_1d(np.asarray(p, dtype=np.float64))
        return float(p[0]) if p.size == 1 else [float(v) for v in p]

    @property
    def n_params(self):
        return self._need().dim

    def log_marginal_likelihood(self, prior_precision=None, sigma_noise=None):
        s = self.sigma_noise if sigma_noise is None else float(sigma_noise)
        return self._need().log_marginal_likelihood(self._prior(prior_precision), s, self.temperature)

    def optimize_prior_precision(self, method="marglik", prior_structure="scalar", optimize_sigma=None, **_):
        """Maximizes the marginal likelihood (the only `method` here) over a `scalar` or
        `layerwise` prior precision; for regression also over `sigma_noise` unless
        `optimize_sigma=False`."""
        if method != "marglik":
            raise ValueError(f"method: '{method}' (curvops optimizes the marginal likelihood: 'marglik')")
        opt_sigma = self.likelihood == "regression" if optimize_sigma is None else bool(optimize_sigma)
        prior, sigma, _ = self._need().optimize(prior_structure, opt_sigma, self.sigma_noise, self.temperature)
        self.prior_precision = prior[0] if prior_structure == "scalar" else np.asarray(prior)
        self.sigma_noise = sigma
        return self

    @property
    def posterior_variance(self):
        return self._need().variance(self._prior(), self.sigma_noise, self.temperature)

    def __call__(self, x, pred_type="glm", link_approx="probit", n_samples=100, seed=0):
        """Classification: predictive class probabilities; regression: `(mean, variance)`.
        Returns torch tensors for tensor input, numpy otherwise."""
        if pred_type != "glm":
            raise ValueError(f"pred_type: '{pred_type}' (curvops' predictive is the linearized 'glm')")
        is_torch = torch is not None and isinstance(x, torch.Tensor)
        xn = _np(x)
        mean, var = self._need().predict(xn, self._prior(), self.sigma_noise, self.temperature,
                                         link="mc" if link_approx == "mc" else link_approx, samples=n_samples, seed=seed)
        if self.problem.converted.class_axis_moved:
            mean = np.moveaxis(mean, -1, 1)
        conv = (lambda a: torch.from_numpy(np.ascontiguousarray(a))) if is_torch else (lambda a: a)
        if self.likelihood == "regression":
            return conv(mean), conv(var)
        return conv(mean)
