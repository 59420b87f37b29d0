#!/bin/bash
# Issue 18's side measurements beside the 8 GiB study, in one call on a 4-GPU host (what ran on 4x H100 in 418 s):
#   GPU 0: `tuner train` of the exported 8 GiB preset (reproduction) and of the guide's 10gb and 24gb presets at the
#          study's data and budget, three at once; then the TPE study with learning-curve pruning (500k tokens);
#   GPU 1: a smaller study of the same space with a 24 GiB ceiling (290 s), its 24 GiB export and its reproduction;
#   GPU 2: the TPE study, 30 trials, 500k tokens per trial, pruning off;  GPU 3: random search, 60 trials, the same.
# Everything ends by the start + 555 s.
#   bash bench/study_side_runs.sh PRESET_8GIB.yaml OUTDIR
set -u
PRESET8=$1; W=$2; mkdir -p "$W"; C=$W/cache
T0=$(date +%s); END=$((T0 + 555))
left() { echo $((END - $(date +%s))); }
L="python3 -m tuner.cli"
V="python3 bench/study_variants.py studies/phase1_8gb.yaml"
SHORT="--train-tokens 500000 --eval-tokens 65536 --no-baseline --no-enqueue --step eager"
$V --out "$W/tpe30.yaml" --name s_tpe30 $SHORT --n-trials 30 --pruning off
$V --out "$W/rand60.yaml" --name s_rand60 --sampler random $SHORT --n-trials 60 --pruning off
$V --out "$W/tpe30p.yaml" --name s_tpe30_pruned $SHORT --n-trials 30 --pruning on
$V --out "$W/s24.yaml" --name phase1_24gb --ceiling-gib 24 --n-trials 40 --no-baseline
python3 -c "import sys; from pathlib import Path; sys.path.insert(0, '.'); from bench._launch import prepare; \
print('prep', prepare(Path('studies/phase1_8gb.yaml'), Path('$C')))" > "$W/prep.log" 2>&1
LAUNCH="--cache-dir $C --heartbeat-s 10 --grace-s 40"
( for p in "$PRESET8" 10gb 24gb; do n=$(basename "$p" .yaml)
    timeout 300 $L train --preset "$p" --study studies/phase1_8gb.yaml --gpu 0 --cache-dir "$C" --json \
      > "$W/train_$n.json" 2> "$W/train_$n.log" &
  done; wait
  timeout -s TERM "$(left)" $L launch "$W/tpe30p.yaml" --storage "sqlite:///$W/tpe30p.db" --gpus 0 --per-gpu 3 \
    --mps off $LAUNCH > "$W/tpe30p.log" 2>&1 ) &
( timeout -s TERM 290 $L launch "$W/s24.yaml" --storage "sqlite:///$W/s24.db" --gpus 1 --per-gpu 2 --mps off \
    $LAUNCH > "$W/s24.log" 2>&1
  $L export --study phase1_24gb --max-vram-gib 24 --out "$W/preset_24gib.yaml" --storage "sqlite:///$W/s24.db" \
    > "$W/export24.log" 2>&1
  timeout -s TERM "$(left)" $L train --preset "$W/preset_24gib.yaml" --gpu 1 --cache-dir "$C" --json \
    > "$W/train_preset_24gib.json" 2> "$W/train_preset_24gib.log" ) &
( timeout -s TERM "$(left)" $L launch "$W/tpe30.yaml" --storage "sqlite:///$W/tpe30.db" --gpus 2 --per-gpu 3 \
    --mps off $LAUNCH > "$W/tpe30.log" 2>&1 ) &
( timeout -s TERM "$(left)" $L launch "$W/rand60.yaml" --storage "sqlite:///$W/rand60.db" --gpus 3 --per-gpu 3 \
    --mps off $LAUNCH > "$W/rand60.log" 2>&1 ) &
wait
echo "$T0 $(date +%s)" > "$W/t0_end"
