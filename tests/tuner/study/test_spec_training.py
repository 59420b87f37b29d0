"""`training: {step: ...}` in a study file: the three steps, their train_and_evaluate switches, the one-line errors,
the default (eager, and absent from the stored spec so earlier studies compare equal), and the device check."""

from __future__ import annotations

import pytest

from tests.tuner.tiny import BASE, spec
from tuner.errors import SpecError
from tuner.study.loader import spec_from_dict
from tuner.study.spec import StepMode, TrainingSettings


@pytest.mark.parametrize(
    "step, compile_step, cuda_graph_step",
    [("eager", False, False), ("compile", True, False), ("compile_graphs", True, True)],
)
def test_each_step_loads_with_its_trainer_switches_and_round_trips(step, compile_step, cuda_graph_step):
    s = spec(training={"step": step})
    assert s.training == TrainingSettings(StepMode(step))
    assert (s.training.step.compile_step, s.training.step.cuda_graph_step) == (compile_step, cuda_graph_step)
    again = spec_from_dict(s.to_dict(), where="again.yaml")
    assert again.training == s.training and again.to_dict() == s.to_dict()


def test_the_default_is_eager_and_leaves_the_stored_spec_as_before():
    s = spec()
    assert s.training.step is StepMode.EAGER
    assert "training" not in s.to_dict()  # a stored spec from before the key compares equal
    assert spec(training={"step": "eager"}).to_dict() == s.to_dict()
    assert spec(training={}).training.step is StepMode.EAGER
    assert spec(training={"step": "compile"}).to_dict()["training"] == {"step": "compile"}


@pytest.mark.parametrize(
    "training, key, words",
    [
        ({"step": "compiled"}, "training.step:", "'compiled' is not a step (did you mean 'compile'?)"),
        ({"step": 3}, "training.step:", "use one of: eager, compile, compile_graphs"),
        ({"step": None}, "training.step:", "use one of: eager, compile, compile_graphs"),
        ({"stp": "compile"}, "training.stp:", "did you mean 'step'"),
        ("compile", "training:", "expected a mapping"),
    ],
    ids=["typo", "int", "null", "unknown-key", "not-a-mapping"],
)
def test_a_bad_step_is_one_line_naming_the_key_and_the_choices(training, key, words):
    with pytest.raises(SpecError) as info:
        spec_from_dict({**BASE, "training": training}, where="test.yaml")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"test.yaml: {key}") and words in msg, msg


def test_only_compile_graphs_is_refused_off_cuda_in_one_line():
    assert StepMode.EAGER.device_problem("cpu") is None and StepMode.COMPILE.device_problem("cpu") is None
    assert StepMode.COMPILE_GRAPHS.device_problem("cuda") is None
    problem = StepMode.COMPILE_GRAPHS.device_problem("cpu")
    assert problem is not None and "\n" not in problem
    assert problem.startswith("step compile_graphs replays CUDA graphs and needs a CUDA device") and "on cpu" in problem
