"""`tuner run` (tuner.commands.run) in-process on SQLite, without training: a broken environment is one line and
exit 2 before any trial; each run of a study claims its own sampler seed (the study's on the first run, a distinct
one on every re-run), so a re-run continues the configuration sequence instead of replaying it."""

from __future__ import annotations

import copy

import optuna

from tests.tuner.tiny import BASE, write
from tuner.cli import main
from tuner.storage.samplers import RUN_SEED_PREFIX


def test_reruns_claim_distinct_seeds_and_a_broken_cache_dir_takes_no_trial(tmp_path, capsys):
    d = copy.deepcopy(BASE)
    d["sampler"] = {"name": "random", "seed": 3}
    study = write(tmp_path, d)
    url = f"sqlite:///{tmp_path / 't.db'}"
    (tmp_path / "f").write_text("x")
    for _ in range(3):
        assert main(["run", str(study), "--storage", url, "--cache-dir", str(tmp_path / "f")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --cache-dir"), err
    storage = optuna.storages.RDBStorage(url)
    sid = storage.get_study_id_from_name(d["name"])
    assert storage.get_all_trials(sid) == []
    seeds = [v for k, v in storage.get_study_system_attrs(sid).items() if k.startswith(RUN_SEED_PREFIX)]
    assert len(seeds) == 3 and len(set(seeds)) == 3 and 3 in seeds  # the first run kept the study's seed
