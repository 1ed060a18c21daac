"""Command-line limits and clean errors (issue 12 item 7): one line, exit code 2, a traceback only on request.

``predict --input`` reads each line with a bound (the server's --max-chars-per-text default), so a 10 MB
line or /dev/zero is refused after reading a bounded amount; binary and missing files, and checkpoints
with a missing base, a label-count mismatch or an integer task name, are one-line errors.
"""

from __future__ import annotations

import io
import json
import shutil

import pytest
from click.testing import CliRunner

from adapterdeploy.cli import main
from adapterdeploy.errors import AdapterDeployError, DataError, InputError
from adapterdeploy.runtime.inputs import MAX_CHARS_PER_TEXT, iter_inputs
from adapterdeploy.serving.schemas import parse_body
from adapterdeploy.serving.settings import Settings


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def one_line_error(res, *fragments: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])


class CountingReader(io.RawIOBase):
    """Counts the bytes pulled from a raw file (how much of /dev/zero the reader consumed)."""

    def __init__(self, raw):
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.raw.readinto(b)
        self.count += n
        return n


def test_the_line_limit_bounds_what_is_read_from_dev_zero():
    with open("/dev/zero", "rb", buffering=0) as raw:
        counter = CountingReader(raw)
        stream = io.TextIOWrapper(io.BufferedReader(counter), encoding="utf-8")
        with pytest.raises(DataError, match="longer than 1000 characters"):
            list(iter_inputs(stream, "zero.txt", max_chars=1000))
    assert counter.count < 64 * 1024, counter.count  # one buffered chunk or so, never the endless line


def test_predict_input_limits_and_bad_files(deploy_dir, tmp_path):
    assert Settings(deploy_dir=".").max_chars_per_text == MAX_CHARS_PER_TEXT  # the CLI's default is the server's
    huge = tmp_path / "huge.txt"
    huge.write_text("short line\n" + "word " * 2_000_000 + "\n")  # a 10 MB line
    one_line_error(
        run("predict", str(deploy_dir), "--task", "sentiment", "--input", str(huge)),
        "huge.txt:2",
        f"longer than {MAX_CHARS_PER_TEXT} characters",
        "--max-chars-per-text",
    )
    one_line_error(run("predict", str(deploy_dir), "--task", "sentiment", "--input", "/dev/zero"), "zero:1")
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 64)
    one_line_error(
        run("predict", str(deploy_dir), "--task", "sentiment", "--input", str(binary)), "model.bin:", "binary file"
    )
    res = run("predict", str(deploy_dir), "--task", "sentiment", "--input", str(tmp_path / "missing.txt"))
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    ok = tmp_path / "ok.txt"
    ok.write_text("a" * 50 + "\n")
    res = run(
        "predict",
        str(deploy_dir),
        "--task",
        "sentiment",
        "--input",
        str(ok),
        "--max-chars-per-text",
        "50",
        "--format",
        "jsonl",
    )
    assert res.exit_code == 0, res.output
    one_line_error(
        run("predict", str(deploy_dir), "--task", "sentiment", "--input", str(ok), "--max-chars-per-text", "49"),
        "ok.txt:1",
    )


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m.pop("base"), "'base'"),
        (lambda m: m["head"].update(labels=["only-one"]), "1 label names given for 2 labels"),
        (lambda m: m.update(name=5), "field 'name' must be a string"),
    ],
)
def test_bad_checkpoints_are_one_line_errors_with_exit_2(deploy_dir, tmp_path, edit, fragment):
    ckpt = shutil.copytree(deploy_dir.parent / "ckpt" / "sentiment", tmp_path / "ckpt")
    meta = json.loads((ckpt / "task.json").read_text())
    edit(meta)
    (ckpt / "task.json").write_text(json.dumps(meta))
    target = shutil.copytree(deploy_dir, tmp_path / "deploy")
    one_line_error(run("add-task", str(target), str(ckpt), "--replace", "--quiet"), fragment)
    debug = run("--debug", "add-task", str(target), str(ckpt), "--replace", "--quiet")
    assert isinstance(debug.exception, AdapterDeployError)  # raised, so click prints its traceback
    env = run("add-task", str(target), str(ckpt), "--replace", "--quiet", env={"ADAPTERDEPLOY_DEBUG": "1"})
    assert isinstance(env.exception, AdapterDeployError)


def test_an_unexpected_exception_is_one_line_too(deploy_dir, monkeypatch):
    import adapterdeploy.runtime.deployment as dep_module

    def broken(*args, **kwargs):
        raise TypeError("something unforeseen\nover two lines")

    monkeypatch.setattr(dep_module.Deployment, "predict", broken)
    one_line_error(
        run("predict", str(deploy_dir), "--task", "sentiment", "x"), "TypeError: something unforeseen", "--debug"
    )


def test_json_with_a_huge_integer_is_a_400_not_a_500():
    with pytest.raises(InputError, match="4300"):
        parse_body(b'{"task": "x", "inputs": [' + b"9" * 5000 + b"]}")
