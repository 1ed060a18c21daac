"""Multi-label classification: data, BCE training with tuned thresholds, AdapterHub import, export, runtime
(mixed with single-label tasks), ``check`` and serving. The data is synthetic (made here from word lists)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from adapterdeploy.cli import main
from adapterdeploy.config import AdapterConfig, HeadConfig
from adapterdeploy.datasets import read_dataset
from adapterdeploy.errors import ConfigError, DataError
from adapterdeploy.models.checkpoint import load_checkpoint
from adapterdeploy.multilabel import multilabel_metrics, sigmoid, tune_thresholds

TOPICS = {"sports": "goal match team coach", "money": "bank price stock cash", "food": "bread soup pizza cheese"}
FILL = "the a was is very really and it this then".split()
ML_TEXTS = [
    "the team scored a goal",
    "bread and soup at the bank",
    "it was very quiet",
    "cash price of pizza",
    "the coach said the match was great",
]


def _topics_jsonl(path: Path, n: int, seed: int) -> Path:
    """Synthetic multi-label rows: each topic is on when one of its words is in the text (0-3 topics a row)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        on = [t for t in TOPICS if rng.random() < 0.4]
        words = rng.sample(FILL, 3) + [rng.choice(TOPICS[t].split()) for t in on]
        rng.shuffle(words)
        lines.append(json.dumps({"text": " ".join(words), "label": on}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    d = tmp_path_factory.mktemp("topics")
    return _topics_jsonl(d / "train.jsonl", 120, 0), _topics_jsonl(d / "dev.jsonl", 40, 1)


# ---- pure numpy parts -------------------------------------------------------------------------------------
def test_metrics_by_hand():
    gold = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    pred = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=bool)
    got = multilabel_metrics(gold, pred)
    # TP 4, FP 1, FN 1 overall; per label F1: 1, 1, 0 (label 2: TP 0, FP 1, FN 1)
    assert got == {"micro_f1": pytest.approx(8 / 10), "macro_f1": pytest.approx(2 / 3), "subset_accuracy": 0.5}


def test_tuned_thresholds_maximise_each_labels_f1():
    rng = np.random.default_rng(1)
    gold = rng.random((200, 3)) < 0.5
    # label 0 separable in (0.75, 0.85], label 1 in (0.15, 0.25], label 2 never positive; ties go to the
    # grid value closest to 0.5
    probs = np.where(gold, 0.85, 0.75) * [1, 0, 0] + np.where(gold, 0.25, 0.15) * [0, 1, 0]
    gold[:, 2] = False
    t = tune_thresholds(gold, probs)
    assert t[0] == pytest.approx(0.8) and t[1] == pytest.approx(0.25) and t[2] == 0.5
    on = probs >= np.array(t)
    assert multilabel_metrics(gold[:, :2], on[:, :2])["micro_f1"] == 1.0
    assert np.all(sigmoid(np.array([-1000.0, 0.0, 1000.0])) == [0.0, 0.5, 1.0])


def test_head_config_thresholds_round_trip_and_validation():
    h = HeadConfig(problem_type="multi_label_classification", num_labels=3, labels=("a", "b", "c"))
    assert h.thresholds == (0.5, 0.5, 0.5) and h.multi_label
    h2 = HeadConfig.from_dict(json.loads(json.dumps(h.to_dict())))
    assert h2 == h
    assert "thresholds" not in HeadConfig().to_dict()  # other heads' task.json is unchanged
    with pytest.raises(ConfigError, match="3 thresholds"):
        HeadConfig(problem_type="multi_label_classification", num_labels=3, thresholds=(0.5, 1.5, 0.5))
    with pytest.raises(ConfigError, match="multi-label"):
        HeadConfig(thresholds=(0.5, 0.5))


def test_reading_multi_label_files(tmp_path):
    jl = tmp_path / "a.jsonl"
    jl.write_text('{"text": "x", "label": ["b", "a"]}\n{"text": "y", "label": []}\n{"text": "z", "label": ["c"]}\n')
    data = read_dataset(jl)
    assert data.problem_type == "multi_label_classification" and data.labels == ("a", "b", "c")
    assert [ex.label for ex in data.examples] == [(0, 1), (), (2,)]
    assert data.label_counts() == {"a": 1, "b": 1, "c": 1}
    tsv = tmp_path / "a.tsv"
    tsv.write_text("label\ttext\nb,a\tx\n\ty\nc\tz\n")
    same = read_dataset(tsv, problem_type="multi_label_classification")
    assert [ex.label for ex in same.examples] == [ex.label for ex in data.examples] and same.labels == data.labels
    bad = tmp_path / "b.tsv"
    bad.write_text("label\ttext\na\tx\nd\ty\n")
    with pytest.raises(DataError, match=r"b.tsv:3: label\(s\) \['d'\]"):
        read_dataset(bad, problem_type="multi_label_classification", labels=["a", "b", "c"])


# ---- training ---------------------------------------------------------------------------------------------
def test_train_cli_multi_label_tunes_thresholds_on_eval(tiny_base_dir, topics, tmp_path):
    out = tmp_path / "topics"
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--base",
            str(tiny_base_dir),
            "--train",
            str(topics[0]),
            "--eval",
            str(topics[1]),
            "--task",
            "topics",
            "--out",
            str(out),
            "--epochs",
            "3",
            "--lr",
            "5e-2",
            "--bottleneck",
            "16",
            "--max-length",
            "16",
            "--threads",
            "1",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(out)
    head = ckpt.head
    assert head.problem_type == "multi_label_classification" and head.labels == ("food", "money", "sports")
    assert len(head.thresholds) == 3 and all(0 < t < 1 for t in head.thresholds)
    hist = ckpt.training["history"]
    assert hist[-1]["thresholds"] == list(head.thresholds) and ckpt.training["main_metric"] == "micro_f1"
    assert hist[2]["train_loss"] < hist[0]["train_loss"]
    # The stored metrics are those at the tuned thresholds, and tuning never lowers micro F1 on the eval rows.
    assert ckpt.metrics["micro_f1"] >= max(h["micro_f1"] for h in hist[:3]) - 1e-9
    assert ckpt.metrics["micro_f1"] >= 0.6, hist  # word-presence topics are learnable by the tiny base


# ---- export, runtime, check -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tiny_base_dir, tmp_path_factory):
    """A multi-label task (random weights, thresholds 0.3 / 0.5 / 0.7) beside a single-label one."""
    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint
    from adapterdeploy.models.encoder import EncoderWithAdapters

    root = tmp_path_factory.mktemp("ml-export")
    base = load_base(tiny_base_dir)
    heads = {
        "tags": HeadConfig(
            problem_type="multi_label_classification",
            num_labels=3,
            labels=("x", "y", "z"),
            thresholds=(0.3, 0.5, 0.7),
            pooling="mean",
        ),
        "sent": HeadConfig(num_labels=2),
    }
    models, dirs = {}, []
    for i, (name, head) in enumerate(heads.items()):
        torch.manual_seed(i)
        model = EncoderWithAdapters(base, AdapterConfig(bottleneck=4, init_std=0.3), head).eval()
        with torch.no_grad():
            for p in model.head.parameters():
                p.normal_(0.0, 2.0)
        models[name] = model
        ckpt = checkpoint_from_model(model, name, max_length=24, text_pair=False)
        dirs.append(save_checkpoint(ckpt, root / "ckpt" / name))
    export_deployment(tiny_base_dir, dirs, root / "deploy", max_length=24)
    return root / "deploy", base, models


def test_runtime_matches_pytorch_and_mixes_with_single_label(exported):
    from adapterdeploy.runtime import Deployment

    deploy, base, models = exported
    tok = base.load_tokenizer()
    enc = tok(ML_TEXTS, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        want = torch.sigmoid(models["tags"](enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])).numpy()
    with Deployment.open(deploy) as d:
        single = d.predict(ML_TEXTS, task="tags")
        mixed = d.predict_mixed([row for t in ML_TEXTS for row in (("sent", t), ("tags", t))])[1::2]
    got = np.array([list(p.probabilities.values()) for p in single])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    thresholds = np.array([0.3, 0.5, 0.7])
    on_sets = [tuple(np.array(["x", "y", "z"])[row >= thresholds]) for row in want]
    assert [p.labels for p in single] == on_sets
    assert any(0 < len(s) < 3 for s in on_sets)  # the thresholds really decide something here
    for p, m in zip(single, mixed, strict=True):
        assert m.labels == p.labels and m.probabilities == pytest.approx(p.probabilities, abs=1e-6)
        assert p.label == max(p.probabilities, key=p.probabilities.get)
        assert p.to_dict()["labels"] == list(p.labels)


def test_check_parity_and_eval_on_a_multi_label_task(exported, tmp_path):
    from adapterdeploy.runtime import Deployment
    from adapterdeploy.runtime.check import run_checklist

    deploy = exported[0]
    with Deployment.open(deploy) as d:
        preds = d.predict(ML_TEXTS, task="tags")
    rows = [{"text": t, "label": list(p.labels)} for t, p in zip(ML_TEXTS, preds, strict=True)]
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = {i.name: i for i in run_checklist(deploy, eval_file=eval_file, eval_task="tags", reps=2)}
    assert items["parity"].status == "pass", items["parity"]
    acc = [i for n, i in items.items() if n.startswith("accuracy")]
    assert acc and "micro_f1 1.0000" in acc[0].detail, acc  # its own predictions as gold: exactly 1
    from adapterdeploy.exporter.adapter_drop import evaluate_drop

    drop = evaluate_drop(exported[1], load_checkpoint(deploy.parent / "ckpt" / "tags"), eval_file, 2, 24)
    assert drop["metric"] == "micro_f1" and drop["all_adapters"] == 1.0 and 0 <= drop["without_dropped"] <= 1


# ---- AdapterHub import ------------------------------------------------------------------------------------
def test_adapterhub_multilabel_head_matches_the_library(tiny_base_dir, tmp_path):
    import adapters as ah

    from adapterdeploy.models.adapterhub import import_adapterhub
    from adapterdeploy.models.base import load_base

    base = load_base(tiny_base_dir)
    torch.manual_seed(0)
    hub = ah.AutoAdapterModel.from_pretrained(str(tiny_base_dir), attn_implementation="eager")
    hub.add_adapter("tags", config=ah.SeqBnConfig(reduction_factor=8))
    hub.add_classification_head("tags", num_labels=3, multilabel=True, id2label={0: "x", 1: "y", 2: "z"})
    with torch.no_grad():
        for name, p in hub.named_parameters():
            if ".adapters.tags." in name or name.startswith("heads.tags."):
                p.add_(torch.randn_like(p) * 0.5)
    hub.set_active_adapters("tags")
    hub.eval()
    enc = dict(base.load_tokenizer()(ML_TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        ref = hub(**enc).logits
    hub.save_adapter(str(tmp_path / "tags"), "tags", with_head=True)
    ckpt = import_adapterhub(base, tmp_path / "tags")
    assert ckpt.head.problem_type == "multi_label_classification" and ckpt.head.labels == ("x", "y", "z")
    assert ckpt.head.thresholds == (0.5, 0.5, 0.5)
    with torch.no_grad():
        ours = ckpt.build_model(base)(**enc)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert (torch.sigmoid(ours) >= 0.5).tolist() == (torch.sigmoid(ref) >= 0.5).tolist()


# ---- serving ----------------------------------------------------------------------------------------------
def test_serving_multi_label_outputs(exported):
    import httpx
    from serving_fixtures import ThreadedServer

    from adapterdeploy.runtime import Deployment
    from adapterdeploy.serving.settings import Settings

    deploy = exported[0]
    with (
        Deployment.open(deploy) as d,
        ThreadedServer(Settings(deploy_dir=str(deploy)), deployment=d) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        want = d.predict(ML_TEXTS, task="tags")
        v1 = c.post("/v1/predict", json={"task": "tags", "inputs": ML_TEXTS}).json()["predictions"]
        assert [p["labels"] for p in v1] == [list(w.labels) for w in want]
        body = {"inputs": [{"name": "text", "shape": [len(ML_TEXTS)], "datatype": "BYTES", "data": ML_TEXTS}]}
        outs = {o["name"]: o for o in c.post("/v2/models/tags/infer", json=body).json()["outputs"]}
        assert list(outs) == ["labels", "label", "score", "probabilities", "truncated"]
        on = outs["labels"]
        assert on["datatype"] == "BOOL" and on["shape"] == [len(ML_TEXTS), 3]
        assert on["parameters"] == {"labels": "x,y,z", "thresholds": "0.3,0.5,0.7"}
        assert on["data"] == [lab in w.labels for w in want for lab in ("x", "y", "z")]
        meta = c.get("/v2/models/tags").json()
        assert meta["parameters"]["problem_type"] == "multi_label_classification"
        assert {o["name"]: o["shape"] for o in meta["outputs"]}["labels"] == [-1, 3]
        single = c.post("/v1/predict", json={"task": "sent", "inputs": ML_TEXTS[:1]}).json()["predictions"][0]
        assert "labels" not in single  # single-label rows keep their fields
