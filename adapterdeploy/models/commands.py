"""CLI commands of this stage (work in progress: each command is replaced by its real implementation)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from adapterdeploy.cli_errors import CLIError, cli_error
from adapterdeploy.config import ACTIVATIONS, PLACEMENTS, POOLINGS, AdapterConfig, HeadConfig
from adapterdeploy.datasets import FORMATS
from adapterdeploy.errors import AdapterDeployError
from adapterdeploy.metrics import MAIN_METRICS
from adapterdeploy.validation import is_task_name


def _parse_layers(value: str | None) -> tuple[int, ...] | None:
    """``"3-5"`` -> (3, 4, 5); ``"1,2,5"`` -> (1, 2, 5); ``"0-1,4"`` mixes both; None / "all" -> every layer."""
    if value is None or value.strip().lower() in ("", "all"):
        return None
    layers: set[int] = set()
    for part in value.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        lo, hi = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (1, 0)
        if hi < lo:
            raise click.BadParameter(
                f"{value!r} is not a layer list; write e.g. '3-5' or '1,2,5' (0-based layer indices)",
                param_hint="--layers",
            )
        layers.update(range(lo, hi + 1))
    return tuple(sorted(layers))


@click.command("train")
@click.option(
    "--base",
    type=click.Path(file_okay=False),
    default=None,
    help="Local BERT-family model directory (BERT/MiniLM, RoBERTa, XLM-R, ELECTRA). Default: the "
    "embedded all-MiniLM-L6-v2 (22M params, fast on CPU; a larger base is more accurate and slower).",
)
@click.option(
    "--train",
    "train_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="Training rows: .tsv (header; label<TAB>text or label<TAB>text_a<TAB>text_b; no quoting), "
    ".csv or .jsonl with named columns.",
)
@click.option(
    "--eval",
    "eval_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Evaluation rows, same columns; scored after every epoch and the best epoch is kept. Without it "
    "the last epoch is kept and the checkpoint records no metrics.",
)
@click.option(
    "--task",
    "task_name",
    required=True,
    help="Task name (letters, digits, '-', '_', '.'): the name predictions and deployments use.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Checkpoint directory to write (adapter.safetensors + task.json).",
)
@click.option(
    "--placement",
    type=click.Choice(PLACEMENTS),
    default="after_layer",
    show_default=True,
    help="after_layer: one adapter after each whole layer (the tutorial recipe; keeps every ONNX fusion, "
    "fastest to serve). pfeiffer: on the FFN output. houlsby: after attention and FFN (2x the "
    "adapter weights, often a bit more accurate, slowest).",
)
@click.option(
    "--reduction-factor",
    type=click.FloatRange(min=0, min_open=True),
    default=16.0,
    show_default=True,
    help="Bottleneck = hidden size / factor (MiniLM: 384/16 = 24). Smaller factor: more capacity and "
    "accuracy, bigger task files.",
)
@click.option(
    "--bottleneck",
    type=click.IntRange(min=1),
    default=None,
    help="Explicit bottleneck size; overrides --reduction-factor.",
)
@click.option(
    "--activation",
    type=click.Choice(ACTIVATIONS),
    default="relu",
    show_default=True,
    help="Bottleneck non-linearity; relu is the recipe's and the cheapest at inference.",
)
@click.option(
    "--layers",
    default=None,
    help="Layers that carry adapters, e.g. '3-5' or '1,2,5' (0-based; default all). Skipping the first "
    "k layers (AdapterDrop) lets deployments share those layers' compute across tasks, at some "
    "accuracy cost.",
)
@click.option(
    "--per-task-layernorm/--shared-layernorm",
    default=False,
    show_default=True,
    help="Also train this task's own copies of the LayerNorm weights (as indico's DeploymentModel): "
    "slightly more accurate, but deployments cannot share the layers that have them.",
)
@click.option(
    "--pooling",
    type=click.Choice(POOLINGS),
    default="cls",
    show_default=True,
    help="Sentence vector for the head: cls token, mean over tokens (often better for sentence-embedding "
    "bases such as MiniLM), or the base's own pooler (needs its weights).",
)
@click.option(
    "--head-layers",
    type=click.IntRange(0, 2),
    default=0,
    show_default=True,
    help="Hidden dense layers in the head (0-2): more capacity, H*H more weights each.",
)
@click.option(
    "--head",
    "head_kind",
    type=click.Choice(["sequence", "tagging"]),
    default="sequence",
    show_default=True,
    help="sequence: one prediction per text (classification, multi-label, regression). tagging: one label "
    "per word (NER, PII): --train / --eval are CoNLL-style (word<TAB>label lines, a blank line between "
    'sentences) or JSONL {"tokens": [...], "labels": [...]}; the best epoch is picked by entity F1.',
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Passes over the training rows; more epochs usually help small datasets, at linear time cost.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Rows per optimizer step: larger is faster per row on CPU but takes fewer steps.",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Peak AdamW learning rate, decayed linearly to 0. 1e-3 suits adapters; full fine-tuning needs ~2e-5.",
)
@click.option(
    "--warmup-ratio",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Share of the steps with a linear lr warm-up; stabilises large learning rates.",
)
@click.option(
    "--max-length",
    type=click.IntRange(min=8),
    default=128,
    show_default=True,
    help="Tokens per row (pairs together); longer rows are truncated. Shorter is faster; recorded in "
    "the checkpoint as the serving default.",
)
@click.option(
    "--seed",
    type=int,
    default=42,
    show_default=True,
    help="Seeds init, dropout, shuffling and subsets: the same seed gives the same weights.",
)
@click.option(
    "--max-train-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Train on a seeded random sample of this many rows (faster, usually less accurate).",
)
@click.option(
    "--max-eval-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate on a seeded random sample of this many rows (faster epochs, noisier metrics).",
)
@click.option(
    "--labels",
    default=None,
    help="Comma-separated class names in index order, e.g. 'negative,positive'; rows may use the names or "
    "the indices. Default: 0..max for integer labels, sorted names otherwise.",
)
@click.option(
    "--problem-type",
    type=click.Choice(["auto", "classification", "multi-label", "regression"]),
    default="auto",
    show_default=True,
    help="auto: regression when labels are non-integer numbers, multi-label when JSONL labels are lists, "
    "else classification. multi-label: sigmoid head trained with BCE; labels are lists (JSONL) or "
    "names joined by ',' (TSV/CSV); per-label thresholds are tuned on --eval (0.5 without it).",
)
@click.option(
    "--metric",
    type=click.Choice(["auto", *MAIN_METRICS]),
    default="auto",
    show_default=True,
    help="Picks the best epoch. auto: mcc when one class has over 60% of the training rows (CoLA, MRPC), "
    "accuracy otherwise; pearson for regression.",
)
@click.option("--text-column", default=None, help="Text column (default: text, text_a, sentence or sentence1).")
@click.option("--text-pair-column", default=None, help="Second-text column (default: text_b or sentence2).")
@click.option("--label-column", default=None, help="Label column (default: label).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="File format; default from the extension (.tsv/.txt, .csv, .jsonl/.ndjson).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch threads (default: one per core). On a machine shared with other jobs, 1 can be several "
    "times faster: multi-threaded steps wait for whichever thread was preempted.",
)
@click.option(
    "--stack-on",
    "stack_on",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Train the task adapter on top of this frozen adapter (Stack, MAD-X style): a directory written by "
    "the adapters library's save_adapter (e.g. a language adapter) or a task checkpoint of ours. The "
    "task adapter takes its placement, activation and site options; deployments store it once for all "
    "tasks stacked on it. Costs one more adapter per layer at inference.",
)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def train(
    base: str | None,
    train_file: str,
    eval_file: str | None,
    task_name: str,
    out_dir: str,
    placement: str,
    reduction_factor: float,
    bottleneck: int | None,
    activation: str,
    layers: str | None,
    per_task_layernorm: bool,
    pooling: str,
    head_layers: int,
    head_kind: str,
    epochs: int,
    batch_size: int,
    lr: float,
    warmup_ratio: float,
    max_length: int,
    seed: int,
    max_train_rows: int | None,
    max_eval_rows: int | None,
    labels: str | None,
    problem_type: str,
    metric: str,
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str | None,
    fmt: str | None,
    threads: int | None,
    force: bool,
    quiet: bool,
    stack_on: str | None = None,
) -> None:
    """Train one task's adapters + head on a frozen base; write a task checkpoint.

    \b
    The defaults are the classic adapter recipe as a one-liner: an adapter after each layer, reduction
    factor 16, relu, base frozen, AdamW lr 1e-3, batch 8, 1 epoch.
    \b
    Example:
      adapterdeploy train --train examples/data/sst2/train.tsv --eval examples/data/sst2/dev.tsv \\
          --task sst2 --out out/sst2
    """
    from adapterdeploy.datasets import read_dataset, subset

    if not is_task_name(task_name):
        raise click.BadParameter(
            f"{task_name!r}: use 1-128 letters, digits, '-', '_' or '.', starting with a letter or digit",
            param_hint="--task",
        )
    layer_ids = _parse_layers(layers)
    label_list = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    ptype = {
        "auto": "auto",
        "classification": "single_label_classification",
        "regression": "regression",
        "multi-label": "multi_label_classification",
    }[problem_type]
    if Path(out_dir).exists() and not force:
        raise CLIError(f"{out_dir} already exists; pass --force to replace it")
    cols = {"fmt": fmt, "text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    try:
        from adapterdeploy.models.base import resolve_base_dir

        # Base directory and data first: a bad --base or file fails in a second, before the model is loaded
        # and before anything is written.
        base_dir = resolve_base_dir(base)
        train_data: Any
        eval_data: Any = None
        if head_kind == "tagging":
            from adapterdeploy.tagging_data import read_tagging, subset_tagging

            tfmt = "jsonl" if fmt == "jsonl" else None
            labels_t = tuple(label_list) if label_list else None
            train_data = subset_tagging(read_tagging(train_file, fmt=tfmt, labels=labels_t), max_train_rows, seed)
            if eval_file is not None:
                eval_data = subset_tagging(
                    read_tagging(eval_file, fmt=tfmt, labels=train_data.labels), max_eval_rows, seed
                )
        else:
            train_data = subset(
                read_dataset(train_file, labels=label_list, problem_type=ptype, **cols), max_train_rows, seed
            )
            if eval_file is not None:
                eval_data = subset(
                    read_dataset(
                        eval_file, labels=train_data.labels or None, problem_type=train_data.problem_type, **cols
                    ),
                    max_eval_rows,
                    seed,
                )
        adapter_cfg = AdapterConfig(
            placement=placement,
            reduction_factor=reduction_factor,
            bottleneck=bottleneck,
            activation=activation,
            layers=layer_ids,
            per_task_layernorm=per_task_layernorm,
        )
        head_cfg = HeadConfig(pooling=pooling, hidden_layers=head_layers)
        from adapterdeploy.models.trainer import TrainConfig

        train_cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            warmup_ratio=warmup_ratio,
            max_length=max_length,
            seed=seed,
            metric=metric,
            progress=not quiet,
        )
    except AdapterDeployError as exc:
        raise cli_error(exc) from exc

    try:
        from adapterdeploy.models.base import load_base
        from adapterdeploy.models.checkpoint import save_checkpoint
        from adapterdeploy.models.trainer import train_task

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        base_model = load_base(base_dir)
        lower = None
        if stack_on is not None:
            from adapterdeploy.models.adapterhub_stack import load_lower

            lower = load_lower(base_model, stack_on)
        if not quiet:
            click.echo(
                f"training {task_name!r} on {base_model.path} ({base_model.model_type}): "
                f"{len(train_data)} train rows, {len(eval_data) if eval_data else 0} eval rows",
                err=True,
            )
        ckpt = train_task(
            base_model,
            train_data,
            eval_data,
            name=task_name,
            adapter=adapter_cfg,
            head=head_cfg,
            config=train_cfg,
            stack_on=lower,
        )
        save_checkpoint(ckpt, out_dir, force=force)
    except AdapterDeployError as exc:
        raise cli_error(exc) from exc
    info = ckpt.training
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in ckpt.metrics.items() if isinstance(v, float))
    click.echo(
        f"wrote {out_dir}: task {task_name!r}, {info['trainable_params']:,} trainable params "
        f"({info['trainable_percent']:.2f}% of {info['total_params']:,}), {info['seconds']:.1f}s"
        + (f"; best epoch {info['best_epoch']}: {metrics}" if metrics else "")
    )


@click.command("import-adapterhub")
@click.option(
    "--base",
    default=None,
    type=click.Path(file_okay=False),
    help="Local base model directory the adapter was trained on (default: the embedded all-MiniLM-L6-v2).",
)
@click.option(
    "--adapter",
    "adapter_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Directory written by the adapters library's save_adapter (adapter_config.json + weights); with "
    "--fusion, once per fused adapter.",
)
@click.option(
    "--fusion",
    "fusion_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Import an AdapterFusion: the directory written by save_adapter_fusion (with its head, or --head), "
    "plus one --adapter DIR per fused adapter. It serves beside plain tasks in one deployment; every row "
    "of a fusion deployment pays the fusion sites (N adapters + 2 HxH products per site and token).",
)
@click.option(
    "--stack",
    "stack_dirs",
    nargs=2,
    default=None,
    type=click.Path(exists=True, file_okay=False),
    metavar="LANG_DIR TASK_DIR",
    help="Import Stack(lang, task) (MAD-X style): the lower adapter (e.g. a language adapter) and the task "
    "adapter on top, both saved by save_adapter (the head with the task adapter, or --head). A "
    "deployment stores each lower adapter once, however many tasks are stacked on it.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Task checkpoint directory to write (adapter.safetensors + task.json).",
)
@click.option("--task", "task_name", default=None, help="Task name (default: the adapter's name).")
@click.option(
    "--head",
    "head_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Directory written by save_head, when the head was not saved with the adapter (with_head=True).",
)
@click.option(
    "--max-length",
    default=128,
    show_default=True,
    type=click.IntRange(8, 8192),
    help="Tokenizer max length recorded for the task: longer inputs cost latency, shorter ones truncate.",
)
@click.option("--text-pair", is_flag=True, help="Record that the task reads text pairs (e.g. MRPC, RTE).")
@click.option(
    "--verify/--no-verify",
    default=None,
    help="Cross-check logits against the adapters library on sample texts (default: when it is installed); "
    "costs one extra load of the base.",
)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def import_adapterhub(
    base: str | None,
    adapter_dirs: tuple[str, ...],
    out_dir: str,
    task_name: str | None,
    head_dir: str | None,
    max_length: int,
    text_pair: bool,
    verify: bool | None,
    force: bool,
    stack_dirs: tuple[str, str] | None = None,
    fusion_dir: str | None = None,
) -> None:
    """Convert an AdapterHub bottleneck adapter (seq_bn / double_seq_bn) + its head into a task checkpoint.

    Reads what the adapters library's save_adapter(..., with_head=True) or save_adapter + save_head wrote;
    with --stack, a Stack(lang, task) of two such adapters; with --fusion, an AdapterFusion (Fuse) of several,
    as save_adapter_fusion wrote it (the default 'dynamic' config, or 'static'). LoRA, prefix tuning, Compacter
    and other methods are refused with the reason.
    """
    import importlib.util
    import sys
    import warnings

    from adapterdeploy.errors import AdapterDeployError
    from adapterdeploy.models.adapterhub import import_adapterhub as convert
    from adapterdeploy.models.adapterhub import verify_import
    from adapterdeploy.models.adapterhub_fusion import import_adapterhub_fusion, verify_fusion_import
    from adapterdeploy.models.adapterhub_stack import import_adapterhub_stack, verify_stack_import
    from adapterdeploy.models.base import load_base, resolve_base_dir
    from adapterdeploy.models.checkpoint import save_checkpoint

    if fusion_dir is not None:
        if stack_dirs or len(adapter_dirs) < 2:
            raise click.UsageError(
                "--fusion FUSION_DIR needs one --adapter DIR per fused adapter (at least 2), no --stack"
            )
    elif (len(adapter_dirs) != 1) if not stack_dirs else bool(adapter_dirs):
        raise click.UsageError(
            "pass one --adapter DIR, --stack LANG_DIR TASK_DIR, or --fusion FUSION_DIR --adapter DIR --adapter DIR ..."
        )
    adapter_dir = adapter_dirs[0] if adapter_dirs else None
    try:
        loaded = load_base(resolve_base_dir(base))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if fusion_dir is not None:
                ckpt = import_adapterhub_fusion(
                    loaded,
                    fusion_dir,
                    adapter_dirs,
                    head_dir,
                    task_name,
                    max_length=max_length,
                    text_pair=text_pair,
                )
            elif stack_dirs:
                ckpt = import_adapterhub_stack(
                    loaded,
                    stack_dirs[0],
                    stack_dirs[1],
                    head_dir,
                    task_name,
                    max_length=max_length,
                    text_pair=text_pair,
                )
            else:
                ckpt = convert(loaded, adapter_dir, head_dir, task_name, max_length=max_length, text_pair=text_pair)
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
        if verify is None:
            try:
                verify = "adapters" in sys.modules or importlib.util.find_spec("adapters") is not None
            except (ImportError, ValueError):
                verify = False
        if verify and fusion_dir is not None:
            diff = verify_fusion_import(ckpt, loaded, fusion_dir, adapter_dirs, head_dir)
            ckpt.training["imported_from"]["verified_max_abs_diff"] = diff
        elif verify and stack_dirs:
            diff = verify_stack_import(ckpt, loaded, stack_dirs[0], stack_dirs[1], head_dir)
            ckpt.training["imported_from"]["verified_max_abs_diff"] = diff
        elif verify:
            diff = verify_import(ckpt, loaded, adapter_dir, head_dir)
            ckpt.training["imported_from"]["verified_max_abs_diff"] = diff
        save_checkpoint(ckpt, out_dir, force=force)
    except AdapterDeployError as exc:
        raise cli_error(exc) from exc
    a, h = ckpt.adapter, ckpt.head
    layers = "all" if a.layers is None else ",".join(map(str, a.layers))
    click.echo(
        f"imported task {ckpt.name!r} -> {out_dir}\n"
        f"  adapter: {ckpt.training['imported_from']['config_name']} -> placement {a.placement}, "
        f"bottleneck {ckpt.bottleneck()}, activation {a.activation}, layers {layers}\n"
        f"  head: {h.problem_type}, {h.num_labels} label(s) {list(h.labels)}, pooling {h.pooling}, "
        f"{h.hidden_layers} hidden layer(s)"
        + (
            f"\n  stacked on {ckpt.stack_on.name!r} "
            f"(bottleneck {ckpt.stack_on.config.bottleneck_size(ckpt.hidden_size)})"
            if ckpt.stack_on is not None
            else ""
        )
        + (
            f"\n  fusion {ckpt.fusion.name!r}: fuses {list(ckpt.fusion.adapter_names)} "
            f"(bottlenecks {[c.bottleneck_size(ckpt.hidden_size) for c in ckpt.fusion.adapters]})"
            if ckpt.fusion is not None
            else ""
        )
        + (f"\n  verified against the adapters library: max abs logit diff {diff:.2e}" if verify else "")
    )


@click.command("import-peft")
@click.option(
    "--base",
    default=None,
    type=click.Path(file_okay=False),
    help="Local base model directory the adapter was trained on (default: the embedded all-MiniLM-L6-v2).",
)
@click.option(
    "--adapter",
    "adapter_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Directory written by PEFT's save_pretrained (adapter_config.json + adapter_model.safetensors).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Task checkpoint directory to write (adapter.safetensors + task.json).",
)
@click.option("--task", "task_name", default=None, help="Task name (default: the adapter directory's name).")
@click.option(
    "--labels", default=None, help="Comma-separated label names in classifier output order (default: 0, 1, ...)."
)
@click.option(
    "--max-length",
    default=128,
    show_default=True,
    type=click.IntRange(8, 8192),
    help="Tokenizer max length recorded for the task: longer inputs cost latency, shorter ones truncate.",
)
@click.option("--text-pair", is_flag=True, help="Record that the task reads text pairs (e.g. MRPC, RTE).")
@click.option(
    "--verify/--no-verify",
    default=None,
    help="Cross-check logits against PEFT's own model on sample texts (default: when peft is installed); "
    "costs one extra load of the base.",
)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def import_peft(
    base: str | None,
    adapter_dir: str,
    out_dir: str,
    task_name: str | None,
    labels: str | None,
    max_length: int,
    text_pair: bool,
    verify: bool | None,
    force: bool,
) -> None:
    """Convert a PEFT LoRA or IA3 adapter (with its modules_to_save classifier head) into a task checkpoint.

    LoRA on the attention query/key/value/output and FFN dense layers (any rank, alpha, rsLoRA) and IA3
    are converted exactly; DoRA, prompt / prefix tuning and other PEFT types are refused by name. The task
    then exports beside bottleneck tasks: its deltas are gathered per row from the same bank.
    """
    import importlib.util

    from adapterdeploy.errors import AdapterDeployError
    from adapterdeploy.models.base import load_base, resolve_base_dir
    from adapterdeploy.models.checkpoint import save_checkpoint
    from adapterdeploy.models.peft_import import import_peft as convert
    from adapterdeploy.models.peft_import import verify_peft

    names = tuple(x.strip() for x in labels.split(",") if x.strip()) if labels else None
    try:
        loaded = load_base(resolve_base_dir(base))
        ckpt = convert(loaded, adapter_dir, task_name, labels=names, max_length=max_length, text_pair=text_pair)
        if verify is None:
            verify = importlib.util.find_spec("peft") is not None
        if verify:
            diff = verify_peft(ckpt, loaded, adapter_dir)
            ckpt.training["imported_from"]["verified_max_abs_diff"] = diff
        save_checkpoint(ckpt, out_dir, force=force)
    except AdapterDeployError as exc:
        raise click.ClickException(str(exc)) from exc
    peft, h = ckpt.adapter.peft, ckpt.head
    assert peft is not None
    click.echo(
        f"imported task {ckpt.name!r} -> {out_dir}\n"
        f"  {peft.info.get('peft_type')}: LoRA modules {list(peft.lora) or '-'} (rank {peft.rank}), "
        f"IA3 {list(peft.ia3) or '-'}, layers {','.join(map(str, ckpt.adapter.layers or ()))}\n"
        f"  head: {h.problem_type}, {h.num_labels} label(s) {list(h.labels)}, pooling {h.pooling}, "
        f"{h.hidden_layers} hidden layer(s)"
        + (f"\n  verified against PEFT: max abs logit diff {diff:.2e}" if verify else "")
    )
