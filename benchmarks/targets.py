"""The issue's targets, checked against this run's measurements (reported, never asserted).

Each check reads a section's ``raw`` data; a target whose section did not run reads "not measured".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["evaluate_targets"]

# (model -> (batch-1 fp32, batch-1 int8)) speed-up over eager PyTorch; batch 32 is 1.2x / 2x for both.
B1_GOALS = {"minilm": (3.0, 6.0), "bertbase": (2.0, 4.5), "tiny": (3.0, 6.0)}
B32_GOALS = (1.2, 2.0)


def _row(rows: list[dict[str, Any]], case: str, system: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["case"] == case and r["system"] == system), None)


def _single(raw: dict[str, Any], out: list[dict[str, Any]]) -> None:
    for model, data in raw.items():
        rows = data["rows"]
        b1 = B1_GOALS.get(model, B1_GOALS["minilm"])
        for case in ("b1_pair", "b1_128", "b32_dyn", "b32_128"):
            goals = b1 if case.startswith("b1") else B32_GOALS
            for prec, goal in zip(("fp32", "int8"), goals, strict=True):
                r = _row(rows, case, f"ours_{prec}")
                if r is None or r["speedup_vs_eager"] is None:
                    continue
                out.append(
                    _check(
                        f"{model} {case}: ours {prec} vs eager PyTorch", r["speedup_vs_eager"], goal, ">=", "{:.2f}x"
                    )
                )
        for case in ("b1_pair", "b1_128", "b32_dyn", "b32_128"):
            f32, i8 = _row(rows, case, "ours_fp32"), _row(rows, case, "ours_int8")
            if f32 is not None and i8 is not None:
                out.append(
                    _check(
                        f"{model} {case}: ours int8 speed / ours fp32",
                        f32["median_ms"] / i8["median_ms"],
                        2.0,
                        ">=",
                        "{:.2f}x",
                    )
                )
            for kind in ("seq_bn", "double_seq_bn"):  # issue 15: every signature within 5% of the plain model
                r = _row(rows, case, f"ours_{kind}_fp32")
                if r is not None and r["vs_ort_plain_o3"] is not None:
                    out.append(
                        _check(
                            f"{model} {case}: ours fp32, AdapterHub {kind}, time / best optimum O3 plain",
                            r["vs_ort_plain_o3"],
                            1.05,
                            "<=",
                            "{:.3f}",
                        )
                    )
            r = _row(rows, case, "ours_fp32_mixed")
            if r is not None and r["vs_ort_plain_o3"] is not None:
                out.append(
                    _check(
                        f"{model} {case}: ours fp32 serving many tasks, time / best optimum O3 plain",
                        r["vs_ort_plain_o3"],
                        1.05,
                        "<=",
                        "{:.3f}",
                    )
                )


def _check(name: str, value: float, goal: float, op: str, fmt: str) -> dict[str, Any]:
    met = value >= goal if op == ">=" else value <= goal
    return {
        "name": name,
        "value": value,
        "measured": fmt.format(value),
        "goal": f"{op} {fmt.format(goal)}",
        "met": "yes" if met else "**no**",
    }


def _generic(raw: dict[str, Any], out: list[dict[str, Any]]) -> None:
    """Sections that compute their own checks store them under raw['targets']."""
    for t in raw.get("targets", []):
        out.append(_check(t["name"], t["value"], t["goal"], t["op"], t.get("fmt", "{:.3f}")))


CHECKS: dict[str, Callable[[dict[str, Any], list[dict[str, Any]]], None]] = {"single": _single}


def evaluate_targets(sections: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in sections:
        if s.skipped:
            continue
        CHECKS.get(s.key, _generic)(s.raw, out)
    return out
