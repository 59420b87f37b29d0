"""The worker's environment check (tuner.trial.environment): a missing data folder and a `--cache-dir` that is a
file are found before any trial, each as one line naming the path and the fix."""

from __future__ import annotations

import copy

import pytest

from tests.tuner.tiny import BASE
from tuner.errors import WorkerEnvironmentError
from tuner.study.loader import spec_from_dict
from tuner.trial.environment import check_cache_dir, check_environment


def _files_spec(path):
    d = copy.deepcopy(BASE)
    d["data"] = {"source": "files", "path": str(path)}
    return spec_from_dict(d, check_paths=False)


def test_a_good_environment_passes(tmp_path):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello world\n" * 100)
    check_environment(_files_spec(tmp_path / "text"), tmp_path / "cache")
    assert (tmp_path / "cache").is_dir() and list((tmp_path / "cache").iterdir()) == []  # the probe is gone


def test_a_missing_data_folder_is_an_environment_error(tmp_path):
    with pytest.raises(WorkerEnvironmentError, match=r"data.path: .*gone does not exist.*on this worker") as info:
        check_environment(_files_spec(tmp_path / "gone"), tmp_path / "cache")
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_a_cache_dir_that_is_a_file_is_an_environment_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(WorkerEnvironmentError, match=r"--cache-dir .*file is not a folder; pass --cache-dir"):
        check_cache_dir(f)
    with pytest.raises(WorkerEnvironmentError, match=r"--cache-dir .*file/sub: "):
        check_cache_dir(f / "sub")  # cannot be created under a file
