"""claims.json (bench/claims_summary.py) -> docs/claims.md: a summary, the reading rules, and one section per claim
with the guide's table as printed, our absolute figures, the compared rows with their verdicts, and the command."""

from __future__ import annotations

from typing import Any

from claims_rules import __doc__ as RULES

UNITS = {"change": "{:+.1f}%", "share": "{:.1f}%", "count": "{:.3f}M", "factor": "{:.2f}x"}
VERDICTS = ("holds", "does not hold", "not comparable", "not measured")


def fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and kind in UNITS:
        return UNITS[kind].format(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return out


def verdict_cell(r: dict) -> str:
    v = r["verdict"]
    if v in ("not comparable", "not measured"):
        return v + (f": {r['note']}" if r["note"] else "")
    if v == "does not hold" and r["ours"] is not None and isinstance(r["guide"], (int, float)):
        v += " (ours higher)" if r["ours"] > r["guide"] else " (ours lower)"
    return f"**{v}**"


def tolerance(r: dict) -> str:
    t = r["tolerance"]
    if t is None:
        return "-"
    return {"count": f"±{t:.3f}M", "factor": f"±{t:g}x"}.get(r["kind"], f"±{t:.1f} pts")


def ours_rows(ours: list[dict]) -> list[list[str]]:
    return [
        [
            o["setting"],
            fmt(o["val_ppl"]),
            fmt(o["ppl_vs_dense"]),
            fmt(o["memory_gib"]),
            fmt(o["floor_gib"]),
            fmt(o["tokens_per_s"]),
            o["speed_basis"] or "-",
            fmt(o["gate_sparsity"]),
            fmt(o["effective_rank"]),
            fmt(o["embedding_params"]),
            fmt(o.get("compression_pct")),
        ]
        for o in ours
    ]


def render(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# The tuning guide's claims, measured",
        "",
        "Generated from `claims.json` by `bench/claims.py --write-doc`; edit the script, not this file.",
        "",
    ]
    lines += [
        f"- Device: {result['device']} (torch {result['torch']}); runs from {', '.join(result['sources'])}.",
        "- Commands: " + "; ".join(f"`{c}`" for c in result["commands"]) + ".",
        f"- Quality runs' training step: {', '.join(result.get('quality_steps') or ['eager'])} (the dense run: "
        "eager). The compiled steps' losses match eager's (tests/model/test_graph_step.py).",
        f"- Every run: the `{s['preset']}` preset with one setting changed, learning rate {s['lr']:g}, "
        f"{s['train_tokens']:,} training tokens per quality run, {s['eval_tokens']:,} validation tokens (the "
        f"same windows for every run), data {s['data']}. The dense baseline has the preset's width, depth, "
        f"sequence, vocabulary, batch and precision, and trains on the same tokens "
        f"(validation PPL {fmt(result['dense_val_ppl'])}).",
        f"- Seed-to-seed PPL spread (the preset at seed 0 and 1): {fmt(result['seed_spread_ppl_pct'], 'share')}"
        "; a PPL change smaller than this is not a difference.",
        "",
    ]
    fid = result.get("fidelity")
    if fid:
        by = ", ".join(
            f"{int(b) / 1e6:g}M -> {int(fid['long_tokens']) / 1e6:g}M: {v['spearman']:.2f}"
            for b, v in (fid.get("by_budget") or {}).items()
        )
        lines += [
            f"**Budget caveat.** Short runs rank configurations only partly as longer training would: the "
            f"Spearman rank correlation of val PPL between short and {int(fid['long_tokens']) / 1e6:g}M-token "
            f"runs of the 8 GiB study's configurations was {by} (bench/results/fidelity.json, n = "
            f"{fid['n']}). PPL changes below are at {s['train_tokens']:,} tokens per run; those of a few "
            "percent may change sign with longer training.",
            "",
        ]
    lines += [
        "**Speed figures.** Speed and memory come from short runs alone on one device where the table says "
        '"alone on its device"; "packed" figures come from runs sharing a device and are relative only.',
        "",
        f"**Memory.** Figures are the {result['memory_kind']}. On a GPU every process also holds the CUDA "
        "context, kernels and libraries outside PyTorch's allocator: that floor (NVML minus the allocator's "
        "reserved peak) is given beside each reduction, and each reduction is also shown on the allocator's "
        "reserved peak, which excludes it.",
        "",
    ]
    if result["missing"] or result["failed"] or result["diverged"]:
        lines += [
            f"**Runs missing:** {', '.join(result['missing']) or 'none'}; failed or killed: "
            f"{', '.join(result['failed']) or 'none'}; diverged (no figures): "
            f'{", ".join(result["diverged"]) or "none"}. Their rows read "not measured".',
            "",
        ]
    lines += ["## Summary", ""]
    summary = [[c["title"], *(sum(r["verdict"] == v for r in c["rows"]) for v in VERDICTS)] for c in result["claims"]]
    lines += table(["claim", *VERDICTS], summary) + [""]
    lines += ["## How a row is judged", "", *(line.strip() for line in RULES.split("\n\n", 1)[1].splitlines()), ""]
    for c in result["claims"]:
        lines += [f"## {c['title']}", "", f"Where: `{c['where']}`.", ""]
        if c.get("context"):
            lines += [c["context"], ""]
        lines += ["The guide's figures:", ""]
        lines += table(c["guide_table"]["columns"], c["guide_table"]["rows"]) + [""]
        if c["ours"]:
            lines += [f"Ours (memory: GiB, {result['memory_kind']}; floor: NVML minus allocator reserved):", ""]
            lines += table(
                [
                    "setting",
                    "val PPL",
                    "PPL / dense",
                    "memory GiB",
                    "floor GiB",
                    "tokens/s",
                    "speed basis",
                    "gate sparsity",
                    "effective rank",
                    "embedding params",
                    "compression %",
                ],
                ours_rows(c["ours"]),
            ) + [""]
        lines += ["Compared:", ""]
        lines += table(
            ["setting", "quantity", "guide", "ours", "tolerance", "verdict", "basis", "note"],
            [
                [
                    r["setting"],
                    r["quantity"],
                    fmt(r["guide"], r["kind"]),
                    fmt(r["ours"], r["kind"]),
                    tolerance(r),
                    verdict_cell(r),
                    r["basis"] or "-",
                    r["note"] if r["verdict"] in ("holds", "does not hold") else "-",
                ]
                for r in c["rows"]
            ],
        ) + [""]
        if c["command"]:
            lines += [f"Reproduce these runs: `{c['command']}`, then `--collect` with the full run's jsonl.", ""]
    return "\n".join(lines).rstrip() + "\n"
