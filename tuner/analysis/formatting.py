"""How numbers read in tables and plots: parameters to 4 significant figures, memory in GiB or MiB.

Memory is GiB (2^30 bytes) everywhere in the code; a component under 1 GiB is shown in MiB (2^20 bytes) so that
small parts do not all read `0.000 GiB`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MIB_PER_GIB = 1024.0


def sig4(value: Any) -> str:
    """A parameter value for a table: floats to 4 significant figures (3.142e-03 style only when tiny or huge),
    ints, bools and strings as they are."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.4g}"


def params_text(params: Mapping[str, Any]) -> str:
    """`k=v, ...` with each value through sig4."""
    return ", ".join(f"{k}={sig4(v)}" for k, v in params.items())


def mem_text(gib: float | None, digits: int = 3) -> str:
    """A memory size: `1.234 GiB` at or above 1 GiB, `12.3 MiB` below (`n/a` for None)."""
    if gib is None:
        return "n/a"
    if abs(gib) >= 1.0:
        return f"{gib:.{digits}f} GiB"
    mib = gib * MIB_PER_GIB
    return f"{mib:.3g} MiB" if abs(mib) >= 0.01 or mib == 0 else f"{mib * 1024:.3g} KiB"
