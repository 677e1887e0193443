#!/bin/bash
# Newton-CG on digits with biased and debiased steps (docs/debias.md): test NLL per seed.
# usage: scripts/debias_newton.sh [path/to/curvops]
set -e
C=${1:-target/release/curvops}
D=${DIGITS:-../shared/data/digits.csv}; M=testdata/laplace/model.json
T=$(mktemp -d)
run() { # B K epochs seed [extra flags]
  local B=$1 K=$2 E=$3 S=$4; shift 4
  "$C" train --optimizer newton-cg "$@" --model $M --weights testdata/laplace/init.safetensors \
    --data "$D@:0.6" --permute-seed 0 --x-scale 16 --test-data "$D@0.75:" --dtype f64 \
    --batch-size $B --cg-iters $K --epochs $E --seed $S --out $T/w.safetensors --json |
    python3 -c "import json,sys; d=json.load(sys.stdin); print('B=$B K=$K', d['debias'], d['steps'], d['curvature_products'], d['test_loss'])"
}
for cfg in "64 50" "32 50" "64 20"; do
  set -- $cfg
  for s in 1 2 3 4 5; do run $1 $2 5 $s; run $1 $2 5 $s --debias a; run $1 $2 5 $s --debias b; done
done
# the same number of steps and products: biased with 2K = 40 directions against A with 20
for s in 1 2 3 4 5; do run 64 40 5 $s --max-products 1600; done
# plain damped Newton-CG (no Levenberg–Marquardt adaptation)
for d in 3e-2 1e-2; do
  for s in 1 2 3 4 5; do
    for v in "" "--debias a" "--debias b"; do run 64 20 5 $s --damping $d --fixed-damping $v; done
  done
done
rm -rf "$T"
/root/.pyenv/libexec/pyenv-hooks: line 24: enable: cannot open shared object /root/.pyenv/libexec/pyenv-realpath.dylib: /root/.pyenv/libexec/pyenv-realpath.dylib: cannot open shared object file: No such file or directory
