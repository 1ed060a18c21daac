"""Task metadata is validated, not trusted: every bad task.json / deployment.json / checkpoint is refused with
the project's typed error naming the file, the field and the fix, before any allocation sized from it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from exporter_helpers import make_checkpoint

from adapterdeploy.artifacts import Manifest, TaskSpec, sha256_file
from adapterdeploy.errors import ArtifactError
from adapterdeploy.exporter.deployment import export_deployment

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def ckpt(tiny_base, tmp_path_factory) -> Path:
    return make_checkpoint(tiny_base, tmp_path_factory.mktemp("meta-ckpt"), "t", bottleneck=4, num_labels=3, seed=5)


@pytest.fixture(scope="module")
def deployed(tiny_base_dir, ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("meta") / "dep"
    export_deployment(tiny_base_dir, [ckpt], out)
    return out


@pytest.fixture(scope="module")
def dep(deployed) -> Iterator[Any]:
    from adapterdeploy.runtime import Deployment

    with Deployment.open(deployed) as d:
        yield d


def _set(path: str, value: Any) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for p in parents:
            d = d[p]
        d[leaf] = value

    return edit


def _drop(key: str) -> Edit:
    return lambda d: d.pop(key)


def _relabel(labels: list[str]) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        d["head"]["labels"], d["head"]["num_labels"] = labels, len(labels)

    return edit


TASK_CASES = [
    ("missing key", _drop("head"), r"task\.json: field 'head' is missing; re-export"),
    ("wrong type", _set("bottleneck", "4"), r"task\.json: field 'bottleneck' must be an integer"),
    ("bool as int", _set("text_pair", 1), r"field 'text_pair' must be true or false"),
    ("absurd bottleneck", _set("bottleneck", 100_000), r"field 'bottleneck' is 100000, outside 1\.\.16384"),
    ("bottleneck vs weights", _set("bottleneck", 7), r"task\.json says bottleneck 7, its adapter weights have \[4\]"),
    ("duplicate labels", _relabel(["a", "b", "a"]), r"field 'head' is invalid .*unique.*'a'"),
    ("label count vs head size", _relabel(["a", "b", "c", "d", "e"]), r"head\.out\.w has shape \[32, 3\], expected"),
    ("unsafe name", _set("name", "../../etc"), r"field 'name'.*not a safe name"),
    ("name too long", _set("name", "x" * 129), r"not a safe name"),
    ("integer name", _set("name", 7), r"field 'name' must be a string"),
    (
        "file outside the task",
        _set("files", {"../../deployment.json": {"size": 1, "sha256": "0" * 64}}),
        r"field 'files' names '\.\./\.\./deployment\.json'",
    ),
    (
        "bad checksum entry",
        lambda d: d["files"].update({"head.onnx": {"size": 1, "sha256": "zz"}}),
        r"field 'files\.head\.onnx\.sha256' is not 64 lowercase hex",
    ),
    ("not an object", lambda d: d.clear() or d.update({"schema_version": 2, "head": []}), r"field 'name' is missing"),
]


@pytest.mark.parametrize("case,edit,match", TASK_CASES, ids=[c[0] for c in TASK_CASES])
def test_bad_task_json_is_refused_with_file_field_and_fix(deployed, dep, tmp_path, case, edit, match):
    task = tmp_path / "t"
    shutil.copytree(deployed / "tasks" / "t", task)
    data = json.loads((task / "task.json").read_text())
    edit(data)
    (task / "task.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=match):
        dep.load_task(task)


def test_hidden_size_of_the_weights_must_match_the_featurizer(deployed, dep, tmp_path):
    """Weights for another hidden size (with honest checksums) are refused before they reach the bank."""
    from safetensors.numpy import load_file, save_file

    task = tmp_path / "t"
    shutil.copytree(deployed / "tasks" / "t", task)
    weights = load_file(str(task / "adapters.safetensors"))
    key = next(k for k in weights if k.endswith(".down_w"))
    weights[key] = weights[key][:-1]  # [H - 1, m]
    save_file(weights, str(task / "adapters.safetensors"))
    data = json.loads((task / "task.json").read_text())
    data["files"]["adapters.safetensors"] = {
        "size": (task / "adapters.safetensors").stat().st_size,
        "sha256": sha256_file(task / "adapters.safetensors"),
    }
    (task / "task.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=rf"{key} has shape \[31, 4\], the bank expects \[32, 4\]"):
        dep.load_task(task)


MANIFEST_CASES = [
    ("missing featurizer", _drop("featurizer"), r"deployment\.json: field 'featurizer' is missing; re-export"),
    ("unsafe task name", _set("tasks", {"../x": "tasks/t"}), r"field 'tasks'.*not a safe name"),
    ("task dir outside", _set("tasks", {"t": "../../etc"}), r"field 'tasks\.t'.*leaves the deployment"),
    ("wrong type", _set("task_files", []), r"field 'task_files' must be a JSON object"),
    ("bad tokenizer", _set("tokenizer.max_length", 0), r"field 'tokenizer\.max_length' is 0"),
    ("absurd hidden size", _set("featurizer.hidden_size", 10**9), r"field 'featurizer' has hidden_size 1000000000"),
    ("negative pad id", _set("base.pad_token_id", -1), r"field 'base\.pad_token_id' is -1"),
    ("pad id as text", _set("base.pad_token_id", "1"), r"field 'base\.pad_token_id' must be an integer"),
    ("zero eps", _set("base.layer_norm_eps", 0), r"field 'base\.layer_norm_eps' is 0"),
]


@pytest.mark.parametrize("case,edit,match", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_bad_deployment_json_is_refused(deployed, tmp_path, case, edit, match):
    path = tmp_path / "deployment.json"
    data = json.loads((deployed / "deployment.json").read_text())
    edit(data)
    with pytest.raises(ArtifactError, match=match):
        Manifest.from_dict(data, path)


CHECKPOINT_CASES = [
    ("missing base", _drop("base"), r"task\.json: field 'base' is missing; re-create the checkpoint"),
    ("absurd bottleneck", _set("adapter.bottleneck", 10**7), r"field 'adapter' is invalid .*1\.\.16384"),
    (
        "bottleneck vs weights",
        _set("adapter.bottleneck", 8),
        r"field 'adapter' implies .*down\.(weight|bias) of shape \[8",
    ),
    ("label count vs head", _relabel(["a", "b", "c", "d"]), r"field 'head' declares 4 outputs .* \[3, 32\]"),
    ("wrong hidden size", _set("base.hidden_size", "32"), r"field 'base\.hidden_size' must be an integer"),
    ("unsafe name", _set("name", "a/b"), r"field 'name'.*not a safe name"),
]


@pytest.mark.parametrize("case,edit,match", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoint_is_refused_before_a_model_is_built(ckpt, tmp_path, case, edit, match):
    from adapterdeploy.models.checkpoint import load_checkpoint

    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    data = json.loads((copy / "task.json").read_text())
    edit(data)
    (copy / "task.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=match):
        load_checkpoint(copy)


def test_base_spec_is_written_whole_and_older_manifests_get_the_architectures_defaults(deployed, tiny_base):
    """The exporter writes pad id and token types (it did not before, so the runtime always fell back);
    a manifest without them reads the config diff, else the architecture's transformers defaults."""
    data = json.loads((deployed / "deployment.json").read_text())
    base = Manifest.from_dict(data).base
    assert base == tiny_base.spec and base.pad_token_id == tiny_base.model.config.pad_token_id
    assert base.type_vocab_size == tiny_base.model.config.type_vocab_size
    old = {k: v for k, v in data["base"].items() if k not in ("pad_token_id", "type_vocab_size", "vocab_size")}
    for model_type, config, pad, types in (
        ("bert", {}, 0, 2),
        ("roberta", {}, 1, 2),  # RobertaConfig's defaults: absent from the diff means these
        ("roberta", {"pad_token_id": 1, "type_vocab_size": 1}, 1, 1),
    ):
        got = Manifest.from_dict({**data, "base": {**old, "model_type": model_type, "config": config}}).base
        assert (got.pad_token_id, got.type_vocab_size, got.vocab_size) == (pad, types, None)


def test_the_runtime_tokenizes_with_the_manifests_pad_id(deployed, tmp_path):
    from adapterdeploy.runtime import Deployment

    copy = tmp_path / "d"
    shutil.copytree(deployed, copy)
    data = json.loads((copy / "deployment.json").read_text())
    data["base"]["pad_token_id"] = 3  # a RoBERTa-like pad id: the runtime must pad with it, not the tokenizer's
    (copy / "deployment.json").write_text(json.dumps(data))
    with Deployment.open(copy) as d:
        assert d._encoder.pad_id == 3


def test_a_valid_task_json_still_round_trips(deployed):
    spec = TaskSpec.read(deployed / "tasks" / "t")
    assert TaskSpec.from_dict(spec.to_dict()) == spec
