"""The report: ``report.md`` + ``results.json`` + PNG plots in ``benchmarks/results/<machine>-<date>/``.

Everything in the report comes from the measurements of this run (``results.json`` holds them raw);
the header names the machine, CPU, cores, versions, date and how busy the machine was meanwhile.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from benchmarks.sections.common import SectionResult
from benchmarks.targets import evaluate_targets

__all__ = ["default_out_dir", "machine_info", "write_report"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = (
    "adapterdeploy",
    "torch",
    "transformers",
    "adapters",
    "onnx",
    "onnxruntime",
    "optimum-onnx",
    "optimum",
    "numpy",
    "tokenizers",
    "matplotlib",
    "psutil",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    except OSError:
        pass
    return []


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": _git_commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_slug(info: dict[str, Any]) -> str:
    cpu = re.sub(r"[^a-z0-9]+", "-", info["cpu_model"].lower()).strip("-")
    cpu = re.sub(r"-(processor|cpu|with-radeon.*)$", "", cpu)[:40]
    return f"{cpu}-{info['logical_cores']}c"


def default_out_dir(quick: bool, info: dict[str, Any]) -> Path:
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return RESULTS_DIR / f"{'quick-' if quick else ''}{machine_slug(info)}-{date}"


# ------------------------------------------------------------------------------------------- plots


def _plot(spec: dict[str, Any], out: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    kind = spec["kind"]
    series: dict[str, list[float]] = spec["series"]
    if not series:
        plt.close(fig)
        return None
    if kind == "grouped_bar":
        groups = spec["groups"]
        width = 0.8 / max(1, len(series))
        for i, (label, values) in enumerate(series.items()):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, [v if v is not None else 0 for v in values], width, label=label)
        ax.set_xticks(range(len(groups)), groups)
        if spec.get("logy"):
            ax.set_yscale("log")
        if spec.get("hline") is not None:
            ax.axhline(spec["hline"], color="grey", linestyle="--", linewidth=1)
    elif kind == "line":
        for label, values in series.items():
            xs = spec["x"] if not isinstance(spec["x"], dict) else spec["x"][label]
            pts = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
            if pts:
                ax.plot([x for x, _ in pts], [v for _, v in pts], marker="o", label=label)
        if spec.get("hline") is not None:
            ax.axhline(spec["hline"], color="grey", linestyle="--", linewidth=1)
        if spec.get("logx"):
            ax.set_xscale("log", base=spec.get("log_base", 2))
        if spec.get("logy"):
            ax.set_yscale("log")
        ax.set_xlabel(spec.get("xlabel", ""))
    else:
        raise ValueError(f"unknown plot kind {kind!r}")
    ax.set_ylabel(spec.get("ylabel", ""))
    ax.set_title(spec["title"], fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out / spec["file"]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# ------------------------------------------------------------------------------------------ report


def _md_table(title: str, columns: list[str], rows: list[list[Any]]) -> list[str]:
    lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _load_lines(sections: list[SectionResult]) -> list[str]:
    rows = []
    for s in sections:
        for ld in s.load:
            rows.append(
                [
                    ld["what"],
                    f"{ld['wall_s']:.0f}",
                    f"{ld['others_cores_mean']:.2f}",
                    f"{ld['others_cores_max']:.2f}",
                    f"{ld['loadavg_start'][0]:.2f} -> {ld['loadavg_end'][0]:.2f}",
                ]
            )
    return _md_table(
        "Foreign load while measuring (cores busy with processes that are not this benchmark)",
        ["stretch", "wall s", "other cores, mean", "other cores, max", "load average"],
        rows,
    )


def write_report(
    out: Path,
    info: dict[str, Any],
    settings: dict[str, Any],
    sections: list[SectionResult],
    command: str,
    wall_s: float,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, list[str]] = {}
    for s in sections:
        for spec in s.plots:
            name = _plot(spec, out)
            if name:
                plots.setdefault(s.key, []).append(name)
    targets = evaluate_targets(sections)
    busy = [ld["others_cores_mean"] for s in sections for ld in s.load]
    mean_busy = sum(busy) / len(busy) if busy else 0.0
    condition = (
        "QUIET machine"
        if mean_busy < 0.15
        else f"SHARED machine: other processes used {mean_busy:.2f} of {info['logical_cores']} cores on average; "
        "absolute numbers are pessimistic and noisy, ratios between interleaved systems are fairer"
    )
    v = info["versions"]
    lines = [
        f"# adapterdeploy benchmarks — {'quick (tiny model, CI smoke run)' if settings['quick'] else 'full run'}",
        "",
        f"- **Date**: {info['date']}; **command**: `{command}`; wall time {wall_s / 60:.1f} min",
        f"- **Machine**: {info['cpu_model']}, {info['logical_cores']} logical cores ({info['physical_cores']} "
        f"physical), {info['memory_gib']} GiB RAM, {info['os']}; host `{info['hostname']}`",
        f"- **CPU features**: {', '.join(info['cpu_flags']) or 'unknown'}",
        f"- **Threads**: {settings['threads']} per system (torch intra-op, onnxruntime intra-op; inter-op 1)",
        f"- **Versions**: Python {info['python']}, adapterdeploy {v['adapterdeploy']} ({info['git_commit']}), "
        f"torch {v['torch']}, transformers {v['transformers']}, adapters {v['adapters']}, onnxruntime "
        f"{v['onnxruntime']}, onnx {v['onnx']}, optimum-onnx {v['optimum-onnx']}, numpy {v['numpy']}, "
        f"tokenizers {v['tokenizers']}",
        f"- **Load conditions**: {condition}",
        "",
        "Method: every system runs in its own fresh worker process with fixed threads; systems are timed in "
        f"{settings['rounds']} interleaved rounds (order rotating each round; a case whose rounds would take "
        f"longer than {settings['case_budget_s']} s gets fewer, never under 3) after {settings['warmup']} warm-up "
        "calls plus one calibration call; each round runs a block of calls of about "
        f"{settings['block_s']} s per system; each number is the median over every timed call (p90, the call "
        "count and the spread of the per-round medians show the noise). Every system gets the same texts, "
        "tokenized by the same tokenizer.json with the same max_length and dynamic padding, end to end to class "
        "probabilities. Raw numbers: `results.json`.",
        "",
        "## Targets",
        "",
        *(
            [
                "A quick run measures a tiny random model with one thread and few repeats to check that every "
                "section works; the comparisons below are NOT meaningful for it (the targets are for MiniLM and "
                "the BERT-base shape, see a full run).",
                "",
            ]
            if settings["quick"]
            else []
        ),
        *_md_table(
            "Issue targets vs this run",
            ["target", "measured", "goal", "met"],
            [[t["name"], t["measured"], t["goal"], t["met"]] for t in targets],
        ),
    ]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.skipped:
            lines += [f"Skipped: {s.skipped}", ""]
            continue
        for note in s.notes:
            lines.append(f"- {note}")
        if s.notes:
            lines.append("")
        for t in s.tables:
            lines += _md_table(t.title, t.columns, t.rows)
        for name in plots.get(s.key, []):
            lines += [f"![{name}]({name})", ""]
    lines += ["## Load conditions", "", *_load_lines(sections)]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    raw = {
        "machine": info,
        "settings": settings,
        "command": command,
        "wall_s": wall_s,
        "targets": targets,
        "sections": [s.to_dict() for s in sections],
    }
    (out / "results.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    return out / "report.md"
