"""export_deployment / inspect (add_task / remove_task: exporter/updates.py): the exporter's public API.

Order of work, so that bad input and failed parity leave nothing behind:
1. validate everything that can be checked cheaply (target, precisions, opset, base, checkpoints,
   names, signatures, AdapterDrop, max length, eval files) -> clear errors, nothing written;
2. build the PyTorch references and (with ``--eval``) measure the AdapterDrop accuracy;
3. inside ``atomic_directory`` (a hidden temp dir beside the target): export, fuse, quantize, check
   parity (ParityError removes the temp dir), write task pieces, checksums and the manifest last;
4. rename into place, holding the deployment's writer lock (writer_lock.py) from the first read of an
   existing deployment to the rename. add-task / remove-task (updates.py) change one task in place.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from adapterdeploy.artifacts import (
    MANIFEST_FILE,
    PARITY_SAMPLES,
    PRECISIONS,
    TASK_FILE,
    FeaturizerSpec,
    FileEntry,
    Manifest,
    TokenizerSpec,
    atomic_directory,
    featurizer_fingerprint,
    file_entry,
)
from adapterdeploy.config import AdapterSignature, combine_signatures
from adapterdeploy.errors import ArtifactError, ConfigError
from adapterdeploy.exporter.hf_folder import FolderSource
from adapterdeploy.exporter.task_pieces import bank_of
from adapterdeploy.runtime.inspection import inspect_deployment
from adapterdeploy.validation import check_task_name
from adapterdeploy.writer_lock import DEFAULT_LOCK_TIMEOUT_S, writer_lock

__all__ = ["bank_of", "export_deployment", "inspect"]

Log = Callable[[str], None]
EvalSpec = str | Path | Sequence[str | Path] | Mapping[str, str | Path] | None
OPSETS = range(14, 21)
inspect = inspect_deployment


def _quiet(_msg: str) -> None:
    return None


# ----------------------------------------------------------------------------------------------- validation
def _preflight(out_dir: str | Path, force: bool) -> Path:
    out = Path(out_dir).expanduser().absolute()
    if out.exists():
        if not force:
            raise ArtifactError(
                f"{out} already exists; pass --force to replace it (the old deployment stays "
                "whole until the new one is complete)"
            )
        if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file()):
            raise ArtifactError(
                f"{out} exists and is not an adapterdeploy deployment; refusing to replace it even "
                "with --force: choose another --out"
            )
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ArtifactError(f"cannot write to {ancestor} (permission denied); choose a writable --out directory")
    return out


def _check_options(precisions: Sequence[str], opset: int, tolerance: float) -> tuple[str, ...]:
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ConfigError(f"unknown precision(s) {bad}; choose from {', '.join(PRECISIONS)}")
    if opset not in OPSETS:
        raise ConfigError(f"--opset {opset} is not supported; use {OPSETS.start}..{OPSETS.stop - 1} (17 recommended)")
    if not tolerance > 0:
        raise ConfigError(f"--tolerance must be > 0, got {tolerance}")
    # fp32 is always built: it is the parity reference of the other precisions and of add-task.
    return tuple(dict.fromkeys(["fp32", *precisions]))


def _common_signature(ckpts: Sequence[Any]) -> AdapterSignature:
    """The featurizer signature all tasks share: equal bottleneck parts, the union of PEFT modules
    (config.combine_signatures); stacked and plain tasks mix (plain ones get zero lower rows)."""
    sig = combine_signatures([(c.name, dataclasses.replace(c.signature(), stack=False)) for c in ckpts])
    sig = dataclasses.replace(sig, stack=any(c.stack_on is not None for c in ckpts))
    if sig.stack and sig.fusion:
        stacked = next(c.name for c in ckpts if c.stack_on is not None)
        fused = next(c.name for c in ckpts if c.fusion is not None)
        raise ConfigError(
            f"task {stacked!r} is stacked and task {fused!r} is an AdapterFusion; one featurizer has either "
            "lower-adapter slots or fusion slots: export them into separate deployments (separate --out)"
        )
    return sig


def _position_limit(base: Any) -> int:
    cfg = base.model.config
    offset = (cfg.pad_token_id or 0) + 1 if base.model_type in ("roberta", "xlm-roberta") else 0
    return int(base.max_position_embeddings) - offset


def _resolve_max_length(base: Any, ckpts: Sequence[Any], max_length: int | None) -> int:
    limit = _position_limit(base)
    if max_length is None:
        return min(max(c.max_length for c in ckpts), limit)
    if not 2 <= max_length <= limit:
        raise ConfigError(
            f"--max-length {max_length} is out of range: {base.path} has position embeddings for "
            f"{limit} tokens; choose 2..{limit}"
        )
    return int(max_length)


def _check_zero_fill(signature: AdapterSignature, ckpts: Sequence[Any], adapter_drop: int, num_layers: int) -> None:
    from adapterdeploy.errors import UnsupportedAdapterError
    from adapterdeploy.exporter.featurizer import zero_adapter_is_identity

    for ckpt in ckpts:
        missing = sorted(set(range(adapter_drop, num_layers)) - set(ckpt.adapter.adapter_layers(num_layers)))
        if signature.stack and not zero_adapter_is_identity(signature):
            low = ckpt.stack_on.config.adapter_layers(num_layers) if ckpt.stack_on is not None else ()
            if set(range(adapter_drop, num_layers)) - set(low):
                raise UnsupportedAdapterError(
                    f"task {ckpt.name!r} has no lower (stacked) adapter in some adapted layers, and with the site "
                    f"options ({signature.site}) a zero adapter is not the same as no adapter; export stacked and "
                    "plain tasks into separate deployments, or give every layer >= K a lower adapter"
                )
        if not ckpt.adapter.signature().has_bottleneck and signature.has_bottleneck:
            if not zero_adapter_is_identity(signature):  # a PEFT-only task has zero bottleneck rows everywhere
                raise UnsupportedAdapterError(
                    f"task {ckpt.name!r} has PEFT deltas only, and with the bottleneck tasks' site options "
                    f"({signature.site}) a zero bottleneck adapter is not the same as none, so it cannot share "
                    "their featurizer; export the PEFT tasks into their own deployment (separate --out)"
                )
            continue
        if missing and not zero_adapter_is_identity(signature):
            raise UnsupportedAdapterError(
                f"task {ckpt.name!r} has no adapter in layers {missing}, and with its site options "
                f"({signature.site}) a zero adapter is not the same as no adapter, so it cannot share the bank; "
                f"deploy it with --adapter-drop {max(missing) + 1} or train adapters in every layer >= K"
            )


def _eval_plan(eval_file: EvalSpec, ckpts: Sequence[Any]) -> dict[str, Path]:
    """``{task: file}`` from FILE / NAME=FILE entries; a bare FILE goes to the only task or the task named
    like its directory or stem (``.../sst2/dev.tsv`` -> ``sst2``)."""
    if eval_file is None:
        return {}
    names = {c.name for c in ckpts}
    if isinstance(eval_file, Mapping):
        entries = [(str(k), Path(v)) for k, v in eval_file.items()]
    else:
        items = [eval_file] if isinstance(eval_file, (str, Path)) else list(eval_file)
        entries = []
        for item in items:
            text = str(item)
            name, sep, rest = text.partition("=")
            if sep and name in names:
                entries.append((name, Path(rest)))
                continue
            p = Path(text)
            guess = [n for n in names if len(names) == 1 or n in (p.parent.name, p.stem)]
            if len(guess) != 1:
                raise ConfigError(
                    f"cannot tell which task --eval {text} is for; write it as NAME=FILE with NAME "
                    f"one of {sorted(names)}"
                )
            entries.append((guess[0], p))
    plan = {}
    for name, path in entries:
        if name not in names:
            raise ConfigError(f"--eval names task {name!r}, which is not exported here ({sorted(names)})")
        if not path.expanduser().is_file():
            raise ConfigError(f"--eval file {path} does not exist")
        plan[name] = path.expanduser()
    return plan


# ------------------------------------------------------------------------------------------------- helpers
def _collect_files(root: Path) -> dict[str, FileEntry]:
    """Checksums of the deployment-level files; task files are listed (and hashed) by their own task.json."""
    return {
        rel: file_entry(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and (rel := p.relative_to(root).as_posix()) != MANIFEST_FILE and not rel.startswith("tasks/")
    }


def _task_files(root: Path, names: Sequence[str]) -> dict[str, FileEntry]:
    """Each task's task.json entry for the manifest (the task.json lists the task's other files)."""
    return {n: file_entry(root / "tasks" / n / TASK_FILE) for n in names}


def _write_tokenizer(base: Any, root: Path) -> None:
    if base.tokenizer_file.is_file():
        shutil.copyfile(base.tokenizer_file, root / "tokenizer.json")
    else:  # a base shipping only vocab.txt: HF builds the fast tokenizer, we save its tokenizers JSON
        base.load_tokenizer().backend_tokenizer.save(str(root / "tokenizer.json"))


def _samples(model: Any, tokenizer: Any, text_pair: bool, max_length: int) -> list[dict[str, Any]]:
    """A few inputs with their PyTorch fp32 logits (TaskSpec.parity["samples"], read by ``check``).

    None for a tagging task: its token logits are checked at export (run_parity), ``check`` compares its
    per-word scores between mixed and single-row runs.
    """
    import torch

    if model.head_config.token_level:
        return []
    items: list[Any] = (
        [("the company said its shares were up", "shares of the company rose"), ("it is great", "it is terrible")]
        if text_pair
        else ["the movie was good", "a very bad film and a boring plot"]
    )
    out = []
    with torch.no_grad():
        for item in items:
            a, b = (item, None) if isinstance(item, str) else item
            enc = tokenizer(
                a, b, truncation=True, max_length=max_length, return_tensors="pt", return_token_type_ids=True
            )
            logits = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])[0]
            out.append(
                {"input": item if isinstance(item, str) else list(item), "logits": [round(float(x), 6) for x in logits]}
            )
    return out


class _Build:
    """The featurizer modules, task preparations and parity inputs of one export or add-task.

    Tasks stream through PyTorch one parity group at a time (``parity.PARITY_GROUP``): each group's models are
    built on the one shared base, give their bank rows, head, PyTorch references and ``task.json`` samples,
    and are freed before the next group's are built. Export keeps what stays per task (rows, head, a few
    reference vectors: its own bytes) for all N, since every candidate graph is checked and timed on them;
    add-task keeps not even that: :meth:`groups` hands it one group at a time (issue 16).
    """

    def __init__(
        self,
        base: Any,
        ckpts: Sequence[Any],
        signature: AdapterSignature,
        adapter_drop: int,
        max_length: int,
        *,
        stream: bool = False,
    ) -> None:
        """``stream``: prepare no task here; the caller takes them group by group from :meth:`groups`."""
        from adapterdeploy.exporter.featurizer import Adapted, Trunk, copy_encoder
        from adapterdeploy.exporter.parity import parity_batches, task_groups, timing_batches

        hf = copy_encoder(base)
        self.base, self.max_length, self.adapter_drop, self.signature = base, max_length, adapter_drop, signature
        self.trunk = Trunk(base, adapter_drop, hf)
        self.adapted = Adapted(base, adapter_drop, signature, hf)
        self.tokenizer = base.load_tokenizer()
        self.batches = parity_batches(self.tokenizer, len(ckpts), max_length)
        self.timing = timing_batches(self.tokenizer, len(ckpts), max_length)
        self.tasks: list[Any] = []
        self.samples: list[list[dict[str, Any]]] = []
        self.refs: list[dict[int, Any]] = [{} for _ in self.batches]
        if not stream:
            for group in task_groups(len(ckpts)):
                self._prepare({i: ckpts[i] for i in group})

    def _prepare(self, ckpts: Mapping[int, Any]) -> None:
        """Build the models of one group (``{task index in the batches: checkpoint}``), keep their rows, heads,
        samples and references, and let the models go (the next group's are built on the same base)."""
        from adapterdeploy.exporter.parity import torch_reference
        from adapterdeploy.exporter.task_pieces import prepare_task, reference_model

        models = {}
        for i, ckpt in ckpts.items():
            model = reference_model(self.base, ckpt, self.adapter_drop)
            layers = self.adapted.adapted_layers
            self.tasks.append(prepare_task(self.base, ckpt, self.signature, self.adapter_drop, layers, model))
            self.samples.append(_samples(model, self.tokenizer, ckpt.text_pair, self.max_length))
            models[i] = model
        for refs, batch in zip(self.refs, self.batches, strict=True):
            refs.update(torch_reference(models, batch))
        del models

    def groups(self, ckpts: Sequence[Any], load: Callable[[Any], Any]) -> Iterator[_Build]:
        """add-task: one parity group at a time, as a ``_Build`` of only that group's tasks (``load(ckpt)`` gives
        a checkpoint with its weights), sharing this one's featurizer modules and tokenizer. The group's batches
        are renumbered to its own tasks; once the caller drops a group, nothing of it stays (issue 16)."""
        from adapterdeploy.exporter.parity import task_groups

        for group in task_groups(len(ckpts)):
            part = copy.copy(self)
            part.batches = [
                dataclasses.replace(b, task_index=b.task_index - group.start)
                for b in self.batches
                if group.start <= int(b.task_index.min()) and int(b.task_index.max()) < group.stop
            ]
            part.tasks, part.samples, part.refs = [], [], [{} for _ in part.batches]
            part._prepare({i - group.start: load(ckpts[i]) for i in group})
            yield part

    @property
    def example_bank(self) -> list[Any]:
        """The bank the adapted graph is traced with (a few tasks: its T axis is dynamic)."""
        from adapterdeploy.exporter.featurizer import stack_bank

        return stack_bank([t.rows for t in self.tasks[:2]], self.adapted.keys)

    def parity_inputs(self, heads: dict[str, Path]) -> Any:
        from adapterdeploy.exporter.variants import ParityInputs

        return ParityInputs(
            tasks=[t.name for t in self.tasks],
            features=[t.ckpt.head.feature for t in self.tasks],
            classification=[t.ckpt.head.problem_type != "regression" for t in self.tasks],
            heads=heads,
            rows=[t.rows for t in self.tasks],
            batches=self.batches,
            refs=self.refs,
            timing=self.timing,
        )

    def export_heads(self, root: Path, opset: int) -> dict[str, Path]:
        from adapterdeploy.artifacts import TASK_HEAD_FILE
        from adapterdeploy.exporter.featurizer import HeadGraph
        from adapterdeploy.exporter.onnx_graphs import export_head

        heads = {}
        for t in self.tasks:
            task_dir = root / "tasks" / t.name
            task_dir.mkdir(parents=True, exist_ok=True)
            heads[t.name] = task_dir / TASK_HEAD_FILE
            export_head(HeadGraph(t.head_module), heads[t.name], opset=opset, hidden_size=self.base.hidden_size)
        return heads

    def write_tasks(self, root: Path, fingerprint: str, parity: Mapping[str, Any], tolerance: float) -> None:
        from adapterdeploy.exporter.task_pieces import write_task_piece

        for t, samples in zip(self.tasks, self.samples, strict=True):
            figures: dict[str, Any] = {"tolerance": tolerance}
            figures.update({p: r.summary(t.name) for p, r in parity.items()})
            figures[PARITY_SAMPLES] = samples
            write_task_piece(root / "tasks" / t.name, t, fingerprint=fingerprint, parity=figures)


def _load_inputs(
    base_dir: Any, checkpoint_dirs: Sequence[str | Path], *, keep_weights: bool = True
) -> tuple[Any, list[Any]]:
    """The base and the checkpoints, each read and checked in full (checksum, shapes, names, base).

    ``keep_weights=False`` drops each checkpoint's weights once it is checked (add-task reads them again, one
    parity group at a time: :func:`reload_weights`), so N checkpoints never sit in memory at once.
    """
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import load_checkpoint

    if not checkpoint_dirs:
        raise ConfigError("no task given: pass at least one --task CHECKPOINT_DIR")
    base = load_base(base_dir)
    ckpts = [c if keep_weights else dataclasses.replace(c, weights={}) for c in map(load_checkpoint, checkpoint_dirs)]
    seen: dict[str, Any] = {}
    for c in ckpts:
        check_task_name(c.name)
        if c.name in seen:
            raise ConfigError(
                f"two checkpoints are named {c.name!r} ({seen[c.name]} and {c.path}); task names "
                "must be unique in a deployment: rename one (its task.json 'name')"
            )
        seen[c.name] = c.path
        c.check_base(base)
    return base, ckpts


def reload_weights(ckpt: Any) -> Any:
    """``ckpt`` read again from its directory, weights included (checksum and shapes checked again); refuses a
    checkpoint that changed since it was first read and validated."""
    from adapterdeploy.models.checkpoint import load_checkpoint

    again = load_checkpoint(ckpt.path)
    if again != ckpt:  # weights are not compared: the checksum check in load_checkpoint covers them
        raise ArtifactError(f"task checkpoint {ckpt.path} changed while it was being exported; run the command again")
    return again


# ---------------------------------------------------------------------------------------------- public API
def export_deployment(
    base_dir: str | Path | None,
    checkpoint_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    adapter_drop: int | str = 0,
    max_drop: float = 1.0,
    precisions: Sequence[str] = ("fp32",),
    max_length: int | None = None,
    opset: int = 17,
    tolerance: float = 1e-4,
    standalone: bool = False,
    force: bool = False,
    allow_drop: bool = False,
    eval_file: EvalSpec = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    log: Log = _quiet,
) -> Manifest:
    """Export tasks sharing one featurizer into ``out_dir``; refuse (nothing written) on any problem.

    ``adapter_drop="auto"`` picks K from the ``eval_file`` of every task (``exporter/drop_search.py``): the
    largest K whose dev-metric loss is within ``max_drop`` points for every task; implies ``allow_drop``.
    With ``force`` over an existing deployment, the writer lock is held for the whole export (waiting up to
    ``lock_timeout`` seconds for another writer), so no add-task / remove-task is lost in between.
    """
    out = _preflight(out_dir, force)
    lock = (
        writer_lock(out, timeout=lock_timeout, command=f"export --force {out}", log=log)
        if force and out.exists()
        else contextlib.nullcontext()
    )
    with lock:
        return _export(
            base_dir,
            checkpoint_dirs,
            out,
            adapter_drop=adapter_drop,
            max_drop=max_drop,
            precisions=precisions,
            max_length=max_length,
            opset=opset,
            tolerance=tolerance,
            standalone=standalone,
            force=force,
            allow_drop=allow_drop,
            eval_file=eval_file,
            log=log,
        )


def _export(
    base_dir: str | Path | None,
    checkpoint_dirs: Sequence[str | Path],
    out: Path,
    *,
    adapter_drop: int | str,
    max_drop: float,
    precisions: Sequence[str],
    max_length: int | None,
    opset: int,
    tolerance: float,
    standalone: bool,
    force: bool,
    allow_drop: bool,
    eval_file: EvalSpec,
    log: Log,
) -> Manifest:
    from adapterdeploy.exporter.adapter_drop import check_drop, evaluate_drop
    from adapterdeploy.exporter.standalone import export_standalone_graphs
    from adapterdeploy.exporter.variants import build_variants

    precisions = _check_options(precisions, opset, tolerance)
    log("loading the base and the task checkpoints")
    base, ckpts = _load_inputs(base_dir, checkpoint_dirs)
    signature = _common_signature(ckpts)
    auto = adapter_drop == "auto"
    if isinstance(adapter_drop, str) and not auto:
        raise ConfigError(f"--adapter-drop takes a layer count or 'auto', got {adapter_drop!r}")
    max_length = _resolve_max_length(base, ckpts, max_length)
    plan = _eval_plan(eval_file, ckpts)
    auto_table: dict[str, Any] = {}
    if auto:
        from adapterdeploy.exporter.drop_search import choose_adapter_drop

        adapter_drop, auto_table = choose_adapter_drop(base, ckpts, plan, max_length, max_drop, log)
        allow_drop = True
        log(f"AdapterDrop auto: K={adapter_drop} (largest K within {max_drop} points for every task)")
    assert isinstance(adapter_drop, int)
    check_drop(ckpts, adapter_drop, base.num_layers, allow_drop)
    _check_zero_fill(signature, ckpts, adapter_drop, base.num_layers)
    by_name = {c.name: c for c in ckpts}
    drop_eval: dict[str, Any] = {}
    for name, path in ({} if auto else plan).items():
        log(f"measuring AdapterDrop accuracy of {name} on {path}")
        drop_eval[name] = evaluate_drop(base, by_name[name], path, adapter_drop, max_length)
    if auto:
        from adapterdeploy.exporter.drop_search import fanout_speed

        log(f"AdapterDrop auto: timing the K=0 and K={adapter_drop} featurizers on a fan-out batch")
        auto_table["fanout_speed"] = fanout_speed(base, ckpts, signature, [0, adapter_drop], max_length, opset)
        auto_table["adapter_drop"] = adapter_drop
    log("building the PyTorch references")
    build = _Build(base, ckpts, signature, adapter_drop, max_length)
    # From here on only the prepared tasks (rows, heads, checkpoints without weights) are used: let the
    # checkpoints' own weight copies go (issue 16: export memory beyond the tasks' own bytes).
    ckpts = [t.ckpt for t in build.tasks]
    by_name.clear()
    fingerprint = featurizer_fingerprint(base.fingerprint, adapter_drop, signature, base.num_layers)
    vocab = int(base.model.config.vocab_size)
    with atomic_directory(out, force=force) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a deployment is read by other users (servers)
        heads = build.export_heads(tmp, opset)
        variants, results = build_variants(
            tmp,
            tmp / ".work",
            build.trunk,
            build.adapted,
            example_bank=build.example_bank,
            precisions=precisions,
            opset=opset,
            tolerance=tolerance,
            num_heads=base.num_heads,
            hidden_size=base.hidden_size,
            vocab_size=vocab,
            parity=build.parity_inputs(heads),
            log=log,
        )
        _write_tokenizer(base, tmp)
        standalone_paths: dict[str, dict[str, str]] = {}
        standalone_parity: dict[str, Any] = {}
        if standalone:
            source = FolderSource(
                tokenizer=tmp / "tokenizer.json",
                base_config=base.spec.config,
                max_length=max_length,
                model_type=base.model_type,
                pad_id=base.spec.pad_token_id,
                fingerprint=fingerprint,
            )
            standalone_paths, standalone_parity = export_standalone_graphs(
                tmp,
                build.trunk,
                build.adapted,
                build.tasks,
                source=source,
                opset=opset,
                vocab_size=vocab,
                precisions=precisions,
                tolerance=tolerance,
                batches=build.batches,
                refs=build.refs,
                log=log,
            )
        log("writing task pieces, checksums and the manifest")
        build.write_tasks(tmp, fingerprint, results, tolerance)
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        parity: dict[str, Any] = {
            "tolerance": tolerance,
            "reference": "pytorch fp32",
            "batches": [f"{b.name}: {len(b.row_source)} rows x {b.input_ids.shape[1]} tokens" for b in build.batches],
        }
        parity.update({p: r.summary() for p, r in results.items()})
        parity["tasks"] = {t.name: {p: r.summary(t.name) for p, r in results.items()} for t in build.tasks}
        if standalone_parity:
            parity["standalone"] = standalone_parity
        manifest = Manifest(
            base=base.spec,
            featurizer=FeaturizerSpec(
                fingerprint=fingerprint,
                adapter_drop=adapter_drop,
                num_layers=base.num_layers,
                hidden_size=base.hidden_size,
                signature=signature,
                adapted_layers=build.adapted.adapted_layers,
                bank_inputs=build.adapted.keys,
                outputs=build.adapted.output_names,
                variants=variants,
                opset=opset,
            ),
            tokenizer=TokenizerSpec(file="tokenizer.json", max_length=max_length, model_type=base.model_type),
            tasks={t.name: f"tasks/{t.name}" for t in build.tasks},
            files=_collect_files(tmp),
            task_files=_task_files(tmp, [t.name for t in build.tasks]),
            parity=parity,
            adapter_drop_eval=auto_table or ({"adapter_drop": adapter_drop, "tasks": drop_eval} if drop_eval else {}),
            standalone=standalone_paths,
        )
        manifest.write(tmp)
        manifest = Manifest.read(tmp)
    return manifest
