"""Side-by-side benchmark of `curvops bench` and the PyTorch peers (torch.func, curvlinops) on the
graph problems P4 (ResNet) and P5 (GPT).

Usage: python3 scripts/bench_torch_compare.py [BENCH_DIR] [--problems P4,P5] [--rounds 2]
       [--reps 10] [--slow-reps 3] [--threads 1] [--dtype f32] [--peer-python PY] [--no-slow]
       [--no-eigs] [--out table.md] [--raw raw.jsonl]

For each round and problem it runs, alternating which tool goes first (ours first in odd
rounds):

* `target/release/curvops bench DIR --json --threads T --dtype D --reps R --ops ...` for the
  products (gradient, ggn_vp, hvp and their cached variants), once more with `--slow-reps` for
  ggn_block16(_cached) and kfac_build, and (first round only) once for eigs10;
* `BENCH_DIR/peer_torch.py DIR --threads T --dtype D --reps R` (torch.set_num_threads(T), with
  OMP_NUM_THREADS = MKL_NUM_THREADS = T) under `--peer-python` (default: $PEER_PYTHON, else this
  interpreter; it needs torch, numpy, scipy, safetensors and curvlinops-for-pytorch from PyPI),
  and (first round only) its ggn_top10_eigs.

Each tool reports medians of its own timed runs after warm-ups; the table gives, per op, the
median over the rounds of those medians, each tool's ratio to its own gradient, the speed-up
(peer ms / curvops ms) and the peak resident memory of each process while the op ran (VmHWM
reset before the op; it includes what the process already held). Pairs: our cold `ggn_vp`/`hvp`
(forward pass included) against torch.func's and against curvlinops' GGN/Hessian operators (both
recompute the forward pass per product); `eigs10` against `ggn_top10_eigs` (scipy eigsh on the
torch.func GGN-vp); `kfac_build` against curvlinops' KFAC (which covers fewer parameters on P5:
the row gives the peer's D_kfac).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CURVOPS = os.path.join(ROOT, "target", "release", "curvops")

FAST_OPS = ["gradient", "ggn_vp", "hvp", "ggn_vp_cached", "hvp_cached"]
SLOW_OPS = ["ggn_block16", "ggn_block16_cached", "kfac_build"]
PEER_FAST = ["gradient", "gradient_sdpa_math", "ggn_vp", "hvp", "ggn_vp_curvlinops", "hvp_curvlinops"]
PEER_SLOW = ["ggn_block16", "kfac_build"]

# (row label, our op, peer op)
PAIRS = [
    ("gradient", "gradient", "gradient"),
    ("gradient (torch: sdpa math kernel)", None, "gradient_sdpa_math"),
    ("ggn_vp (cold)", "ggn_vp", "ggn_vp"),
    ("hvp (cold)", "hvp", "hvp"),
    ("ggn_vp vs GGNLinearOperator", "ggn_vp", "ggn_vp_curvlinops"),
    ("hvp vs HessianLinearOperator", "hvp", "hvp_curvlinops"),
    ("ggn_vp_cached", "ggn_vp_cached", None),
    ("hvp_cached", "hvp_cached", None),
    ("ggn_block16 (cold)", "ggn_block16", "ggn_block16"),
    ("ggn_block16_cached", "ggn_block16_cached", None),
    ("kfac_build", "kfac_build", "kfac_build"),
    ("top-10 GGN eigenvalues", "eigs10", "ggn_top10_eigs"),
]


def run_lines(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}\n")
    return [json.loads(l) for l in p.stdout.splitlines() if l.strip().startswith("{")]


def ours(pdir, a, ops, reps):
    cmd = [CURVOPS, "bench", pdir, "--json", "--threads", str(a.threads), "--dtype", a.dtype,
           "--reps", str(reps), "--ops", ",".join(ops)]
    # gradient is always measured (the unit of the ratios); keep it from the run that asks for it
    return [r for r in run_lines(cmd) if r["op"] in ops]


def peer(pdir, a, ops, reps):
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    cmd = [a.peer_python, os.path.join(a.bench_dir, "peer_torch.py"), pdir, "--threads", str(a.threads),
           "--dtype", a.dtype, "--reps", str(reps), "--ops", ",".join(ops)]
    return [r for r in run_lines(cmd, env) if r["op"] in ops]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, nd=1):
    return "" if v is None else f"{v:.{nd}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench_dir", nargs="?", default=os.path.join(ROOT, "..", "shared", "bench"))
    ap.add_argument("--problems", default="P4,P5")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10, help="timed runs of the products (both tools)")
    ap.add_argument("--slow-reps", type=int, default=3, help="timed runs of ggn_block16 and kfac_build")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="f32", choices=["f32", "f64"])
    ap.add_argument("--peer-python", default=os.environ.get("PEER_PYTHON", sys.executable))
    ap.add_argument("--no-slow", action="store_true", help="skip ggn_block16 and kfac_build")
    ap.add_argument("--no-eigs", action="store_true", help="skip the eigensolvers")
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("--raw", help="also write every JSON row here")
    a = ap.parse_args()
    a.bench_dir = os.path.abspath(a.bench_dir)
    if not os.path.exists(CURVOPS):
        sys.exit(f"{CURVOPS} not found: run `cargo build --release` first")

    raw = []
    by = {}  # (problem, side, op) -> rows
    for rnd in range(a.rounds):
        for prob in a.problems.split(","):
            pdir = os.path.join(a.bench_dir, prob)

            def our_side():
                rows = ours(pdir, a, FAST_OPS, a.reps)
                if not a.no_slow:
                    rows += ours(pdir, a, SLOW_OPS, a.slow_reps)
                if rnd == 0 and not a.no_eigs:
                    rows += ours(pdir, a, ["eigs10"], 1)
                return rows

            def peer_side():
                rows = peer(pdir, a, PEER_FAST, a.reps)
                if not a.no_slow:
                    rows += peer(pdir, a, PEER_SLOW, a.slow_reps)
                if rnd == 0 and not a.no_eigs:
                    rows += peer(pdir, a, ["ggn_top10_eigs"], 1)
                return rows

            sides = [("ours", our_side), ("peer", peer_side)]
            if rnd % 2 == 1:
                sides.reverse()
            for side, fn in sides:
                t0 = time.time()
                rows = fn()
                sys.stderr.write(f"round {rnd + 1} {prob} {side}: {len(rows)} rows in {time.time() - t0:.0f} s\n")
                for r in rows:
                    r["round"], r["side"] = rnd + 1, side
                    raw.append(r)
                    by.setdefault((prob, side, r["op"]), []).append(r)

    def cell(prob, side, op, key):
        return med([r.get(key) for r in by.get((prob, side, op), [])])

    lines = [f"{a.dtype}, {a.threads} thread(s); medians over {a.rounds} alternating rounds of each tool's "
             f"median of {a.reps} timed runs ({a.slow_reps} for ggn_block16 and kfac_build; eigensolvers: one run)",
             "",
             "| problem | op | curvops ms | × our gradient | peer | peer ms | × peer gradient | peer / curvops "
             "| curvops peak RSS MiB | peer peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for prob in a.problems.split(","):
        g_ours = cell(prob, "ours", "gradient", "ms")
        g_peer = cell(prob, "peer", "gradient", "ms")
        for label, o, pr in PAIRS:
            ms_o = cell(prob, "ours", o, "ms") if o else None
            ms_p = cell(prob, "peer", pr, "ms") if pr else None
            skipped = [r.get("skipped") for r in by.get((prob, "ours", o), []) if r.get("skipped")] if o else []
            if ms_o is None and ms_p is None and not skipped:
                continue
            prow = by.get((prob, "peer", pr), []) if pr else []
            orow = by.get((prob, "ours", o), []) if o else []
            tool = prow[0].get("tool", "") if prow else ""
            extra = ""
            if o == "kfac_build" and (prow and prow[0].get("D_kfac") or orow and orow[0].get("D_kfac")):
                ours_d = orow[0].get("D_kfac") if orow else None
                excl = ", ".join(orow[0].get("kfac_excluded") or []) if orow else ""
                extra = (f" (D_kfac: curvops {ours_d if ours_d is not None else '—'}"
                         f"{' without ' + excl if excl else ''}, "
                         f"peer {prow[0].get('D_kfac', '—') if prow else '—'})")
            if o == "eigs10":
                extra = (f" (matvecs {orow[0].get('matvecs', '—') if orow else '—'} / "
                         f"{prow[0].get('matvecs', '—') if prow else '—'})")
            ours_cell = fmt(ms_o, 2) if ms_o is not None else (f"not measured: {skipped[0]}" if skipped else "")
            r_o = ms_o / g_ours if ms_o is not None and g_ours else None
            r_p = ms_p / g_peer if ms_p is not None and g_peer else None
            sp = f"{ms_p / ms_o:.2f}×" if ms_o and ms_p else "—"
            lines.append(
                f"| {prob} | {label}{extra} | {ours_cell} | {fmt(r_o, 2)} | {tool} | {fmt(ms_p, 2)} | {fmt(r_p, 2)} "
                f"| {sp} | {fmt(cell(prob, 'ours', o, 'peak_rss_mb')) if o else ''} "
                f"| {fmt(cell(prob, 'peer', pr, 'peak_rss_mb')) if pr else ''} |")
    loads = [r.get("load1") for r in raw if r.get("load1") is not None]
    if loads:
        lines += ["", f"1-minute load average seen by the peer: {min(loads):.2f}–{max(loads):.2f}"]
    table = "\n".join(lines)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")
    if a.raw:
        with open(a.raw, "w") as f:
            f.write("\n".join(json.dumps(r) for r in raw) + "\n")


if __name__ == "__main__":
    main()
