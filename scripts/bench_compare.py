"""Side-by-side benchmark: `curvops bench` and the JAX peer on the same problem files.

Usage: python3 scripts/bench_compare.py [BENCH_DIR] [--reps R] [--dtypes f32,f64] [--threads 1,2]
       [--out docs/benchmarks.md]

Runs, for each problem, dtype and thread count, first `curvops bench` then
`BENCH_DIR/peer_jax.py` (JAX jit; needs `pip install jax jaxlib scipy numpy safetensors`), one after
the other in the same session, and the whole `curvops eigs ggn --k 10 --tol 1e-4` process against
the peer's scipy eigsh. Prints a markdown table (medians in ms) and the raw JSON lines.
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


def run_lines(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(l) for l in out.splitlines() if l.strip().startswith("{")]


def time_process(cmd, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        ts.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bench_dir", nargs="?", default=os.path.join(ROOT, "..", "shared", "bench"))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--dtypes", default="f32")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--problems", default="P1,P2,P3")
    ap.add_argument("--eigs-reps", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    peer = os.path.join(a.bench_dir, "peer_jax.py")
    rows, raw = [], []
    for prob in a.problems.split(","):
        pdir = os.path.join(a.bench_dir, prob)
        for dt in a.dtypes.split(","):
            for th in a.threads.split(","):
                ours = run_lines([CURVOPS, "bench", pdir, "--json", "--reps", str(a.reps), "--dtypes", dt,
                                  "--thread-counts", th])
                jax = run_lines([sys.executable, peer, pdir, "--threads", th, "--reps", str(a.reps),
                                 "--dtype", "float32" if dt == "f32" else "float64"])
                raw += ours + jax
                # whole `curvops eigs` process (pinned to the same number of cores as the peer)
                cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:int(th)])
                eig_cmd = ["taskset", "-c", cores, CURVOPS, "eigs", "ggn", "--problem", pdir, "--k", "10",
                           "--tol", "1e-4", "--dtype", dt, "--threads", th, "--json"]
                eig_ms = time_process(eig_cmd, a.eigs_reps)
                eig_mv = run_lines(eig_cmd)[0]["matvecs"]
                jx = {r["op"]: r for r in jax}
                for r in ours:
                    j = jx.get(r["op"])
                    rows.append((prob, r["op"], dt, th, r["ms"], r["ratio_to_gradient"], j["ms"] if j else None,
                                 r.get("peak_rss_mb")))
                je = jx.get("ggn_top10_eigs")
                rows.append((prob, "ggn_top10_eigs (whole process)", dt, th, round(eig_ms, 2), None,
                             je["ms"] if je else None, None))
                raw.append({"problem": prob, "op": "ggn_top10_eigs", "ms": eig_ms, "matvecs": eig_mv, "dtype": dt,
                            "threads": int(th), "peer_matvecs": je["matvecs"] if je else None})
    lines = ["| problem | op | dtype | threads | curvops ms | ratio to our gradient | JAX ms | JAX / curvops | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p, op, dt, th, ms, ratio, jms, rss in rows:
        sp = f"{jms / ms:.2f}×" if jms else "—"
        lines.append(f"| {p} | {op} | {dt} | {th} | {ms:.3f} | {'' if ratio is None else f'{ratio:.2f}'} | "
                     f"{'' if jms is None else f'{jms:.3f}'} | {sp} | {'' if rss is None else rss} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n\n<details><summary>raw JSON lines</summary>\n\n```\n")
            f.write("\n".join(json.dumps(r) for r in raw))
            f.write("\n```\n</details>\n")


if __name__ == "__main__":
    main()
