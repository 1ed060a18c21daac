"""Deployment: open a deployment directory and predict with any mix of its tasks (no torch anywhere).

    with Deployment.open("deploy/") as d:
        d.predict(["great movie"], task="sst2")
        d.predict_mixed([("sst2", "great movie"), ("mrpc", ("a b", "a c"))])
        d.fan_out(["great movie"], tasks=["sst2", "topic"])
        d.embed(["great movie"])                      # the base model's L2-normalised mean embedding

Opening verifies the featurizer files' checksums and starts the two featurizer sessions; tasks load on
first use (checksum of their files, fingerprint check, a small safetensors read: no session is rebuilt)
and are evicted least-recently-used under the optional count / byte budget. Every method is thread-safe.

One bad task never fails another task's rows: when a task's weights cannot be read, or its head or bank
rows fail inside a mixed batch (any exception: a bad head graph, PermissionError, MemoryError), the task
is marked failed (``tasks()`` shows ``state="failed"`` with the reason; it stays so until ``load_task``
reloads it), the other rows are answered (re-run without it when the shared forward failed), and that
task's rows raise TaskFailedError, or hold it in their place with ``errors="return"`` (the server's mode).
A server tokenizes once and passes the rows pre-encoded: :meth:`Deployment.encode` then
:meth:`Deployment.predict_encoded`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from adapterdeploy.artifacts import (
    TASK_FILE,
    TASK_HEAD_FILE,
    TASK_WEIGHTS_FILE,
    Manifest,
    TaskSpec,
    require_files,
    safe_relpath,
)
from adapterdeploy.errors import (
    AdapterDeployError,
    ArtifactError,
    ChecksumError,
    ConfigError,
    FingerprintMismatchError,
    InputError,
    TaskFailedError,
    UnknownTaskError,
)
from adapterdeploy.runtime.bank import BankLayout, TaskRows
from adapterdeploy.runtime.embedding import Embed, Embedding, zero_adapter_is_base
from adapterdeploy.runtime.engine import Engine, LoadedTask
from adapterdeploy.runtime.heads import Head
from adapterdeploy.runtime.options import RuntimeOptions
from adapterdeploy.runtime.prediction import Prediction
from adapterdeploy.runtime.providers import normalize_providers, trt_profile_options
from adapterdeploy.runtime.registry import EvictCallback, TaskInfo, TaskRegistry
from adapterdeploy.runtime.sessions import SessionFactory
from adapterdeploy.runtime.shared_lowers import SharedLowers
from adapterdeploy.runtime.tagging import with_entities
from adapterdeploy.runtime.tokenization import (
    Row,
    TextEncoder,
    TokenRow,
    length_buckets,
    validate_row,
    validate_rows,
)

__all__ = ["Deployment"]

log = logging.getLogger(__name__)

ErrorMode = Literal["raise", "return"]
Result = Prediction | Embedding | TaskFailedError


class Deployment:
    """A deployment directory opened for inference. Create with :meth:`open`."""

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        precision: str,
        encoder: TextEncoder,
        engine: Engine,
        factory: SessionFactory,
        *,
        batch_size: int,
        max_loaded_tasks: int | None,
        memory_budget_bytes: int | None,
        on_evict: EvictCallback | None,
    ) -> None:
        self.root = root
        self._manifest = manifest
        self.precision = precision
        self._encoder = encoder
        self._engine = engine
        self._factory = factory
        self.batch_size = batch_size
        self._closed = False
        self._base: TaskRows | None = None
        self._lowers = SharedLowers()
        self._registry = TaskRegistry(
            self._read_task, max_loaded=max_loaded_tasks, max_bytes=memory_budget_bytes, on_evict=on_evict
        )
        base = str(root).rstrip("/")
        for name, rel in manifest.tasks.items():  # string joins: a Path per task costs seconds at 10,000 tasks
            self._registry.add(name, f"{base}/{rel}")  # rel passed safe_relpath in Manifest.from_dict

    # ---- opening -----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        options: RuntimeOptions | None = None,
        *,
        on_evict: EvictCallback | None = None,
        **changes: Any,
    ) -> Deployment:
        """Open ``path`` for inference.

        Args:
            options: how to run it (precision, providers, threads, spin, batch size, task budget, bank mode,
                thread pool, engine cache): see :class:`~adapterdeploy.runtime.options.RuntimeOptions`.
            on_evict: called as ``on_evict(task, bytes, reason)`` when a task leaves memory.
            changes: single options changed on ``options`` (or the defaults), e.g. ``precision="int8",
                threads=2``; an unknown name is a ConfigError.
        """
        opts = (options or RuntimeOptions()).with_changes(**changes) if changes else (options or RuntimeOptions())
        root = Path(path).expanduser()
        manifest = Manifest.read(root)
        fz = manifest.featurizer
        precision = opts.precision
        variant = fz.variants.get(precision)
        if variant is None:
            raise ConfigError(
                f"precision {precision!r} is not in deployment {root} (it has {', '.join(manifest.precisions)}); "
                f"re-export with --precision {precision}"
            )
        require_files(root, manifest.files, only=_featurizer_files(manifest, precision))
        choices = normalize_providers(list(opts.providers) if opts.providers else None)
        cache = Path(opts.engine_cache_dir) if opts.engine_cache_dir else _engine_cache(root, fz.fingerprint, precision)
        trunk_path, adapted_path = root / safe_relpath(variant.trunk), root / safe_relpath(variant.adapted)
        # At K = 0 the trunk is only the embeddings: measured 1-2% faster at batch 1 without a pool of its own.
        factory = SessionFactory(
            threads=opts.threads,
            shared_pool=opts.shared_thread_pool,
            spin_us=opts.spin_us,
            precision=precision,
            cache_dir=cache,
            single_threaded=frozenset({trunk_path.name} if fz.adapter_drop == 0 else ()),
        )
        if any(c.name == "TensorrtExecutionProvider" for c in choices):
            factory.trt_profiles = _trt_profiles(
                manifest,
                trunk_path,
                adapted_path,
                opts.batch_size,
                opts.max_loaded_tasks or max(64, len(manifest.tasks)),
            )
        trunk, adapted = factory.open_first(choices, [trunk_path, adapted_path])
        layout = BankLayout.from_session_inputs(adapted.get_inputs(), fz.bank_inputs, fz.hidden_size, fz.signature)
        device = "cuda" if factory.choice is not None and factory.choice.is_gpu else None
        engine = Engine(
            trunk, adapted, layout, bank_mode=opts.bank_mode or ("resident" if device else "rows"), device=device
        )
        encoder = TextEncoder.of_deployment(root, manifest)
        log.info("opened %s (%s, %s, %d tasks)", root, precision, factory.choice, len(manifest.tasks))
        return cls(
            root,
            manifest,
            precision,
            encoder,
            engine,
            factory,
            batch_size=opts.batch_size,
            max_loaded_tasks=opts.max_loaded_tasks,
            memory_budget_bytes=opts.memory_budget_bytes,
            on_evict=on_evict,
        )

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the sessions and every loaded task (the object cannot predict afterwards)."""
        if self._closed:
            return
        self._closed = True
        for name in self._registry.names():
            self._registry.unload(name)
        self._engine = None  # type: ignore[assignment]

    # ---- properties --------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def max_length(self) -> int:
        return self._encoder.max_length

    @property
    def task_names(self) -> list[str]:
        """Every known task, sorted (O(known): use :meth:`has_task` / :meth:`known_task_count` per request)."""
        return self._registry.names()

    def has_task(self, name: str) -> bool:
        """Whether ``name`` is a known task (O(1); nothing is loaded)."""
        return name in self._registry

    @property
    def known_task_count(self) -> int:
        return len(self._registry)

    @property
    def loaded_task_count(self) -> int:
        return self._registry.loaded_count()

    def is_loaded(self, name: str) -> bool:
        """Whether the task's weights are in memory now (its next use pays no load)."""
        return self._registry.is_loaded(name)

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider the featurizer runs on."""
        return self._factory.choice.name if self._factory.choice else "CPUExecutionProvider"

    @property
    def bank_mode(self) -> str:
        return self._engine.bank_mode

    # ---- tasks -------------------------------------------------------------------------------
    def load_task(self, name_or_path: str | Path, pin: bool = False, priority: int = 0) -> TaskInfo:
        """Load a known task by name, or register and load a task directory (``tasks/<name>`` of an export).

        A directory whose task name is already known replaces that task's source (its weights reload).
        ``pin`` keeps it loaded whatever the budget; ``priority`` orders evictions (lowest first, then LRU).
        """
        self._check_open()
        name = str(name_or_path)
        if name not in self._registry:
            p = Path(name_or_path).expanduser()
            if not (p / TASK_FILE).is_file():
                known = self._registry.known_summary()
                raise UnknownTaskError(
                    f"unknown task {name!r} (not a task name, nor a directory with {TASK_FILE}); known tasks: {known}"
                )
            spec = TaskSpec.read(p)
            self._check_fingerprint(spec, p)
            self._registry.add(spec.name, p.resolve())
            name = spec.name
        return self._registry.load(name, pin=pin, priority=priority)

    def unload_task(self, name: str) -> None:
        """Free a task's weights (it stays known and reloads on its next use); also unpins it."""
        self._registry.unload(name)

    def prefetch(self, name: str) -> bool:
        """Load a known task ahead of its use (no use counted, pins and priority kept); True if it was read now.

        The server calls it off the forward thread for a request's cold task, so the file read and checksum
        overlap the forward of other requests instead of stalling a batch. Like a use, it raises
        TaskFailedError for a failed task or one whose files fail now (never the loader's own error, and no
        retry of a failed task: that is :meth:`load_task`).
        """
        self._check_open()
        if self._registry.is_loaded(name):
            return False
        self._registry.prefetch(name)
        return True

    def tasks(self, *, offset: int = 0, limit: int | None = None, loaded_only: bool = False) -> list[TaskInfo]:
        """Registry entries sorted by name; ``offset`` / ``limit`` page through a large deployment."""
        return self._registry.infos(offset=offset, limit=limit, loaded_only=loaded_only)

    def failed_tasks(self) -> dict[str, str]:
        """Tasks out of service (state ``failed``) and why; ``load_task(name)`` retries one."""
        return self._registry.failed()

    def task_failure(self, name: str) -> str | None:
        """Why task ``name`` is failed, or None when it is not (cheap: one lookup)."""
        return self._registry.error_of(name)

    def check_tasks(self) -> dict[str, str]:
        """Mark failed every task whose files this process cannot open or whose sizes differ from task.json.

        Cheap per task (an open and a stat per file, no checksum, no weights read) but O(known tasks): the
        server runs :meth:`check_task` task by task on a background thread after it is ready instead
        (``ServingState``), so start-up does not grow with the number of tasks. Returns :meth:`failed_tasks`.
        """
        self._check_open()
        for name in self._registry.names():
            self.check_task(name)
        return self.failed_tasks()

    def check_task(self, name: str) -> str | None:
        """Check one task as :meth:`check_tasks` does; mark it failed and return why, or None when it can load.

        A task already failed, or removed meanwhile, is left as it is (None).
        """
        self._check_open()
        try:
            info = self._registry.info(name)
        except UnknownTaskError:
            return None
        if info.state not in ("known", "loaded", "pinned"):
            return None
        problem = _unreadable(Path(info.source))
        if problem is not None:
            self._registry.mark_failed(name, problem)
        return problem

    def failed_task_count(self) -> int:
        """How many tasks are failed now (O(1): for metrics and readiness)."""
        return self._registry.failed_count()

    def task_info(self, name: str) -> TaskInfo:
        return self._registry.info(name)

    def shared_adapters(self) -> dict[str, int]:
        """Lower adapters of stacked tasks loaded so far (name -> bytes): each is held once, whatever the
        number of tasks stacked on it."""
        return {name: rows.nbytes for name, rows in self._lowers.items()}

    def task_spec(self, name: str) -> TaskSpec:
        """The task's task.json (loads the task)."""
        return self._task(name).spec

    # ---- predictions -------------------------------------------------------------------------
    def bank_feeds(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The adapted graph's bank feeds for ``names`` (row t = names[t]), as a forward pass builds them."""
        return self._engine.layout.gather([self._task(n).rows for n in names])

    def token_counts(self, inputs: Sequence[Row]) -> list[int]:
        """Untruncated token counts of ``inputs`` (special tokens included), without running the model."""
        return self._encoder.count(validate_rows(inputs))

    def predict(
        self, inputs: Sequence[Row], task: str, strict: bool = False, *, spans: bool = False
    ) -> list[Prediction]:
        """One task over ``inputs`` (texts, or (text_a, text_b) pairs for a pair task).

        A tagging task's predictions carry ``tokens`` (one label per word, with character offsets); with
        ``spans=True`` also ``entities`` (its BIO / IOB tags merged into spans, runtime/tagging.py).
        """
        rows = validate_rows(inputs)
        out = self._run([task] * len(rows), rows, strict, [f"inputs[{i}]" for i in range(len(rows))])
        return cast(list[Prediction], _spans(out, rows, spans))  # one task, errors="raise": all Predictions

    def predict_mixed(
        self,
        rows: Sequence[tuple[str | Embed, Row]],
        strict: bool = False,
        *,
        errors: ErrorMode = "raise",
        spans: bool = False,
    ) -> list[Result]:
        """Rows of ``(task, text)`` or ``(task, (text_a, text_b))``: one featurizer pass, results in row order.

        A row whose first item is an :class:`Embed` (instead of a task name) answers an :class:`Embedding`,
        in the same forward as the predictions. ``errors="return"``: a row whose task failed holds its
        TaskFailedError and the other rows are still answered; ``"raise"`` (default) raises it once every
        row has run. Tagging rows run in the same forward; ``spans=True`` adds their ``entities``.
        """
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
            raise InputError(f"rows must be a list of (task, text) pairs, got {type(rows).__name__}")
        names: list[str | Embed] = []
        texts = []
        for i, row in enumerate(rows):
            if not isinstance(row, (tuple, list)) or len(row) != 2 or not isinstance(row[0], (str, Embed)):
                raise InputError(f"rows[{i}] must be (task, text) or (task, (text_a, text_b)), got {row!r:.80}")
            names.append(row[0])
            texts.append(validate_row(row[1], f"rows[{i}]"))
        out = self._run(names, texts, strict, [f"rows[{i}]" for i in range(len(rows))], errors)
        return _spans(out, texts, spans)

    def encode(self, inputs: Sequence[Row]) -> list[TokenRow]:
        """Tokenize ``inputs`` once (untruncated count, truncation flag, ids) for :meth:`predict_encoded`."""
        return self._encoder.tokenize(validate_rows(inputs))

    def predict_encoded(
        self, rows: Sequence[tuple[str | Embed, TokenRow]], *, errors: ErrorMode = "raise", spans: bool = False
    ) -> list[Result]:
        """Like :meth:`predict_mixed` for rows already tokenized by :meth:`encode` (a server tokenizes once).

        Identical encodings share one trunk pass, as identical texts do in ``predict_mixed``.
        """
        names: list[str | Embed] = []
        tokens: list[TokenRow] = []
        source: list[int] = []
        keys: dict[tuple[Any, ...], int] = {}
        for i, row in enumerate(rows):
            if not (
                isinstance(row, (tuple, list))
                and len(row) == 2
                and isinstance(row[0], (str, Embed))
                and isinstance(row[1], TokenRow)
            ):
                raise InputError(f"rows[{i}] must be (task, TokenRow from Deployment.encode), got {row!r:.80}")
            names.append(row[0])
            t = row[1]
            key = (tuple(t.ids), tuple(t.type_ids), t.truncated, t.text)  # text: a tagging row's words
            if key not in keys:
                keys[key] = len(tokens)
                tokens.append(t)
            source.append(keys[key])
        if not names:
            return []
        self._check_embeds(names)
        loaded, failed = self._load_tasks(names)
        for i, n in enumerate(names):
            if isinstance(n, str) and n in loaded and tokens[source[i]].pair != loaded[n].spec.text_pair:
                raise InputError(_pair_message(n, loaded[n].spec.text_pair, f"rows[{i}]", tokens[source[i]].pair))
            t = tokens[source[i]]
            if isinstance(n, str) and n in loaded and loaded[n].spec.head.token_level and t.encoding is None:
                raise InputError(
                    f"rows[{i}]: task {n!r} tags words, which needs the text and offsets a TokenRow from "
                    "Deployment.encode carries; this TokenRow has none"
                )
        out = self._forward(names, tokens, source, loaded, failed, errors)
        return _spans(out, [r[1].text for r in rows], spans)

    def embed(
        self, inputs: Sequence[Row], task: str | None = None, pooling: str = "mean", strict: bool = False
    ) -> np.ndarray:
        """L2-normalised embeddings ``[len(inputs), hidden]`` (float32), one row per input.

        ``task=None`` embeds with the base model (no adapter: for the embedded all-MiniLM-L6-v2 with
        ``pooling="mean"``, sentence-transformers' own embedding); a task name embeds with that task's
        adapted featurizer. ``pooling``: ``mean`` (masked mean of the last layer), ``cls``, or ``pooler``
        (the base's pooler, when it has one). Runs in the same forward path as predictions.
        """
        target = Embed(task, pooling)
        rows = validate_rows(inputs)
        if not rows:
            return np.zeros((0, self._manifest.featurizer.hidden_size), dtype=np.float32)
        out = self._run([target] * len(rows), rows, strict, [f"inputs[{i}]" for i in range(len(rows))])
        return np.stack([e.vector for e in out])  # type: ignore[union-attr]

    def fan_out(
        self, inputs: Sequence[Row], tasks: Sequence[str], strict: bool = False, *, spans: bool = False
    ) -> dict[str, list[Prediction]]:
        """Every input through every task; the trunk runs once per unique text (``spans``: as :meth:`predict`)."""
        if isinstance(tasks, str):
            raise InputError(f"tasks must be a list of task names, got the str {tasks!r}; pass [{tasks!r}]")
        rows = validate_rows(inputs)
        order = list(dict.fromkeys(tasks))
        if not order:
            raise InputError("fan_out needs at least one task")
        names = [t for t in order for _ in rows]
        flat = self._run(
            names, [r for _ in order for r in rows], strict, [f"inputs[{i}]" for _ in order for i in range(len(rows))]
        )
        n = len(rows)
        flat = _spans(flat, [r for _ in order for r in rows], spans)
        return {t: flat[k * n : (k + 1) * n] for k, t in enumerate(order)}  # type: ignore[misc]

    # ---- internals ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise AdapterDeployError(f"deployment {self.root} is closed; open it again with Deployment.open")

    def _task(self, name: str) -> LoadedTask:
        self._check_open()
        if not isinstance(name, str):
            raise InputError(f"a task name is a str, got {type(name).__name__}")
        return self._registry.get(name)

    def _check_embeds(self, names: Sequence[str | Embed]) -> None:
        """Every embedding target's pooling is an output of this featurizer."""
        for e in dict.fromkeys(n for n in names if isinstance(n, Embed)):
            if e.feature not in self._engine.output_names:
                raise InputError(
                    f"pooling {e.pooling!r} needs the featurizer's {e.feature!r} output, which this "
                    f"deployment lacks (outputs: {', '.join(self._engine.output_names)}); use mean or cls"
                )

    def _run(
        self,
        names: Sequence[str | Embed],
        texts: list[Row],
        strict: bool,
        where: list[str],
        errors: ErrorMode = "raise",
    ) -> list[Result]:
        """Rows (names[r], texts[r]): dedupe texts, tokenize once, bucket when large, run each bucket."""
        if not names:
            return []
        self._check_embeds(names)
        loaded, failed = self._load_tasks(names)
        for i, (n, text) in enumerate(zip(names, texts, strict=True)):
            # an embedding takes a text or a pair, whatever the task was trained on
            if isinstance(n, str) and n in loaded and isinstance(text, tuple) != loaded[n].spec.text_pair:
                raise InputError(_pair_message(n, loaded[n].spec.text_pair, where[i], isinstance(text, tuple)))
        unique_index: dict[Row, int] = {}
        source = [unique_index.setdefault(t, len(unique_index)) for t in texts]
        uniques = list(unique_index)
        first_row = {u: r for r, u in reversed(list(enumerate(source)))}
        labels = [where[first_row[u]] for u in range(len(uniques))]
        tokens = self._encoder.tokenize(uniques, strict=strict, labels=labels)
        return self._forward(names, tokens, source, loaded, failed, errors)

    def _load_tasks(self, names: Sequence[str | Embed]) -> tuple[dict[str, LoadedTask], dict[str, TaskFailedError]]:
        """Each distinct task's weights; a failed task is set aside (its rows get the error), not raised."""
        loaded: dict[str, LoadedTask] = {}
        failed: dict[str, TaskFailedError] = {}
        for n in dict.fromkeys(_task_of(n) for n in names):
            if n is None:
                continue
            try:
                loaded[n] = self._task(n)
            except TaskFailedError as exc:
                failed[n] = exc
        return loaded, failed

    def _forward(
        self,
        names: Sequence[str | Embed],
        tokens: list[TokenRow],
        source: list[int],
        loaded: dict[str, LoadedTask],
        failed: dict[str, TaskFailedError],
        errors: ErrorMode,
    ) -> list[Result]:
        """Rows ``r`` = (names[r], tokens[source[r]]) of the loaded tasks, length-bucketed when large."""
        if failed and errors == "raise":
            raise next(iter(failed.values()))
        task_of = [_task_of(n) for n in names]
        base = self._base_rows() if any(t is None for t in task_of) else None
        out: list[Result | None] = [failed.get(t) if t is not None else None for t in task_of]
        rows_of: list[list[int]] = [[] for _ in tokens]
        for r, u in enumerate(source):
            if task_of[r] is None or task_of[r] in loaded:
                rows_of[u].append(r)
        used = [u for u in range(len(tokens)) if rows_of[u]]
        if sum(len(rows_of[u]) for u in used) <= self.batch_size:
            chunks = [used] if used else []
        else:
            buckets = length_buckets(
                [len(tokens[u].ids) for u in used], self.batch_size, [len(rows_of[u]) for u in used]
            )
            chunks = [[used[i] for i in b] for b in buckets]
        if self._engine is None:
            self._check_open()
        for chunk in chunks:
            row_ids = [r for u in chunk for r in rows_of[u]]
            for r, result in zip(
                row_ids, self._run_isolated(row_ids, names, tokens, source, loaded, base), strict=True
            ):
                out[r] = result
        if errors == "raise":
            for p in out:
                if isinstance(p, TaskFailedError):
                    raise p
        return cast(list[Result], out)  # every row was filled: a failed task's rows, or a bucket's result

    def _run_isolated(
        self,
        row_ids: list[int],
        names: Sequence[str | Embed],
        tokens: list[TokenRow],
        source: list[int],
        loaded: dict[str, LoadedTask],
        base: TaskRows | None,
    ) -> list[Result]:
        """One bucket; a failing task is marked failed and only its rows get the error.

        A head failure is one task's by construction (the engine isolates heads). A failure of the shared
        forward (e.g. a task's bank rows of the wrong shape) cannot be attributed: when the bucket mixes
        tasks, each task's rows re-run alone (bank gathered from that task only) and the tasks that still
        fail alone are blamed; when every task fails alone, or the bucket has one task, the error is the
        featurizer's or the batch's and is raised as is. Base-model embedding rows (no task) are never
        blamed: their failure is the featurizer's.
        """
        try:
            preds = self._engine_run(row_ids, names, tokens, source, loaded, base, resident_ok=True)
        except Exception as exc:
            groups: dict[str | None, list[int]] = {}
            for r in row_ids:
                groups.setdefault(_task_of(names[r]), []).append(r)
            if len(groups) == 1:
                raise
            alone: dict[str | None, list[Any] | Exception] = {}
            for n, rows in groups.items():
                try:
                    alone[n] = self._engine_run(rows, names, tokens, source, loaded, base, resident_ok=False)
                except Exception as one:
                    if n is None:
                        raise
                    alone[n] = one
            if all(isinstance(v, Exception) for v in alone.values()):
                raise exc from None
            by_row: dict[int, Any] = {}
            for n, rows in groups.items():
                got = alone[n]
                for i, r in enumerate(rows):
                    by_row[r] = got if isinstance(got, Exception) else got[i]
            preds = [by_row[r] for r in row_ids]
        blamed: dict[str, TaskFailedError] = {}
        out: list[Result] = []
        for r, p in zip(row_ids, preds, strict=True):
            if isinstance(p, Exception):
                n = _task_of(names[r])
                if n is None:
                    raise p
                if n not in blamed:
                    log.error("task %r failed in a batch and is out of service until reloaded", n, exc_info=p)
                    blamed[n] = self._registry.mark_failed(n, f"{type(p).__name__}: {p}"[:500])
                out.append(blamed[n])
            else:
                out.append(p)
        return out

    def _engine_run(
        self,
        row_ids: list[int],
        names: Sequence[str | Embed],
        tokens: list[TokenRow],
        source: list[int],
        loaded: dict[str, LoadedTask],
        base: TaskRows | None,
        *,
        resident_ok: bool,
    ) -> list[Any]:
        used = list(dict.fromkeys(source[r] for r in row_ids))
        local = {u: j for j, u in enumerate(used)}
        padded = self._encoder.pad([tokens[u] for u in used])
        row_source = np.array([local[source[r]] for r in row_ids], dtype=np.int64)
        engine = self._engine
        resident = resident_ok and engine.bank_mode == "resident"
        version, all_loaded = self._registry.loaded_snapshot() if resident else (0, None)
        task_of = [_task_of(names[r]) for r in row_ids]
        row_tasks = [loaded[t] if t is not None else None for t in task_of]
        row_base = base if any(t is None for t in task_of) else None
        embeds = [names[r] if isinstance(names[r], Embed) else None for r in row_ids]
        return engine.run(
            padded,
            row_source,
            row_tasks,
            row_embed=embeds,  # type: ignore[arg-type]
            row_tokens=[tokens[source[r]] for r in row_ids],
            base=row_base,
            version=version,
            loaded=all_loaded,
        )

    def _base_rows(self) -> TaskRows:
        """The all-zero bank rows that run the plain encoder (built once); refused where zero is not the base."""
        if self._base is None:
            self._check_open()
            signature = self._manifest.featurizer.signature
            if not zero_adapter_is_base(signature):
                raise ConfigError(
                    f"embeddings with task=None need a featurizer where a zero adapter is the base model; this "
                    f"one's adapter signature ({signature.placement}, per_task_layernorm="
                    f"{signature.per_task_layernorm}, {signature.site}) is not; pass task=NAME to embed with a "
                    "task's featurizer, or export the tasks without per-task LayerNorms"
                )
            self._base = self._engine.layout.zero_rows("<base>")
        return self._base

    def _check_fingerprint(self, spec: TaskSpec, where: Path) -> None:
        want = self._manifest.featurizer.fingerprint
        if spec.featurizer_fingerprint != want:
            raise FingerprintMismatchError(
                f"task {spec.name!r} ({where}) was exported for featurizer {spec.featurizer_fingerprint[:12]}…, "
                f"this deployment's featurizer is {want[:12]}… (another base model, AdapterDrop or adapter "
                f"signature); add it with 'adapterdeploy add-task {self.root} CHECKPOINT' to re-export it here"
            )

    def _read_task(self, name: str, source: Path) -> tuple[LoadedTask, int]:
        """The registry's loader: task.json (checked against the manifest), fingerprint, checksums, tensors."""
        rel = self._manifest.tasks.get(name)
        if rel is not None and source == self.root / safe_relpath(rel):
            entry = self._manifest.task_files.get(name)
            if entry is None:
                raise ChecksumError(
                    f"{self.root / 'deployment.json'} has no checksum for task {name!r}'s {TASK_FILE}; "
                    "the manifest is inconsistent: re-export the deployment"
                )
            require_files(source, {TASK_FILE: entry})
        spec = TaskSpec.read(source)
        if spec.name != name:
            raise ArtifactError(
                f"{source / TASK_FILE} names task {spec.name!r}, the manifest calls it {name!r}; "
                "the deployment is inconsistent: re-export it"
            )
        self._check_fingerprint(spec, source)
        if TASK_WEIGHTS_FILE not in spec.files:
            raise ArtifactError(f"{source / TASK_FILE} lists no {TASK_WEIGHTS_FILE}; re-export the task")
        require_files(source, spec.files)
        try:
            tensors = load_file(str(source / TASK_WEIGHTS_FILE))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ChecksumError(f"cannot read {source / TASK_WEIGHTS_FILE}: {exc}; re-export the task") from exc
        fz = self._manifest.featurizer
        stack_on = spec.adapter.get("stack_on")
        lower = self._lowers.get(self.root, stack_on, self._engine.layout) if stack_on else None
        rows = self._engine.layout.task_rows(name, tensors, spec.bottleneck, lower)
        head_file = source / TASK_HEAD_FILE
        factory: Callable[[], Any] | None = (lambda: self._factory.session(head_file)) if head_file.is_file() else None
        head = Head.from_tensors(name, spec.head, tensors, fz.hidden_size, session_factory=factory)
        if head.feature not in self._engine.output_names and spec.head.token_level:
            raise ArtifactError(
                f"task {name!r} is a tagging task, but this deployment's featurizer has no per-token "
                f"{head.feature!r} output (outputs: {', '.join(self._engine.output_names)}: it was exported "
                "before tagging existed); re-export the deployment with this task among its --task checkpoints"
            )
        if head.feature not in self._engine.output_names:
            raise ArtifactError(
                f"task {name!r} pools with {spec.head.pooling!r}, but the featurizer has no "
                f"{head.feature!r} output (outputs: {', '.join(self._engine.output_names)})"
            )
        task = LoadedTask(spec=spec, rows=rows, head=head)
        return task, task.nbytes


def _spans(results: list[Any], texts: Sequence[Any], spans: bool) -> list[Any]:
    """Tagging predictions with their merged entities when ``spans`` (others unchanged)."""
    if not spans:
        return results
    return [with_entities(p, t) for p, t in zip(results, texts, strict=True)]


def _task_of(name: str | Embed) -> str | None:
    """The task a row runs under (an embedding row's task; None: the base model)."""
    return name.task if isinstance(name, Embed) else name


def _pair_message(task: str, wants_pair: bool, where: str, is_pair: bool) -> str:
    want = "text pairs (text_a, text_b)" if wants_pair else "single texts"
    return f"task {task!r} takes {want}; {where} is {'a pair' if is_pair else 'a single text'}"


def _unreadable(source: Path) -> str | None:
    """Why this process cannot read the task directory ``source`` (None: every listed file opens, sizes match)."""
    try:
        spec = TaskSpec.read(source)
    except (AdapterDeployError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    for rel, entry in spec.files.items():
        path = source / safe_relpath(rel)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror or exc}"
        if size != entry.size:
            return f"{path} has {size} bytes, {TASK_FILE} says {entry.size} (truncated or replaced); re-export it"
    return None


def _featurizer_files(manifest: Manifest, precision: str) -> list[str]:
    """Manifest files to verify at open: all but task pieces, standalone graphs and other precisions' graphs."""
    ours = {manifest.featurizer.variants[precision].trunk, manifest.featurizer.variants[precision].adapted}
    others = {p for v in manifest.featurizer.variants.values() for p in (v.trunk, v.adapted)} - ours
    task_dirs = {rel.rstrip("/") for rel in manifest.tasks.values()}

    def in_task_dir(rel: str) -> bool:  # a set lookup per parent folder: O(files), not O(files x tasks)
        parts = rel.split("/")
        return any("/".join(parts[:i]) in task_dirs for i in range(1, len(parts)))

    return [
        rel
        for rel in manifest.files
        if not rel.startswith("standalone/")
        and not in_task_dir(rel)
        and not any(rel == o or rel.startswith(o + ".") for o in others)  # graph + its external data
    ]


def _engine_cache(root: Path, fingerprint: str, precision: str) -> Path:
    """TensorRT engines live beside the graphs they come from; a read-only deployment uses the user's cache."""
    if os.access(root, os.W_OK):
        return root / "engine_cache" / precision
    return Path.home() / ".cache" / "adapterdeploy" / "engine_cache" / fingerprint[:16] / precision


def _trt_profiles(
    manifest: Manifest, trunk: Path, adapted: Path, batch_size: int, max_tasks: int
) -> dict[str, dict[str, str]]:
    """TensorRT shape profiles: rows 1..batch_size, sequence 1..max_length, bank 1..max_tasks, bottleneck 1..256."""
    H, S, B = manifest.featurizer.hidden_size, manifest.tokenizer.max_length, batch_size
    opt_s = min(S, 128)
    tok = {n: ((1, 1), (B, opt_s), (B, S)) for n in ("input_ids", "attention_mask", "token_type_ids")}
    tasks, m = max_tasks, 256
    adapted_shapes: dict[str, Any] = {
        "hidden": ((1, 1, H), (B, opt_s, H), (B, S, H)),
        "attention_mask": ((1, 1), (B, opt_s), (B, S)),
        "row_source": ((1,), (B,), (B,)),
        "task_index": ((1,), (B,), (B,)),
    }
    for name in manifest.featurizer.bank_inputs:
        role = name.rsplit(".", 1)[1]
        lo, opt, hi = {
            "down_w": ((H, 1), (H, 32), (H, m)),
            "down_b": ((1,), (32,), (m,)),
            "up_w": ((1, H), (32, H), (m, H)),
        }.get(role, ((H,), (H,), (H,)))
        adapted_shapes[name] = ((1, *lo), (min(4, tasks), *opt), (tasks, *hi))
    return {trunk.name: trt_profile_options(tok), adapted.name: trt_profile_options(adapted_shapes)}
