"""Repeat launches of a compiled Triton kernel without Triton's per-call binding.

`kernel[grid](...)` binds and specialises every argument and builds a cache key on each call before it reaches the
C launcher (Triton 3.6: ~10 us of Python for the scan's 18-argument kernels), and the launcher then asks the driver
about every tensor pointer. The scan's kernels take 0.05-0.2 ms, so that host work shows in every call. A
`DirectLaunch` launches through Triton once per specialisation, keeps the compiled kernel Triton returns, and
afterwards calls that kernel's launcher itself with raw device pointers. This is the only module that touches
Triton's compiled-kernel internals (`CompiledKernel.run`, `.function`, `.packed_metadata`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
from triton.runtime import driver

_I32 = 2**31  # Triton types an int argument i32 below this, i64 at or above it (a different compiled kernel)


def specialization_key(
    device: int,
    tensors: Sequence[torch.Tensor],
    ptrs: Sequence[int],
    ints: Sequence[int],
    constexprs: tuple,
    num_warps: int,
) -> tuple:
    """What Triton specialises a launch of a kernel whose integer arguments are all `do_not_specialize` on: the
    (current) device, each pointer's element type and 16-byte alignment, whether every int fits i32, the constexpr
    values and the warp count. Two launches with equal keys run the same compiled kernel. Also whether each tensor
    is on a GPU: a host tensor then goes through Triton, which refuses it, instead of reaching the kernel."""
    return (
        device,
        tuple((t.dtype, t.is_cuda) for t in tensors),
        tuple(p % 16 == 0 for p in ptrs),
        all(-_I32 <= i < _I32 for i in ints),
        constexprs,
        num_warps,
    )


class DirectLaunch:
    """Launches one `@triton.jit` kernel whose parameters are its pointers, then its ints (all `do_not_specialize`),
    then its constexprs, in that order.

    The first launch of each specialisation (see `specialization_key`) goes through Triton, which compiles the
    kernel if needed and returns it; later ones call its launcher directly. Triton's own path serves every launch
    when there is no compiled kernel to reuse (its interpreter, TRITON_INTERPRET=1) and when a launch hook is set
    (profilers read the metadata only that path builds).
    """

    def __init__(self, fn) -> None:
        self.fn = fn  # a JITFunction, or under TRITON_INTERPRET=1 the interpreter's stand-in (no .params)
        self.name = fn.fn.__name__
        self.n_params = len(fn.arg_names)
        self.constexpr_names = [p.name for p in getattr(fn, "params", ()) if p.is_constexpr]
        self.compiled: dict[tuple, object] = {}

    def _through_triton(self, grid, tensors, ints, constexprs, num_warps):
        if len(tensors) + len(ints) + len(constexprs) != self.n_params:
            raise TypeError(
                f"DirectLaunch({self.name}): {self.n_params} parameters, got "
                f"{len(tensors)} tensors + {len(ints)} ints + {len(constexprs)} constexprs"
            )
        return self.fn[grid](*tensors, *ints, **constexprs, num_warps=num_warps)

    def __call__(
        self,
        grid: tuple[int, int],
        tensors: Sequence[torch.Tensor],
        ints: Sequence[int],
        constexprs: dict[str, int | bool],
        num_warps: int,
    ) -> None:
        runtime = triton.knobs.runtime
        if runtime.interpret or runtime.launch_enter_hook is not None or runtime.launch_exit_hook is not None:
            self._through_triton(grid, tensors, ints, constexprs, num_warps)
            return
        ptrs = [t.data_ptr() for t in tensors]
        values = tuple(constexprs[name] for name in self.constexpr_names)  # signature order
        device = driver.active.get_current_device()  # what Triton launches on (the launchers switch to the inputs')
        key = specialization_key(device, tensors, ptrs, ints, values, num_warps)
        kernel = self.compiled.get(key)
        if kernel is None:
            self.compiled[key] = self._through_triton(grid, tensors, ints, constexprs, num_warps)
            return
        stream = driver.active.get_current_stream(device)
        # As JITFunction.run ends: grid, stream, function, packed metadata, launch metadata and hooks (None: no hook
        # set), then every argument in signature order (the launcher skips the constexprs). Pointers as ints: the
        # launcher takes them as they are instead of calling data_ptr() and asking the driver about each.
        kernel.run(  # type: ignore[attr-defined]
            grid[0], grid[1], 1, stream, kernel.function, kernel.packed_metadata,  # type: ignore[attr-defined]
            None, None, None, *ptrs, *ints, *values,
        )  # fmt: skip
