"""AdapterHub import: adapters built and saved by the real ``adapters`` library give the same logits in ours.

Every adapter and head parameter is perturbed with N(0, 0.5) noise before saving (the library initialises
adapters near zero, which would make parity trivial); each case also checks the adapters change the
outputs clearly. Tolerance: max abs logit difference <= 1e-5, on padded single texts and text pairs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import adapters as ah
import pytest
import torch
from click.testing import CliRunner

from adapterdeploy.cli import main
from adapterdeploy.errors import ArtifactError, FingerprintMismatchError, UnsupportedAdapterError
from adapterdeploy.models.adapterhub import AdapterHubImportWarning, import_adapterhub, verify_import
from adapterdeploy.models.base import load_base
from adapterdeploy.models.checkpoint import load_checkpoint, save_checkpoint
from adapterdeploy.models.tiny import build_tiny_base

TOL = 1e-5
TEXTS = ["the movie was good", "a very bad film and a boring plot , the actors were terrible", "yes"]
PAIRS = [("it is great", "the story was terrible and too long"), ("one man said no", "he says yes")]


@pytest.fixture(scope="module")
def bases(tiny_bases):
    return {mt: load_base(tiny_bases[mt]) for mt in ("bert", "roberta")}


def _batches(base) -> list[dict[str, torch.Tensor]]:
    tok = base.load_tokenizer()
    return [
        dict(tok(TEXTS, padding=True, return_tensors="pt")),
        dict(tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")),
    ]


def _hub_model(base_dir: Path, name: str, config, head: dict | None, seed: int = 0, noise: float = 0.5):
    """An AdapterModel with one adapter (+ head) whose every parameter is perturbed away from its init."""
    torch.manual_seed(seed)
    model = ah.AutoAdapterModel.from_pretrained(str(base_dir), attn_implementation="eager")
    model.add_adapter(name, config=config)
    if head is not None:  # the head class itself, as add_classification_head does not pass ``bias``
        model.add_prediction_head(ah.heads.ClassificationHead(model, name, **head))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if f".adapters.{name}." in pname or pname.startswith(f"heads.{name}."):
                p.add_(torch.randn_like(p) * noise)
    model.set_active_adapters(name)
    model.active_head = name
    return model.eval()


# (id, adapter config, head kwargs, how to save)
CASES = [
    (
        "seq_bn-default-3labels",
        ah.SeqBnConfig(reduction_factor=8),
        {"num_labels": 3, "layers": 2, "id2label": {0: "neg", 1: "neu", 2: "pos"}},
        "with_head",
    ),
    (
        "seq_bn-lns-channel-leaveout-pooler",
        ah.SeqBnConfig(
            reduction_factor=4,
            non_linearity="gelu",
            residual_before_ln=False,
            ln_before=True,
            ln_after=True,
            adapter_residual_before_ln=True,
            scaling="channel",
            leave_out=[0],
        ),
        {"num_labels": 2, "layers": 1, "use_pooler": True},
        "separate_head",
    ),
    (
        "seq_bn-post_add-learned-regression",
        ah.SeqBnConfig(residual_before_ln="post_add", scaling="learned", ln_after=True, non_linearity="tanh"),
        {"num_labels": 1, "layers": 2},
        "with_head",
    ),
    (
        "seq_bn-no-ln-before-swish-gelu-head",
        ah.SeqBnConfig(original_ln_before=False, non_linearity="swish", reduction_factor=2),
        {"num_labels": 2, "layers": 2, "activation_function": "gelu", "bias": False},
        "with_head",
    ),
    (
        "double_seq_bn-default-pooler",
        ah.DoubleSeqBnConfig(reduction_factor=4),
        {"num_labels": 3, "layers": 2, "use_pooler": True},
        "with_head",
    ),
    (
        "double_seq_bn-mapping-float-scaling-no-ln-after",
        ah.DoubleSeqBnConfig(
            reduction_factor={"0": 8, "default": 8},
            original_ln_before=True,
            original_ln_after=False,
            scaling=0.5,
            leave_out=[1, 3],
            ln_before=True,
            non_linearity="silu",
        ),
        {"num_labels": 2, "layers": 3, "activation_function": "relu"},
        "separate_head",
    ),
    (
        "double_seq_bn-residual-after-ln-safetensors",
        ah.DoubleSeqBnConfig(
            residual_before_ln=False,
            adapter_residual_before_ln=True,
            ln_after=True,
            non_linearity="relu",
            reduction_factor=8,
        ),
        {"num_labels": 1, "layers": 1},
        "safetensors",
    ),
    (
        "double_seq_bn-linear-head-folds",
        ah.DoubleSeqBnConfig(reduction_factor=4, non_linearity="tanh"),
        {"num_labels": 2, "layers": 2, "activation_function": None},
        "with_head",
    ),
]


def _save(model, name: str, how: str, root: Path) -> tuple[Path, Path | None]:
    adapter_dir = root / "adapter"
    if how == "separate_head":
        model.save_adapter(str(adapter_dir), name, with_head=False)
        model.save_head(str(root / "head"), name)
        return adapter_dir, root / "head"
    model.save_adapter(str(adapter_dir), name, with_head=True, use_safetensors=how == "safetensors")
    return adapter_dir, None


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize(("case", "config", "head", "how"), CASES, ids=[c[0] for c in CASES])
def test_import_matches_adapters_library(bases, tiny_bases, tmp_path, model_type, case, config, head, how):
    base = bases[model_type]
    hub = _hub_model(tiny_bases[model_type], "task_a", config, head)
    batches = _batches(base)
    with torch.no_grad():
        ref = [hub(**b).logits for b in batches]
    adapter_dir, head_dir = _save(hub, "task_a", how, tmp_path)
    if how == "safetensors":
        assert (adapter_dir / "adapter.safetensors").is_file() and not (adapter_dir / "pytorch_adapter.bin").exists()

    ckpt = import_adapterhub(base, adapter_dir, head_dir)
    assert ckpt.source == "adapterhub" and ckpt.name == "task_a" and ckpt.base.fingerprint == base.fingerprint
    assert ckpt.adapter.placement == ("houlsby" if isinstance(config, ah.DoubleSeqBnConfig) else "pfeiffer")
    leave_out = set(config.leave_out)
    expected_layers = tuple(i for i in range(base.num_layers) if i not in leave_out)
    assert ckpt.adapter.adapter_layers(base.num_layers) == expected_layers
    assert ckpt.head.pooling == ("pooler" if head.get("use_pooler") else "cls")
    assert ckpt.head.problem_type == ("regression" if head["num_labels"] == 1 else "single_label_classification")
    if "id2label" in head:
        assert ckpt.head.labels == ("neg", "neu", "pos")

    save_checkpoint(ckpt, tmp_path / "ours")
    model = load_checkpoint(tmp_path / "ours").build_model(base)
    for batch, r in zip(batches, ref, strict=True):
        with torch.no_grad():
            ours = model(**batch)
            plain = base.model(**batch).last_hidden_state
            adapted = model.encode(**batch)
        assert ours.shape == r.shape
        diff = (ours - r).abs().max().item()
        assert diff <= TOL, f"{case}/{model_type}: max abs logit diff {diff:.3g} > {TOL}"
        assert (adapted - plain).abs().max().item() > 0.1, "the perturbed adapters must change the hidden states"
    # The library's own loader (load_adapter / load_head) agrees as well.
    assert verify_import(ckpt, base, adapter_dir, head_dir, tol=TOL) <= TOL


def test_adapters_matter_for_the_library_too(tiny_bases, bases):
    """Guard against a vacuous parity test: with the adapter switched off, the library's logits move."""
    hub = _hub_model(tiny_bases["bert"], "t", ah.SeqBnConfig(reduction_factor=8), {"num_labels": 2})
    batch = _batches(bases["bert"])[1]
    with torch.no_grad():
        on = hub(**batch).logits
        hub.set_active_adapters(None)
        off = hub(**batch).logits
    assert (on - off).abs().max().item() > 1e-2


def _save_config(tmp_path: Path, base_dir: Path, config, name: str = "x") -> Path:
    model = ah.AutoAdapterModel.from_pretrained(str(base_dir))
    model.add_adapter(name, config=config)
    model.save_adapter(str(tmp_path / name), name, with_head=False)
    return tmp_path / name


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (ah.LoRAConfig(r=4), r"LoRA \(architecture 'lora'\)"),
        (ah.PrefixTuningConfig(bottleneck_size=8, prefix_length=4), r"prefix tuning \(architecture 'prefix_tuning'\)"),
        (ah.CompacterConfig(reduction_factor=4), r"'compacter' uses PHM \(Compacter\) layers \(phm_layer=True\)"),
        (ah.CompacterPlusPlusConfig(reduction_factor=4), r"'compacter\+\+' uses PHM"),
        (ah.IA3Config(), r"IA3"),
        (ah.PromptTuningConfig(prompt_length=4), r"prompt tuning"),
        (ah.ParBnConfig(reduction_factor=4), r"'par_bn' uses parallel adapters \(is_parallel=True\)"),
        (ah.SeqBnConfig(use_gating=True), r"gated adapters.*use_gating=True"),
        (ah.SeqBnInvConfig(), r"'seq_bn_inv' uses invertible.*inv_adapter='nice'"),
        (
            ah.MAMConfig(ah.PrefixTuningConfig(bottleneck_size=8), ah.ParBnConfig(reduction_factor=4)),
            r"ConfigUnion of \['prefix_tuning', 'par_bn'\]",
        ),
        (ah.LoReftConfig(), r"ReFT"),
        (
            ah.BnConfig(mh_adapter=True, output_adapter=False, reduction_factor=4, non_linearity="relu"),
            r"output_adapter=False, mh_adapter=True",
        ),
        (ah.SeqBnConfig(non_linearity="gelu_new"), r"non_linearity='gelu_new', not supported"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else None,
)
def test_unsupported_configs_are_refused_by_name(bases, tiny_bases, tmp_path, config, match):
    adapter_dir = _save_config(tmp_path, tiny_bases["bert"], config)
    with pytest.raises(UnsupportedAdapterError, match=match):
        import_adapterhub(bases["bert"], adapter_dir)


def test_fusion_is_refused(bases, tiny_bases, tmp_path):
    model = ah.AutoAdapterModel.from_pretrained(str(tiny_bases["bert"]))
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    model.add_adapter_fusion(["a", "b"])
    model.save_adapter_fusion(str(tmp_path / "fusion"), "a,b")
    with pytest.raises(UnsupportedAdapterError, match=r"AdapterFusion \('a,b'.*fusion is not supported"):
        import_adapterhub(bases["bert"], tmp_path / "fusion")
    model.save_all_adapters(str(tmp_path / "all"))
    with pytest.raises(ArtifactError, match=r"sub-directories \['a', 'b'\]"):
        import_adapterhub(bases["bert"], tmp_path / "all")


def _edit_config(adapter_dir: Path, **changes) -> None:
    path = adapter_dir / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta["config"].update(changes)
    path.write_text(json.dumps(meta))


def test_options_we_cannot_represent(bases, tiny_bases, tmp_path):
    base = bases["bert"]
    adapter_dir = _save_config(tmp_path, tiny_bases["bert"], ah.SeqBnConfig(reduction_factor={"0": 4, "default": 8}))
    with pytest.raises(UnsupportedAdapterError, match=r"bottleneck sizes \{0: 8, 1: 4, 2: 4, 3: 4\}"):
        import_adapterhub(base, adapter_dir)
    _edit_config(adapter_dir, reduction_factor=8, original_ln_before=False, residual_before_ln="post_add")
    with pytest.raises(UnsupportedAdapterError, match="post_add' needs original_ln_before=True"):
        import_adapterhub(base, adapter_dir)
    _edit_config(adapter_dir, residual_before_ln=True, stochastic_depth=0.1)
    with pytest.raises(UnsupportedAdapterError, match=r"stochastic_depth=0.1"):
        import_adapterhub(base, adapter_dir)


@pytest.mark.parametrize(
    ("add_head", "match"),
    [
        (lambda m: m.add_qa_head("x"), r"head type 'question_answering'"),  # tagging is imported (test_tagging)
        (lambda m: m.add_multiple_choice_head("x", num_choices=2), r"head type 'multiple_choice'"),
        (
            lambda m: m.add_classification_head("x", num_labels=2, activation_function="swish"),
            "head activation_function 'swish'",
        ),
    ],
    ids=["tagging", "multiple_choice", "swish"],
)
def test_unsupported_heads(bases, tiny_bases, tmp_path, add_head, match):
    model = ah.AutoAdapterModel.from_pretrained(str(tiny_bases["bert"]))
    model.add_adapter("x", config="seq_bn")
    add_head(model)
    model.save_adapter(str(tmp_path / "x"), "x", with_head=True)
    with pytest.raises(UnsupportedAdapterError, match=match):
        import_adapterhub(bases["bert"], tmp_path / "x")


def test_missing_head_names_the_fix(bases, tiny_bases, tmp_path):
    adapter_dir = _save_config(tmp_path, tiny_bases["bert"], ah.SeqBnConfig())
    with pytest.raises(ArtifactError, match="--head DIR"):
        import_adapterhub(bases["bert"], adapter_dir)


def test_other_base_is_refused_or_warned(bases, tiny_bases, tmp_path):
    hub = _hub_model(tiny_bases["bert"], "t", ah.DoubleSeqBnConfig(reduction_factor=4), {"num_labels": 2})
    hub.save_adapter(str(tmp_path / "t"), "t", with_head=True)
    fewer = load_base(build_tiny_base(tmp_path / "two-layers", "bert", num_layers=2))
    with pytest.raises(FingerprintMismatchError, match=r"weights for layers \[0, 1, 2, 3\].*has 2 layers"):
        import_adapterhub(fewer, tmp_path / "t")
    wider = load_base(build_tiny_base(tmp_path / "wider", "bert", hidden_size=48))
    with pytest.raises(FingerprintMismatchError, match=r"hidden size 32, but --base .* has hidden size 48"):
        import_adapterhub(wider, tmp_path / "t")
    with pytest.raises(FingerprintMismatchError, match=r"trained on a 'bert' model.* is a 'roberta' model"):
        import_adapterhub(bases["roberta"], tmp_path / "t")
    renamed = load_base(shutil.copytree(tiny_bases["bert"], tmp_path / "another-model"))
    with pytest.warns(AdapterHubImportWarning, match=r"saved from model .*only works on the base model it was trained"):
        ckpt = import_adapterhub(renamed, tmp_path / "t")
    assert ckpt.base.fingerprint == renamed.fingerprint


def test_pickles_are_never_executed(bases, tiny_bases, tmp_path):
    """A .bin that runs code when unpickled is refused (torch.load(weights_only=True)), and the code never runs."""
    adapter_dir = _save_config(tmp_path, tiny_bases["bert"], ah.SeqBnConfig())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"encoder.layer.0.output.adapters.x.adapter_up.weight": Evil()}, adapter_dir / "pytorch_adapter.bin")
    with pytest.raises(ArtifactError, match="cannot read the weights"):
        import_adapterhub(bases["bert"], adapter_dir)
    assert not marker.exists()


def test_cli_end_to_end(bases, tiny_bases, tmp_path):
    base = bases["bert"]
    config = ah.SeqBnConfig(reduction_factor=4, ln_after=True, scaling="learned")
    hub = _hub_model(tiny_bases["bert"], "sst", config, {"num_labels": 2, "id2label": {0: "negative", 1: "positive"}})
    hub.save_adapter(str(tmp_path / "hub"), "sst", with_head=False)
    hub.save_head(str(tmp_path / "head"), "sst")
    args = [
        "import-adapterhub",
        "--base",
        str(tiny_bases["bert"]),
        "--adapter",
        str(tmp_path / "hub"),
        "--head",
        str(tmp_path / "head"),
        "--out",
        str(tmp_path / "ck"),
        "--task",
        "sentiment",
        "--text-pair",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "imported task 'sentiment'" in result.output and "verified against the adapters library" in result.output
    meta = json.loads((tmp_path / "ck" / "task.json").read_text())
    assert meta["source"] == "adapterhub" and meta["name"] == "sentiment"
    assert meta["base"]["fingerprint"] == base.fingerprint
    assert meta["head"]["labels"] == ["negative", "positive"] and meta["tokenizer"]["text_pair"] is True
    assert meta["training"]["imported_from"]["verified_max_abs_diff"] <= TOL
    model = load_checkpoint(tmp_path / "ck").build_model(base)
    for batch in _batches(base):
        with torch.no_grad():
            assert (model(**batch) - hub(**batch).logits).abs().max().item() <= TOL

    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "already exists; pass --force" in again.output
    assert CliRunner().invoke(main, [*args, "--force", "--no-verify"]).exit_code == 0

    lora = _save_config(tmp_path, tiny_bases["bert"], ah.LoRAConfig(r=2), name="lora")
    bad = CliRunner().invoke(
        main,
        [
            "import-adapterhub",
            "--base",
            str(tiny_bases["bert"]),
            "--adapter",
            str(lora),
            "--out",
            str(tmp_path / "lora-ck"),
        ],
    )
    assert bad.exit_code == 2 and "LoRA" in bad.output and not (tmp_path / "lora-ck").exists()


@pytest.mark.slow
def test_cli_default_base_is_the_embedded_minilm(tmp_path):
    """No --base: the adapter is imported onto the embedded all-MiniLM-L6-v2 and cross-checked by the library.

    Noise 0.05, not 0.5: on 384-wide layers N(0, 0.5) weights amplify float32 rounding ~10x per dense layer
    (hidden states agree to ~1e-5, logits only to ~1e-4); 0.05 still moves the hidden states clearly.
    """
    from adapterdeploy.models.base import default_base_dir

    cfg = ah.DoubleSeqBnConfig(reduction_factor=16)
    hub = _hub_model(default_base_dir(), "minilm_task", cfg, {"num_labels": 3}, noise=0.05)
    hub.save_adapter(str(tmp_path / "hub"), "minilm_task", with_head=True)
    result = CliRunner().invoke(
        main, ["import-adapterhub", "--adapter", str(tmp_path / "hub"), "--out", str(tmp_path / "ck")]
    )
    assert result.exit_code == 0, result.output
    assert "verified against the adapters library" in result.output
    base = load_base(None)
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.base.fingerprint == base.fingerprint and ckpt.bottleneck() == base.hidden_size // 16
    model = ckpt.build_model(base)
    for batch in _batches(base):
        with torch.no_grad():
            assert (model(**batch) - hub(**batch).logits).abs().max().item() <= TOL
            assert (model.encode(**batch) - base.model(**batch).last_hidden_state).abs().max().item() > 0.1
