#!/usr/bin/env bash
# GPU call B (x4): GPU0 throughput rows A; GPU1 packing (one worker vs --per-gpu auto); GPU2 LNS small-M then
# throughput rows B; GPU3 the shipped 8 GiB study with packing for ~470 s (gpu_busy_frac on real 8M-token trials).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
W=/tmp/w; mkdir -p $W/res
T0=$(date +%s)
TUNER="python3 -c 'import sys; from tuner.cli import main; sys.exit(main())'"
( CUDA_VISIBLE_DEVICES=0 python3 bench/throughput.py --out $W/tpa --budget-s 480 \
    --rows 8gb:eager,8gb:compile_fused,dense:eager,24gb:eager,24gb:compile_fused > $W/tpa.log 2>&1 ) &
( python3 bench/packing.py --gpu 1 --train-tokens 1000000 --window-s 170 --out $W/res/packing.json --workdir $W/pack > $W/pack.log 2>&1 ) &
( CUDA_VISIBLE_DEVICES=2 python3 bench/lns_bench.py --small-m --out $W/lns > $W/lns.log 2>&1
  left=$(( 540 - ($(date +%s) - T0) ))
  CUDA_VISIBLE_DEVICES=2 python3 bench/throughput.py --out $W/tpb --budget-s $left \
    --rows 10gb:eager,10gb:compile_fused,8gb:compile,8gb:fused,dense:compile_fused > $W/tpb.log 2>&1 ) &
( timeout -s TERM 470 python3 -c 'import sys; from tuner.cli import main; sys.exit(main())' launch studies/phase1_8gb.yaml \
    --storage sqlite:///$W/study_8gb.db --gpus 3 --per-gpu auto --cache-dir $W/cache8 > $W/study.log 2>&1
  sleep 20
  python3 - > $W/res/study_8gb_trials.json 2>>$W/study.log <<'PY'
import json, optuna
optuna.logging.set_verbosity(optuna.logging.ERROR)
st = optuna.load_study(study_name="phase1_8gb", storage="sqlite:////tmp/w/study_8gb.db")
print(json.dumps([{"number": t.number, "state": t.state.name, "params": t.params, "values": t.values,
                   "user_attrs": t.user_attrs, "system_attrs": t.system_attrs,
                   "start": str(t.datetime_start), "complete": str(t.datetime_complete)} for t in st.trials],
                 default=str, indent=1))
PY
) &
wait
echo "all $(( $(date +%s) - T0 )) s"
cp $W/tpa/throughput.json $W/res/throughput_a.json; cp $W/tpa/profile_step.json $W/res/profile_step_a.json
cp $W/tpb/throughput.json $W/res/throughput_b.json; cp $W/tpb/profile_step.json $W/res/profile_step_b.json
cp $W/lns/*.json $W/res/; cp $W/study_8gb.db $W/res/
cp $W/*.log $W/res/
tar czf $OUT/results.tgz -C $W res
for f in $W/*.log; do echo "=== $f"; tail -6 $f; done
