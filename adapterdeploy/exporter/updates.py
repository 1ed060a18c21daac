"""add-task / remove-task: change the tasks of an existing deployment in place, one writer at a time.

Cost independent of the deployment's size: a change writes (and hashes) only the new task pieces and
rewrites ``deployment.json``, which lists tasks, not their files (see artifacts.py). Nothing it did not
write is re-hashed: the featurizer graphs it runs are checked by size, and the parity run against them
would catch a corrupt graph anyway.

Atomicity, under the deployment's writer lock (writer_lock.py):
1. the new pieces are written into a hidden staging directory inside the deployment
   (``.staging-<id>/tasks/<name>/...``), parity-checked against the featurizer in place, made readable and
   fsynced; a failure or a crash here leaves only that hidden directory, which no manifest names;
2. each staged task directory is renamed to ``tasks/<name>`` (``tasks/<name>~<id>`` when that path is
   taken by the task it replaces), standalone graphs likewise;
3. ``deployment.json`` is replaced atomically (temp file + rename): readers see the old or the new task set;
4. the replaced / removed task directories are deleted. A crash between 3 and 4 leaves an unreferenced
   directory that ``inspect`` lists as a leftover; a crash between 2 and 3 the same, never a half task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from adapterdeploy.artifacts import (
    MANIFEST_FILE,
    STAGING_PREFIX,
    TASK_FILE,
    FileEntry,
    Manifest,
    TaskSpec,
    featurizer_fingerprint,
    file_entry,
    fsync_tree,
    make_readable,
    safe_relpath,
    sha256_file,
)
from adapterdeploy.config import signature_misfit
from adapterdeploy.errors import ArtifactError, ChecksumError, ConfigError, FingerprintMismatchError, UnknownTaskError
from adapterdeploy.exporter.deployment import Log, _Build, _check_zero_fill, _load_inputs, _quiet, reload_weights
from adapterdeploy.exporter.hf_folder import FolderSource
from adapterdeploy.exporter.parity import ParityResult
from adapterdeploy.writer_lock import DEFAULT_LOCK_TIMEOUT_S, writer_lock

__all__ = ["add_task", "add_tasks", "remove_task"]


def add_task(deploy_dir: str | Path, ckpt_dir: str | Path, **options: Any) -> TaskSpec:
    """Add one task checkpoint; see :func:`add_tasks` for the options."""
    return add_tasks(deploy_dir, [ckpt_dir], **options)[0]


def add_tasks(
    deploy_dir: str | Path,
    ckpt_dirs: Sequence[str | Path],
    *,
    base_dir: str | Path | None = None,
    tolerance: float | None = None,
    replace: bool = False,
    allow_drop: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    log: Log = _quiet,
) -> list[TaskSpec]:
    """Export task checkpoints against the existing featurizer (no re-export): one torch start, one base load,
    one manifest swap; the tasks stream through PyTorch and parity one group at a time (:func:`_check_and_write`),
    so memory does not grow with their number. Waits up to ``lock_timeout`` s for another writer."""
    from adapterdeploy.exporter.adapter_drop import check_drop
    from adapterdeploy.exporter.parity import raise_on_failures

    root = Path(deploy_dir).expanduser().absolute()
    Manifest.read(root)  # a clear error before waiting for a lock on something that is no deployment
    names_given = " ".join(str(c) for c in ckpt_dirs)
    with writer_lock(root, timeout=lock_timeout, command=f"add-task {root} {names_given}", log=log):
        manifest = Manifest.read(root)  # under the lock: includes every earlier writer's change
        _clean_staging(root)
        fz = manifest.featurizer
        _check_sizes(
            root,
            manifest,
            [p for v in fz.variants.values() for p in (v.trunk, v.adapted)]
            + ([manifest.tokenizer.file] if manifest.standalone else []),
        )  # standalone folders copy it
        # Checked in full, then held without weights: each parity group reads its own again (issue 16).
        base, ckpts = _load_inputs(base_dir or manifest.base.path or None, ckpt_dirs, keep_weights=False)
        if base.fingerprint != manifest.base.fingerprint:
            raise FingerprintMismatchError(
                f"the base at {base.path} is not the base {root} was exported from (fingerprint "
                f"{base.fingerprint[:12]}… vs {manifest.base.fingerprint[:12]}…); "
                "pass --base with that model"
            )
        _check_tasks(root, manifest, ckpts, replace)
        if featurizer_fingerprint(base.fingerprint, fz.adapter_drop, fz.signature, fz.num_layers) != fz.fingerprint:
            raise FingerprintMismatchError(
                f"{root}'s featurizer fingerprint does not match its base, K and signature; "
                "the deployment is inconsistent: re-export it"
            )
        check_drop(ckpts, fz.adapter_drop, fz.num_layers, allow_drop)
        _check_zero_fill(fz.signature, ckpts, fz.adapter_drop, fz.num_layers)
        tolerance = tolerance if tolerance is not None else float(manifest.parity.get("tolerance", 1e-4))
        build = _Build(base, ckpts, fz.signature, fz.adapter_drop, manifest.tokenizer.max_length, stream=True)
        if tuple(build.adapted.keys) != tuple(fz.bank_inputs):
            raise FingerprintMismatchError(
                f"{root}'s bank inputs differ from what this featurizer layout needs; re-export"
            )
        names = [c.name for c in ckpts]
        with _staging(root) as stage:
            results, standalone, st_parity = _check_and_write(
                root,
                stage,
                manifest,
                build,
                ckpts,
                tolerance=tolerance,
                vocab=int(base.model.config.vocab_size),
                log=log,
            )
            raise_on_failures(results["fp32"], tolerance, f"task(s) {names} on the featurizer of {root}")
            parity = dict(manifest.parity)
            if st_parity:
                parity["standalone"] = {**parity.get("standalone", {}), **st_parity}
            parity["tasks"] = {
                **parity.get("tasks", {}),
                **{n: {p: r.summary(n) for p, r in results.items()} for n in names},
            }
            make_readable(stage)
            fsync_tree(stage)
            new, installed, obsolete = _install(root, stage, manifest, names, standalone)
            try:
                dataclasses.replace(new, parity=parity).write(root)
            except BaseException:
                _remove(root, installed)
                raise
        _remove(root, obsolete)
    return [TaskSpec.read(root / safe_relpath(new.tasks[n])) for n in names]


def remove_task(
    deploy_dir: str | Path, name: str, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S, log: Log = _quiet
) -> Manifest:
    """Drop a task from the manifest (atomic rename), then delete its pieces and standalone graphs."""
    root = Path(deploy_dir).expanduser().absolute()
    Manifest.read(root)
    with writer_lock(root, timeout=lock_timeout, command=f"remove-task {root} {name}", log=log):
        manifest = Manifest.read(root)
        _clean_staging(root)
        if name not in manifest.tasks:
            raise UnknownTaskError(f"no task {name!r} in {root}; its tasks are {sorted(manifest.tasks) or 'none'}")
        log(f"removing task {name}")
        parity = dict(manifest.parity)
        for key in ("tasks", "standalone"):
            if key in parity:
                parity[key] = {k: v for k, v in parity[key].items() if k != name}
        drop_eval = dict(manifest.adapter_drop_eval)
        if "tasks" in drop_eval:
            drop_eval["tasks"] = {k: v for k, v in drop_eval["tasks"].items() if k != name}
        shared = _unused_shared(root, manifest, name)
        gone = [*_standalone_places(manifest, name), *shared]
        new = dataclasses.replace(
            manifest,
            tasks={k: v for k, v in manifest.tasks.items() if k != name},
            task_files={k: v for k, v in manifest.task_files.items() if k != name},
            files={k: v for k, v in manifest.files.items() if not _under(k, gone)},
            standalone={k: v for k, v in manifest.standalone.items() if k != name},
            parity=parity,
            adapter_drop_eval=drop_eval,
        )
        new.write(root)
        _remove(root, [manifest.tasks[name], *gone, *(str(PurePosixPath(g).parent) for g in shared)])
        with contextlib.suppress(OSError):  # the last lower adapter gone: no empty shared/ left behind
            (root / "shared").rmdir()
    return new


# ------------------------------------------------------------------------------------------------- helpers
def _check_tasks(root: Path, manifest: Manifest, ckpts: Sequence[Any], replace: bool) -> None:
    """Refuse a task that exists (without ``replace``) or cannot use this featurizer (clear typed errors)."""
    fz = manifest.featurizer
    for ckpt in ckpts:
        if ckpt.name in manifest.tasks and not replace:
            raise ConfigError(
                f"task {ckpt.name!r} already exists in {root}; pass --replace, or remove it first "
                f"(adapterdeploy remove-task {root} {ckpt.name})"
            )
        sig = ckpt.signature()
        if sig.stack and not fz.signature.stack:
            raise FingerprintMismatchError(
                f"task {ckpt.name!r} is stacked on the lower adapter {ckpt.stack_on.name!r}, but the featurizer "
                f"of {root} has no lower-adapter slots (none of its tasks was stacked); export the deployment "
                "again with this task among its --task checkpoints"
            )
        sig = dataclasses.replace(sig, stack=fz.signature.stack)  # a plain task runs on a stacked featurizer
        misfit = signature_misfit(sig, fz.signature)  # a task may use a subset of the PEFT modules
        if misfit:
            raise FingerprintMismatchError(
                f"task {ckpt.name!r} cannot use this featurizer: its adapter signature differs ({misfit}); "
                "export it into its own deployment, or re-export this deployment with it"
            )


def _check_and_write(
    root: Path,
    stage: Path,
    manifest: Manifest,
    build: _Build,
    ckpts: Sequence[Any],
    *,
    tolerance: float,
    vocab: int,
    log: Log,
) -> tuple[dict[str, ParityResult], dict[str, dict[str, str]], dict[str, Any]]:
    """Build, parity-check and stage the tasks one parity group at a time; return the parity of every precision,
    the staged standalone graphs and their parity.

    Per group: its checkpoints are read again with their weights, its PyTorch models, references, heads and
    head sessions live only while it is checked and its pieces written into ``stage``; the featurizer sessions
    (one runner per precision, its arena shrunk after each run) are opened once. Every group is checked even after
    an fp32 failure, so the error the caller raises lists every failing task, as one run over all did; nothing
    more is written then (``stage`` is discarded on the error).
    """
    from adapterdeploy.exporter.parity import GraphRunner
    from adapterdeploy.exporter.standalone import export_standalone_graphs

    fz = manifest.featurizer
    results: dict[str, ParityResult] = {}
    runners: dict[str, GraphRunner] = {}
    standalone: dict[str, dict[str, str]] = {}
    st_parity: dict[str, Any] = {}
    failed: set[str] = set()  # precisions onnxruntime could not run (fp16 may lack CPU kernels)
    log(f"building the PyTorch references of {len(ckpts)} task(s) and checking their parity, a group at a time")
    for part in build.groups(ckpts, reload_weights):
        inputs = part.parity_inputs(part.export_heads(stage, fz.opset))
        group: dict[str, ParityResult] = {}
        for precision, variant in fz.variants.items():
            if precision in failed:
                continue
            log(f"checking {precision} parity of task(s) {inputs.tasks}")
            trunk, adapted = root / safe_relpath(variant.trunk), root / safe_relpath(variant.adapted)
            try:
                runner = runners.get(precision) or GraphRunner(trunk, adapted, {}, shrink_arena=True)
                runners[precision] = runner
                group[precision], _ = inputs.run(trunk, adapted, runner)
            except Exception:
                if precision != "fp16":  # everything else must run
                    raise
                failed.add(precision)
                results.pop(precision, None)
        for precision, result in group.items():
            results.setdefault(precision, ParityResult()).merge(result)
        # After an fp32 failure the caller refuses: only keep checking, to name every failing task.
        if not results["fp32"].failures(tolerance):
            if manifest.standalone:
                paths, figures = export_standalone_graphs(
                    stage,
                    part.trunk,
                    part.adapted,
                    part.tasks,
                    source=FolderSource.of_deployment(root, manifest),
                    opset=fz.opset,
                    vocab_size=vocab,
                    precisions=manifest.precisions,
                    tolerance=tolerance,
                    batches=part.batches,
                    refs=part.refs,
                    log=log,
                )
                standalone.update(paths)
                st_parity.update(figures)
            part.write_tasks(stage, fz.fingerprint, group, tolerance)
        del part, inputs  # this group's rows, heads and references go before the next group's are built
    return results, standalone, st_parity


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A hidden directory inside the deployment (same filesystem: its pieces move in by rename); removed after."""
    stage = root / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        stage.mkdir()
    except OSError as exc:
        raise ArtifactError(f"cannot write into {root}: {exc.strerror}; add-task needs a writable deployment") from exc
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _clean_staging(root: Path) -> None:
    """Remove what killed writers left (safe: we hold the lock, so none of it is live)."""
    for p in root.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f".{MANIFEST_FILE}.*.tmp"):
        p.unlink(missing_ok=True)


def _check_sizes(root: Path, manifest: Manifest, rels: Sequence[str]) -> None:
    """Cheap presence + size check of deployment files we read but did not write (no re-hash)."""
    problems = []
    for rel in rels:
        entry = manifest.files.get(rel)
        path = root / safe_relpath(rel)
        if entry is None or not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{rel}: size {path.stat().st_size} bytes, manifest says {entry.size}")
    if problems:
        raise ChecksumError(f"deployment {root} is damaged: {'; '.join(problems)}; re-export it (export --force)")


def _free(root: Path, rel: str, referenced: set[str]) -> str:
    """``rel`` if nothing the manifest names lives there (an unreferenced leftover there is removed), else
    ``rel`` with a ``~<id>`` suffix on its first name part (never a valid task name, so no clash)."""
    path = root / rel
    if rel not in referenced:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return rel
    head, sep, tail = path.name.partition(".")
    return str(PurePosixPath(rel).with_name(f"{head}~{secrets.token_hex(4)}{sep}{tail}"))


def _install(
    root: Path, stage: Path, manifest: Manifest, names: Sequence[str], standalone: dict[str, dict[str, str]]
) -> tuple[Manifest, list[str], list[str]]:
    """Rename the staged pieces into the deployment; return (the new manifest, what was installed, what the
    new manifest no longer references). On failure the pieces already moved are removed again."""
    referenced = {
        *manifest.tasks.values(),
        *manifest.files,
        *(place for n in manifest.standalone for place in _standalone_places(manifest, n)),
    }
    tasks, task_files = dict(manifest.tasks), dict(manifest.task_files)
    files, new_standalone = dict(manifest.files), dict(manifest.standalone)
    installed: list[str] = []
    obsolete: list[str] = []
    (root / "tasks").mkdir(exist_ok=True)
    try:
        for name in names:
            rel = _free(root, f"tasks/{name}", referenced)
            os.rename(stage / "tasks" / name, root / rel)
            installed.append(rel)
            if name in tasks:
                obsolete.append(tasks[name])
            tasks[name], task_files[name] = rel, file_entry(root / rel / TASK_FILE)
        for rel in _staged_shared(stage):
            if rel in files:  # stored already: the same lower adapter, or a clash of two under one name
                _check_same_lower(stage, root, rel, files[rel])
                continue
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(stage / rel, root / rel)
            installed.append(str(PurePosixPath(rel).parent))
            files[rel] = file_entry(root / rel)  # a file we wrote: hashed once
        for name, by_precision in standalone.items():  # a Hugging Face folder per task: standalone/<name>/
            if name in manifest.standalone:
                obsolete += _standalone_places(manifest, name)
            staged = f"standalone/{name}"
            rel = _free(root, staged, referenced)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(stage / staged, root / rel)
            installed.append(rel)
            new_standalone[name] = {precision: rel + path[len(staged) :] for precision, path in by_precision.items()}
            for p in sorted((root / rel).rglob("*")):
                if p.is_file():  # files we wrote: hashed once
                    files[p.relative_to(root).as_posix()] = file_entry(p)
    except BaseException:
        _remove(root, installed)
        raise
    files = {k: v for k, v in files.items() if not _under(k, obsolete)}
    new = dataclasses.replace(manifest, tasks=tasks, task_files=task_files, files=files, standalone=new_standalone)
    return new, installed, obsolete


def _check_same_lower(stage: Path, root: Path, rel: str, stored: FileEntry) -> None:
    if sha256_file(stage / rel) != stored.sha256:
        raise ConfigError(
            f"two different lower adapters are both named {PurePosixPath(rel).parent.name!r} "
            f"({root / rel} holds another one); rename one (its stack_on name)"
        )


def _staged_shared(stage: Path) -> list[str]:
    """Lower adapters (``shared/<name>/adapters.safetensors``) the staged tasks are stacked on."""
    from adapterdeploy.exporter.stack_pieces import SHARED_DIR

    return sorted(p.relative_to(stage).as_posix() for p in (stage / SHARED_DIR).glob("*/*") if p.is_file())


def _unused_shared(root: Path, manifest: Manifest, removed: str) -> list[str]:
    """Shared lower-adapter files that no task but ``removed`` is stacked on (read only when it was stacked)."""
    stack_on = TaskSpec.read(root / safe_relpath(manifest.tasks[removed])).adapter.get("stack_on")
    if not stack_on:
        return []
    for name, rel in manifest.tasks.items():
        if (
            name != removed
            and (TaskSpec.read(root / safe_relpath(rel)).adapter.get("stack_on") or {}).get("file") == stack_on["file"]
        ):
            return []
    return [stack_on["file"]]


def _standalone_places(manifest: Manifest, name: str) -> list[str]:
    """Where a task's standalone graphs live: its folder (``standalone/<name>/``, the folder of its
    ``onnx/model.onnx``), or the flat ``standalone/<name>.onnx`` files of deployments exported before."""
    places: list[str] = []
    for path in manifest.standalone.get(name, {}).values():
        parts = PurePosixPath(path).parts
        place = "/".join(parts[:2]) if len(parts) > 2 else path
        if place not in places:
            places.append(place)
    return places


def _under(rel: str, places: Sequence[str]) -> bool:
    """``rel`` is one of ``places`` or inside one of them."""
    return any(rel == p or rel.startswith(p + "/") for p in places)


def _remove(root: Path, rels: Sequence[str]) -> None:
    for rel in rels:
        path = root / safe_relpath(rel)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
