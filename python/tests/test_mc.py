"""Monte-Carlo operators, tested statistically with fixed seeds: curvops' MC Fisher and MC KFAC
(package and drop-in) are unbiased for the GGN and for type-2 KFAC, and agree in distribution
with curvlinops 3.0.1's, whose draws differ. Tolerances come from the standard error over the
seeds."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import curvops
import curvops.curvlinops as cc

torch.set_default_dtype(torch.float64)
SEEDS = 200


def _problem():
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    X = torch.randn(16, 4, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    return model, nn.CrossEntropyLoss(), X, y


def _mean_and_se(samples):
    s = np.stack(samples)
    return s.mean(0), s.std(0, ddof=1) / np.sqrt(len(s))


def _unbiased(samples, want):
    """‖mean − want‖² against its expectation Σ se² (a χ²-like statistic with D degrees of
    freedom: below 3× its mean except with negligible probability for D ≥ 20), and no single
    coordinate beyond 5 standard errors."""
    mean, se = _mean_and_se(samples)
    z = (mean - want) / np.maximum(se, 1e-300)
    assert np.sum((mean - want) ** 2) <= 3 * np.sum(se ** 2), (np.sum((mean - want) ** 2), np.sum(se ** 2))
    assert np.abs(z).max() <= 5, np.abs(z).max()
    return mean, se


def test_fisher_mc_is_unbiased_for_the_ggn():
    """For the cross-entropy the Fisher equals the GGN: E[F_MC v] = G v, for the package and for
    curvlinops (each with its own draws), and the two means agree within their standard errors."""
    from curvlinops import FisherMCLinearOperator

    model, loss, X, y = _problem()
    P = curvops.Problem(model, loss, (X, y))
    D = P.dim
    v = np.random.default_rng(0).standard_normal(D)
    Gv = P.ggn() @ v
    ours = [P.fisher_mc(mc_samples=1, seed=s) @ v for s in range(SEEDS)]
    m1, se1 = _unbiased(ours, Gv)
    params = list(model.parameters())
    vt = torch.from_numpy(v)
    theirs = [(FisherMCLinearOperator(model, loss, params, [(X, y)], check_deterministic=False, seed=s,
                                      mc_samples=1) @ vt).numpy() for s in range(SEEDS)]
    m2, se2 = _unbiased(theirs, Gv)
    assert np.sum((m1 - m2) ** 2) <= 3 * np.sum(se1 ** 2 + se2 ** 2)
    # the drop-in gives the package's numbers
    drop = cc.FisherMCLinearOperator(model, loss, params, [(X, y)], seed=3, mc_samples=1) @ vt
    assert np.abs(drop.numpy() - ours[3]).max() <= 1e-14 * np.abs(ours[3]).max()
    # more samples per draw: the standard error shrinks like 1/√M
    many = [P.fisher_mc(mc_samples=16, seed=s) @ v for s in range(40)]
    _, se16 = _unbiased(many, Gv)
    ratio = np.sqrt(np.sum(se16 ** 2) / np.sum(se1 ** 2)) * np.sqrt(40 / SEEDS)  # per-draw spread, M=16 vs M=1
    assert 0.15 <= ratio <= 0.4, ratio  # 1/√16 = 0.25


def test_mc_kfac_is_unbiased_for_type2_kfac():
    """KFAC's gradient factor is linear in the backpropagated vectors' outer products, so
    E[KFAC_MC] = KFAC_type-2 exactly: the mean product over seeds, for the package and for
    curvlinops' MC KFAC, is within the standard error of the type-2 product."""
    from curvlinops import KFACLinearOperator

    model, loss, X, y = _problem()
    P = curvops.Problem(model, loss, (X, y))
    v = np.random.default_rng(1).standard_normal(P.dim)
    want = P.kfac(fisher_type="type-2") @ v
    ours = [P.kfac(fisher_type="mc", mc_samples=1, seed=s) @ v for s in range(SEEDS)]
    _unbiased(ours, want)
    params = list(model.parameters())
    vt = torch.from_numpy(v)

    def theirs(s):
        K = KFACLinearOperator(model, loss, params, [(X, y)], check_deterministic=False, fisher_type="mc",
                               mc_samples=1, seed=s)
        return (K @ vt).numpy()

    _unbiased([theirs(s) for s in range(SEEDS)], want)


@pytest.mark.parametrize("kind", ["fisher-mc", "kfac"])
def test_mc_draws_are_deterministic_and_batch_invariant(kind):
    """Same seed, same draws, whatever the batch size (labels are keyed by the sample index)."""
    model, loss, X, y = _problem()
    v = np.random.default_rng(2).standard_normal(curvops.Problem(model, loss, (X, y)).dim)
    kw = {"samples": 2, "seed": 7} if kind == "fisher-mc" else {"samples": 2, "seed": 7, "fisher_type": "mc"}
    a = curvops.Problem(model, loss, (X, y)).operator(kind, **kw) @ v
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=5)
    b = curvops.Problem(model, loss, loader).operator(kind, **kw) @ v
    assert np.abs(a - b).max() <= 1e-13 * np.abs(a).max()
    c = curvops.Problem(model, loss, (X, y)).operator(kind, **{**kw, "seed": 8}) @ v
    assert np.abs(a - c).max() > 1e-6 * np.abs(a).max()
