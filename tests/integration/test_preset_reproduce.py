"""A preset reproduces its trial with no extra flag: `tuner export` writes the study's data source and budget into
the provenance, and `tuner train --preset FILE --json` (no --data, --train-tokens, --eval-tokens, --study) trains the
same config on the same data for the same tokens, landing within 5% of the exported PPL.

The study deliberately uses a data cap (262144 bytes) and a budget (4096 / 512 tokens) different from `tuner train`'s
defaults (stdlib capped at the DataSource default, 200000 / 50000 tokens): a run that fell back to the defaults would
train another corpus for 50x the tokens and miss both the PPL and the token counts checked here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

SPEC = {
    "name": "reproduce",
    "objectives": [{"metric": "val_ppl", "direction": "minimize"}, {"metric": "peak_vram_gib", "direction": "minimize"}],
    "vram_ceiling_gib": 1.0,
    "sampler": {"name": "random", "seed": 0},
    "n_trials": 1,
    "model": {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_seq": 64, "batch_size": 4, "dtype": "float32",
              "loss_chunk_size": 0, "stability_monitoring_enabled": False, "seed": 0},
    "search_space": {"learning_rate": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True}},
    "data": {"source": "stdlib", "max_bytes": 262144},
    "budget": {"train_tokens": 4096, "eval_tokens": 512, "trial_timeout_s": 120},
}


def _tuner(args, cwd, timeout):
    env = {k: v for k, v in os.environ.items() if k != "TUNER_STORAGE"}
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_export_then_train_with_no_flags_reproduces(tmp_path, pg_url):
    from tuner.storage.connect import open_storage
    from tuner.study.loader import spec_from_dict
    from tuner.trial.worker import run_worker

    spec = spec_from_dict(SPEC)
    assert run_worker(spec, storage=open_storage(pg_url), seed=spec.sampler.seed, cache_dir=tmp_path / ".phase1_cache", install_signal_handlers=False) == 0

    preset = tmp_path / "best.yaml"
    export = _tuner(["export", "--study", "reproduce", "--max-vram-gib", "1", "--out", str(preset),
                     "--storage", pg_url], tmp_path, 60)
    assert export.returncode == 0, export.stderr
    prov = yaml.safe_load(preset.read_text())["provenance"]
    assert prov["data"] == spec.data.to_dict() and prov["data"]["max_bytes"] == 262144
    assert (prov["train_tokens"], prov["eval_tokens"]) == (4096, 512)

    # cwd = tmp_path: the default cache (.phase1_cache) is the one the worker filled, so the tokenizer is reused
    train = _tuner(["train", "--preset", str(preset), "--json"], tmp_path, timeout=300)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    lines = [ln for ln in train.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, train.stdout
    got = json.loads(lines[0])
    assert (got["train_tokens"], got["eval_tokens"]) == (4096, 512)
    rel = abs(got["val_ppl"] - prov["val_ppl"]) / prov["val_ppl"]
    print(f"reproduced val_ppl {got['val_ppl']:.3f} vs exported {prov['val_ppl']:.3f} (rel diff {rel:.2e})")
    assert rel < 0.05
