"""Training: loss goes down, base stays frozen, seeds reproduce, checkpoints load; the train CLI; metrics."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from adapterdeploy import metrics as M
from adapterdeploy.cli import main
from adapterdeploy.config import AdapterConfig, HeadConfig
from adapterdeploy.datasets import read_dataset
from adapterdeploy.errors import DataError
from adapterdeploy.models.checkpoint import load_checkpoint, save_checkpoint
from adapterdeploy.models.trainer import (
    TrainConfig,
    encode_dataset,
    evaluate,
    full_finetune,
    save_full_finetune,
    train_task,
)

POS = "good great fun love best".split()
NEG = "bad terrible boring hate worst".split()
FILL = "the movie film story plot actor was is very really a and it this".split()


def _sentiment_tsv(path: Path, n: int, seed: int, pairs: bool = False) -> Path:
    """A task the tiny base can learn: the label is whether the row holds a positive or a negative word."""
    rng = random.Random(seed)
    lines = ["label\ttext_a\ttext_b" if pairs else "label\ttext"]
    for i in range(n):
        y = i % 2
        words = [*rng.sample(FILL, 4), rng.choice(POS if y else NEG)]
        rng.shuffle(words)
        lines.append(f"{y}\t{' '.join(words)}" + (f"\t{' '.join(rng.sample(FILL, 3))}" if pairs else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    d = tmp_path_factory.mktemp("sentiment")
    return _sentiment_tsv(d / "train.tsv", 160, 0), _sentiment_tsv(d / "dev.tsv", 60, 1)


QUICK = TrainConfig(epochs=1, lr=1e-2, max_length=16, progress=False)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_training_reduces_loss_and_writes_a_loadable_checkpoint(tiny_base, sentiment, tmp_path):
    train, dev = read_dataset(sentiment[0]), read_dataset(sentiment[1])
    cfg = TrainConfig(epochs=5, lr=3e-2, progress=False)
    ckpt = train_task(
        tiny_base,
        train,
        dev,
        name="senti",
        adapter=AdapterConfig(bottleneck=16, init_std=1e-2),
        head=HeadConfig(pooling="mean"),
        config=cfg,
    )
    hist = ckpt.training["history"]
    assert len(hist) == 5
    assert hist[-1]["train_loss"] < 0.75 * hist[0]["train_loss"], hist
    assert ckpt.metrics["accuracy"] >= 0.75, hist
    # The best epoch's weights and metrics are the ones kept.
    best = max(hist, key=lambda h: h["accuracy"])
    assert ckpt.training["best_epoch"] == best["epoch"] and ckpt.metrics["accuracy"] == best["accuracy"]
    out = save_checkpoint(ckpt, tmp_path / "senti")
    loaded = load_checkpoint(out)
    assert loaded.head.labels == ("0", "1") and loaded.max_length == cfg.max_length and not loaded.text_pair
    assert loaded.metrics == ckpt.metrics and loaded.training == ckpt.training
    model = loaded.build_model(tiny_base)
    enc = encode_dataset(tiny_base.load_tokenizer(), dev, cfg.max_length)
    again = evaluate(model, enc, "single_label_classification", 2)
    assert again["accuracy"] == pytest.approx(ckpt.metrics["accuracy"])


def test_training_info_is_recorded(tiny_base, sentiment):
    train, dev = read_dataset(sentiment[0]), read_dataset(sentiment[1])
    ckpt = train_task(tiny_base, train, dev, name="senti", config=QUICK)
    info = ckpt.training
    for key in (
        "epochs",
        "lr",
        "batch_size",
        "seconds",
        "trainable_params",
        "trainable_percent",
        "train_rows",
        "eval_rows",
        "seed",
        "main_metric",
        "best_epoch",
        "history",
    ):
        assert key in info, key
    trainable = sum(v.numel() for v in ckpt.weights.values())
    assert info["trainable_params"] == trainable
    assert info["total_params"] == trainable + sum(p.numel() for p in tiny_base.model.parameters())
    assert info["trainable_percent"] == pytest.approx(100 * trainable / info["total_params"], abs=1e-3)
    assert (info["train_rows"], info["eval_rows"], info["seed"]) == (160, 60, 42)
    assert set(ckpt.metrics) == {"accuracy", "f1", "mcc", "eval_loss"}
    json.dumps(ckpt.training, allow_nan=False)


def test_defaults_are_the_tutorial_recipe():
    a, t = AdapterConfig(), TrainConfig()
    assert (a.placement, a.reduction_factor, a.activation, a.init_std) == ("after_layer", 16.0, "relu", 1e-3)
    assert (t.lr, t.batch_size, t.epochs) == (1e-3, 8, 1)


def test_base_stays_bit_identical(tiny_base, sentiment):
    before = _state(tiny_base.model)
    train_task(
        tiny_base,
        read_dataset(sentiment[0]),
        None,
        name="x",
        adapter=AdapterConfig(placement="houlsby", per_task_layernorm=True, bottleneck=4),
        config=QUICK,
    )
    after = tiny_base.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not tiny_base.model.training  # back in eval mode


def test_same_seed_same_weights_other_seed_other_weights(tiny_base, sentiment):
    train = read_dataset(sentiment[0])
    a = train_task(tiny_base, train, None, name="x", config=QUICK)
    b = train_task(tiny_base, train, None, name="x", config=QUICK)
    c = train_task(tiny_base, train, None, name="x", config=TrainConfig(**{**QUICK.__dict__, "seed": 7}))
    assert a.weights.keys() == b.weights.keys()
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert any(not torch.equal(a.weights[k], c.weights[k]) for k in a.weights)


def test_layer_subset_pairs_string_labels_and_per_task_layernorm(tiny_base, tmp_path):
    p = _sentiment_tsv(tmp_path / "pairs.tsv", 40, 3, pairs=True)
    text = p.read_text().replace("\n1\t", "\npos\t").replace("\n0\t", "\nneg\t")
    p.write_text(text)
    data = read_dataset(p)
    cfg = AdapterConfig(placement="pfeiffer", layers=(2, 3), per_task_layernorm=True, activation="gelu")
    ckpt = train_task(
        tiny_base, data, data, name="pairs", adapter=cfg, head=HeadConfig(pooling="mean", hidden_layers=1), config=QUICK
    )
    assert ckpt.text_pair and ckpt.head.labels == ("neg", "pos")
    layers = {k.split(".")[1] for k in ckpt.weights if k.startswith(("adapters.", "layernorms."))}
    assert layers == {"2", "3"}
    assert any(k.startswith("layernorms.") for k in ckpt.weights)


def test_regression(tiny_base, tmp_path):
    rng = random.Random(0)
    rows = [f"{rng.uniform(0, 5):.2f}\t{' '.join(rng.sample(FILL, 4))}" for _ in range(40)]
    p = tmp_path / "sts.tsv"
    p.write_text("label\ttext\n" + "\n".join(rows) + "\n")
    data = read_dataset(p)
    ckpt = train_task(tiny_base, data, data, name="sts", config=QUICK)
    assert ckpt.head.problem_type == "regression" and ckpt.head.out_features == 1
    assert set(ckpt.metrics) == {"pearson", "spearman", "mse", "eval_loss"}
    assert ckpt.training["main_metric"] == "pearson"


def test_eval_file_must_match_the_training_columns(tiny_base, sentiment, tmp_path):
    pairs = read_dataset(_sentiment_tsv(tmp_path / "p.tsv", 10, 0, pairs=True))
    with pytest.raises(DataError, match="text pairs"):
        train_task(tiny_base, read_dataset(sentiment[0]), pairs, name="x", config=QUICK)


def test_full_finetune_trains_a_copy_of_the_base(tiny_base, sentiment, tmp_path):
    before = _state(tiny_base.model)
    result = full_finetune(
        tiny_base,
        read_dataset(sentiment[0]),
        read_dataset(sentiment[1]),
        name="full",
        config=TrainConfig(epochs=1, lr=1e-3, max_length=16, progress=False),
    )
    assert all(torch.equal(before[k], v) for k, v in tiny_base.model.state_dict().items())
    tuned = result.model.base.state_dict()
    changed = [k for k in before if k.endswith("weight") and not torch.equal(before[k], tuned[k])]
    assert len(changed) > 10
    assert result.training["trainable_percent"] == 100.0 and not result.model.adapters
    out = save_full_finetune(result, tmp_path / "full")
    assert (out / "model.safetensors").stat().st_size > 4 * result.training["trainable_params"] * 0.9
    assert json.loads((out / "training.json").read_text())["metrics"] == result.metrics


# ---------------------------------------------------------------------------------------------- CLI


def _cli(*args: str):
    return CliRunner().invoke(main, ["train", *args], catch_exceptions=False)


def test_cli_train_end_to_end(tiny_base_dir, sentiment, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # --threads must not slow later tests
    out = tmp_path / "ckpt"
    res = _cli(
        "--base",
        str(tiny_base_dir),
        "--train",
        str(sentiment[0]),
        "--eval",
        str(sentiment[1]),
        "--task",
        "senti",
        "--out",
        str(out),
        "--layers",
        "1-3",
        "--reduction-factor",
        "8",
        "--epochs",
        "2",
        "--max-train-rows",
        "64",
        "--max-eval-rows",
        "30",
        "--max-length",
        "16",
        "--pooling",
        "mean",
        "--seed",
        "3",
        "--threads",
        "1",
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "trainable params" in res.output
    ckpt = load_checkpoint(out)
    assert ckpt.name == "senti" and ckpt.adapter.layers == (1, 2, 3) and ckpt.bottleneck() == 4
    assert ckpt.head.pooling == "mean" and ckpt.max_length == 16
    assert (ckpt.training["train_rows"], ckpt.training["eval_rows"], ckpt.training["epochs"]) == (64, 30, 2)
    assert "accuracy" in ckpt.metrics
    # --out exists: refused without --force, replaced with it.
    again = _cli(
        "--base",
        str(tiny_base_dir),
        "--train",
        str(sentiment[0]),
        "--task",
        "senti",
        "--out",
        str(out),
        "--max-train-rows",
        "8",
        "--quiet",
    )
    assert again.exit_code != 0 and "--force" in again.output
    forced = _cli(
        "--base",
        str(tiny_base_dir),
        "--train",
        str(sentiment[0]),
        "--task",
        "senti",
        "--out",
        str(out),
        "--max-train-rows",
        "8",
        "--quiet",
        "--force",
    )
    assert forced.exit_code == 0, forced.output
    assert load_checkpoint(out).training["train_rows"] == 8


@pytest.mark.parametrize(
    ("train_text", "eval_text", "where", "words"),
    [
        ("label\ttext\n1\tok\n0\tnot\tok\n", None, "train.tsv:3", "malformed row"),
        ("label\ttext\n", None, "train.tsv:2", "no rows"),
        ("", None, "train.tsv:1", "empty"),
        ("label\ttext\n1\tgood\n0\tbad\n", "label\ttext\n1\tfine\n5\tworse\n", "dev.tsv:3", "out of range"),
        ("label\ttext\n1\tgood\n0\t \n", None, "train.tsv:3", "empty text"),
    ],
)
def test_cli_bad_input_fails_with_file_and_line(tiny_base_dir, tmp_path, train_text, eval_text, where, words):
    (tmp_path / "train.tsv").write_text(train_text)
    args = [
        "--base",
        str(tiny_base_dir),
        "--train",
        str(tmp_path / "train.tsv"),
        "--task",
        "t",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    if eval_text is not None:
        (tmp_path / "dev.tsv").write_text(eval_text)
        args += ["--eval", str(tmp_path / "dev.tsv")]
    res = _cli(*args)
    assert res.exit_code != 0
    assert where in res.output and words in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_cli_usage_errors(tiny_base_dir, sentiment, tmp_path):
    base = ["--base", str(tiny_base_dir), "--train", str(sentiment[0]), "--out", str(tmp_path / "o")]
    res = _cli(*base, "--task", "t", "--train", str(tmp_path / "missing.tsv"))
    assert res.exit_code != 0 and "missing.tsv" in res.output and "does not exist" in res.output
    res = _cli(*base, "--task", "t", "--layers", "5-3")
    assert res.exit_code == 2 and "--layers" in res.output
    res = _cli(*base, "--task", "no spaces")
    assert res.exit_code == 2 and "--task" in res.output
    res = _cli(*base, "--task", "t", "--layers", "9", "--quiet")  # the tiny base has 4 layers
    assert res.exit_code != 0 and "out of range" in res.output
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    res = _cli(*base[2:], "--base", str(tmp_path), "--task", "t")
    assert res.exit_code != 0 and "gpt2" in res.output and "BERT" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_minilm_trains_a_few_steps(tmp_path):
    from adapterdeploy.models.base import load_base

    repo = Path(__file__).resolve().parent.parent
    base = load_base(None)
    before = _state(base.model)
    train = read_dataset(repo / "examples" / "data" / "sst2" / "train.tsv")
    from adapterdeploy.datasets import subset

    ckpt = train_task(
        base,
        subset(train, 48),
        subset(read_dataset(repo / "examples/data/sst2/dev.tsv"), 32),
        name="sst2",
        config=TrainConfig(max_length=32, progress=False),
    )
    assert ckpt.training["steps"] == 6 and 0.4 < ckpt.training["trainable_percent"] < 0.6
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())
    assert load_checkpoint(save_checkpoint(ckpt, tmp_path / "sst2")).build_model(base) is not None


# ------------------------------------------------------------------------------------------ metrics


def test_classification_metrics_known_values():
    y = [1, 1, 1, 0, 0, 0, 1, 0]
    p = [1, 1, 0, 0, 0, 1, 1, 1]  # tp 3, fn 1, tn 2, fp 2
    assert M.accuracy(y, p) == 5 / 8
    assert M.f1_score(y, p) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert M.matthews_corrcoef(y, p) == pytest.approx((3 * 2 - 2 * 1) / math.sqrt(5 * 4 * 4 * 3))
    assert M.matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0  # constant prediction: no correlation
    assert M.f1_score([0, 0], [0, 0]) == 0.0
    # Macro F1 over 3 labels: per-label F1 = 1, 2/3, 0.
    assert M.f1_score([0, 1, 1, 2], [0, 1, 2, 1], average="macro") == pytest.approx((1 + 0.5 + 0) / 3)
    assert M.classification_metrics([0, 1, 2], [0, 1, 2], 3) == {"accuracy": 1.0, "f1": 1.0, "mcc": 1.0}


def test_correlations_known_values():
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert M.spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    # Ties get average ranks: x ranks 1, 2.5, 2.5, 4 vs y ranks 1..4.
    r = np.array([1, 2.5, 2.5, 4]) - 2.5
    q = np.array([1, 2, 3, 4]) - 2.5
    assert M.spearman([1, 5, 5, 9], [1, 2, 3, 4]) == pytest.approx(float(r @ q / math.sqrt((r @ r) * (q @ q))))
    assert math.isnan(M.pearson([1, 1, 1], [1, 2, 3]))
    assert M.json_safe({"a": [math.nan, 1.0]}) == {"a": [None, 1.0]}


def test_main_metric_is_mcc_for_unbalanced_labels():
    assert M.main_metric_name("single_label_classification", {"0": 322, "1": 721}) == "mcc"
    assert M.main_metric_name("single_label_classification", {"0": 428, "1": 444}) == "accuracy"
    assert M.main_metric_name("regression") == "pearson"


def test_metrics_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for k in (2, 3):
        for _ in range(20):
            y, p = rng.integers(0, k, 30), rng.integers(0, k, 30)
            assert M.matthews_corrcoef(y, p) == pytest.approx(sk.matthews_corrcoef(y, p))
            avg = "binary" if k == 2 else "macro"
            assert M.f1_score(y, p, average=avg) == pytest.approx(sk.f1_score(y, p, average=avg, zero_division=0))
