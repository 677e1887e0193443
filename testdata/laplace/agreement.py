"""The laplace-torch agreement table of docs/laplace.md: `curvops laplace evaluate` on a fixture
(model.json, trained.safetensors, train/test.safetensors) against the fixture's anchor.json
(laplace-torch 0.3, float64): log marginal likelihood and the probit predictive's test accuracy,
NLL and ECE at tau in {0.1, 1, 10}, and the tau maximizing the log marginal likelihood, for
full/all, diag/all, KFAC/all and full/last-layer, with relative differences.
Usage: python3 agreement.py CURVOPS [FIXTURE_DIR]   (prints a markdown table)"""
import json
import os
import subprocess
import sys

curvops = sys.argv[1]
d = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
anchor = json.load(open(os.path.join(d, "anchor.json")))
base = [curvops, "laplace", "evaluate", "--model", f"{d}/model.json", "--weights", f"{d}/trained.safetensors",
        "--data", f"{d}/train.safetensors", "--test-data", f"{d}/test.safetensors", "--json"]
configs = [("full_all", "full", "all"), ("diag_all", "diag", "all"), ("kron_all", "kfac", "all"),
           ("full_lastlayer", "full", "last-layer")]


def run(structure, subset, prior):
    out = subprocess.run(base + ["--structure", structure, "--subset", subset] + prior, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


print("| configuration | τ | quantity | curvops | laplace-torch 0.3 | rel. diff |")
print("|---|---|---|---|---|---|")
worst = 0.0
m = None
for key, structure, subset in configs:
    for tau in ("0.1", "1.0", "10.0"):
        o = run(structure, subset, ["--prior-precision", tau])
        m = o["map"]
        a = anchor[key]["fixed"][tau]
        for q, ours in [("log marglik", o["log_marginal_likelihood"]), ("NLL", o["laplace"]["nll"]),
                        ("accuracy", o["laplace"]["accuracy"]), ("ECE", o["laplace"]["ece"])]:
            theirs = a["log_marginal_likelihood" if q == "log marglik" else q.lower()]
            r = rel(ours, theirs)
            worst = max(worst, r)
            print(f"| {structure}/{subset} | {tau} | {q} | {ours:.12g} | {theirs:.12g} | {r:.1e} |")
    o = run(structure, subset, ["--prior", "marglik"])
    ours, theirs = o["prior_precision"], anchor[key]["marglik_tau"]
    print(f"| {structure}/{subset} | marglik | τ* | {ours:.6g} | {theirs:.6g} | {rel(ours, theirs):.1e} |")
    # the exact optimum: the log marginal likelihood (computed here) at both τ*
    at_theirs = run(structure, subset, ["--prior-precision", repr(theirs)])["log_marginal_likelihood"]
    lml = o["log_marginal_likelihood"]
    print(f"| {structure}/{subset} | marglik | log marglik at τ* (both by curvops) | {lml:.12g} | {at_theirs:.12g} "
          f"| {rel(lml, at_theirs):.1e} |")
for q in ("accuracy", "nll", "ece"):
    r = rel(m[q], anchor["map"][q])
    worst = max(worst, r)
    print(f"| MAP | – | {q} | {m[q]:.12g} | {anchor['map'][q]:.12g} | {r:.1e} |")
print(f"\nlargest relative difference (all but τ*): {worst:.1e}")
