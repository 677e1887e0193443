#!/usr/bin/env bash
# The calibration table of docs/laplace.md: digits (/work/shared/data/digits.csv or $DATA),
# rows permuted with seed 0, 60 % train / 15 % validation / 25 % test; the fixture's MLP
# 64-24-10 tanh from its PyTorch initialization, Adam (lr 0.01, 60 epochs, batch 64) without
# weight decay (net A) and with the weight decay of the prior τ = $TAU (net B; λ = τ/N for the
# mean cross-entropy); then MAP vs Laplace (full, diag, KFAC over all weights; full over the
# last layer) with τ from the marginal likelihood, from a validation grid, and (net B) the
# training prior, on the test set
# and on the test set with Gaussian pixel noise (std $NOISE); OOD AUROC (max-probability) of
# the test set against inverted digits (16 − pixel, all rows). Prints one JSON line per run;
# table.py turns them into the markdown table of docs/laplace.md.
# Usage: run.sh [CURVOPS] ; env: DATA, TAU (default 1), NOISE (default 0.3), OUT (default .)
set -euo pipefail
B=${1:-curvops}
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${DATA:-$HERE/../../../../shared/data/digits.csv}
TAU=${TAU:-1}
NOISE=${NOISE:-0.3}
OUT=${OUT:-.}
M=$HERE/../model.json
I=$HERE/../init.safetensors
awk -F, 'NR == 1 { print; next } { for (i = 1; i < NF; i++) $i = 16 - $i; print }' OFS=, "$DATA" > "$OUT/ood_inverted.csv"
common=(--model "$M" --permute-seed 0 --x-scale 16)
train=(--epochs 60 --optimizer adam --lr 0.01 --batch-size 64 --seed 0)
"$B" train "${common[@]}" --weights "$I" --data "$DATA@:0.6" "${train[@]}" --out "$OUT/A.safetensors" --json > "$OUT/train_A.json"
"$B" train "${common[@]}" --weights "$I" --data "$DATA@:0.6" "${train[@]}" --prior-precision "$TAU" --out "$OUT/B.safetensors" --json > "$OUT/train_B.json"
for net in A B; do
  for cfg in "full all" "diag all" "kfac all" "full last-layer"; do
    set -- $cfg
    base=("${common[@]}" --weights "$OUT/$net.safetensors" --data "$DATA@:0.6" --test-data "$DATA@0.75:"
          --structure "$1" --subset "$2" --shift-noise "$NOISE" --ood-data "$OUT/ood_inverted.csv" --json)
    priors=("--prior marglik" "--prior gridsearch --val-data $DATA@0.6:0.75")
    [ "$net" = B ] && priors+=("--prior-precision $TAU")
    for pr in "${priors[@]}"; do
      # shellcheck disable=SC2086
      r=$("$B" laplace evaluate "${base[@]}" $pr)
      case "$pr" in --prior-precision*) label="train τ=$TAU" ;; *) label=${pr#--prior } label=${label%% *} ;; esac
      echo "{\"net\": \"$net\", \"structure\": \"$1\", \"subset\": \"$2\", \"prior\": \"$label\", \"result\": $r}"
    done
  done
done
