#!/usr/bin/env bash
# usage: run.sh NAME SEED [--set ...]   after `make demo`: the demo's recipe (demo/tiny-s.json, demo/train.json)
# under torchrun on demo/prep with another seed, then its test-split metrics into $OUT/results.txt
set -eu
name=$1; seed=$2; shift 2
cd "$(dirname "$0")/../../.."
OUT=${OUT:-runs/dense-vs-deformable}
mkdir -p "$OUT"
OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc-per-node=2 -m losh.cli.main train --data demo/prep \
  --out "$OUT/$name" --config demo/tiny-s.json --settings demo/train.json --seed "$seed" "$@" > "$OUT/$name.log" 2>&1
.venv/bin/losh evaluate --data demo/prep --checkpoint "$OUT/$name/checkpoints/last.pt" --out "$OUT/$name-eval" \
  --overwrite >> "$OUT/$name.log" 2>&1
python3 -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[2], *(f'{k}={m[k]:.4f}' for k in \
('mean_iou', 'overall_iou', 'map')))" "$OUT/$name-eval/metrics.json" "$name" >> "$OUT/results.txt"
