"""Peak tensor memory on CPU, measured: the bytes of tensor storages alive at once, tracked op by op.

On CUDA the trainer reads `torch.cuda.max_memory_allocated` (kind "cuda_max_allocated"). The CPU allocator keeps no
such counter, so `TensorMemoryTracker` counts it itself (kind "cpu_tensor_bytes"): a `TorchDispatchMode` sees every
ATen op's outputs, adds each new storage's `nbytes` to a live total, and a weakref callback on the storage's Python
object (which PyTorch keeps alive exactly as long as the C++ storage) subtracts it when the storage is freed. Views
share their base's storage and are counted once; in-place ops create nothing; a storage grown by `resize_` is
re-measured.

What it sees: parameters, gradients, optimizer state, activations saved for backward, autocast copies, temporaries,
as long as they are created inside the mode (or registered with `track`). What it cannot see: scratch buffers a
C++ kernel allocates and frees internally without returning them, and memory outside tensors (Python objects,
memory maps, the allocator's caching). So it is a lower bound on the process's tensor memory, and it is comparable
between CPU runs, not with a GPU's allocator figure.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from model.units import GIB as GIB  # re-exported: tests and callers read model.memory.GIB


class TensorMemoryTracker(TorchDispatchMode):
    """Live and peak bytes of tensor storages on `device_type`, created while the mode is active.

    Usage: `with TensorMemoryTracker() as mem: ...; mem.peak_bytes`. `track(tensors)` registers tensors that already
    existed when the mode was entered (e.g. a model built earlier); `reset_peak()` restarts the peak from the live
    total.
    """

    def __init__(self, device_type: str = "cpu"):
        super().__init__()
        self.device_type = device_type
        self.live_bytes = 0
        self.peak_bytes = 0
        self._sizes: dict[int, int] = {}  # id(storage object) -> bytes counted for it
        self._refs: dict[int, weakref.ref] = {}  # keeps the weakref (and so its callback) alive
        # Re-entrant: a weakref callback can run inside `_add` when the garbage collector frees a storage there;
        # a lock at all because backward may run ops on autograd worker threads.
        self._lock = threading.RLock()

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def live_gib(self) -> float:
        return self.live_bytes / GIB

    def reset_peak(self) -> None:
        with self._lock:
            self.peak_bytes = self.live_bytes

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that exist already (their storages, once each)."""
        for t in tensors:
            self._add(t)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out

    def _add(self, t: torch.Tensor) -> None:
        if t.device.type != self.device_type or t.is_sparse:
            return
        storage = t.untyped_storage()
        key = id(storage)
        nbytes = storage.nbytes()
        with self._lock:
            old = self._sizes.get(key)
            if old == nbytes:
                return
            if old is None:
                self._refs[key] = weakref.ref(storage, self._make_release(key))
            self._sizes[key] = nbytes
            self.live_bytes += nbytes - (old or 0)
            if self.live_bytes > self.peak_bytes:
                self.peak_bytes = self.live_bytes

    def _make_release(self, key: int):
        def release(_ref) -> None:
            with self._lock:
                self.live_bytes -= self._sizes.pop(key, 0)
                self._refs.pop(key, None)

        return release
