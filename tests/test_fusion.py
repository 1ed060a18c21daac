"""AdapterFusion (``Fuse("a", "b", ...)``) from the adapters library to the runtime, beside plain tasks.

The adapters library itself builds the fusions on a tiny random BERT; every adapter, fusion (query / key /
value) and head parameter is perturbed with noise (N(0, 0.5), the fusion weights N(0, 0.2)): the library's
init makes the value matrix the identity and the adapters near zero, which would make parity trivial.
Tolerance: 1e-4 on probabilities after import -> export -> runtime (fp32), against the library's own forward.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import adapters as ah
import numpy as np
import pytest
import torch
from adapters.composition import Fuse
from click.testing import CliRunner

from adapterdeploy.cli import main
from adapterdeploy.errors import ConfigError, FingerprintMismatchError, UnsupportedAdapterError
from adapterdeploy.exporter.deployment import export_deployment
from adapterdeploy.exporter.updates import add_task
from adapterdeploy.models.adapterhub import import_adapterhub
from adapterdeploy.models.adapterhub_fusion import import_adapterhub_fusion, verify_fusion_import
from adapterdeploy.models.adapterhub_stack import import_adapterhub_stack
from adapterdeploy.models.checkpoint import load_checkpoint, save_checkpoint
from adapterdeploy.runtime.deployment import Deployment

TOL = 1e-4
TEXTS = ["the movie was good", "a very bad film and a boring plot , the actors were terrible", "yes"]
ADAPTERS = ["a", "b", "c"]
FUSION_NOISE = 0.2


def _hub(base_dir: Path, cfg, fusions: dict[str, tuple[list[str], str]], plain: list[str], seed: int = 0):
    """A library model with adapters a, b, c, the given fusions (name -> (adapters, fusion config)) with a head
    each, and plain heads; every adapter / fusion / head parameter perturbed."""
    torch.manual_seed(seed)
    model = ah.AutoAdapterModel.from_pretrained(str(base_dir), attn_implementation="eager")
    for i, a in enumerate(ADAPTERS):
        model.add_adapter(a, config=cfg(reduction_factor=2 * (i + 1)))
    for name, (names, fcfg) in fusions.items():
        model.add_adapter_fusion(Fuse(*names), config=fcfg)
        model.add_classification_head(name, num_labels=3)
    for p in plain:
        model.add_classification_head(p, num_labels=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name or name.startswith("heads."):
                p.add_(torch.randn_like(p) * 0.5)
            elif "adapter_fusion_layer" in name:  # 0.5 here makes the scores O(100): fp32 rounding then shows
                p.add_(torch.randn_like(p) * FUSION_NOISE)
    return model.eval()


def _library_probs(model, tok, setup, head: str) -> np.ndarray:
    model.set_active_adapters(setup)
    model.active_head = head
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**enc).logits, -1).numpy()


def _probs(dep: Deployment, task: str) -> np.ndarray:
    return np.array([list(p.probabilities.values()) for p in dep.predict(TEXTS, task=task)])


@pytest.fixture(scope="module")
def fused(tiny_base_dir, tiny_base, tmp_path_factory):
    """One deployment: Fuse(a, b) (dynamic, head saved with it), Fuse(a, b, c) (static, head via save_head)
    and the plain adapter a with its own head."""
    root = tmp_path_factory.mktemp("fusion")
    fusions = {"a,b": (["a", "b"], "dynamic"), "a,b,c": (["a", "b", "c"], "static")}
    model = _hub(tiny_base_dir, ah.SeqBnConfig, fusions, ["a"])
    tok = tiny_base.load_tokenizer()
    refs = {
        "a-b": _library_probs(model, tok, Fuse("a", "b"), "a,b"),
        "a-b-c": _library_probs(model, tok, Fuse("a", "b", "c"), "a,b,c"),
        "a": _library_probs(model, tok, "a", "a"),
    }
    slot0_only = _library_probs(model, tok, "a", "a,b")
    for a in ADAPTERS:
        model.save_adapter(str(root / a), a, with_head=a == "a")
    (root / "ab").mkdir()
    model.save_adapter_fusion(str(root / "ab"), "a,b", with_head=True)
    (root / "abc").mkdir()
    model.save_adapter_fusion(str(root / "abc"), "a,b,c")
    model.save_head(str(root / "abc_head"), "a,b,c")
    ab = import_adapterhub_fusion(tiny_base, root / "ab", [root / "b", root / "a"])
    abc = import_adapterhub_fusion(tiny_base, root / "abc", [root / a for a in ADAPTERS], head_dir=root / "abc_head")
    ckpts = [
        save_checkpoint(ab, root / "ckpt" / "ab"),
        save_checkpoint(abc, root / "ckpt" / "abc"),
        save_checkpoint(import_adapterhub(tiny_base, root / "a"), root / "ckpt" / "a"),
    ]
    manifest = export_deployment(tiny_base_dir, ckpts, root / "deploy", max_length=32)
    return {
        "root": root,
        "deploy": root / "deploy",
        "refs": refs,
        "manifest": manifest,
        "ckpts": ckpts,
        "slot0": slot0_only,
    }


def test_fusion_roundtrip_matches_the_adapters_library(fused):
    manifest = fused["manifest"]
    assert manifest.featurizer.signature.fusion == 3
    with Deployment.open(fused["deploy"]) as dep:
        for task, ref in fused["refs"].items():
            diff = float(np.abs(_probs(dep, task) - ref).max())
            assert diff <= TOL, f"{task}: max abs probability diff {diff:.3g} vs the adapters library"
        # Fusion rows (N = 2 and 3) and plain rows in one mixed forward: the same answers.
        rows = [(t, x) for x in TEXTS for t in ("a-b", "a", "a-b-c")]
        for (t, x), p in zip(rows, dep.predict_mixed(rows), strict=True):
            assert np.abs(np.array(list(p.probabilities.values())) - fused["refs"][t][TEXTS.index(x)]).max() <= TOL
        # A plain task's zero fusion rows are shared, not copied per task, and not counted in its bytes.
        dep.load_task("a")
        plain = dep._task("a").rows
        assert any("_fusion.fuse_qk" in k for k in plain.shared)
    for t in ("a-b", "a-b-c", "a"):
        assert manifest.parity["tasks"][t]["fp32"]["logits_max_abs_diff"] <= TOL
    # The fusion matters: the same head on adapter a alone answers differently.
    assert np.abs(fused["refs"]["a-b"] - fused["slot0"]).max() > 1e-3
    # A plain task's file holds no fusion rows; a fusion task's holds its slots and attention.
    from safetensors.numpy import load_file

    plain_keys = load_file(str(fused["deploy"] / "tasks" / "a" / "adapters.safetensors"))
    assert not any("_fuse" in k for k in plain_keys)
    ab_keys = load_file(str(fused["deploy"] / "tasks" / "a-b" / "adapters.safetensors"))
    assert any("_fuse1." in k for k in ab_keys) and not any("_fuse2." in k for k in ab_keys)  # unused slot: not stored
    spec = json.loads((fused["deploy"] / "tasks" / "a-b" / "task.json").read_text())
    assert spec["adapter"]["fusion"] == {"name": "a,b", "adapters": ["a", "b"]}
    shown = CliRunner().invoke(main, ["inspect", str(fused["deploy"]), "--json"])
    assert shown.exit_code == 0, shown.output
    assert {t["name"]: t["composition"] for t in json.loads(shown.output)["tasks"]} == {
        "a-b": "Fuse(a, b)",
        "a-b-c": "Fuse(a, b, c)",
        "a": None,
    }
    checked = CliRunner().invoke(main, ["check", str(fused["deploy"])])
    assert checked.exit_code == 0, checked.output


def test_fusion_task_is_refused_by_a_plain_featurizer(fused, tiny_base_dir, tiny_base, tmp_path):
    export_deployment(tiny_base_dir, [fused["ckpts"][-1]], tmp_path / "plain", max_length=32)
    with pytest.raises(FingerprintMismatchError, match=r"fuses 2 adapters, the featurizer has 0 fusion slots"):
        add_task(tmp_path / "plain", fused["ckpts"][0])
    # The base model's embeddings (task None: all-zero rows, gate 0) are the same on the fusion featurizer.
    with Deployment.open(tmp_path / "plain") as plain, Deployment.open(fused["deploy"]) as dep:
        assert np.abs(plain.embed(TEXTS) - dep.embed(TEXTS)).max() <= 1e-5
    # A stacked task and a fusion task cannot share one featurizer: a clear message, nothing written.
    stacked = import_adapterhub_stack(tiny_base, fused["root"] / "b", fused["root"] / "a")
    with pytest.raises(ConfigError, match="either lower-adapter slots or fusion slots"):
        export_deployment(
            tiny_base_dir, [save_checkpoint(stacked, tmp_path / "st"), fused["ckpts"][0]], tmp_path / "mix"
        )
    assert not (tmp_path / "mix").exists()
    # add-task of a fusion task into a featurizer with enough slots: the same answers as exported with it.
    ckpt = dataclasses.replace(load_checkpoint(fused["ckpts"][0]), name="ab-again", path=None)
    add_task(fused["deploy"], save_checkpoint(ckpt, tmp_path / "ab-again"))
    with Deployment.open(fused["deploy"]) as dep:
        assert np.abs(_probs(dep, "ab-again") - fused["refs"]["a-b"]).max() <= TOL


def test_import_fusion_cli_and_refusals(fused, tiny_base_dir, tiny_base, tmp_path):
    root = fused["root"]
    args = ["import-adapterhub", "--base", str(tiny_base_dir), "--fusion", str(root / "ab")]
    result = CliRunner().invoke(
        main, [*args, "--adapter", str(root / "a"), "--adapter", str(root / "b"), "--out", str(tmp_path / "ab")]
    )
    assert result.exit_code == 0, result.output
    assert "fuses ['a', 'b']" in result.output and "verified against the adapters library" in result.output
    assert load_checkpoint(tmp_path / "ab").signature().fusion == 2
    # One fused adapter missing: a usage error naming it, no traceback.
    wrong = ["--adapter", str(root / "a"), "--adapter", str(root / "c"), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(main, [*args, *wrong])
    assert result.exit_code == 2 and "missing ['b'], not fused ['c']" in result.output, result.output
    result = CliRunner().invoke(main, [*args, "--adapter", str(root / "a"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "one --adapter DIR per fused adapter" in result.output
    # Options we do not run are refused by name.
    cfg_file = tmp_path / "hot" / "adapter_fusion_config.json"
    cfg_file.parent.mkdir()
    for f in (root / "ab").iterdir():
        (cfg_file.parent / f.name).write_bytes(f.read_bytes())
    meta = json.loads(cfg_file.read_text())
    meta["config"]["temperature"] = True
    cfg_file.write_text(json.dumps(meta))
    with pytest.raises(UnsupportedAdapterError, match=r"fusion option temperature=True"):
        import_adapterhub_fusion(tiny_base, cfg_file.parent, [root / "a", root / "b"])
    with pytest.raises(ConfigError, match="given twice"):
        import_adapterhub_fusion(tiny_base, root / "ab", [root / "a", root / "a"])


def test_double_seq_bn_fusion_matches_the_library(tiny_base_dir, tiny_base, tmp_path):
    """Houlsby adapters (attention and FFN sites, swish): fusion at both sites, checked against the library."""
    model = _hub(tiny_base_dir, ah.DoubleSeqBnConfig, {"a,b": (["a", "b"], "dynamic")}, [], seed=3)
    for a in ("a", "b"):
        model.save_adapter(str(tmp_path / a), a, with_head=False)
    (tmp_path / "ab").mkdir()
    model.save_adapter_fusion(str(tmp_path / "ab"), "a,b", with_head=True)
    ckpt = import_adapterhub_fusion(tiny_base, tmp_path / "ab", [tmp_path / "a", tmp_path / "b"])
    assert ckpt.adapter.placement == "houlsby" and sorted(ckpt.adapter.sites) == ["attn", "ffn"]
    assert verify_fusion_import(ckpt, tiny_base, tmp_path / "ab", [tmp_path / "a", tmp_path / "b"], None) <= TOL


def test_export_standalone_of_a_fusion_task(fused, tmp_path):
    """A fusion task's standalone folder (its slots and attention as constants) answers as the library."""
    from adapterdeploy.exporter.compose import export_standalone_folder

    out = export_standalone_folder(fused["deploy"], "a-b", tmp_path / "ab", precisions=("fp32",))
    assert out["parity"]["fp32"]["runtime_probabilities_max_abs_diff"] <= TOL


@pytest.mark.slow
def test_fusion_on_minilm_roundtrip(tmp_path):
    """The round trip on the embedded all-MiniLM-L6-v2: Fuse of 2 seq_bn adapters (dynamic) beside a plain task
    (noise 0.05 on adapters / heads and 0.02 on the fusion weights: larger noise on 384-wide layers amplifies
    float32 rounding past the tolerance, as in test_adapterhub's MiniLM case)."""
    from adapterdeploy.models.base import default_base_dir, load_base

    base_dir = default_base_dir()
    torch.manual_seed(0)
    model = ah.AutoAdapterModel.from_pretrained(str(base_dir), attn_implementation="eager")
    model.add_adapter("a", config=ah.SeqBnConfig(reduction_factor=16))
    model.add_adapter("b", config=ah.SeqBnConfig(reduction_factor=8))
    model.add_adapter_fusion(Fuse("a", "b"))
    model.add_classification_head("a,b", num_labels=3)
    model.add_classification_head("a", num_labels=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name or name.startswith("heads."):
                p.add_(torch.randn_like(p) * 0.05)
            elif "adapter_fusion_layer" in name:
                p.add_(torch.randn_like(p) * 0.02)
    model.eval()
    base = load_base(base_dir)
    tok = base.load_tokenizer()
    ref = _library_probs(model, tok, Fuse("a", "b"), "a,b")
    plain = _library_probs(model, tok, "a", "a")
    assert np.abs(ref - _library_probs(model, tok, "a", "a,b")).max() > 1e-3  # the fusion matters
    for a in ("a", "b"):
        model.save_adapter(str(tmp_path / a), a, with_head=a == "a")
    (tmp_path / "ab").mkdir()
    model.save_adapter_fusion(str(tmp_path / "ab"), "a,b", with_head=True)
    ckpts = [
        save_checkpoint(
            import_adapterhub_fusion(base, tmp_path / "ab", [tmp_path / "a", tmp_path / "b"]), tmp_path / "f"
        ),
        save_checkpoint(import_adapterhub(base, tmp_path / "a"), tmp_path / "p"),
    ]
    manifest = export_deployment(base_dir, ckpts, tmp_path / "deploy", precisions=("fp32",))
    assert manifest.parity["tasks"]["a-b"]["fp32"]["logits_max_abs_diff"] <= TOL
    with Deployment.open(tmp_path / "deploy") as dep:
        assert np.abs(_probs(dep, "a-b") - ref).max() <= TOL
        assert np.abs(_probs(dep, "a") - plain).max() <= TOL
