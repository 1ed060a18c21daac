"""Training one task: bottleneck adapters + head on a frozen BERT-family base (or, for comparison, full fine-tuning).

The defaults are the recipe of the tutorial this product grew from, as a one-liner: adapters after each
whole encoder layer, reduction factor 16, relu, weights N(0, 1e-3) and zero biases, base frozen, AdamW with
lr 1e-3, batch 8, 1 epoch, linear decay to 0 and no warmup, gradient norm clipped at 1.0, weight decay 0
(the Hugging Face ``Trainer`` defaults the recipe ran under).

Semantics of one run (E epochs, N rows, batch b, T = E * ceil(N / b) steps, warmup W = round(ratio * T)):

    torch.manual_seed(seed)                      # adapter/head init and dropout
    order_e = randperm(N, generator(seed))       # one fresh shuffle per epoch
    lr(t)   = lr * t / W                          for t < W
            = lr * max(0, (T - t) / (T - W))      otherwise
    loss    = cross_entropy(logits, y)  |  mse(logits[:, 0], y) for regression
            | binary_cross_entropy_with_logits(logits, multi-hot y) for multi-label
    after epoch e: metrics_e on the eval rows; keep the weights of argmax_e main_metric_e (first on ties)
    multi-label: epochs are compared at threshold 0.5; then each label's threshold is tuned on the eval
                 rows (adapterdeploy/multilabel.py) and stored in the head; the reported metrics use them

Only the adapters, the head and (when asked) the per-task LayerNorms are handed to the optimizer; the
base's parameters have ``requires_grad=False`` and stay bit-identical. Dropout of the base is active while
training (as under the HF ``Trainer``); the base is put back in eval mode afterwards.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adapterdeploy.config import TOKEN_CLASSIFICATION, AdapterConfig, HeadConfig
from adapterdeploy.datasets import Dataset
from adapterdeploy.errors import ArtifactError, ConfigError, DataError
from adapterdeploy.metrics import MAIN_METRICS, compute_metrics, json_safe, main_metric_name
from adapterdeploy.models.base import BaseModel, load_base
from adapterdeploy.models.checkpoint import TaskCheckpoint, checkpoint_from_model
from adapterdeploy.models.encoder import EncoderWithAdapters
from adapterdeploy.models.stack import LOWER_PREFIX, LowerAdapter
from adapterdeploy.models.tagging_train import encode_tagging, evaluate_tagging, tagging_loss, tagging_tokenizer
from adapterdeploy.tagging_data import TaggingDataset

__all__ = [
    "EncodedData",
    "FullFinetuneResult",
    "TrainConfig",
    "encode_dataset",
    "evaluate",
    "evaluate_dataset",
    "full_finetune",
    "save_full_finetune",
    "train_task",
]

TRAINABLE_PREFIXES = ("adapters", "layernorms", "head")
AnyDataset = Dataset | TaggingDataset  # sequence rows, or word-tagged sentences (--head tagging)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the adapter layout is an AdapterConfig, the head a HeadConfig)."""

    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_length: int = 128
    seed: int = 42
    eval_batch_size: int = 32
    metric: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError(f"batch sizes must be >= 1, got {self.batch_size} / {self.eval_batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"the learning rate must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio is a share of the steps in [0, 1), got {self.warmup_ratio}")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8 tokens, got {self.max_length}")
        if self.metric not in ("auto", *MAIN_METRICS):
            raise ConfigError(f"unknown metric {self.metric!r}; choose auto or one of {', '.join(MAIN_METRICS)}")


@dataclass(frozen=True)
class EncodedData:
    """Token ids of every row (unpadded; batches are padded to their own longest row)."""

    input_ids: tuple[tuple[int, ...], ...]
    token_type_ids: tuple[tuple[int, ...], ...] | None
    labels: Tensor
    truncated: int
    pad_id: int
    # Tagging (models/tagging_train.py): labels [N, max_length] at first subwords, each sentence's gold tags.
    token_level: bool = False
    gold_tags: tuple[tuple[int, ...], ...] = ()
    label_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, rows: Sequence[int]) -> tuple[dict[str, Tensor], Tensor]:
        """Dynamic padding: the batch is as long as its longest row, not max_length."""
        width = max(len(self.input_ids[r]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long) if self.token_type_ids is not None else None
        for j, r in enumerate(rows):
            n = len(self.input_ids[r])
            ids[j, :n] = torch.tensor(self.input_ids[r])
            mask[j, :n] = 1
            if types is not None and self.token_type_ids is not None:
                types[j, :n] = torch.tensor(self.token_type_ids[r])
        inputs = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            inputs["token_type_ids"] = types
        labels = self.labels[list(rows)]
        return inputs, labels[:, :width] if self.token_level else labels


def encode_dataset(tokenizer: Any, data: Dataset | TaggingDataset, max_length: int) -> EncodedData:
    """Tokenize every row once (truncating to max_length, longest-first for pairs) and count truncations."""
    from transformers.utils import logging as hf_logging

    if isinstance(data, TaggingDataset):
        return encode_tagging(tokenizer, data, max_length)  # type: ignore[no-any-return]

    texts = [ex.text for ex in data.examples]
    pairs = [ex.text_pair or "" for ex in data.examples] if data.text_pair else None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the untruncated pass warns about rows longer than the model's limit
    try:
        full_len = [len(x) for x in tokenizer(texts, pairs, truncation=False)["input_ids"]]
    finally:
        hf_logging.set_verbosity(verbosity)
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    types = enc.get("token_type_ids")
    if data.problem_type == "multi_label_classification":
        labels = torch.zeros((len(data), data.num_labels), dtype=torch.float32)
        for i, ex in enumerate(data.examples):
            labels[i, list(ex.label or ())] = 1.0  # type: ignore[arg-type]
    else:
        dtype = torch.float32 if data.problem_type == "regression" else torch.long
        labels = torch.tensor([ex.label if ex.label is not None else 0 for ex in data.examples], dtype=dtype)
    return EncodedData(
        input_ids=tuple(tuple(x) for x in enc["input_ids"]),
        token_type_ids=tuple(tuple(x) for x in types) if types is not None else None,
        labels=labels,
        truncated=sum(n > max_length for n in full_len),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )


def _loss(logits: Tensor, labels: Tensor, problem_type: str) -> Tensor:
    if problem_type == TOKEN_CLASSIFICATION:
        return tagging_loss(logits, labels)
    if problem_type == "regression":
        return nn.functional.mse_loss(logits[:, 0], labels)
    if problem_type == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits, labels)
    return nn.functional.cross_entropy(logits, labels)


@torch.no_grad()
def _predict(model: nn.Module, enc: EncodedData, batch_size: int) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        # Sorted by length so each batch pads little; the logits go back to file order.
        order = sorted(range(len(enc)), key=lambda r: len(enc.input_ids[r]))
        out: list[Tensor] = [torch.empty(0)] * len(enc)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            inputs, _ = enc.batch(rows)
            logits = model(**inputs)
            for j, r in enumerate(rows):
                out[r] = logits[j]
        return torch.stack(out)
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    enc: EncodedData,
    problem_type: str,
    num_labels: int,
    batch_size: int = 32,
    thresholds: Sequence[float] | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` on encoded rows: accuracy / f1 / mcc, pearson / spearman / mse, or (multi-label,
    at ``thresholds``, default 0.5) micro / macro F1 and subset accuracy, or (tagging) entity F1 / precision /
    recall and word accuracy; plus eval_loss."""
    if problem_type == TOKEN_CLASSIFICATION:
        return evaluate_tagging(model, enc, batch_size)
    logits = _predict(model, enc, batch_size)
    loss = float(_loss(logits, enc.labels, problem_type))
    gold = enc.labels.numpy()
    if problem_type == "multi_label_classification":
        from adapterdeploy.multilabel import predict_on, sigmoid

        pred = predict_on(sigmoid(logits.numpy()), thresholds or [0.5] * num_labels)
    elif problem_type == "regression":
        pred = logits[:, 0].numpy()
    else:
        pred = logits.argmax(dim=-1).numpy()
    metrics = compute_metrics(problem_type, gold, pred, num_labels)
    metrics["eval_loss"] = loss
    return metrics


def evaluate_dataset(
    model: EncoderWithAdapters, tokenizer: Any, data: Dataset, *, max_length: int, batch_size: int = 32
) -> dict[str, float]:
    """:func:`evaluate` on a Dataset (e.g. a held-out test file scored with the checkpoint a dev file chose)."""
    enc = encode_dataset(tokenizer, data, max_length)
    thresholds = getattr(getattr(model, "head_config", None), "thresholds", None) or None
    return evaluate(model, enc, data.problem_type, data.num_labels, batch_size, thresholds)


class _Reporter:
    """A rich progress bar on a terminal; otherwise a plain line every ~10% of the steps (CI, log files)."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.total = total
        self.bar = None
        self.lines = enabled
        self.every = max(1, total // 10)
        self.start = time.perf_counter()
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                console=console,
            )
            self.bar.start()
            self.task = self.bar.add_task(description, total=total, loss="-")
            self.lines = False

    def step(self, done: int, epoch: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, loss=f"{loss:.4f}", description=f"epoch {epoch}")
        elif self.lines and (done % self.every == 0 or done == self.total):
            elapsed = time.perf_counter() - self.start
            print(
                f"epoch {epoch} step {done}/{self.total} loss {loss:.4f} ({elapsed:.0f}s)", file=sys.stderr, flush=True
            )

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
        elif self.lines:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class _FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    main_metric: str = ""
    steps: int = 0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    eval_seconds: float = 0.0
    truncated_train_rows: int = 0


def _check_pair(train: AnyDataset, eval_data: AnyDataset | None) -> None:
    if eval_data is None:
        return
    if eval_data.text_pair != train.text_pair:
        kind = {True: "text pairs", False: "single texts"}
        raise DataError(
            f"{eval_data.path}: has {kind[eval_data.text_pair]} but the training file {train.path} has "
            f"{kind[train.text_pair]}; both files need the same columns"
        )
    if eval_data.problem_type != train.problem_type or eval_data.labels != train.labels:
        raise DataError(
            f"{eval_data.path}: labels {list(eval_data.labels)} ({eval_data.problem_type}) differ from the training "
            f"file's {list(train.labels)} ({train.problem_type}); read it with the training set's labels"
        )


def _fit(
    model: EncoderWithAdapters,
    params: list[nn.Parameter],
    tokenizer: Any,
    train: AnyDataset,
    eval_data: AnyDataset | None,
    cfg: TrainConfig,
    snapshot: Callable[[], dict[str, Tensor]],
) -> _FitResult:
    """The shared loop: train, evaluate after each epoch, and leave the best epoch's weights in ``model``."""
    enc_train = encode_dataset(tokenizer, train, cfg.max_length)
    enc_eval = encode_dataset(tokenizer, eval_data, cfg.max_length) if eval_data is not None else None
    result = _FitResult(truncated_train_rows=enc_train.truncated)
    result.main_metric = (
        main_metric_name(train.problem_type, train.label_counts() or None) if cfg.metric == "auto" else cfg.metric
    )
    steps_per_epoch = math.ceil(len(enc_train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _linear_schedule(optimizer, round(cfg.warmup_ratio * total), total)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    reporter = _Reporter(cfg.progress, total, "training")
    best_score = -math.inf
    best_state: dict[str, Tensor] | None = None
    done = 0
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0, c0 = time.perf_counter(), time.process_time()
            order = torch.randperm(len(enc_train), generator=shuffle).tolist()
            loss_sum, loss_n = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                inputs, labels = enc_train.batch(order[start : start + cfg.batch_size])
                loss = _loss(model(**inputs), labels, train.problem_type)
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach().item() * len(labels)
                loss_n += len(labels)
                done += 1
                reporter.step(done, epoch, loss_sum / loss_n)
            result.train_seconds += time.perf_counter() - t0
            result.train_cpu_seconds += time.process_time() - c0
            row: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / loss_n}
            if enc_eval is not None:
                t1 = time.perf_counter()
                metrics = evaluate(model, enc_eval, train.problem_type, train.num_labels, cfg.eval_batch_size)
                result.eval_seconds += time.perf_counter() - t1
                row.update(metrics)
                score = metrics.get(result.main_metric, math.nan)
                score = -math.inf if math.isnan(score) else score
                reporter.message(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                if best_state is None or score > best_score:
                    best_score, best_state = score, snapshot()
                    result.best_epoch, result.best_metrics = epoch, metrics
            result.history.append(row)
    finally:
        reporter.close()
        model.eval()
    result.steps = done
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    else:
        result.best_epoch = cfg.epochs
    return result


def _training_info(
    cfg: TrainConfig,
    fit: _FitResult,
    train: AnyDataset,
    eval_data: AnyDataset | None,
    trainable: int,
    total: int,
    seconds: float,
) -> dict[str, Any]:
    return json_safe(
        {
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "optimizer": "AdamW",
            "weight_decay": cfg.weight_decay,
            "schedule": "linear",
            "warmup_ratio": cfg.warmup_ratio,
            "max_grad_norm": cfg.max_grad_norm,
            "max_length": cfg.max_length,
            "seed": cfg.seed,
            "main_metric": fit.main_metric,
            "best_epoch": fit.best_epoch,
            "steps": fit.steps,
            "seconds": round(seconds, 2),
            "train_seconds": round(fit.train_seconds, 2),
            # CPU seconds of all threads: on a shared machine less sensitive to other jobs than wall time.
            "train_cpu_seconds": round(fit.train_cpu_seconds, 2),
            "eval_seconds": round(fit.eval_seconds, 2),
            "trainable_params": trainable,
            "total_params": total,
            "trainable_percent": round(100.0 * trainable / total, 4),
            "train_rows": len(train),
            "train_file": str(train.path),
            "train_sha256": train.sha256,
            "truncated_train_rows": fit.truncated_train_rows,
            "label_counts": train.label_counts() if train.problem_type != "regression" else {},
            "eval_rows": len(eval_data) if eval_data is not None else 0,
            "eval_file": str(eval_data.path) if eval_data is not None else None,
            "eval_sha256": eval_data.sha256 if eval_data is not None else None,
            "history": fit.history,
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
        }
    )


def _head_for(train: AnyDataset, head: HeadConfig) -> HeadConfig:
    """The head options the caller chose, with problem type and labels taken from the training data."""
    if train.problem_type == "regression":
        return replace(head, problem_type="regression", num_labels=1, labels=())
    return replace(head, problem_type=train.problem_type).with_labels(train.labels)


def train_task(
    base: BaseModel,
    train: AnyDataset,
    eval_data: AnyDataset | None,
    *,
    name: str,
    adapter: AdapterConfig | None = None,
    head: HeadConfig | None = None,
    config: TrainConfig | None = None,
    stack_on: tuple[LowerAdapter, dict[str, Tensor]] | None = None,
) -> TaskCheckpoint:
    """Train one task's adapters + head on ``base`` (kept frozen) and return its checkpoint (best epoch).

    The head's problem type and labels come from ``train``; pooling and hidden layers from ``head``.
    ``stack_on``: a frozen lower adapter (:func:`adapterdeploy.models.adapterhub_stack.load_lower`) the task adapter is
    stacked on; the task adapter then takes its placement, activation and site options (a stack shares them).
    """
    adapter = adapter or AdapterConfig()
    cfg = config or TrainConfig()
    _check_pair(train, eval_data)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)  # before the model: adapter and head init are random
    lower = stack_on[0] if stack_on is not None else None
    if lower is not None:
        low = lower.config
        adapter = replace(adapter, placement=low.placement, activation=low.activation, site=low.site)
    model = EncoderWithAdapters(
        base, adapter, _head_for(train, head or HeadConfig()), lower.config if lower is not None else None
    )
    if stack_on is not None:
        model.load_state_dict(stack_on[1], strict=False)
        missing = set(k for k in model.state_dict() if k.startswith(LOWER_PREFIX)) - set(stack_on[1])
        if missing:
            raise ArtifactError(f"lower adapter {lower.name!r} lacks weights {sorted(missing)[:3]}")
    params = [p for n, p in model.named_parameters() if n.split(".", 1)[0] in TRAINABLE_PREFIXES]
    assert all(p.requires_grad for p in params) and not any(p.requires_grad for p in base.model.parameters())

    def snapshot() -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}

    tokenizer = tagging_tokenizer(base) if isinstance(train, TaggingDataset) else base.load_tokenizer()
    fit = _fit(model, params, tokenizer, train, eval_data, cfg, snapshot)
    if train.problem_type == "multi_label_classification" and eval_data is not None:
        _tune_thresholds(model, tokenizer, eval_data, cfg, fit)
    trainable, total = model.count_parameters()
    info = _training_info(cfg, fit, train, eval_data, trainable, total, time.perf_counter() - started)
    return checkpoint_from_model(
        model,
        name,
        max_length=cfg.max_length,
        text_pair=train.text_pair,
        metrics=json_safe(fit.best_metrics),
        training=info,
        stack_on=lower,
    )


def _tune_thresholds(
    model: EncoderWithAdapters, tokenizer: Any, eval_data: Dataset, cfg: TrainConfig, fit: _FitResult
) -> None:
    """Per-label thresholds that maximise each label's F1 on the eval rows, stored in the model's head config;
    the best epoch's metrics are replaced by the ones at those thresholds (the 0.5 ones stay in history)."""
    from adapterdeploy.multilabel import sigmoid, tune_thresholds

    enc = encode_dataset(tokenizer, eval_data, cfg.max_length)
    probs = sigmoid(_predict(model, enc, cfg.eval_batch_size).numpy())
    thresholds = tune_thresholds(enc.labels.numpy(), probs)
    model.head_config = replace(model.head_config, thresholds=thresholds)
    fit.best_metrics = evaluate(
        model, enc, eval_data.problem_type, eval_data.num_labels, cfg.eval_batch_size, thresholds
    )
    fit.history.append({"thresholds_tuned_on": str(eval_data.path), "thresholds": list(thresholds), **fit.best_metrics})


@dataclass(frozen=True)
class FullFinetuneResult:
    """A fully fine-tuned copy of the base + head: the comparison row of the results table, not a task."""

    name: str
    model: EncoderWithAdapters
    metrics: dict[str, Any]
    training: dict[str, Any]
    text_pair: bool
    max_length: int


def full_finetune(
    base: BaseModel | str | Path,
    train: Dataset,
    eval_data: Dataset | None,
    *,
    name: str,
    head: HeadConfig | None = None,
    config: TrainConfig | None = None,
) -> FullFinetuneResult:
    """Train every weight of a fresh copy of the base + a head (no adapters), with the same loop and metrics.

    The base is re-read from its directory so the caller's (shared, frozen) BaseModel is never modified.
    Use a much smaller lr than for adapters (e.g. 2e-5 to 5e-5).
    """
    cfg = config or TrainConfig(lr=2e-5)
    _check_pair(train, eval_data)
    started = time.perf_counter()
    fresh = load_base(base.path if isinstance(base, BaseModel) else base)
    torch.manual_seed(cfg.seed)
    model = EncoderWithAdapters(fresh, AdapterConfig(layers=()), _head_for(train, head or HeadConfig()))
    for p in model.base.parameters():
        p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]

    def snapshot() -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    fit = _fit(model, params, fresh.load_tokenizer(), train, eval_data, cfg, snapshot)
    for p in model.base.parameters():
        p.requires_grad_(False)
    total = sum(p.numel() for p in params)
    info = _training_info(cfg, fit, train, eval_data, total, total, time.perf_counter() - started)
    info["mode"] = "full_finetune"
    return FullFinetuneResult(name, model, json_safe(fit.best_metrics), info, train.text_pair, cfg.max_length)


def save_full_finetune(result: FullFinetuneResult, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write ``model.safetensors`` (every weight: base + head) and ``training.json``: what one task costs on
    disk without adapters."""
    import json

    from safetensors.torch import save_file

    from adapterdeploy.artifacts import atomic_directory

    out = Path(out_dir)
    with atomic_directory(out, force=force) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "adapterdeploy.full-finetune"})
        meta = {
            "name": result.name,
            "head": result.model.head_config.to_dict(),
            "max_length": result.max_length,
            "text_pair": result.text_pair,
            "metrics": result.metrics,
            "training": result.training,
        }
        (tmp / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
