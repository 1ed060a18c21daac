"""The benchmark harness: statistics, interleaving, FLOP counts, and a whole ``--quick`` run (structure, not speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import interleave, summarize
from benchmarks.peak import ModelShape, encoder_flops
from benchmarks.settings import QUICK_SECTIONS

REPO = Path(__file__).resolve().parent.parent


def test_summarize_order_statistics():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0], round_medians=[2.0, 3.0, 4.0])
    assert (s.n, s.median, s.min, s.max, s.mean) == (5, 3.0, 1.0, 5.0, 3.0)
    assert s.p90 == pytest.approx(4.6)  # linear interpolation, as numpy's default
    assert s.spread == pytest.approx((4.0 - 2.0) / 3.0)
    with pytest.raises(ValueError):
        summarize([])


class _FakeWorker:
    """Stands in for harness.Worker: records the order of requests and answers fixed call times."""

    def __init__(self, name: str, seconds: float, log: list[str]) -> None:
        self.name, self.seconds, self.log = name, seconds, log

    def request(self, op: str, **kw):
        assert op == "run"
        self.log.append(self.name)
        return {"times": [self.seconds] * kw["n"]}


def test_interleave_rotates_order_and_sizes_blocks():
    """Block sizes follow the calibration call; the first worker of each round rotates."""
    log: list[str] = []
    a, b = _FakeWorker("a", 0.01, log), _FakeWorker("b", 0.1, log)
    out = interleave([a, b], "case", rounds=4, block_s=0.2, warmup=2)
    assert log[:4] == ["a", "a", "b", "b"]  # warm-up + calibration per worker, then rounds in rotating order
    assert log[4:] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert out["a"].calls_per_round == 20 and out["b"].calls_per_round == 2
    assert out["a"].stats.n == 80 and out["a"].stats.median == 0.01


def test_encoder_flops_counts_dense_attention_and_adapters():
    shape = ModelShape(layers=2, hidden=4, intermediate=8, bottleneck=2, adapter_sites=1, adapted_layers=2)
    t = 3 * 5
    dense = 2 * t * (4 * 16 + 2 * 4 * 8) * 2
    attention = 2 * 3 * 2 * 25 * 4 * 2
    adapters = 2 * t * 2 * 4 * 2 * 1 * 2
    assert encoder_flops(shape, 3, 5) == dense + attention + adapters
    assert encoder_flops(shape, 3, 5, adapters=False) == dense + attention


def test_bench_command_forwards_to_the_benchmarks_package():
    from click.testing import CliRunner

    from adapterdeploy.cli import main

    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert "--quick" in result.output and "--sections" in result.output


@pytest.mark.timeout(600)
def test_quick_run_writes_the_report(tmp_path: Path):
    """``python -m benchmarks --quick`` on the tiny model: every section runs and the report files exist."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--work", str(work)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    raw = json.loads((out / "results.json").read_text())
    for field in ("cpu_model", "logical_cores", "versions", "date", "git_commit"):
        assert raw["machine"][field], field
    assert raw["settings"]["quick"] is True
    assert [s["key"] for s in raw["sections"]] == list(QUICK_SECTIONS)
    for section in raw["sections"]:
        assert section["skipped"] is None, (section["key"], section["skipped"])
        assert section["tables"] and all(t["rows"] for t in section["tables"]), section["key"]
        assert section["title"] in report
        for plot in section["plots"]:
            png = out / plot["file"]
            assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot["file"]
            assert f"]({plot['file']})" in report
    assert "## Load conditions" in report and ("QUIET machine" in report or "SHARED machine" in report)
    by_key = {s["key"]: s for s in raw["sections"]}
    single = by_key["single"]["raw"]["tiny"]["rows"]
    systems = {r["system"] for r in single}
    assert {"torch_eager", "ort_plain", "ort_task", "ours_fp32", "ours_int8"} <= systems
    assert all(r["median_ms"] > 0 and r["n"] >= 3 for r in single)
    agreement = by_key["accuracy"]["tables"][1]["rows"]
    assert all(float(row[2]) >= 90.0 for row in agreement if row[1] == "fp32 K=0")
    assert raw["targets"], "the targets table is empty"


def test_interleave_cuts_rounds_to_the_budget_but_not_below_three():
    log: list[str] = []
    slow = _FakeWorker("slow", 2.0, log)
    out = interleave([slow], "case", rounds=7, block_s=0.4, warmup=3, budget_s=5.0)
    assert log[:2] == ["slow", "slow"]  # a 2 s call is warm after one call: warm-up 1 + calibration 1
    assert out["slow"].rounds == 3 and out["slow"].calls_per_round == 1


@pytest.mark.timeout(300)
def test_profile_runtime_reports_ops_and_breakdown(tmp_path: Path):
    """``python -m benchmarks.profile_runtime`` on the tiny model: both graphs profiled, the breakdown adds up."""
    from click.testing import CliRunner

    from benchmarks.profile_runtime import main

    result = CliRunner().invoke(
        main, ["--model", "tiny", "--work", str(tmp_path), "--runs", "5", "--seq", "12", "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "model_run us/run: with adapters" in out and "MatMul" in out
    assert "adapted session" in out and "rest of predict (Python)" in out


def test_adapterhub_parallel_system_answers_fanout_and_single_calls(tiny_base_dir: Path):
    """The Parallel baseline of the fan-out section: n heads from one forward, equal to the library's own
    one-adapter calls (so it computes the n tasks, not fewer)."""
    from benchmarks.systems import create_system

    spec = {
        "base_dir": str(tiny_base_dir),
        "adapters": 3,
        "reduction_factor": 4,
        "activation": "relu",
        "adapter_drop": 1,
        "tokenizer": str(tiny_base_dir / "tokenizer.json"),
        "max_length": 16,
    }
    system = create_system("torch_adapterhub_parallel", spec, 1)
    text, tasks = "the movie was good", ["a", "b", "c"]
    fan = system.prepare({"kind": "fanout", "text": text, "tasks": tasks})()
    one_by_one = system.prepare({"kind": "separate", "text": text, "tasks": tasks})()
    assert len(fan) == 3 and not np.allclose(fan[0], fan[1])
    for f, s in zip(fan, one_by_one, strict=True):
        np.testing.assert_allclose(f, s, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="fanout payloads"):
        system.prepare({"kind": "fanout", "text": text, "tasks": tasks[:2]})


def test_real_checkpoints_are_found_through_a_folder_of_symlinks(tiny_base_dir: Path, tmp_path: Path, monkeypatch):
    """A --ckpt-dir made of symlinks to checkpoints picked from several training runs finds them (Path.rglob
    alone does not enter symlinked folders); a checkpoint for another base does not count."""
    from types import SimpleNamespace

    from adapterdeploy.models.base import load_base
    from benchmarks import prepare

    data = tmp_path / "data"
    (data / "cola").mkdir(parents=True)
    (data / "cola" / "dev.tsv").write_text("sentence\tlabel\n")
    monkeypatch.setattr(prepare, "DATA_DIR", data)
    runs = tmp_path / "runs"
    base = {"fingerprint": load_base(tiny_base_dir).fingerprint}
    for name, fingerprint in (("cola-e8", base["fingerprint"]), ("sst2", "0" * 64)):
        (runs / name).mkdir(parents=True)
        meta = {
            "format": "adapterdeploy.task-checkpoint",
            "name": name.split("-")[0],
            "base": {"fingerprint": fingerprint},
        }
        (runs / name / "task.json").write_text(json.dumps(meta))
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    (chosen / "cola").symlink_to(runs / "cola-e8", target_is_directory=True)
    (chosen / "sst2").symlink_to(runs / "sst2", target_is_directory=True)
    found = prepare.find_real_tasks(SimpleNamespace(base_dir=tiny_base_dir), chosen)  # type: ignore[arg-type]
    assert [(t["name"], t["dataset"], t["ckpt"]) for t in found] == [("cola", "cola", chosen / "cola")]


@pytest.mark.timeout(400)
def test_profile_runtime_scaling_times_every_signature_at_both_thread_counts(tmp_path: Path):
    """``--scaling``: O3, our featurizer without adapters (whole and CLS-only) and the three adapter
    signatures, each at 1 thread and at --threads, with ratios to O3 (O3's own is exactly 1)."""
    from click.testing import CliRunner

    from benchmarks.profile_runtime import main

    args = ["--model", "tiny", "--work", str(tmp_path), "--scaling", "--rounds", "2", "--seq", "12", "--threads", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = {line.split("  ")[0].strip(): line.split() for line in result.output.splitlines()}
    for system in ("optimum O3 (plain model)", "ours, no adapters, CLS-only", "native", "seq_bn", "double_seq_bn"):
        assert system in lines, result.output
    o3 = lines["optimum O3 (plain model)"]
    assert o3[-5:-3] == ["1.000", "1.000"], result.output
    assert all(float(x) > 0 for x in lines["double_seq_bn"][1:4]), result.output
