"""Markdown calibration table from run.sh's JSON lines (standard input): per net, MAP and each
Laplace variant / prior choice, in distribution (test) and under the pixel-noise shift, with the
OOD AUROC against inverted digits. Usage: run.sh CURVOPS | python3 table.py"""
import json
import sys

rows = [json.loads(line) for line in sys.stdin if line.strip()]
print("| net | predictive | τ | test acc | test NLL | test Brier | test ECE "
      "| shift acc | shift NLL | shift Brier | shift ECE | OOD AUROC |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")


def line(net, name, tau, t, s, auroc):
    cells = [f"{t['accuracy']:.4f}", f"{t['nll']:.4f}", f"{t['brier']:.4f}", f"{t['ece']:.4f}",
             f"{s['accuracy']:.4f}", f"{s['nll']:.4f}", f"{s['brier']:.4f}", f"{s['ece']:.4f}", f"{auroc:.3f}"]
    print(f"| {net} | {name} | {tau} | " + " | ".join(cells) + " |")


seen_map = set()
for o in rows:
    r = o["result"]
    if o["net"] not in seen_map:
        seen_map.add(o["net"])
        line(o["net"], "MAP", "–", r["map"], r["shifted"]["map"], r["ood_auroc"]["map"])
    tau = r["prior_precision"]
    tau = f"{tau:.3g}" if isinstance(tau, float) else str(tau)
    name = f"LA {o['structure']}/{o['subset']}, {o['prior']}"
    line(o["net"], name, tau, r["laplace"], r["shifted"]["laplace"], r["ood_auroc"]["laplace"])
