"""``adapterdeploy predict`` and ``adapterdeploy check`` on an exported tiny deployment (click's CliRunner)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from test_runtime import TASKS, _export

from adapterdeploy.cli import main


@pytest.fixture(scope="module")
def deploy_dir(tiny_base_dir, tmp_path_factory):
    tasks = {k: TASKS[k] for k in ("sent", "topic", "para")}
    return _export(tiny_base_dir, tmp_path_factory.mktemp("rt-cli"), tasks)[0]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_predict_json_table_and_fan_out(deploy_dir):
    res = run("predict", str(deploy_dir), "--task", "sent", "the movie was good", "bad film", "--format", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["row"] for r in rows] == [0, 1]
    assert {"task", "label", "score", "probabilities", "value", "truncated"} <= set(rows[0])
    assert rows[0]["task"] == "sent" and set(rows[0]["probabilities"]) == {"neg", "pos"}

    res = run("predict", str(deploy_dir), "--tasks", "sent,topic", "yes", "no", "--format", "jsonl")
    lines = [json.loads(x) for x in res.output.splitlines()]
    assert [(r["row"], r["task"]) for r in lines] == [(0, "sent"), (0, "topic"), (1, "sent"), (1, "topic")]

    res = run("predict", str(deploy_dir), "--task", "para", "--pair", "a man", "a woman")
    assert res.exit_code == 0 and "para" in res.output and "a man ||| a woman" in res.output


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("in.txt", "the movie was good\n\nbad film\n"),
        ("in.tsv", "id\ttext\n1\tthe movie was good\n2\tbad film\n"),
        ("in.csv", 'text,id\n"the movie was good",1\n"bad film",2\n'),
        ("in.jsonl", '"the movie was good"\n{"text": "bad film"}\n'),
    ],
)
def test_predict_input_files_stream(deploy_dir, tmp_path, name, content):
    f = tmp_path / name
    f.write_text(content)
    res = run("predict", str(deploy_dir), "--task", "sent", "--input", str(f), "--format", "jsonl", "--batch-size", "1")
    assert res.exit_code == 0, res.output
    ref = run("predict", str(deploy_dir), "--task", "sent", "the movie was good", "bad film", "--format", "jsonl")
    got, want = ([json.loads(x) for x in r.output.splitlines()] for r in (res, ref))
    assert (
        [(g["row"], g["label"]) for g in got]
        == [(w["row"], w["label"]) for w in want]
        == [(0, got[0]["label"]), (1, got[1]["label"])]
    )
    assert all(abs(g["score"] - w["score"]) < 1e-6 for g, w in zip(got, want, strict=True))  # batch 1 vs 2: padding


def test_predict_pairs_from_tsv_and_errors(deploy_dir, tmp_path):
    f = tmp_path / "pairs.tsv"
    f.write_text("text_a\ttext_b\nthe man\tthe woman\n")
    res = run("predict", str(deploy_dir), "--task", "para", "--input", str(f), "--format", "json")
    assert res.exit_code == 0 and json.loads(res.output)[0]["task"] == "para"
    res = run("predict", str(deploy_dir), "--task", "nope", "x")
    assert res.exit_code != 0 and "unknown_task" in res.output and "known tasks: para, sent, topic" in res.output
    res = run("predict", str(deploy_dir), "x")
    assert res.exit_code != 0 and "choose one with --task" in res.output
    res = run("predict", str(deploy_dir), "--task", "sent")
    assert res.exit_code != 0 and "give inputs" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"label": 1}\n')
    res = run("predict", str(deploy_dir), "--task", "sent", "--input", str(bad))
    assert res.exit_code != 0 and "bad.jsonl:1: no text column" in res.output
    res = run("predict", str(deploy_dir), "--task", "sent", "--strict", "good " * 40)
    assert res.exit_code != 0 and "max_length is 24" in res.output


def test_check_passes_and_reports(deploy_dir, tmp_path):
    ev = tmp_path / "eval.tsv"
    ev.write_text("label\ttext\npos\tthe movie was good\nneg\ta boring plot\npos\tgreat fun\n")
    res = run("check", str(deploy_dir), "--json", "--reps", "3", "--eval", str(ev), "--task", "sent")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    items = {i["name"]: i for i in out["items"]}
    assert out["ok"] is True
    assert [n for n in items] == ["manifest", "checksums", "open", "tasks", "parity", "latency", "memory", "accuracy"]
    assert items["parity"]["status"] == "pass" and items["parity"]["data"]["vs_pytorch"]  # stored samples compared
    assert items["latency"]["data"]["batch1_ms"] > 0 and items["memory"]["data"]["rss_bytes"] > 0
    assert 0 <= items["accuracy"]["data"]["metrics"]["accuracy"] <= 1
    res = run("check", str(deploy_dir), "--reps", "3")
    assert res.exit_code == 0 and "all checks passed" in res.output
    res = run("check", str(deploy_dir), "--eval", str(ev))
    assert res.exit_code != 0 and "--eval needs --task" in res.output


def test_check_fails_on_a_corrupt_deployment(deploy_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(deploy_dir, copy)
    f = copy / "tasks" / "topic" / "adapters.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    res = run("check", str(copy), "--json", "--reps", "3")
    assert res.exit_code == 1
    out = json.loads(res.output)
    items = {i["name"]: i for i in out["items"]}
    assert out["ok"] is False
    assert (
        items["checksums"]["status"] == "fail"
        and "tasks/topic/adapters.safetensors: size" in items["checksums"]["detail"]
    )
    assert items["tasks"]["status"] == "fail" and "topic" in items["tasks"]["data"]["failed"]
    res = run("check", str(tmp_path / "missing"))
    assert res.exit_code == 1 and "does not exist" in res.output
    res = run("check", str(deploy_dir), "--max-latency-ms", "0.000001", "--reps", "3")
    assert res.exit_code == 1 and "FAIL" in res.output
