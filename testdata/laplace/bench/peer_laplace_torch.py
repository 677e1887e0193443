"""laplace-torch side of the Laplace benchmark (crates/curvops/examples/laplace_bench.rs): the same
operations on a problem directory (model.json of linear/relu/tanh layers, weights, data), medians
over REPS runs, one JSON line per operation with the same keys.
Usage: peer_laplace_torch.py DIR [REPS] [THREADS] [f32|f64] [CONFIGS]
CONFIGS: comma-separated subset of diag,kfac,lastlayer_full (default all); REPS applies to the fits,
the predictive is timed over min(REPS, 5) runs."""
import json
import os
import sys
import time
import warnings

import torch
import torch.nn as nn
from safetensors.torch import load_file

from laplace import Laplace

warnings.filterwarnings("ignore")
d = sys.argv[1]
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
dtype = torch.float64 if (len(sys.argv) > 4 and sys.argv[4] == "f64") else torch.float32
torch.set_num_threads(threads)
torch.set_default_dtype(dtype)
spec = json.load(open(os.path.join(d, "model.json")))
layers = []
for l in spec["layers"]:
    t = l["type"]
    if t == "linear":
        layers.append(nn.Linear(l["in_features"], l["out_features"], bias=l.get("bias", True)))
    elif t == "relu":
        layers.append(nn.ReLU())
    elif t == "tanh":
        layers.append(nn.Tanh())
    else:
        raise SystemExit(f"layer {t} not supported by this script")
model = nn.Sequential(*layers)
model.load_state_dict({k: v.to(dtype) for k, v in load_file(os.path.join(d, "weights.safetensors")).items()})
data = load_file(os.path.join(d, "data.safetensors"))
X, y = data["x"].to(dtype), data["y"]
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=len(X))
name = os.path.basename(os.path.normpath(d))
D = sum(p.numel() for p in model.parameters())


def median_ms(f, reps=reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def grad():
    model.zero_grad()
    nn.functional.cross_entropy(model(X), y).backward()


g = median_ms(grad)


def emit(op, ms):
    print(json.dumps({"problem": name, "op": op, "ms": ms, "ratio_to_gradient": ms / g, "dtype": str(dtype)[-7:].replace("float", "f"),
                      "threads": threads, "D": D, "N": len(X), "tool": "laplace-torch 0.3"}), flush=True)


emit("gradient", g)
cfgs = {"diag": dict(subset_of_weights="all", hessian_structure="diag"),
        "kfac": dict(subset_of_weights="all", hessian_structure="kron"),
        "lastlayer_full": dict(subset_of_weights="last_layer", hessian_structure="full")}
only = sys.argv[5].split(",") if len(sys.argv) > 5 else list(cfgs)
for key, kw in cfgs.items():
    if key not in only:
        continue
    def fit():
        la = Laplace(model, "classification", **kw)
        la.fit(loader)
        return la
    emit(f"{key}_fit" if key != "kfac" else "kfac_fit_eig", median_ms(fit))
    la = fit()
    la.prior_precision = 1.0

    def pred():
        with torch.no_grad():
            la(X, pred_type="glm", link_approx="probit")
    emit(f"{key}_predict", median_ms(pred, min(reps, 5)) if key != "diag" or D < 300000 else float("nan"))
