"""What bench/claims.py compares with: the guide's published figures, the runs' figures (`Runs`), and the verdict
rules below (docs/claims.md prints them).

Absolute PPL, GB and tokens/s depend on the guide's unstated model, data and GPU, so its tables are compared as
changes against their own first row (ours against the run of the same setting); shares (gate sparsity, effective
rank / max_rank), parameter counts and factors are compared directly. Verdicts:
  change or share, in percent: holds when |ours - guide| <= max(spread, half the claimed range,
      min(10, |guide| / 2)) points, spread being the measured seed-to-seed PPL spread for PPL rows (0 otherwise);
  parameter count: holds within 25 % of the guide's figure; speed-up factor ("3x"): holds in [2.5, 3.5);
  "not comparable" when the two figures do not measure the same thing (the row says why); "not measured" when a
  run is missing, failed, was killed or diverged (the runs are listed).
"""

from __future__ import annotations

from typing import Any

GUIDE = "shared/seeds/000_ba01bea0b6c34477.txt"  # the Phase 1 hyperparameter tuning guide (Japanese)
REPORT = "shared/seeds/003_10eb6a875570bd30.txt"  # the Phase 1 final report ("95% reduction" challenge)
MAX_RANK = {16: (6.2, 18.5, 1250), 32: (7.8, 17.2, 1100), 48: (9.5, 16.8, 950), 64: (11.2, 16.5, 850)}
L1 = {1e-4: (15.0, 28.5, 17.0), 1e-3: (35.0, 22.3, 17.2), 1e-2: (65.0, 12.8, 18.5)}
L1_KEYS = {1e-4: "l1_0.0001", 1e-3: "l1_0.001", 1e-2: "base"}  # the 8gb preset's own weight is 1e-2
GUIDE_L1_MAX_RANK = 32  # the guide's default max_rank: its L1 table does not say which it used
HTT = {
    8: (99.2, 0.4, 19.5, 0.08),
    16: (98.5, 0.8, 17.8, 0.03),
    32: (97.0, 1.5, 17.1, 0.01),
    64: (94.0, 3.0, 16.9, 0.005),
}
PHASE = {True: (17.8, 1180), False: (18.2, 1220)}


def pct(new: float | None, ref: float | None) -> float | None:
    """100 * (new / ref - 1), or None when either is unknown."""
    return None if new is None or ref is None or ref == 0 else 100.0 * (new / ref - 1.0)


def judge(ours: float | None, guide: float, kind: str, spread: float | None = None, half_range: float = 0.0):
    """(verdict, tolerance) by the module's rules; kind: "change" | "share" (percent), "count", "factor"."""
    if ours is None:
        return "not measured", None
    if kind == "factor":
        return ("holds" if guide - 0.5 <= ours < guide + 0.5 else "does not hold"), 0.5
    tol = 0.25 * abs(guide) if kind == "count" else max(spread or 0.0, half_range, min(10.0, abs(guide) / 2))
    return ("holds" if abs(ours - guide) <= tol else "does not hold"), tol


class Runs:
    """The finished runs by id, with the figures every claim reads (None when a run gave none)."""

    def __init__(self, runs: list[dict], plan: list[dict]):
        self.by_id = {r["id"]: r for r in runs}
        self.plan = {p["id"]: p for p in plan}

    def ok(self, rid: str) -> dict | None:
        r = self.by_id.get(rid)
        if r is None or r.get("failed") or r.get("killed") or r.get("diverged") or r.get("skipped"):
            return None
        return r

    def get(self, rid: str, field: str):
        r = self.ok(rid)
        return None if r is None else r.get(field)

    def memory(self, rid: str) -> float | None:
        """NVML per-process peak, GiB; on CPU (no NVML) the peak tensor bytes, GiB."""
        r = self.ok(rid)
        if r is None:
            return None
        return r["nvml_peak_gib"] if r.get("nvml_peak_gib") is not None else r.get("peak_torch_gib")

    def floor(self, rid: str) -> float | None:
        """NVML minus the allocator's reserved peak, GiB: CUDA context, kernels and libraries outside torch."""
        r = self.ok(rid)
        if r is None or r.get("nvml_peak_gib") is None or r.get("peak_reserved_gib") is None:
            return None
        return r["nvml_peak_gib"] - r["peak_reserved_gib"]

    def diag(self, rid: str, key: str) -> float | None:
        r = self.ok(rid)
        return None if r is None else (r.get("diagnostics") or {}).get(key)

    def stage(self, rid: str, batch: int) -> dict | None:
        r = self.ok(rid)
        return next((s for s in (r or {}).get("stages", []) if s["batch_size"] == batch), None)

    def basis(self, rid: str) -> str:
        return "alone on its device" if self.plan.get(rid, {}).get("alone") else "packed (relative only)"


def row(
    setting: str,
    quantity: str,
    guide: float,
    ours: float | None,
    kind: str,
    runs: list[str],
    basis: str,
    spread: float | None = None,
    half_range: float = 0.0,
    note: str = "",
) -> dict:
    verdict, tol = judge(ours, guide, kind, spread, half_range)
    return {
        "setting": setting,
        "quantity": quantity,
        "guide": guide,
        "ours": ours,
        "kind": kind,
        "tolerance": tol,
        "verdict": verdict,
        "runs": runs,
        "basis": basis,
        "note": note,
    }


def not_comparable(setting: str, quantity: str, guide: Any, ours: Any, why: str, runs: list[str]) -> dict:
    return {
        "setting": setting,
        "quantity": quantity,
        "guide": guide,
        "ours": ours,
        "kind": "none",
        "tolerance": None,
        "verdict": "not comparable",
        "runs": runs,
        "basis": "",
        "note": why,
    }


def figures(R: Runs, key: str, dense_ppl: float | None) -> dict:
    """One setting's absolute figures for the 'ours' table: quality run (PPL) and speed run (memory, tokens/s)."""
    q, s = f"q-{key}", f"s-{key}"
    ppl = R.get(q, "val_ppl")
    return {
        "setting": key,
        "val_ppl": ppl,
        "ppl_vs_dense": None if ppl is None or not dense_ppl else ppl / dense_ppl,
        "memory_gib": R.memory(s),
        "floor_gib": R.floor(s),
        "tokens_per_s": R.get(s, "tokens_per_s"),
        "speed_basis": R.basis(s) if R.ok(s) else None,
        "gate_sparsity": R.diag(q, "gate_sparsity"),
        "effective_rank": R.diag(q, "effective_rank"),
        "embedding_params": (R.get(q, "param_counts") or {}).get("embedding"),
    }


def reserved(R: Runs, rid: str) -> float | None:
    return R.get(rid, "peak_reserved_gib")


def floor_note(R: Runs, a: str, b: str, fa=None, fb=None) -> str:
    fa, fb = fa if fa is not None else R.floor(a), fb if fb is not None else R.floor(b)
    if fa is None or fb is None:
        return "NVML floor not measured (no NVML on this device)"
    return f"NVML includes {fa:.2f} GiB ({a}) and {fb:.2f} GiB ({b}) outside the allocator (context, kernels)"
