"""tuner.trial.child_outcome: what the trial child sends back is plain JSON data, the model left out, an error one
summary line and a bounded traceback."""

from __future__ import annotations

import dataclasses

import numpy as np

from tuner.trial.child_outcome import error_outcome, jsonable, result_dict


def test_jsonable_turns_results_into_json_values():
    @dataclasses.dataclass
    class Point:
        tokens: int
        ppl: float

    assert jsonable({1: Point(3, float("inf"))}) == {"1": {"tokens": 3, "ppl": None}}
    assert jsonable((np.float32(0.5), np.int64(2), None, True)) == [0.5, 2.0, None, True]
    assert jsonable(object()).startswith("<object object")


def test_result_dict_leaves_the_model_out_and_keeps_the_float_ppl():
    @dataclasses.dataclass
    class Result:
        val_ppl: float
        model: object

    assert result_dict(Result(12.5, object())) == {"val_ppl": 12.5, "val_ppl_float": 12.5}


def test_error_outcome_is_one_summary_line_and_a_bounded_traceback():
    try:
        raise ValueError("x" * 1000)
    except ValueError as e:
        out = error_outcome(e)
    assert (
        out["kind"] == "error" and out["error_summary"].startswith("ValueError: x") and len(out["error_summary"]) == 500
    )
    assert "raise ValueError" in out["traceback"] and len(out["traceback"]) <= 4000
