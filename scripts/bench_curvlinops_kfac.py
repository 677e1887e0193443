"""Times curvlinops 3.0.1's KFAC on benchmark problems, as `curvops bench --ops kfac_build,kfac_matvec`.

For each problem directory (model.json + weights.safetensors + data.safetensors, SPEC.md §1):

* `kfac_build`: a fresh `KFACLinearOperator(fisher_type="type-2", kfac_approx="expand",
  separate_weight_and_bias=True)` on all the data in one batch, and `compute_kronecker_factors()`
  (the data pass; `num_data` and `num_per_example_loss_terms` are passed so that no extra
  pass over the data is made, `check_deterministic=False`);
* `kfac_matvec`: `K @ v` for one flat vector `v` (torch tensor, [D]) with the factors computed.

Median of `--reps` runs after two warm-up runs, in ms, with `torch.set_num_threads(--threads)`,
in float32 (`--dtype`). Prints one JSON object per line with the keys of `curvops bench`
(`problem`, `op`, `ms`, `dtype`, `threads`) plus `"impl": "curvlinops"`.

Usage: python3 scripts/bench_curvlinops_kfac.py DIR [DIR...] [--reps 21] [--threads 1]
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn as nn
from safetensors.torch import load_file

from curvlinops import KFACLinearOperator


def pair(v):
    return tuple(v) if isinstance(v, list) else v


def build_module(layer):
    t = layer["type"]
    if t == "linear":
        return nn.Linear(layer["in_features"], layer["out_features"], bias=layer.get("bias", True))
    if t == "conv2d":
        return nn.Conv2d(layer["in_channels"], layer["out_channels"], pair(layer["kernel_size"]),
                         stride=pair(layer.get("stride", 1)), padding=pair(layer.get("padding", 0)),
                         dilation=pair(layer.get("dilation", 1)), groups=layer.get("groups", 1),
                         bias=layer.get("bias", True))
    if t == "maxpool2d":
        return nn.MaxPool2d(pair(layer["kernel_size"]), stride=pair(layer.get("stride")),
                            padding=pair(layer.get("padding", 0)))
    if t == "avgpool2d":
        return nn.AvgPool2d(pair(layer["kernel_size"]), stride=pair(layer.get("stride")),
                            padding=pair(layer.get("padding", 0)))
    if t == "flatten":
        return nn.Flatten()
    if t == "dropout":
        return nn.Dropout(layer.get("p", 0.5))
    if t == "leaky_relu":
        return nn.LeakyReLU(layer.get("negative_slope", 0.01))
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "silu": nn.SiLU}
    if t in acts:
        return acts[t]()
    raise ValueError(f"layer type {t} not supported by this script")


def loss_of(spec):
    red = spec.get("reduction", "mean")
    return {"mse": nn.MSELoss, "cross_entropy": nn.CrossEntropyLoss,
            "bce_with_logits": nn.BCEWithLogitsLoss}[spec["type"]](reduction=red)


def median_ms(reps, f):
    f()
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="f32", choices=["f32", "f64"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = torch.float32 if a.dtype == "f32" else torch.float64
    for d in a.dirs:
        with open(os.path.join(d, "model.json")) as f:
            spec = json.load(f)
        model = nn.Sequential(*[build_module(l) for l in spec["layers"]]).to(dtype)
        model.load_state_dict({k: v.to(dtype) for k, v in load_file(os.path.join(d, "weights.safetensors")).items()})
        model.eval()
        data = load_file(os.path.join(d, "data.safetensors"))
        X = data["x"].to(dtype)
        y = data["y"] if not data["y"].is_floating_point() else data["y"].to(dtype)
        params = [p for p in model.parameters()]
        lf = loss_of(spec["loss"])
        N = X.shape[0]

        def build():
            k = KFACLinearOperator(model, lf, params, [(X, y)], fisher_type="type-2", kfac_approx="expand",
                                   separate_weight_and_bias=True, check_deterministic=False, num_data=N,
                                   num_per_example_loss_terms=1)
            k.compute_kronecker_factors()
            return k

        name = os.path.basename(os.path.normpath(d))
        ms = median_ms(a.reps, build)
        print(json.dumps({"problem": name, "op": "kfac_build", "ms": round(ms, 4), "dtype": a.dtype,
                          "threads": a.threads, "impl": "curvlinops"}), flush=True)
        k = build()
        D = sum(p.numel() for p in params)
        v = torch.randn(D, generator=torch.Generator().manual_seed(0), dtype=dtype)
        ms = median_ms(a.reps, lambda: k @ v)
        print(json.dumps({"problem": name, "op": "kfac_matvec", "ms": round(ms, 4), "dtype": a.dtype,
                          "threads": a.threads, "impl": "curvlinops"}), flush=True)


if __name__ == "__main__":
    main()
