"""Every operator of the package and of the curvlinops drop-in against the reference problems,
rebuilt as ordinary torch modules (float64, <= 1e-10), and against curvlinops 3.0.1 itself."""
import numpy as np
import pytest
import torch

import curvops
import curvops.curvlinops as cc
from models import GRAPH, SEQ, load, problems, ref, rel

torch.set_default_dtype(torch.float64)
TOL = 1e-10
ALL = [(SEQ, n) for n in problems(SEQ)] + [(GRAPH, n) for n in problems(GRAPH)]
IDS = [n for _, n in ALL]


def batches(X, y, bs):
    return [(X[i:i + bs], y[i:i + bs]) for i in range(0, len(X), bs)]


@pytest.fixture(scope="module", params=ALL, ids=IDS)
def case(request):
    root, name = request.param
    model, loss, X, y, meta, params = load(root, name)
    return root, name, model, loss, X, y, meta, params


@pytest.mark.parametrize("batched", [False, True])
def test_dense_operators(case, batched):
    root, name, model, loss, X, y, meta, params = case
    data = batches(X, y, meta["batch_size"]) if batched else (X, y)
    P = curvops.Problem(model, loss, data, params=params)
    for kind in ("hessian", "ggn", "ef", "jacobian"):
        want = ref(root, name, kind)
        if want is None:
            continue
        got = P.operator(kind).dense()
        assert rel(got, want) <= TOL, (kind, rel(got, want))
    L, g = P.loss_and_grad()
    assert rel(g, ref(root, name, "grad")) <= TOL
    assert abs(L - float(ref(root, name, "loss"))) <= TOL * abs(float(ref(root, name, "loss")))
    psg = ref(root, name, "per_sample_loss_grads")
    if psg is not None:
        assert rel(P.per_sample_grads(), psg) <= TOL
    for kind in ("ggn", "hessian"):
        want = ref(root, name, kind + "_diag")
        if want is not None:
            assert rel(P.diag(kind), want) <= TOL, kind
    out = ref(root, name, "outputs")
    got = P.outputs()
    if P.converted.class_axis_moved:
        got = np.moveaxis(got, 1, -1)
    assert rel(got.reshape(out.shape), out) <= TOL


def test_kfac_reference(case):
    root, name, model, loss, X, y, meta, params = case
    named = dict(model.named_parameters())
    kp = [named[k] for k in meta.get("kfac_params", [])] or params
    P = curvops.Problem(model, loss, batches(X, y, meta["batch_size"]), params=kp)
    for key, kw, kind in (("kfac_type2", {"fisher_type": "type-2"}, "kfac"),
                          ("kfac_empirical", {"fisher_type": "empirical"}, "kfac"),
                          ("ekfac_type2", {"fisher_type": "type-2"}, "ekfac")):
        want = ref(root, name, key)
        if want is None:
            continue
        op = getattr(P, kind)(**kw)
        assert rel(op.dense(), want) <= TOL, key


def test_drop_in_matches_curvlinops(case):
    """The drop-in's products equal curvlinops' own on the same module (where curvlinops is
    right: not its Hessian with an affine LayerNorm, not EF on sequence outputs)."""
    curvlinops = pytest.importorskip("curvlinops")
    root, name, model, loss, X, y, meta, params = case
    if name == "tiny_gpt_ce":
        pytest.skip("curvlinops' operators on [N, V, T] logits follow other conventions (reference-graph/README.md)")
    if isinstance(loss, torch.nn.CrossEntropyLoss) and y.is_floating_point():
        pytest.skip("curvlinops 3.0.1 does not take class-probability targets")
    data = batches(X, y, meta["batch_size"])
    V = torch.randn(sum(p.numel() for p in params), 3, generator=torch.Generator().manual_seed(0))
    kinds = ["GGNLinearOperator"]
    if name != "layernorm_mlp_mse":
        kinds += ["HessianLinearOperator"]
    kinds += ["EFLinearOperator"]
    for k in kinds:
        ours = getattr(cc, k)(model, loss, params, data)
        theirs = getattr(curvlinops, k)(model, loss, params, data)
        assert rel((ours @ V).numpy(), (theirs @ V).numpy()) <= TOL, k
        vs = [v.reshape(p.shape) for v, p in zip(V[:, 0].split([p.numel() for p in params]), params)]
        got = ours @ vs
        assert all(g.shape == p.shape for g, p in zip(got, params))
    jac = cc.JacobianLinearOperator(model, params, data)
    jac_cl = curvlinops.JacobianLinearOperator(model, params, data)
    assert rel((jac @ V).numpy(), (jac_cl @ V).numpy()) <= TOL
    W = torch.randn(jac.shape[0], 2, generator=torch.Generator().manual_seed(1))
    jt = cc.TransposedJacobianLinearOperator(model, params, data)
    jt_cl = curvlinops.TransposedJacobianLinearOperator(model, params, data)
    assert rel((jt @ W).numpy(), (jt_cl @ W).numpy()) <= TOL
    assert rel((jac.T @ W).numpy(), (jt_cl @ W).numpy()) <= TOL


def test_kfac_drop_in_matches_curvlinops(case):
    curvlinops = pytest.importorskip("curvlinops")
    root, name, model, loss, X, y, meta, params = case
    if isinstance(loss, torch.nn.CrossEntropyLoss) and y.is_floating_point():
        pytest.skip("curvlinops 3.0.1 does not take class-probability targets")
    if name in ("tiny_gpt_ce",) or "kfac_params" in meta and name != "resnet_block_ce":
        pytest.skip("curvlinops' KFAC cannot see attention projections / LayerNorm (covered by the reference files)")
    named = dict(model.named_parameters())
    kp = [named[k] for k in meta.get("kfac_params", [])] or params
    data = batches(X, y, meta["batch_size"])
    D = sum(p.numel() for p in kp)
    V = torch.randn(D, 4, generator=torch.Generator().manual_seed(0))
    for ft in ("type-2", "empirical"):
        ours = cc.KFACLinearOperator(model, loss, kp, data, fisher_type=ft)
        theirs = curvlinops.KFACLinearOperator(model, loss, kp, data, fisher_type=ft)
        assert rel((ours @ V).numpy(), (theirs @ V).numpy()) <= TOL, ft
        assert abs(float(ours.trace) - float(theirs.trace)) <= TOL * abs(float(theirs.trace))
        if abs(float(theirs.logdet)) < 1e3:  # not numerically singular
            assert abs(float(ours.logdet) - float(theirs.logdet)) <= 1e-8 * max(1.0, abs(float(theirs.logdet)))
        inv = cc.KFACInverseLinearOperator(ours, damping=1e-2)
        inv_cl = curvlinops.KFACInverseLinearOperator(theirs, damping=1e-2)
        assert rel((inv @ V).numpy(), (inv_cl @ V).numpy()) <= 1e-9, ft
    ours = cc.EKFACLinearOperator(model, loss, kp, data, fisher_type="type-2")
    theirs = curvlinops.EKFACLinearOperator(model, loss, kp, data, fisher_type="type-2")
    assert rel((ours @ V).numpy(), (theirs @ V).numpy()) <= TOL


def test_scipy_eigsh_top5(case):
    from scipy.sparse.linalg import eigsh

    root, name, model, loss, X, y, meta, params = case
    P = curvops.Problem(model, loss, (X, y), params=params)
    G = P.ggn()
    dense = np.linalg.eigvalsh(ref(root, name, "ggn"))[::-1][:5]
    vals = np.sort(eigsh(G.to_scipy(), k=5, which="LA", tol=1e-12)[0])[::-1]
    assert rel(vals, dense) <= 1e-9
    ours, _ = G.eigsh(5)
    assert rel(ours, dense) <= 1e-9


def test_dataloader_and_tensors_agree(case):
    root, name, model, loss, X, y, meta, params = case
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=meta["batch_size"])
    V = np.random.default_rng(0).standard_normal((sum(p.numel() for p in params), 2))
    a = curvops.Problem(model, loss, dl, params=params).ggn() @ V
    b = curvops.Problem(model, loss, (X, y), params=params).ggn() @ V
    assert rel(a, b) <= 1e-12
