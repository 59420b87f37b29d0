"""LNS in a tuning trial, end to end on CPU through the real worker and its trial child (real Postgres, real tiny
models on real stdlib text): a trial whose config has lns_enabled true is trained with LNS off, converted with
model.lns_linear.convert_to_lns and evaluated converted. Its val_ppl objective is the LNS model's; user attrs say
the evaluation used LNS and carry the float model's PPL beside it (`val_ppl_float`).

The search space has a categorical lns_enabled and both values are enqueued with otherwise identical params, so the
float half of the LNS trial is checked against the float trial: same seed, same config with LNS off, same data -
the same trained model, hence the same float PPL (CPU training is deterministic).
"""

from __future__ import annotations

import optuna
import pytest
from tuner.storage.trial_attrs import all_trial_attrs, trial_attr

TrialState = optuna.trial.TrialState


@pytest.mark.slow
def test_lns_trial_trains_float_converts_and_evaluates_lns(tmp_path, pg_url):
    from tuner.storage.connect import open_storage
    from tuner.storage.studies import create_or_load_study
    from tuner.study.loader import spec_from_dict
    from tuner.trial.worker import run_worker

    spec = spec_from_dict({
        "name": "lns_trial",
        "objectives": [{"metric": "val_ppl", "direction": "minimize"},
                       {"metric": "peak_vram_gib", "direction": "minimize"}],
        "vram_ceiling_gib": 1.0,
        "sampler": {"name": "random", "seed": 0},
        "n_trials": 2,
        "model": {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_seq": 64, "batch_size": 4, "dtype": "float32",
                  "loss_chunk_size": 0, "stability_monitoring_enabled": False, "learning_rate": 5e-3, "seed": 0,
                  "lns_bits": 8, "lns_block_size_m": 16, "lns_block_size_n": 16, "lns_block_size_k": 16},
        "search_space": {"lns_enabled": {"type": "categorical", "choices": [False, True]}},
        "data": {"source": "stdlib", "max_bytes": 262144},
        "budget": {"train_tokens": 2048, "eval_tokens": 512, "trial_timeout_s": 120},
    })
    study = create_or_load_study(spec, open_storage(pg_url))
    study.enqueue_trial({"lns_enabled": False})
    study.enqueue_trial({"lns_enabled": True})
    assert run_worker(spec, storage=open_storage(pg_url), seed=spec.sampler.seed, cache_dir=tmp_path / "cache", install_signal_handlers=False) == 0

    flt, lns = sorted(optuna.load_study(study_name="lns_trial", storage=pg_url).trials, key=lambda t: t.number)
    for t in (flt, lns):
        assert t.state == TrialState.COMPLETE and t.user_attrs["end_reason"] == "complete", t.user_attrs
        assert trial_attr(t, "config")["lns_enabled"] is t.params["lns_enabled"]

    assert flt.user_attrs["eval_used_lns"] is False and "lns_converted_linears" not in flt.user_attrs
    assert flt.user_attrs["val_ppl_float"] == pytest.approx(flt.values[0])

    a = all_trial_attrs(lns)
    assert a["eval_used_lns"] is True and a["lns_converted_linears"] > 0
    # trained with LNS off: the float model is the float trial's model
    assert a["val_ppl_float"] == pytest.approx(flt.values[0], rel=1e-6)
    # evaluated with LNS on: a different (quantised) model, close to the float one at 8 bits
    assert lns.values[0] != a["val_ppl_float"]
    rel = abs(lns.values[0] - a["val_ppl_float"]) / a["val_ppl_float"]
    print(f"val_ppl LNS {lns.values[0]:.3f} vs float {a['val_ppl_float']:.3f} (rel diff {rel:.2e}); "
          f"{a['lns_converted_linears']} linears converted")
    assert rel < 0.10
    # the memory objective is the training peak (the float model's), the same for both trials
    assert lns.values[1] == pytest.approx(flt.values[1], rel=1e-6)
    # the learning curve is the float training run's, and its final point is the float model's PPL
    assert a["curve"][-1]["val_ppl"] == pytest.approx(a["val_ppl_float"])
