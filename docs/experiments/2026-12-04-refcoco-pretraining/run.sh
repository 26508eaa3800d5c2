#!/usr/bin/env bash
set -u
cd "$(dirname "$0")/../../.."
TR="env OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc-per-node=2 -m losh.cli.main train"
A2D=demo/prep
ev() { .venv/bin/python -m losh.cli.main evaluate --data $A2D --checkpoint ${OUT:-runs/refcoco-pretraining}/$1/checkpoints/last.pt --out ${OUT:-runs/refcoco-pretraining}/$1-eval --overwrite > ${OUT:-runs/refcoco-pretraining}/$1.eval.log 2>&1
  echo "$1 $(python3 -c "import json;m=json.load(open('${OUT:-runs/refcoco-pretraining}/$1-eval/metrics.json'));print('mean_iou=%.4f overall=%.4f map=%.4f'%(m['mean_iou'],m['overall_iou'],m['map']))")" >> ${OUT:-runs/refcoco-pretraining}/results.txt; }
s=$(date +%s)
$TR --data ${OUT:-runs/refcoco-pretraining}/refcoco,${OUT:-runs/refcoco-pretraining}/refcoco+,${OUT:-runs/refcoco-pretraining}/refcocog --out ${OUT:-runs/refcoco-pretraining}/pretrain --config demo/tiny-s.json --settings docs/experiments/2026-12-04-refcoco-pretraining/pretrain-settings.json --seed 42 --set loss.fbc=0 > ${OUT:-runs/refcoco-pretraining}/pretrain.log 2>&1
echo "pretrain rc=$? seconds=$(( $(date +%s) - s ))" >> ${OUT:-runs/refcoco-pretraining}/results.txt
for seed in 42 1 2; do
  $TR --data $A2D --out ${OUT:-runs/refcoco-pretraining}/ft-s$seed --config demo/tiny-s.json --settings docs/experiments/2026-12-04-refcoco-pretraining/finetune-settings.json --seed $seed --init-from ${OUT:-runs/refcoco-pretraining}/pretrain/checkpoints/last.pt > ${OUT:-runs/refcoco-pretraining}/ft-s$seed.log 2>&1; ev ft-s$seed
  $TR --data $A2D --out ${OUT:-runs/refcoco-pretraining}/scratch-s$seed --config demo/tiny-s.json --settings docs/experiments/2026-12-04-refcoco-pretraining/finetune-settings.json --seed $seed > ${OUT:-runs/refcoco-pretraining}/scratch-s$seed.log 2>&1; ev scratch-s$seed
done
