"""bench/_common.py's median of a possibly empty list (bench/busy.py's and bench/study_8gb_memory.py's rows)."""

from __future__ import annotations

from bench._common import median_or_none


def test_median_or_none():
    assert median_or_none([]) is None
    assert median_or_none([3.0, 1.0, 2.0]) == 2.0 and median_or_none([1, 4]) == 2.5
    assert isinstance(median_or_none([1, 2, 3]), float)
