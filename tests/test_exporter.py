"""Exporter on tiny bases: mixed-task parity, fusions per placement, AdapterDrop, int8/fp16, standalone, add/remove.

Parity is checked twice: by the exporter itself (figures in the manifest) and here, independently, by running
the written graphs with plain onnxruntime on texts the exporter never saw, against PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from exporter_helpers import PAIRS, TEXTS, make_checkpoint, torch_logits

from adapterdeploy.artifacts import Manifest, TaskSpec, verify_files
from adapterdeploy.config import FEATURE_OF_POOLING, AdapterConfig, HeadConfig, SiteOptions
from adapterdeploy.errors import ConfigError, FingerprintMismatchError, UnknownTaskError, UnsupportedAdapterError
from adapterdeploy.exporter.deployment import bank_of, export_deployment, inspect
from adapterdeploy.exporter.parity import GraphRunner, ParityBatch, encode_items
from adapterdeploy.exporter.updates import add_task, remove_task
from adapterdeploy.models.base import load_base

TOL = 1e-4


@pytest.fixture(scope="module")
def ckpts(tiny_base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "a": make_checkpoint(tiny_base, root, "a", bottleneck=4, seed=1),
        "b": make_checkpoint(
            tiny_base, root, "b", bottleneck=8, layers=(1, 2, 3), pooling="mean", head_layers=1, text_pair=True, seed=2
        ),
        "c": make_checkpoint(tiny_base, root, "c", bottleneck=2, pooling="pooler", regression=True, seed=3),
        "big": make_checkpoint(tiny_base, root, "big", bottleneck=16, layers=(2, 3), seed=4, num_labels=2),
        "al": make_checkpoint(tiny_base, root, "al", placement="after_layer", bottleneck=6, seed=5),
        "late": make_checkpoint(tiny_base, root, "late", placement="after_layer", bottleneck=3, layers=(2, 3), seed=6),
    }


@pytest.fixture(scope="module")
def dep(tiny_base_dir, ckpts, tmp_path_factory) -> Path:
    """K = 0, three houlsby tasks (bottlenecks 4/8/2, cls/mean/pooler, a pair task, a regression task)."""
    out = tmp_path_factory.mktemp("dep") / "deploy"
    export_deployment(
        tiny_base_dir, [ckpts["a"], ckpts["b"], ckpts["c"]], out, precisions=("fp32", "int8", "fp16"), standalone=True
    )
    return out


def independent_check(
    base, dep: Path, names: list[str], ckpt_dirs: list[Path], adapter_drop: int = 0, precision: str = "fp32"
) -> float:
    """Max abs logits diff of the deployed graphs (one mixed batch, every text fanned out to every task)."""
    manifest = Manifest.read(dep)
    variant = manifest.featurizer.variants[precision]
    items = [*TEXTS, *PAIRS]
    ids, mask, tt = encode_items(base.load_tokenizer(), items, manifest.tokenizer.max_length)
    rs = np.array([u for t in range(len(names)) for u in range(len(items))], dtype=np.int64)
    ti = np.array([t for t in range(len(names)) for _ in items], dtype=np.int64)
    heads = {n: dep / manifest.tasks[n] / "head.onnx" for n in names}
    runner = GraphRunner(dep / variant.trunk, dep / variant.adapted, heads)
    feats = runner.features(ParityBatch("check", ids, mask, tt, rs, ti), bank_of(dep, names))
    worst = 0.0
    for t, (name, ckpt_dir) in enumerate(zip(names, ckpt_dirs, strict=True)):
        spec = TaskSpec.read(dep / manifest.tasks[name])
        got = runner.head(name, feats[FEATURE_OF_POOLING[spec.head.pooling]][ti == t])
        want = torch_logits(base, ckpt_dir, items, manifest.tokenizer.max_length, adapter_drop)
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def test_mixed_batch_parity_k0(tiny_base, dep, ckpts):
    manifest = Manifest.read(dep)
    assert manifest.parity["fp32"]["logits_max_abs_diff"] <= TOL
    assert manifest.parity["fp32"]["features_max_abs_diff"] <= TOL
    assert set(manifest.tasks) == {"a", "b", "c"}
    assert manifest.featurizer.outputs == ("cls", "mean", "pooled", "tokens")
    assert independent_check(tiny_base, dep, ["a", "b", "c"], [ckpts["a"], ckpts["b"], ckpts["c"]]) <= TOL
    assert verify_files(dep, manifest.files) == []
    # A task file holds every bank key at its own bottleneck (zeros where it has no adapter) and its head.
    from safetensors.numpy import load_file

    rows = load_file(str(dep / "tasks" / "b" / "adapters.safetensors"))
    assert set(manifest.featurizer.bank_inputs) <= set(rows)
    assert rows["bank.1.attn.down_w"].shape == (32, 8) and not rows["bank.0.attn.down_w"].any()
    assert rows["head.hidden.0.w"].shape == (32, 32) and rows["head.out.w"].shape == (32, 3)
    spec = TaskSpec.read(dep / "tasks" / "b")
    assert spec.featurizer_fingerprint == manifest.featurizer.fingerprint and spec.text_pair
    assert spec.parity["fp32"]["logits_max_abs_diff"] <= TOL and spec.parity["samples"]


def test_no_task_weights_in_featurizer_and_dynamic_bank_axes(dep):
    manifest = Manifest.read(dep)
    adapted = onnx.load(str(dep / manifest.featurizer.variants["fp32"].adapted))
    inputs = {i.name: i for i in adapted.graph.input}
    assert list(inputs)[:4] == ["hidden", "attention_mask", "row_source", "task_index"]
    down = inputs["bank.0.attn.down_w"].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in down] == ["tasks", 32, "bottleneck"]
    init_names = {i.name for i in adapted.graph.initializer}
    assert not any(n.startswith("bank.") for n in init_names)
    trunk = onnx.load(str(dep / manifest.featurizer.variants["fp32"].trunk))
    assert [i.name for i in trunk.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]


@pytest.mark.parametrize("placement,ptl", [("after_layer", False), ("pfeiffer", True), ("houlsby", False)])
def test_placements_parity_and_fusions_survive(tiny_base, tiny_base_dir, tmp_path, placement, ptl):
    """Every placement (pfeiffer with per-task LayerNorms) keeps all Attention / SkipLayerNorm fusions."""
    common = {"placement": placement, "per_task_layernorm": ptl, "layers": (1, 2, 3)}
    a = make_checkpoint(tiny_base, tmp_path, "p1", bottleneck=3, seed=7, **common)
    b = make_checkpoint(tiny_base, tmp_path, "p2", bottleneck=5, pooling="mean", seed=8, **common)
    out = tmp_path / "dep"
    manifest = export_deployment(tiny_base_dir, [a, b], out, adapter_drop=1)
    variant = manifest.featurizer.variants["fp32"]
    fused = _fused_counts(variant)
    adapted_layers = 3
    # the last layer's attention takes a query subset (the cls_only input, design note 30): neither its
    # Attention nor its attention output's Add + LayerNorm (residual of dynamic length q) is fused
    assert fused["adapted"]["Attention"] == adapted_layers - 1
    assert fused["adapted"]["SkipLayerNormalization"] == 2 * adapted_layers - 1
    assert fused["adapted"]["BiasGelu"] == adapted_layers
    assert fused["trunk"]["Attention"] == 1  # the one trunk layer (K = 1)
    assert manifest.parity["fp32"]["logits_max_abs_diff"] <= TOL
    assert independent_check(tiny_base, out, ["p1", "p2"], [a, b], adapter_drop=1) <= TOL


def test_adapterhub_site_options_with_adapter_layernorms(tiny_base, tiny_base_dir, tmp_path):
    """Imported (AdapterHub-style) sites take the generic path: LN before, post-add residual, adapter LNs."""
    site = SiteOptions(original_ln_before=True, residual_before_ln="post_add", ln_before=True, ln_after=True)
    a = make_checkpoint(tiny_base, tmp_path, "h1", placement="pfeiffer", bottleneck=4, site=site, seed=13)
    b = make_checkpoint(tiny_base, tmp_path, "h2", placement="pfeiffer", bottleneck=6, site=site, seed=14)
    manifest = export_deployment(tiny_base_dir, [a, b], tmp_path / "dep")
    assert "bank.0.ffn.ln_after_w" in manifest.featurizer.bank_inputs
    assert manifest.parity["fp32"]["logits_max_abs_diff"] <= TOL
    assert independent_check(tiny_base, tmp_path / "dep", ["h1", "h2"], [a, b]) <= TOL


def _fused_counts(variant) -> dict:
    timings = variant.timings
    return variant.op_counts if timings["chosen"] == "fused" else timings["candidate_op_counts"]["fused"]


def _layer_of(node_name: str) -> int | None:
    import re

    m = re.search(r"/layers?\.(\d+)/", node_name)
    return int(m.group(1)) if m else None


def test_adapter_drop_k2_graphs_hold_no_adapter_below_k(tiny_base, tiny_base_dir, ckpts, tmp_path):
    """K = 2: the trunk has no bank input at all; per layer, the plain graphs' MatMuls are 8 (base) below K and
    8 + 2 per adapter site (down, up) from K on, + 4 in the last layer for its folded CLS attention (design
    note 31); every bank input feeds layers >= K only."""
    from adapterdeploy.exporter.featurizer import Adapted, Trunk, stack_bank, task_rows
    from adapterdeploy.exporter.onnx_graphs import export_adapted, export_trunk
    from adapterdeploy.models.encoder import EncoderWithAdapters

    with pytest.raises(ConfigError, match="--allow-drop"):
        export_deployment(tiny_base_dir, [ckpts["al"]], tmp_path / "refused", adapter_drop=2)
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "dep"
    manifest = export_deployment(tiny_base_dir, [ckpts["al"], ckpts["late"]], out, adapter_drop=2, allow_drop=True)
    fz = manifest.featurizer
    assert fz.adapted_layers == (2, 3)
    assert {k.split(".")[1] for k in fz.bank_inputs} == {"2", "3"}
    trunk = onnx.load(str(out / fz.variants["fp32"].trunk))
    assert [i.name for i in trunk.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert TaskSpec.read(out / "tasks" / "al").adapter["dropped_layers"] == [0, 1]
    assert independent_check(tiny_base, out, ["al", "late"], [ckpts["al"], ckpts["late"]], adapter_drop=2) <= TOL

    # Per-layer op counts on the plain export (node names keep the layer index; fused ones do not).
    sig = AdapterConfig(placement="after_layer").signature()
    trunk_m, adapted_m = Trunk(tiny_base, 2), Adapted(tiny_base, 2, sig)
    model = EncoderWithAdapters(tiny_base, AdapterConfig(placement="after_layer", bottleneck=3), HeadConfig())
    bank = stack_bank([task_rows(model, sig, adapted_m.adapted_layers)], adapted_m.keys)
    export_trunk(trunk_m, tmp_path / "t.onnx", opset=17, vocab_size=tiny_base.model.config.vocab_size)
    export_adapted(adapted_m, tmp_path / "a.onnx", opset=17, hidden_size=32, bank=bank)
    for path, expected in (("t.onnx", {0: 8, 1: 8, 2: 0, 3: 0}), ("a.onnx", {0: 0, 1: 0, 2: 10, 3: 14})):
        graph = onnx.load(str(tmp_path / path)).graph
        counts = {i: sum(1 for n in graph.node if n.op_type == "MatMul" and _layer_of(n.name) == i) for i in range(4)}
        assert counts == expected, path
    graph = onnx.load(str(tmp_path / "a.onnx")).graph
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for name in adapted_m.keys:
        gathered = [o for g in consumers[name] for o in g.output]
        layers = {_layer_of(c.name) for o in gathered for c in consumers.get(o, [])}
        assert layers and layers <= {2, 3}, (name, layers)


def test_int8_and_fp16_variants_record_figures(tiny_base, dep, ckpts):
    manifest = Manifest.read(dep)
    assert manifest.precisions == ("fp32", "int8", "fp16")
    int8 = manifest.featurizer.variants["int8"]
    assert int8.trunk == "featurizer/trunk.int8.onnx" and "+int8-dynamic" in int8.optimization
    assert 0 < int8.parity["logits_max_abs_diff"] < 1 and 0 <= int8.parity["argmax_agreement"] <= 1
    assert int8.parity["tolerance"] is None  # recorded, not enforced
    assert set(int8.timings["candidates"]) == {"plain", "fused"}
    assert independent_check(tiny_base, dep, ["a", "c"], [ckpts["a"], ckpts["c"]], precision="int8") < 1
    fp16 = manifest.featurizer.variants["fp16"]
    assert fp16.io_dtypes["adapted"]["bank.0.attn.down_w"] == "float16"
    assert fp16.io_dtypes["adapted"]["hidden"] == "float32" and fp16.io_dtypes["adapted"]["cls"] == "float32"
    assert "logits_max_abs_diff" in fp16.parity or fp16.parity.get("measured") is False


def _fp32_adapter_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose weight is a per-row Gather of a bank input: the adapter projections left in fp32."""
    made_by = {o: n for n in model.graph.node for o in n.output}
    bank = {i.name for i in model.graph.input if i.name.startswith("bank.")}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul"
        and (g := made_by.get(n.input[1])) is not None
        and g.op_type == "Gather"
        and g.input[0] in bank
    ]


def test_int8_variant_quantizes_the_adapter_bank(dep):
    """Issue 15: the int8 featurizer has no fp32 adapter MatMul left; int8 bank rows (a quarter of the bytes)
    give the fp32 variant's outputs within the int8 tolerance, mixed-task batch included."""
    from adapterdeploy.runtime import Deployment

    manifest = Manifest.read(dep)
    variants = manifest.featurizer.variants
    assert _fp32_adapter_matmuls(onnx.load(str(dep / variants["fp32"].adapted)))  # the probe finds them in fp32
    assert _fp32_adapter_matmuls(onnx.load(str(dep / variants["int8"].adapted))) == []
    assert variants["int8"].optimization.endswith("+int8-dynamic+int8-bank")
    dtypes = variants["int8"].io_dtypes["adapted"]
    projections = [k for k in manifest.featurizer.bank_inputs if k.endswith((".down_w", ".up_w"))]
    assert projections and all(dtypes[k] == "int8" and dtypes[f"{k}_scale"] == "float32" for k in projections)
    assert variants["fp32"].io_dtypes["adapted"][projections[0]] == "float32"  # fp32 / fp16 unchanged
    rows = [("a", TEXTS[0]), ("b", PAIRS[0]), ("c", TEXTS[1]), ("a", TEXTS[2]), ("b", PAIRS[1])]
    with Deployment.open(dep, precision="fp32") as d32, Deployment.open(dep, precision="int8") as d8:
        r32, r8 = d32._task("b").rows, d8._task("b").rows
        assert r8.arrays[projections[0]].dtype == np.int8 and r8.nbytes < 0.5 * r32.nbytes
        p32, p8 = d32.predict_mixed(rows), d8.predict_mixed(rows)
    for a, b in zip(p32, p8, strict=True):
        assert abs(a.score - b.score) < 0.1 and (a.value is not None or a.label == b.label)


def test_int8_variant_with_fp32_bank_inputs_still_loads(dep, tmp_path):
    """A deployment exported before int8 bank rows (its int8 adapted graph takes fp32 bank inputs) still runs."""
    import shutil

    from adapterdeploy.artifacts import file_entry
    from adapterdeploy.exporter.quantize import quantize_int8
    from adapterdeploy.runtime import Deployment

    old = tmp_path / "old"
    shutil.copytree(dep, old)
    manifest = Manifest.read(old)
    variant = manifest.featurizer.variants["int8"]
    fp32_graph = old / manifest.featurizer.variants["fp32"].adapted
    quantize_int8(fp32_graph, old / variant.adapted)  # what the exporter wrote before issue 15
    manifest.files[variant.adapted] = file_entry(old / variant.adapted)
    manifest.write(old)
    assert _fp32_adapter_matmuls(onnx.load(str(old / variant.adapted)))
    with Deployment.open(old, precision="int8") as d_old, Deployment.open(dep, precision="int8") as d_new:
        rows = d_old._task("a").rows
        assert all(a.dtype == np.float32 for a in rows.arrays.values())
        got, want = d_old.predict(TEXTS, task="a"), d_new.predict(TEXTS, task="a")
    assert [p.label for p in got] == [p.label for p in want]
    assert max(abs(p.score - q.score) for p, q in zip(got, want, strict=True)) < 0.1


def test_standalone_graphs_run_in_plain_onnxruntime(tiny_base, dep, ckpts):
    manifest = Manifest.read(dep)
    assert set(manifest.standalone) == {"a", "b", "c"}
    assert manifest.standalone["a"] == {
        "fp32": "standalone/a/onnx/model.onnx",
        "int8": "standalone/a/onnx/model_quantized.onnx",
    }
    tok = tiny_base.load_tokenizer()
    items = [*TEXTS, *PAIRS]
    ids, mask, tt = encode_items(tok, items, manifest.tokenizer.max_length)
    for name in ("a", "b", "c"):
        sess = ort.InferenceSession(str(dep / manifest.standalone[name]["fp32"]), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
        (logits,) = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt})
        want = torch_logits(tiny_base, ckpts[name], items, manifest.tokenizer.max_length)
        assert np.abs(logits - want).max() <= TOL
        domains = {n.domain for n in onnx.load(str(dep / manifest.standalone[name]["fp32"])).graph.node}
        assert domains <= {"", "ai.onnx"}, "standalone graphs use standard ONNX ops only"
    assert manifest.parity["standalone"]["a"]["int8"]["argmax_agreement"] is not None


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "electra"])
def test_other_architectures(tiny_bases, model_type, tmp_path):
    """RoBERTa (positions from input ids), XLM-R and ELECTRA (embeddings projection): parity and fusions."""
    base = load_base(tiny_bases[model_type])
    a = make_checkpoint(base, tmp_path, "a", placement="pfeiffer", bottleneck=4, seed=1)
    b = make_checkpoint(base, tmp_path, "b", placement="pfeiffer", bottleneck=6, seed=2, pooling="mean", text_pair=True)
    manifest = export_deployment(tiny_bases[model_type], [a, b], tmp_path / "dep", adapter_drop=1, allow_drop=True)
    assert manifest.parity["fp32"]["logits_max_abs_diff"] <= TOL
    assert _fused_counts(manifest.featurizer.variants["fp32"])["adapted"]["Attention"] == 2  # last: cls_only
    assert independent_check(base, tmp_path / "dep", ["a", "b"], [a, b], adapter_drop=1) <= TOL


def test_add_task_to_a_standalone_deployment(tiny_base, dep, ckpts, tmp_path):
    import shutil

    copy = tmp_path / "dep"
    shutil.copytree(dep, copy)
    add_task(copy, ckpts["big"])
    manifest = Manifest.read(copy)
    assert manifest.standalone["big"] == {
        "fp32": "standalone/big/onnx/model.onnx",
        "int8": "standalone/big/onnx/model_quantized.onnx",
    }
    assert manifest.parity["standalone"]["big"]["fp32"]["logits_max_abs_diff"] <= TOL
    assert set(TaskSpec.read(copy / "tasks" / "big").parity) >= {"fp32", "int8", "fp16", "samples"}
    sess = ort.InferenceSession(str(copy / manifest.standalone["big"]["fp32"]), providers=["CPUExecutionProvider"])
    ids, mask, tt = encode_items(tiny_base.load_tokenizer(), TEXTS, manifest.tokenizer.max_length)
    (logits,) = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt})
    want = torch_logits(tiny_base, ckpts["big"], TEXTS, manifest.tokenizer.max_length)
    assert np.abs(logits - want).max() <= TOL
    assert inspect(copy)["checksums"]["ok"] and inspect(copy)["leftovers"] == []
    assert {"standalone/big/config.json", "standalone/big/tokenizer.json"} <= set(manifest.files)
    add_task(copy, ckpts["big"], replace=True)  # the old folder is still referenced: the new one goes beside it
    replaced = Manifest.read(copy)
    folder = replaced.standalone["big"]["fp32"].removesuffix("/onnx/model.onnx")
    assert folder.startswith("standalone/big~") and not (copy / "standalone" / "big").exists()
    assert f"{folder}/config.json" in replaced.files
    assert not any(f.startswith("standalone/big/") for f in replaced.files)
    assert inspect(copy)["checksums"]["ok"] and inspect(copy)["leftovers"] == []
    remove_task(copy, "big")
    assert not (copy / folder).exists() and "big" not in Manifest.read(copy).standalone
    assert not any(f.startswith("standalone/big") for f in Manifest.read(copy).files)
    assert (copy / "standalone" / "a" / "config.json").is_file(), "the other tasks' folders stay"


def test_add_and_remove_task(tiny_base, tiny_base_dir, ckpts, tmp_path):
    out = tmp_path / "dep"
    export_deployment(tiny_base_dir, [ckpts["a"]], out, precisions=("fp32", "int8"))
    before = Manifest.read(out)
    spec = add_task(out, ckpts["big"])  # bottleneck 16 > the bank's 4: the dynamic axis takes it, no re-export
    after = Manifest.read(out)
    assert spec.bottleneck == 16 and spec.featurizer_fingerprint == before.featurizer.fingerprint
    assert set(after.tasks) == {"a", "big"} and set(after.task_files) == {"a", "big"}
    assert not any(f.startswith("tasks/") for f in after.files)  # task files are listed by their task.json
    assert after.task_files["a"] == before.task_files["a"]
    assert after.featurizer.variants["fp32"].adapted == before.featurizer.variants["fp32"].adapted
    assert after.files["featurizer/adapted.onnx"] == before.files["featurizer/adapted.onnx"]
    assert set(spec.parity) >= {"fp32", "int8"} and spec.parity["fp32"]["logits_max_abs_diff"] <= TOL
    assert inspect(out)["checksums"]["ok"]
    assert independent_check(tiny_base, out, ["a", "big"], [ckpts["a"], ckpts["big"]]) <= TOL
    with pytest.raises(ConfigError, match="already exists"):
        add_task(out, ckpts["big"])
    with pytest.raises(FingerprintMismatchError, match="placement"):
        add_task(out, ckpts["al"])
    remove_task(out, "a")
    final = Manifest.read(out)
    assert set(final.tasks) == {"big"} and not (out / "tasks" / "a").exists()
    assert "a" not in final.task_files and "a" not in final.parity["tasks"]
    assert inspect(out)["checksums"]["ok"]
    with pytest.raises(UnknownTaskError):
        remove_task(out, "a")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".dep.")]
    assert leftovers == [".dep.lock"]  # the writer lock's file stays (empty; flock is released with the process)
    assert inspect(out)["leftovers"] == []


def test_adapter_drop_eval_and_layernorm_bound(tiny_base, tiny_base_dir, ckpts, tmp_path):
    data = tmp_path / "al" / "dev.tsv"
    data.parent.mkdir()
    data.write_text("label\ttext\n" + "".join(f"{i % 3}\t{t}\n" for i, t in enumerate(TEXTS * 3)))
    manifest = export_deployment(
        tiny_base_dir, [ckpts["al"]], tmp_path / "dep", adapter_drop=1, allow_drop=True, eval_file=[str(data)]
    )
    ev = manifest.adapter_drop_eval
    assert ev["adapter_drop"] == 1 and ev["tasks"]["al"]["rows"] == 12
    assert ev["tasks"]["al"]["dropped_layers"] == [0]
    assert 0 <= ev["tasks"]["al"]["all_adapters"] <= 1 and 0 <= ev["tasks"]["al"]["without_dropped"] <= 1
    ptl = make_checkpoint(tiny_base, tmp_path, "ptl", placement="pfeiffer", per_task_layernorm=True, seed=9)
    with pytest.raises(ConfigError, match="own LayerNorms"):
        export_deployment(tiny_base_dir, [ptl], tmp_path / "dep2", adapter_drop=1, allow_drop=True)
    assert not (tmp_path / "dep2").exists()


def test_zero_fill_refused_when_not_exact(tiny_base, tiny_base_dir, tmp_path):
    site = SiteOptions(ln_after=True, adapter_residual_before_ln=True)
    ck = make_checkpoint(tiny_base, tmp_path, "lnx", placement="pfeiffer", layers=(2, 3), site=site, seed=10)
    with pytest.raises(UnsupportedAdapterError, match="no adapter in layers"):
        export_deployment(tiny_base_dir, [ck], tmp_path / "dep")
    assert not (tmp_path / "dep").exists()


def test_inspect_reports_and_detects_corruption(dep, tmp_path):
    import shutil

    info = inspect(dep)
    manifest = Manifest.read(dep)
    assert info["checksums"]["ok"]
    assert info["checksums"]["files_checked"] == len(manifest.files) + 3 * len(manifest.tasks)  # task.json + 2
    assert [t["name"] for t in info["tasks"]] == ["a", "b", "c"]
    assert info["featurizer"]["variants"]["fp32"]["size_bytes"] > 0
    json.dumps(info)
    copy = tmp_path / "copy"
    shutil.copytree(dep, copy)
    with open(copy / "tasks" / "a" / "adapters.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    bad = inspect(copy)
    assert not bad["checksums"]["ok"] and "tasks/a/adapters.safetensors" in bad["checksums"]["problems"][0]


@pytest.mark.slow
def test_real_minilm_two_tasks_k3(tmp_path):
    """The embedded all-MiniLM-L6-v2 with two tasks (one pair task), K = 3: parity <= 1e-4, fusions survive."""
    base = load_base(None)
    common = {"placement": "after_layer", "layers": (3, 4, 5), "num_labels": 2, "std": 0.05, "head_std": 0.1}
    a = make_checkpoint(base, tmp_path, "sent", bottleneck=24, seed=11, **common)
    b = make_checkpoint(base, tmp_path, "para", bottleneck=48, seed=12, text_pair=True, pooling="mean", **common)
    manifest = export_deployment(None, [a, b], tmp_path / "dep", adapter_drop=3)
    assert manifest.featurizer.adapted_layers == (3, 4, 5)
    assert manifest.parity["fp32"]["logits_max_abs_diff"] <= TOL
    fused = _fused_counts(manifest.featurizer.variants["fp32"])
    assert fused["adapted"]["Attention"] == 2 and fused["trunk"]["Attention"] == 3  # last layer: cls_only
    assert independent_check(base, tmp_path / "dep", ["sent", "para"], [a, b], adapter_drop=3) <= TOL
