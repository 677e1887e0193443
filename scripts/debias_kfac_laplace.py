#!/usr/bin/env python3
"""Debiased KFAC Laplace vs KFAC Laplace on the same samples (docs/laplace.md, "Debiased KFAC
Laplace").

For each model (the digits MLP of /work/shared/laplace, and a small CNN trained here with
`curvops train`), each batch size B and each seed, it runs `curvops laplace evaluate` (test NLL
of the linearized predictive, probit link) for

  debiased  --debias --batch-size B --seed S   (Kronecker bases on B1, eigenvalues on B2)
  kfac-2B   --fit-samples 2B --seed S          (plain KFAC on B1 ∪ B2: the same samples)
  kfac-B    --fit-samples B --seed S           (plain KFAC on B1 alone)
  ekfac-B   --ekfac --fit-samples B --seed S   (B1's bases, eigenvalues re-estimated on B1
            itself: the biased counterpart of debiased, same basis)
  kfac-N, ekfac-N  (KFAC / EKFAC on all N training samples; once)

at a fixed prior precision τ and with τ from the marginal likelihood (scalar), and prints
mean ± standard error over the seeds and the paired differences. Uses only the CLI (and the
standard library: the CNN's initial weights are written here, PyTorch's default uniform init).

  python3 scripts/debias_kfac_laplace.py [--curvops target/release/curvops] [--seeds 10]
"""

import argparse
import json
import math
import os
import random
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = "/work/shared/laplace"


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_init(path, shapes, seed):
    """float32 safetensors with PyTorch's default init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    rng = random.Random(seed)
    header, blobs, off = {}, [], 0
    for name, shape, fan_in in shapes:
        n = math.prod(shape)
        bound = 1.0 / math.sqrt(fan_in)
        data = struct.pack(f"<{n}f", *(rng.uniform(-bound, bound) for _ in range(n)))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def reshape_x(src, dst, shape):
    """Copies a safetensors data file with its input tensor "x" reshaped to [N, *shape]."""
    b = open(src, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    header["x"]["shape"] = [header["x"]["shape"][0], *shape]
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b[8 + n:])


def mean_se(v):
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in v) / (len(v) - 1)
    return m, math.sqrt(var / len(v))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--curvops", default=os.path.join(HERE, "..", "target", "release", "curvops"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--batches", default="32,64")
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--work", default=os.path.join(HERE, "..", "bench-out", "debias_kfac"))
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    cv = a.curvops
    train, test = f"{SHARED}/train.safetensors", f"{SHARED}/test.safetensors"

    # the CNN: conv 1→8 3×3, relu, flatten, linear 288 → 10, trained like the MLP fixture
    cnn_model = os.path.join(HERE, "debias_kfac", "cnn_model.json")
    cnn_init = os.path.join(a.work, "cnn_init.safetensors")
    cnn_w = os.path.join(a.work, "cnn_trained.safetensors")
    ctrain, ctest = (os.path.join(a.work, f"{k}_1x8x8.safetensors") for k in ("train", "test"))
    reshape_x(train, ctrain, [1, 8, 8])
    reshape_x(test, ctest, [1, 8, 8])
    if not os.path.exists(cnn_w):
        write_init(cnn_init, [("0.weight", [8, 1, 3, 3], 9), ("0.bias", [8], 9),
                              ("3.weight", [10, 288], 288), ("3.bias", [10], 288)], seed=0)
        t = run([cv, "train", "--model", cnn_model, "--weights", cnn_init, "--data", ctrain,
                 "--test-data", ctest, "--epochs", "60", "--optimizer", "adam", "--lr", "0.01",
                 "--batch-size", "64", "--seed", "0", "--out", cnn_w, "--json"])
        print(f"CNN trained: train loss {t['loss']:.4f}, test accuracy {t['test_accuracy']:.4f}",
              file=sys.stderr)
    models = {
        "MLP 64-24-10 tanh": (f"{SHARED}/model.json", f"{SHARED}/trained.safetensors", train, test),
        "CNN conv3x3(8)-relu-linear": (cnn_model, cnn_w, ctrain, ctest),
    }
    priors = {f"tau={a.tau:g}": ["--prior-precision", str(a.tau)],
              "marglik": ["--prior", "marglik", "--prior-structure", "scalar"]}
    results = {}
    for mname, (model, weights, mtrain, mtest) in models.items():
        base = [cv, "laplace", "evaluate", "--model", model, "--weights", weights, "--data", mtrain,
                "--test-data", mtest, "--structure", "kfac", "--json"]
        for pname, pflags in priors.items():
            full = run(base + pflags)
            results[(mname, pname, "kfac-N", 0)] = [full["laplace"]["nll"]]
            results[(mname, pname, "ekfac-N", 0)] = [run(base + pflags + ["--ekfac"])["laplace"]["nll"]]
            results[(mname, pname, "map", 0)] = [full["map"]["nll"]]
            for b in [int(x) for x in a.batches.split(",")]:
                for kind, flags in [("debiased", ["--debias", "--batch-size", str(b)]),
                                    ("kfac-2B", ["--fit-samples", str(2 * b)]),
                                    ("kfac-B", ["--fit-samples", str(b)]),
                                    ("ekfac-B", ["--ekfac", "--fit-samples", str(b)])]:
                    v = []
                    for s in range(a.seeds):
                        o = run(base + pflags + flags + ["--seed", str(s)])
                        v.append(o["laplace"]["nll"])
                    results[(mname, pname, kind, b)] = v
                    print(f"{mname} {pname} B={b} {kind}: {mean_se(v)[0]:.4f}", file=sys.stderr)
    # the table
    print("| model | prior | B | debiased (B₁ bases, B₂ values) | KFAC on B₁∪B₂ (2B) | KFAC on B₁ (B) "
          "| EKFAC on B₁ (B) | debiased − KFAC(2B), paired | debiased − EKFAC(B₁), paired "
          "| KFAC on all N | EKFAC on all N | MAP |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mname in models:
        for pname in priors:
            for b in [int(x) for x in a.batches.split(",")]:
                d, s2, s1, e1 = (results[(mname, pname, k, b)] for k in ["debiased", "kfac-2B", "kfac-B", "ekfac-B"])
                diff = [x - y for x, y in zip(d, s2)]
                diffe = [x - y for x, y in zip(d, e1)]
                cells = [f"{m:.4f} ± {e:.4f}" for m, e in map(mean_se, [d, s2, s1, e1, diff, diffe])]
                full, efull, mp = (results[(mname, pname, k, 0)][0] for k in ["kfac-N", "ekfac-N", "map"])
                print(f"| {mname} | {pname} | {b} | " + " | ".join(cells) + f" | {full:.4f} | {efull:.4f} | {mp:.4f} |")
    print(f"\nTest NLL (597 digits), mean ± standard error over {a.seeds} seeds; linearized predictive, "
          f"probit link.")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"|".join(map(str, k)): v for k, v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
