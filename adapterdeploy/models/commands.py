"""CLI commands of this stage (work in progress: each command is replaced by its real implementation)."""

from __future__ import annotations

import click


@click.command("train")
def train() -> None:
    """(not available yet in this build)."""
    raise click.ClickException("'train' is not implemented yet")


@click.command("import-adapterhub")
@click.option("--base", default=None, type=click.Path(file_okay=False),
              help="Local base model directory the adapter was trained on (default: the embedded all-MiniLM-L6-v2).")
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Directory written by the adapters library's save_adapter (adapter_config.json + weights).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Task checkpoint directory to write (adapter.safetensors + task.json).")
@click.option("--task", "task_name", default=None, help="Task name (default: the adapter's name).")
@click.option("--head", "head_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Directory written by save_head, when the head was not saved with the adapter (with_head=True).")
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(8, 8192),
              help="Tokenizer max length recorded for the task: longer inputs cost latency, shorter ones truncate.")
@click.option("--text-pair", is_flag=True, help="Record that the task reads text pairs (e.g. MRPC, RTE).")
@click.option("--verify/--no-verify", default=None,
              help="Cross-check logits against the adapters library on sample texts (default: when it is installed); "
              "costs one extra load of the base.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def import_adapterhub(
    base: str | None, adapter_dir: str, out_dir: str, task_name: str | None, head_dir: str | None,
    max_length: int, text_pair: bool, verify: bool | None, force: bool,
) -> None:
    """Convert an AdapterHub bottleneck adapter (seq_bn / double_seq_bn) + classification head into a task checkpoint.

    Reads what the adapters library's save_adapter(..., with_head=True) or save_adapter + save_head wrote;
    LoRA, prefix tuning, Compacter, fusion and other methods are refused with the reason.
    """
    import importlib.util
    import sys
    import warnings

    from adapterdeploy.errors import AdapterDeployError
    from adapterdeploy.models.adapterhub import import_adapterhub as convert
    from adapterdeploy.models.adapterhub import verify_import
    from adapterdeploy.models.base import load_base, resolve_base_dir
    from adapterdeploy.models.checkpoint import save_checkpoint

    try:
        loaded = load_base(resolve_base_dir(base))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ckpt = convert(loaded, adapter_dir, head_dir, task_name, max_length=max_length, text_pair=text_pair)
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
        if verify is None:
            try:
                verify = "adapters" in sys.modules or importlib.util.find_spec("adapters") is not None
            except (ImportError, ValueError):
                verify = False
        if verify:
            diff = verify_import(ckpt, loaded, adapter_dir, head_dir)
            ckpt.training["imported_from"]["verified_max_abs_diff"] = diff
        save_checkpoint(ckpt, out_dir, force=force)
    except AdapterDeployError as exc:
        raise click.ClickException(str(exc)) from exc
    a, h = ckpt.adapter, ckpt.head
    layers = "all" if a.layers is None else ",".join(map(str, a.layers))
    click.echo(
        f"imported task {ckpt.name!r} -> {out_dir}\n"
        f"  adapter: {ckpt.training['imported_from']['config_name']} -> placement {a.placement}, "
        f"bottleneck {ckpt.bottleneck()}, activation {a.activation}, layers {layers}\n"
        f"  head: {h.problem_type}, {h.num_labels} label(s) {list(h.labels)}, pooling {h.pooling}, "
        f"{h.hidden_layers} hidden layer(s)"
        + (f"\n  verified against the adapters library: max abs logit diff {diff:.2e}" if verify else "")
    )
