"""kernels/triton_direct.py: which launches reuse a compiled kernel and how they call its launcher (a stand-in kernel
records the calls: the direct path needs a GPU to run for real, where tests/kernels/test_scan.py's bitwise test and
bench/kernel_bench.py's float64 checks run it), and a guard that Triton's own launch still has the shape copied."""

from __future__ import annotations

import inspect
import types

import pytest
import torch
import triton

from kernels import triton_direct
from kernels.triton_direct import DirectLaunch, specialization_key


class FakeCompiled:
    """What Triton's launch returns: a compiled kernel whose launcher records its arguments."""

    function, packed_metadata = "fn-handle", ("meta",)

    def __init__(self, runs):
        self.run = lambda *args: runs.append(args)


class FakeJIT:
    """A @triton.jit kernel (p_x, p_y, n, BLOCK, FLAG): launching it through `kernel[grid](...)` is recorded."""

    def __init__(self):
        self.fn = types.SimpleNamespace(__name__="fake_kernel")
        self.arg_names = ["p_x", "p_y", "n", "BLOCK", "FLAG"]
        self.params = [types.SimpleNamespace(name=n, is_constexpr=n.isupper()) for n in self.arg_names]
        self.launches, self.runs = [], []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, args, kwargs))
            return FakeCompiled(self.runs)

        return launch


@pytest.fixture
def compiled_mode(monkeypatch):
    """Not the interpreter, no launch hooks, device 0 with stream 7 (a stand-in driver)."""
    monkeypatch.setattr(triton.knobs.runtime, "interpret", False)
    monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", None)
    monkeypatch.setattr(triton.knobs.runtime, "launch_exit_hook", None)
    fake_driver = types.SimpleNamespace(
        active=types.SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda device: 7)
    )
    monkeypatch.setattr(triton_direct, "driver", fake_driver)


def test_the_first_launch_goes_through_triton_later_ones_call_the_compiled_launcher(compiled_mode):
    k = FakeJIT()
    launch = DirectLaunch(k)
    x, y = torch.zeros(64), torch.zeros(64)
    # constexprs given out of signature order: the direct call must still pass them in signature order
    launch((3, 2), (x, y), (64,), {"FLAG": True, "BLOCK": 16}, 4)
    assert k.launches == [((3, 2), (x, y, 64), {"FLAG": True, "BLOCK": 16, "num_warps": 4})] and k.runs == []
    launch((5, 1), (x, y), (50,), {"FLAG": True, "BLOCK": 16}, 4)
    assert len(k.launches) == 1
    # As JITFunction.run: grid, stream, function, packed metadata, no launch metadata nor hooks, then the arguments
    # in signature order with the pointers as ints.
    assert k.runs == [(5, 1, 1, 7, "fn-handle", ("meta",), None, None, None, x.data_ptr(), y.data_ptr(), 50, 16, True)]


@pytest.mark.parametrize(
    "change",
    ["unaligned pointer", "dtype", "int past i32", "constexpr", "warps"],
)
def test_a_launch_triton_would_specialise_differently_goes_through_triton(compiled_mode, change):
    k = FakeJIT()
    launch = DirectLaunch(k)
    x, y = torch.zeros(64), torch.zeros(64)
    launch((1, 1), (x, y), (64,), {"BLOCK": 16, "FLAG": False}, 4)
    args = {"tensors": (x, y), "ints": (64,), "constexprs": {"BLOCK": 16, "FLAG": False}, "warps": 4}
    if change == "unaligned pointer":
        args["tensors"] = (x[1:], y)  # 4 bytes past an aligned start: Triton drops its divisible-by-16 hint
    elif change == "dtype":
        args["tensors"] = (x.double(), y)
    elif change == "int past i32":
        args["ints"] = (2**31,)
    elif change == "constexpr":
        args["constexprs"] = {"BLOCK": 32, "FLAG": False}
    else:
        args["warps"] = 8
    launch((1, 1), args["tensors"], args["ints"], args["constexprs"], args["warps"])
    assert len(k.launches) == 2 and k.runs == []


def test_the_interpreter_and_launch_hooks_always_take_tritons_path(compiled_mode, monkeypatch):
    k = FakeJIT()
    launch = DirectLaunch(k)
    x = torch.zeros(8)
    for setting in ("interpret", "launch_enter_hook"):
        with monkeypatch.context() as m:
            m.setattr(triton.knobs.runtime, setting, True if setting == "interpret" else print)
            for _ in range(2):
                launch((1, 1), (x, x), (8,), {"BLOCK": 8, "FLAG": False}, 1)
    assert len(k.launches) == 4 and k.runs == []


def test_a_wrong_argument_count_is_refused(compiled_mode):
    launch = DirectLaunch(FakeJIT())
    with pytest.raises(TypeError, match=r"DirectLaunch\(fake_kernel\): 5 parameters, got 2 tensors \+ 2 ints"):
        launch((1, 1), (torch.zeros(1), torch.zeros(1)), (1, 2), {"BLOCK": 8, "FLAG": False}, 1)


def test_key_separates_devices_alignment_and_host_tensors():
    x = torch.zeros(16)
    on_gpu = types.SimpleNamespace(dtype=x.dtype, is_cuda=True)  # stands in for a CUDA tensor (no GPU here)
    base = specialization_key(0, (on_gpu,), (1024,), (5,), (16,), 4)
    assert specialization_key(0, (on_gpu,), (2048,), (7,), (16,), 4) == base  # other aligned address, other size
    assert specialization_key(1, (on_gpu,), (1024,), (5,), (16,), 4) != base
    assert specialization_key(0, (on_gpu,), (1028,), (5,), (16,), 4) != base
    assert specialization_key(0, (x,), (1024,), (5,), (16,), 4) != base  # a host tensor: Triton's path, its error


def test_tritons_launch_still_ends_the_way_direct_launch_copies():
    """DirectLaunch calls a compiled kernel's launcher the way JITFunction.run does in Triton 3.6; a Triton whose
    run() launches differently must fail here before a GPU run finds out."""
    src = inspect.getsource(triton.runtime.jit.JITFunction.run)
    assert "kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, kernel.packed_metadata, launch_metadata," in src
    assert "knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *bound_args.values())" in src
