"""The forward pass of a mixed-task batch: trunk once per unique text, adapted once per batch, heads per task.

Semantics (U unique texts, B rows, row r = (task t_r, text u_r)):
    hidden[U, S, H]  = trunk(input_ids, attention_mask, token_type_ids)
    feats[B, H]      = adapted(hidden, attention_mask, row_source = u, task_index = slot(t), bank)
    logits[r]        = head_{t_r}(feats[feature of t_r][r])       (one numpy pass per task group)
    tokens[r, s]     = head_{t_r}(feats["tokens"][r, s])          (tagging tasks: every token, then words,
                       runtime/tagging.py; "tokens" is requested only when the batch holds a tagging task)
    embedding[r]     = feats[pooling][r] / ||feats[pooling][r]||    (rows that ask for an embedding;
                       t_r = None is the all-zero "base" bank row: the plain encoder)

The bank holds either only this batch's tasks (``rows`` mode: ``slot`` counts within the batch) or every
loaded task (``resident`` mode: a snapshot rebuilt when the loaded set changes; on a GPU its tensors stay on
the device, so a call copies token ids and indices, never weights). A snapshot and a task's rows are never
mutated after they are built, so an in-flight batch is unaffected by concurrent loads and evictions.

Heads run per task group, each isolated: when one task's head raises (a bad head graph, MemoryError, ...)
its rows get that exception in place of a Prediction and every other group is still answered; the caller
(``Deployment``) marks the task failed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapterdeploy.artifacts import TaskSpec
from adapterdeploy.config import CLS_ONLY_FEATURES, CLS_ONLY_INPUT, TOKENS_OUTPUT
from adapterdeploy.runtime.bank import BankLayout, TaskRows
from adapterdeploy.runtime.embedding import Embed, Embedding, l2_normalize
from adapterdeploy.runtime.heads import Head, predictions_from_logits
from adapterdeploy.runtime.prediction import Prediction
from adapterdeploy.runtime.sessions import optional_inputs
from adapterdeploy.runtime.tagging import tagging_prediction
from adapterdeploy.runtime.tokenization import Padded, TokenRow

__all__ = ["GATHER_CACHE_BYTES", "Engine", "LoadedTask"]

# The few most recent multi-task bank gathers (rows mode), so that a client fanning one text out to the same
# tasks call after call does not concatenate their rows every time (8 MiniLM tasks: ~0.15 ms per call, ~7% of
# a fan-out's Python side). Bounded in bytes; an entry is used only while it holds the very same rows objects.
GATHER_CACHE_BYTES = 16 << 20


@dataclass(frozen=True)
class LoadedTask:
    """What the registry holds for a loaded task (immutable: safe to share across threads)."""

    spec: TaskSpec
    rows: TaskRows
    head: Head

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.head.nbytes


@dataclass(frozen=True)
class _Snapshot:
    version: int
    slots: dict[str, int]
    feeds: dict[str, Any]  # numpy arrays, or OrtValues on the device


class Engine:
    """Runs padded batches through the trunk and adapted sessions and the task heads."""

    def __init__(
        self, trunk: Any, adapted: Any, layout: BankLayout, *, bank_mode: str = "rows", device: str | None = None
    ) -> None:
        self.trunk = trunk
        self.adapted = adapted
        self.layout = layout
        self.bank_mode = bank_mode
        self.device = device  # "cuda" when inputs should be bound on the GPU (I/O binding)
        self.trunk_inputs = {i.name for i in trunk.get_inputs()}
        self.trunk_output = trunk.get_outputs()[0].name
        self.output_names = [o.name for o in adapted.get_outputs()]
        # Adapted graphs exported since the cls_only input (an optional input: an overridable initializer) can
        # compute their last layer at the first token only; older deployments have no such input and run whole.
        self.cls_only = CLS_ONLY_INPUT in optional_inputs(adapted)
        self._snapshot: _Snapshot | None = None
        self._snap_lock = threading.Lock()
        self._gathered: OrderedDict[tuple[int, ...], tuple[tuple[TaskRows, ...], dict[str, np.ndarray], int]]
        self._gathered = OrderedDict()
        self._gathered_bytes = 0

    # ---- bank feeds --------------------------------------------------------------------------
    def snapshot(self, version: int, loaded: Sequence[LoadedTask]) -> _Snapshot:
        """The resident bank for registry ``version`` (rebuilt once per change of the loaded set)."""
        snap = self._snapshot
        if snap is not None and snap.version == version:
            return snap
        with self._snap_lock:
            snap = self._snapshot
            if snap is not None and snap.version == version:
                return snap
            feeds: dict[str, Any] = dict(self.layout.gather([t.rows for t in loaded])) if loaded else {}
            if self.device and feeds:
                import onnxruntime as ort

                feeds = {
                    k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), self.device, 0)
                    for k, v in feeds.items()
                }
            snap = _Snapshot(version, {t.name: i for i, t in enumerate(loaded)}, feeds)
            self._snapshot = snap
            return snap

    def _bank(
        self, tasks: list[LoadedTask], version: int, loaded: Sequence[LoadedTask] | None, base: TaskRows | None = None
    ) -> tuple[dict[str | None, int], dict[str, Any]]:
        """Slots (task name, or None for the base rows) and bank feeds for this batch."""
        if self.bank_mode == "resident" and loaded is not None and base is None:
            snap = self.snapshot(version, loaded)
            if all(t.name in snap.slots for t in tasks):
                return snap.slots, snap.feeds  # type: ignore[return-value]  # str keys only
        rows = [t.rows for t in tasks] + ([base] if base is not None else [])
        slots: dict[str | None, int] = {t.name: i for i, t in enumerate(tasks)}
        if base is not None:
            slots[None] = len(tasks)
        return slots, self._gather(rows)

    def _gather(self, rows: list[TaskRows]) -> dict[str, np.ndarray]:
        """``layout.gather(rows)``, from the small cache of recent multi-task gathers when it has these rows."""
        if len(rows) == 1:
            return self.layout.gather(rows)  # the task's own arrays: no copy to save
        key = tuple(map(id, rows))
        with self._snap_lock:
            hit = self._gathered.get(key)
            if hit is not None and all(a is b for a, b in zip(hit[0], rows, strict=True)):
                self._gathered.move_to_end(key)
                return hit[1]
        feeds = self.layout.gather(rows)
        size = sum(a.nbytes for a in feeds.values())
        if size <= GATHER_CACHE_BYTES // 4:
            with self._snap_lock:
                old = self._gathered.pop(key, None)
                self._gathered_bytes += size - (old[2] if old is not None else 0)
                self._gathered[key] = (tuple(rows), feeds, size)
                while self._gathered_bytes > GATHER_CACHE_BYTES:
                    self._gathered_bytes -= self._gathered.popitem(last=False)[1][2]
        return feeds

    # ---- forward -----------------------------------------------------------------------------
    def run(
        self,
        padded: Padded,
        row_source: np.ndarray,
        row_tasks: Sequence[LoadedTask | None],
        *,
        row_embed: Sequence[Embed | None] | None = None,
        row_tokens: Sequence[TokenRow] | None = None,
        base: TaskRows | None = None,
        version: int = 0,
        loaded: Sequence[LoadedTask] | None = None,
    ) -> list[Prediction | Embedding | Exception]:
        """Results for rows ``r`` = (``row_tasks[r]``, unique text ``row_source[r]`` of ``padded``).

        ``row_embed[r]`` None: the task's head prediction; an :class:`Embed`: the row's L2-normalised pooled
        features instead. ``row_tasks[r]`` None (embedding rows only) runs the ``base`` rows (all zero).
        A row whose task's head raised holds that exception instead (the other tasks' rows are unaffected).
        Rows of a tagging task need ``row_tokens[r]`` (its text and encoding, for words and offsets); only
        batches holding one request the adapted graph's ``tokens`` output.
        """
        embeds = list(row_embed) if row_embed is not None else [None] * len(row_tasks)
        tasks = list({t.name: t for t in row_tasks if t is not None}.values())
        slots, bank = self._bank(tasks, version, loaded, base if any(t is None for t in row_tasks) else None)
        task_index = np.array([slots[t.name if t is not None else None] for t in row_tasks], dtype=np.int64)
        row_source = np.ascontiguousarray(row_source, dtype=np.int64)
        trunk_feeds = {
            k: v
            for k, v in (
                ("input_ids", padded.input_ids),
                ("attention_mask", padded.attention_mask),
                ("token_type_ids", padded.token_type_ids),
            )
            if k in self.trunk_inputs
        }
        small: dict[str, np.ndarray] = {
            "attention_mask": padded.attention_mask,
            "row_source": row_source,
            "task_index": task_index,
        }
        # Only the pooled features this batch's heads and embeddings read are copied out. (onnxruntime still
        # runs every node of the graph: measured with 1.32, the same nodes per run whichever outputs are
        # fetched; RunOptions.only_execute_path_to_fetches works in training builds only.)
        head_row = np.array([e is None for e in embeds], dtype=bool)
        wanted = {t.head.feature for t, e in zip(row_tasks, embeds, strict=True) if e is None and t is not None}
        wanted |= {e.feature for e in embeds if e is not None}
        names = [n for n in self.output_names if n in wanted]
        # The last layer at token 0 only, unless a row reads mean or tokens. Not on the I/O-binding path:
        # onnxruntime 1.32's IOBinding cannot bind an input that has an initializer ("Failed to find NodeArg"),
        # so that path runs the graph's default (the full last layer).
        if self.cls_only and not self.device:
            small[CLS_ONLY_INPUT] = np.array(wanted <= CLS_ONLY_FEATURES)
        if self.device:
            outs = self._run_bound(trunk_feeds, small, bank, names)
        else:
            hidden = self.trunk.run([self.trunk_output], trunk_feeds)[0]
            outs = self.adapted.run(names, {"hidden": hidden, **small, **bank})
        features = dict(zip(names, outs, strict=True))
        truncated = padded.truncated[row_source]
        results: list[Prediction | Embedding | Exception | None] = [None] * len(row_tasks)
        for task in tasks:
            idx = np.flatnonzero((task_index == slots[task.name]) & head_row)
            if idx.size == 0:
                continue
            group: Sequence[Prediction | Exception]
            try:
                if task.spec.head.token_level:
                    group = self._tagging(task, features[TOKENS_OUTPUT][idx], idx, row_tokens, truncated)
                else:
                    logits = task.head.logits(features[task.head.feature][idx])
                    group = predictions_from_logits(task.name, task.spec.head, logits, truncated[idx])
            except Exception as exc:  # one task's head must not fail the other tasks' rows
                group = [exc] * len(idx)
            for i, p in zip(idx, group, strict=True):
                results[i] = p
        for target in dict.fromkeys(e for e in embeds if e is not None):
            idx = np.flatnonzero([e == target for e in embeds])
            vectors = l2_normalize(features[target.feature][idx])
            for i, v in zip(idx, vectors, strict=True):
                results[i] = Embedding(task=target.task, pooling=target.pooling, vector=v, truncated=bool(truncated[i]))
        return results  # type: ignore[return-value]

    @staticmethod
    def _tagging(
        task: LoadedTask,
        tokens: np.ndarray,
        idx: np.ndarray,
        row_tokens: Sequence[TokenRow] | None,
        truncated: np.ndarray,
    ) -> list[Prediction]:
        """A tagging task's rows: the head on every token ``[n, S, H] -> [n, S, labels]``, then words."""
        assert row_tokens is not None, "tagging rows need their TokenRows (Deployment passes them)"
        n, S, H = tokens.shape
        logits = task.head.logits(tokens.reshape(n * S, H)).reshape(n, S, -1)
        return [
            tagging_prediction(
                task.name,
                task.spec.head,
                logits[j],
                row_tokens[i].encoding,
                row_tokens[i].text or "",
                bool(truncated[i]),
            )
            for j, i in enumerate(idx)
        ]

    def _run_bound(
        self, trunk_feeds: dict[str, np.ndarray], small: dict[str, np.ndarray], bank: dict[str, Any], names: list[str]
    ) -> list[np.ndarray]:
        """GPU path: hidden stays on the device between the graphs; resident bank tensors are device OrtValues."""
        import onnxruntime as ort

        tb = self.trunk.io_binding()
        for k, v in trunk_feeds.items():
            tb.bind_cpu_input(k, v)
        tb.bind_output(self.trunk_output, self.device)
        self.trunk.run_with_iobinding(tb)
        hidden = tb.get_outputs()[0]
        ab = self.adapted.io_binding()
        ab.bind_ortvalue_input("hidden", hidden)
        for k, v in small.items():
            ab.bind_cpu_input(k, v)
        for k, v in bank.items():
            if isinstance(v, ort.OrtValue):
                ab.bind_ortvalue_input(k, v)
            else:
                ab.bind_cpu_input(k, np.ascontiguousarray(v))
        for name in names:
            ab.bind_output(name, "cpu")
        self.adapted.run_with_iobinding(ab)
        return ab.copy_outputs_to_cpu()
