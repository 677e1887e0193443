"""KFAC / EKFAC ground truth beyond the defaults of `reference/` and `extra/`.

The reference problems hold curvlinops' KFAC (type-2, empirical) and EKFAC (type-2) with the
defaults `kfac_approx="expand"`, `separate_weight_and_bias=True`. This script adds, for a few
of those problems (read from disk, nothing is regenerated), the other options:

  * `kfac_approx="reduce"` (type-2 and empirical KFAC, type-2 EKFAC),
  * `separate_weight_and_bias=False` (joint weight-and-bias blocks; KFAC and EKFAC),
  * `fisher_type="forward-only"` and `"empirical"` EKFAC,
  * KFAC over a subset of the parameters,
  * `KFACInverseLinearOperator` with the three damping modes (damping 0.1): the same damping
    added to both factors, Martens & Grosse's heuristic (pi) damping, and exact damping.

To keep the files small, every operator M is stored as its product with fixed probe vectors:
`probes.npy` is [D, 8] (standard normal, seed 0), and `<variant>.npy` is `M @ probes[:D_v]`
([D_v, 8], D_v the operator's dimension; subset operators use the first D_v rows of the probes).
`meta.json` lists each variant with its options and parameter names.

Output: `kfac/<problem>/` (and the problem files of the problems made here, `OWN`). Needs torch, curvlinops-for-pytorch 3.0.1, safetensors, numpy.
Usage: python3 testdata/gen_kfac.py
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
import gen_problems as gp  # noqa: E402
from curvlinops import EKFACLinearOperator, KFACInverseLinearOperator, KFACLinearOperator  # noqa: E402

torch.set_default_dtype(torch.float64)

# (folder, problem, parameter subset for the "subset" variant)
PROBLEMS = [
    ("reference", "deep_linear_mse", ["0.weight", "2.bias"]),
    ("reference", "mlp_sigmoid_bce_sum", ["2.weight", "2.bias"]),
    ("extra", "cnn_stride_dil_groups_ce", ["0.bias", "2.weight", "4.weight"]),
    ("extra", "cnn_rectpool_avgpool_mse1", ["0.weight", "5.bias"]),
    ("extra", "cnn_depthwise_maxpool_pad_bce", ["0.weight", "0.bias"]),
]

K = 8  # probe vectors

# A problem made here (written to kfac/<name>/ with model.json, weights and data): EKFAC with
# `reduce` is only well defined when the reduced factors have no repeated (e.g. zero)
# eigenvalues — otherwise the corrected eigenvalues depend on the eigensolver's choice of basis
# in the degenerate eigenspace (the expanded patches are not in the range of a rank-deficient
# reduced input factor). The problems above have N < C/G·kh·kw, so their `ekfac_*_reduce`
# variants are not generated; this one has N = 24 above every factor dimension.
OWN = {
    "cnn_fullrank_reduce": dict(
        seed=201, N=24, batch_size=5, input_shape=[2, 5, 5],
        layers=[gp.conv(2, 4, 2, groups=2), {"type": "tanh"}, gp.conv(4, 2, 2, stride=2),
                {"type": "flatten"}, gp.lin(8, 3)],
        loss={"type": "cross_entropy", "reduction": "mean"}),
}


def make_own(name, spec):
    from safetensors.torch import save_file
    out = os.path.join(HERE, "kfac", name)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(spec["seed"])
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    model = nn.Sequential(*[gp.build_module(l) for l in spec["layers"]]).double()
    X = torch.randn(spec["N"], *spec["input_shape"], generator=g)
    with torch.no_grad():
        C = model(X).shape[1]
    y = torch.randint(0, C, (spec["N"],), generator=g)
    with open(os.path.join(out, "model.json"), "w") as f:
        json.dump({"input_shape": spec["input_shape"], "layers": spec["layers"], "loss": spec["loss"]}, f, indent=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "weights.safetensors"))
    save_file({"x": X.contiguous(), "y": y.contiguous()}, os.path.join(out, "data.safetensors"))


def load(folder, name):
    d = os.path.join(HERE, folder, name)
    with open(os.path.join(d, "model.json")) as f:
        spec = json.load(f)
    model = nn.Sequential(*[gp.build_module(l) for l in spec["layers"]]).double()
    model.load_state_dict({k: v.double() for k, v in load_file(os.path.join(d, "weights.safetensors")).items()})
    model.eval()
    data = load_file(os.path.join(d, "data.safetensors"))
    X = data["x"].double()
    y = data["y"]
    if y.is_floating_point():
        y = y.double()
    return spec, model, gp.build_loss(spec["loss"]), X, y


def variants(subset, ekfac_reduce):
    """name -> (kind, options, parameter subset or None)."""
    v = {}
    for approx in ("expand", "reduce"):
        for fisher in ("type-2", "empirical", "forward-only"):
            for sep in (True, False):
                if approx == "expand" and sep and fisher != "forward-only":
                    continue  # in reference/ and extra/ already (kfac_type2, kfac_empirical)
                name = f"kfac_{fisher.replace('-', '')}_{approx}" + ("" if sep else "_joint")
                v[name] = ("kfac", dict(fisher_type=fisher, kfac_approx=approx, separate_weight_and_bias=sep), None)
        for fisher in ("type-2", "empirical"):
            for sep in (True, False):
                if approx == "expand" and sep and fisher == "type-2":
                    continue  # ekfac_type2 in reference/ and extra/
                if approx == "reduce" and not ekfac_reduce:
                    continue  # basis-dependent here (see OWN)
                name = f"ekfac_{fisher.replace('-', '')}_{approx}" + ("" if sep else "_joint")
                v[name] = ("ekfac", dict(fisher_type=fisher, kfac_approx=approx, separate_weight_and_bias=sep), None)
    v["kfac_type2_expand_subset"] = ("kfac", dict(fisher_type="type-2", kfac_approx="expand"), subset)
    v["kfac_type2_expand_subset_joint"] = (
        "kfac", dict(fisher_type="type-2", kfac_approx="expand", separate_weight_and_bias=False), subset)
    v["ekfac_type2_expand_subset"] = ("ekfac", dict(fisher_type="type-2", kfac_approx="expand"), subset)
    for mode in ("same", "pi", "exact"):
        for sep in (True, False):
            name = f"kfac_inverse_{mode}" + ("" if sep else "_joint")
            v[name] = ("inverse", dict(mode=mode, separate_weight_and_bias=sep), None)
    v["ekfac_inverse_exact"] = ("ekfac_inverse", dict(), None)
    return v


DAMPING = 0.1


def main():
    out_root = os.path.join(HERE, "kfac")
    for name, spec in OWN.items():
        shutil.rmtree(os.path.join(out_root, name), ignore_errors=True)
        make_own(name, spec)
    problems = [(f, n, s, False) for f, n, s in PROBLEMS]
    problems.append(("kfac", "cnn_fullrank_reduce", ["2.weight", "4.bias"], True))
    for folder, name, subset, ekfac_reduce in problems:
        spec, model, loss_func, X, y = load(folder, name)
        if folder == "kfac":
            batch_size = OWN[name]["batch_size"]
        else:
            with open(os.path.join(HERE, folder, name, "meta.json")) as f:
                batch_size = json.load(f)["batch_size"]
        named = list(model.named_parameters())
        D = sum(p.numel() for _, p in named)
        probes = torch.from_numpy(np.random.default_rng(0).standard_normal((D, K)))
        out = os.path.join(out_root, name)
        for f in os.listdir(out) if os.path.isdir(out) else []:
            if f.endswith(".npy") or f == "meta.json":
                os.remove(os.path.join(out, f))
        os.makedirs(out, exist_ok=True)
        np.save(os.path.join(out, "probes.npy"), probes.numpy())
        meta = {"problem": f"{folder}/{name}", "batch_size": batch_size, "damping": DAMPING, "probes": K,
                "variants": {}}
        data = [(X, y)]
        N = X.shape[0]
        for vname, (kind, opts, sub) in variants(subset, ekfac_reduce).items():
            names = [n for n, _ in named if sub is None or n in sub]
            params = [p for n, p in named if n in names]
            d = sum(p.numel() for p in params)
            common = dict(check_deterministic=False, num_data=N, num_per_example_loss_terms=1)
            try:
                if kind == "kfac":
                    op = KFACLinearOperator(model, loss_func, params, data, **opts, **common)
                elif kind == "ekfac":
                    op = EKFACLinearOperator(model, loss_func, params, data, **opts, **common)
                elif kind == "inverse":
                    kf = KFACLinearOperator(model, loss_func, params, data, fisher_type="type-2",
                                            separate_weight_and_bias=opts["separate_weight_and_bias"],
                                            **common)
                    op = KFACInverseLinearOperator(kf, damping=DAMPING,
                                                   use_heuristic_damping=opts["mode"] == "pi",
                                                   use_exact_damping=opts["mode"] == "exact")
                else:
                    ek = EKFACLinearOperator(model, loss_func, params, data, fisher_type="type-2", **common)
                    op = KFACInverseLinearOperator(ek, damping=DAMPING, use_exact_damping=True)
                prod = (op @ probes[:d]).detach().numpy()
            except Exception as e:  # noqa: BLE001
                print(f"{name} {vname}: skipped: {type(e).__name__}: {e}", file=sys.stderr)
                meta["variants"][vname] = {"skipped": f"{type(e).__name__}: {e}"}
                continue
            np.save(os.path.join(out, vname + ".npy"), prod)
            meta["variants"][vname] = {"kind": kind, **opts, "params": names, "D": d}
        with open(os.path.join(out, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        print(name, "done", file=sys.stderr)


if __name__ == "__main__":
    main()
