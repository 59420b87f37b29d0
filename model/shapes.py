"""Shape arithmetic of the Phase 1 model that needs no torch: the tensor-train factorisation and the fixed widths.

Imported by the components (model/htt.py, ffn.py, ar_ssm.py) and by the VRAM estimator (tuner/estimate.py), which
must predict without importing torch; one definition serves both.
"""

from __future__ import annotations

FFN_EXPANSION = 4  # FFN hidden width = 4 * d_model
CONV_KERNEL = 3  # AR-SSM local term width (tokens t-2, t-1, t)


def _ceil_root(n: int, k: int) -> int:
    """Smallest integer x with x**k >= n (exact integer arithmetic, no float rounding surprises)."""
    x = max(1, int(round(n ** (1.0 / k))))
    while x ** k < n:
        x += 1
    while x > 1 and (x - 1) ** k >= n:
        x -= 1
    return x


def factorize(n: int, num_cores: int) -> tuple[int, ...]:
    """Near-balanced factors (n1, n2[, n3]) with product >= n, e.g. 50257 -> (225, 224), 1024 -> (32, 32).

    Balanced factors minimise the sum of factors (which is what the parameter count depends on) for a given
    product; the product may exceed n, and the surplus rows/columns are cropped away.
    """
    if num_cores == 2:
        n1 = _ceil_root(n, 2)
        return (n1, -(-n // n1))
    if num_cores == 3:
        n1 = _ceil_root(n, 3)
        rest = -(-n // n1)
        n2 = _ceil_root(rest, 2)
        return (n1, n2, -(-rest // n2))
    raise ValueError(f"htt_num_cores: {num_cores} is out of range (allowed: 2 or 3)")
