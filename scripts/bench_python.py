"""The curvops Python package against curvlinops 3.0.1, side by side in one process.

Usage: python3 scripts/bench_python.py [BENCH_DIR] [--problems P1,P2,P3,P4,P5] [--rounds 2]
       [--reps 11] [--slow-reps 3] [--threads 1] [--cli target/release/curvops] [--out table.md]
       [--raw raw.jsonl] [--no-type2]

For each problem of ../shared/bench (f32) it builds the same torch module (P1–P3 from their
`layers`, P4/P5 with `peer_torch.py`'s classes), wraps P5 so that its output is [N, C, T] as
`nn.CrossEntropyLoss` reads it, and times, alternating which tool goes first in each round:

* `ggn_vp`: `curvops.Problem(...).ggn() @ v` vs `GGNLinearOperator(...) @ v` (both recompute
  the forward pass per product), over all parameters;
* `hvp`: the same for the Hessian;
* `kfac_build` (type-2) and `kfac_build_mc` (one MC sample, curvlinops' default): building the
  operator and its Kronecker factors, over the parameters curvlinops' KFAC covers (Linear and
  Conv2d weights and biases that run as modules; P5: without the attention projections, which
  `nn.MultiheadAttention` applies functionally);
* `eigs10`: the top-10 GGN eigenvalues, `G.eigsh(10, tol=1e-4)` vs
  `scipy.sparse.linalg.eigsh(GGNLinearOperator(...).to_scipy(), k=10, tol=1e-4)`;
* on P3 (the smallest problem) the Python call overhead: `G @ v` and `loss_and_grad` from Python
  against the CLI's `curvops bench P3 --ops gradient,ggn_vp` medians, run in the same rounds.

Each row is the median over rounds of each tool's median over `--reps` timed runs after a
warm-up; the speed-up is curvlinops ms / curvops ms. It needs torch, curvlinops-for-pytorch
3.0.1, scipy, safetensors and the curvops package (`pip install ./python`, release build).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "python", "tests"))


def timeit(fn, reps, budget=20.0):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
        if len(ts) >= 3 and sum(ts) > budget:
            break
    return 1e3 * statistics.median(ts)


class ClassAxisSecond(nn.Module):
    """[N, T, C] -> [N, C, T]: the layout nn.CrossEntropyLoss reads for targets [N, T]."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x).transpose(1, 2)


def load(bench, name):
    """(module, loss, X, y, kfac_params) for problem `name` in f32."""
    from models import read_safetensors, sequential

    d = os.path.join(bench, name)
    spec = json.load(open(os.path.join(d, "model.json")))
    data = read_safetensors(os.path.join(d, "data.safetensors"))
    X, y = data["x"], data["y"]
    if "layers" in spec:
        m = sequential(spec["layers"])
        m.load_state_dict(read_safetensors(os.path.join(d, "weights.safetensors")))
        loss = nn.CrossEntropyLoss() if spec["loss"]["type"] == "cross_entropy" else nn.MSELoss()
    else:
        sys.path.insert(0, bench)
        import peer_torch

        _, m, X, y, _ = peer_torch.load_problem(d, torch.float32)
        loss = nn.CrossEntropyLoss()
    m = m.float().eval()
    X = X.float() if X.is_floating_point() else X
    if not y.is_floating_point():
        y = y.long()
    else:
        y = y.float()
    attn = set()
    for mod in m.modules():
        if isinstance(mod, nn.MultiheadAttention):
            attn |= {id(p) for p in mod.parameters()}
    kf, seen = [], set()
    for mod in m.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            for p in mod.parameters(recurse=False):
                if id(p) not in attn and id(p) not in seen:
                    seen.add(id(p))
                    kf.append(p)
    order = {id(p): i for i, p in enumerate(m.parameters())}
    kf.sort(key=lambda p: order[id(p)])
    if X.ndim == 2 and not X.is_floating_point():  # P5
        m = ClassAxisSecond(m)
    return m, loss, X, y, kf


def cli_bench(cli, bench, name, reps):
    out = subprocess.run([cli, "bench", os.path.join(bench, name), "--json", "--threads", "1", "--dtype", "f32",
                          "--reps", str(reps), "--ops", "gradient,ggn_vp"], capture_output=True, text=True, check=True)
    rows = {}
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            rows[r["op"]] = r["ms"]
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bench", nargs="?", default=os.path.join(ROOT, "..", "shared", "bench"))
    ap.add_argument("--problems", default="P1,P2,P3,P4,P5")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--slow-reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cli", default=os.path.join(ROOT, "target", "release", "curvops"))
    ap.add_argument("--no-type2", action="store_true", help="skip the type-2 KFAC build (slow on P5)")
    ap.add_argument("--no-eigs", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--raw", default=None)
    a = ap.parse_args()

    import curvops
    from curvlinops import GGNLinearOperator, HessianLinearOperator, KFACLinearOperator
    from scipy.sparse.linalg import eigsh

    torch.set_num_threads(a.threads)
    torch.backends.mha.set_fastpath_enabled(False)
    curvops.set_num_threads(a.threads)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    results = {}  # (problem, op) -> {tool: [ms per round]}
    extra = {}
    raw = open(a.raw, "w") if a.raw else None

    def rec(pname, op, tool, ms, **kw):
        results.setdefault((pname, op), {}).setdefault(tool, []).append(ms)
        if kw:
            extra.setdefault((pname, op), {}).update(kw)
        row = {"problem": pname, "op": op, "tool": tool, "ms": round(ms, 4), "load1": round(os.getloadavg()[0], 2), **kw}
        print(json.dumps(row), flush=True)
        if raw:
            raw.write(json.dumps(row) + "\n")

    for rnd in range(a.rounds):
        for pname in a.problems.split(","):
            m, loss, X, y, kf = load(a.bench, pname)
            params = list(m.parameters())
            data = [(X, y)]
            N = len(X)
            D = sum(p.numel() for p in params)
            g = torch.Generator().manual_seed(0)
            v = torch.randn(D, generator=g)
            per_ex = y[0].numel() if y.ndim > 1 and not y.is_floating_point() else 1
            slow = a.slow_reps
            with sdpa_kernel(SDPBackend.MATH):
                P = curvops.Problem(m, loss, (X, y))
                Pk = curvops.Problem(m, loss, (X, y), params=kf)
                G, H = P.ggn(), P.hessian()
                vn = v.numpy()
                Gc = GGNLinearOperator(m, loss, params, data, check_deterministic=False, num_data=N)
                Hc = HessianLinearOperator(m, loss, params, data, check_deterministic=False, num_data=N)
                if rnd == 0:
                    ours, theirs = G @ vn, (Gc @ v).numpy()
                    extra.setdefault((pname, "ggn_vp"), {})["relerr"] = float(
                        np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
                tools = [("curvops", "ours"), ("curvlinops 3.0.1", "peer")]
                if rnd % 2:
                    tools.reverse()
                for tool, who in tools:
                    if who == "ours":
                        rec(pname, "ggn_vp", tool, timeit(lambda: G @ vn, a.reps))
                        rec(pname, "hvp", tool, timeit(lambda: H @ vn, a.reps))
                        rec(pname, "kfac_build_mc", tool, timeit(lambda: Pk.kfac(fisher_type="mc", mc_samples=1), slow))
                        if not a.no_type2:
                            rec(pname, "kfac_build", tool, timeit(lambda: Pk.kfac(fisher_type="type-2"), slow))
                        if not a.no_eigs and rnd == 0:
                            t0 = time.perf_counter()
                            w, _ = G.eigsh(10, tol=1e-4)
                            rec(pname, "eigs10", tool, 1e3 * (time.perf_counter() - t0), top3_ours=[float(x) for x in w[:3]])
                    else:
                        rec(pname, "ggn_vp", tool, timeit(lambda: Gc @ v, a.reps))
                        rec(pname, "hvp", tool, timeit(lambda: Hc @ v, a.reps))

                        def kfac(ft):
                            K = KFACLinearOperator(m, loss, kf, data, check_deterministic=False, fisher_type=ft,
                                                   mc_samples=1, kfac_approx="expand", num_data=N,
                                                   num_per_example_loss_terms=per_ex)
                            K.compute_kronecker_factors()
                            return K

                        rec(pname, "kfac_build_mc", tool, timeit(lambda: kfac("mc"), slow))
                        if not a.no_type2:
                            rec(pname, "kfac_build", tool, timeit(lambda: kfac("type-2"), slow))
                        if not a.no_eigs and rnd == 0:
                            t0 = time.perf_counter()
                            w = eigsh(Gc.to_scipy(), k=10, which="LA", tol=1e-4, return_eigenvectors=False,
                                      v0=np.random.default_rng(0).standard_normal(D).astype(np.float32))
                            rec(pname, "eigs10", tool, 1e3 * (time.perf_counter() - t0),
                                top3_peer=sorted([float(x) for x in w], reverse=True)[:3])
                if pname == "P3":
                    # sub-millisecond ops: many reps, the CLI's run between two Python ones
                    reps = max(a.reps, 101)
                    py1 = (timeit(lambda: G @ vn, reps), timeit(lambda: P.loss_and_grad(), reps))
                    cli = cli_bench(a.cli, a.bench, pname, reps)
                    py2 = (timeit(lambda: G @ vn, reps), timeit(lambda: P.loss_and_grad(), reps))
                    rec(pname, "ggn_vp (overhead)", "python", 0.5 * (py1[0] + py2[0]))
                    rec(pname, "ggn_vp (overhead)", "cli", cli["ggn_vp"])
                    rec(pname, "gradient (overhead)", "python", 0.5 * (py1[1] + py2[1]))
                    rec(pname, "gradient (overhead)", "cli", cli["gradient"])

    lines = ["| problem | op | curvops ms | curvlinops ms | speed-up | note |", "|---|---|---|---|---|---|"]
    for (pname, op), tools in results.items():
        med = {t: statistics.median(v) for t, v in tools.items()}
        note = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.get((pname, op), {}).items())
        if "cli" in med:
            lines.append(f"| {pname} | {op} | python {med['python']:.3f} | CLI {med['cli']:.3f} | "
                         f"overhead {100 * (med['python'] / med['cli'] - 1):+.1f} % | {note} |")
            continue
        o, p = med.get("curvops"), med.get("curvlinops 3.0.1")
        sp = f"{p / o:.2f}×" if o and p else "—"
        lines.append(f"| {pname} | {op} | {o:.2f} | {p:.2f} | {sp} | {note} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        open(a.out, "w").write(table + "\n")


if __name__ == "__main__":
    main()
