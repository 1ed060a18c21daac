"""Parity: the ONNX graphs (plain onnxruntime sessions) against the PyTorch model of every task.

What is compared, per task and per output, on every parity batch:
- features: each adapted output (cls, mean, pooled, tokens) of each row vs the PyTorch encoder of the row's task;
- logits: ``head.onnx`` on the task's pooled feature (a tagging head: on every real token's hidden state)
  vs ``EncoderWithAdapters.forward``;
- standalone graphs: their logits vs the same reference;
- with the adapted graph's optional ``cls_only`` input set (when it has one), the features it keeps exact
  (``cls``, ``pooled``) and the logits of the heads that read them, under the keys ``... (cls_only)``.
The batches mix tasks in one forward (groups of ``PARITY_GROUP`` tasks), hold padded rows, an unpadded row
at max length, single texts and pairs, and fan out every text to every task of the group (row_source), plus
an unpadded batch of one short text fanned out to the group's tasks. fp32 refuses beyond the tolerance
(ParityError listing every failing output); int8 / fp16 record max abs diff and argmax agreement instead.

Memory is bounded by the group, not by the number of tasks N (issue 16): each batch is given only its own
tasks' bank rows (:func:`batch_bank`), head sessions live while their group's batches run
(:meth:`GraphRunner.keep_heads`), and the PyTorch references are computed one group of task models at a time
by the caller (``torch_reference`` takes the models of the tasks it should cover). add-task goes further and
checks one group at a time on runners it keeps open (``GraphRunner(shrink_arena=True)``, :meth:`GraphRunner.use_heads`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapterdeploy.config import CLS_ONLY_FEATURES, CLS_ONLY_INPUT, TOKENS_OUTPUT
from adapterdeploy.errors import ParityError
from adapterdeploy.models.encoder import EncoderWithAdapters, mean_pool
from adapterdeploy.runtime.bank import SCALE_SUFFIX, quantize_columns
from adapterdeploy.runtime.sessions import optional_inputs

__all__ = [
    "PARITY_GROUP",
    "GraphRunner",
    "ParityBatch",
    "ParityResult",
    "batch_bank",
    "compare_standalone",
    "encode_items",
    "parity_batches",
    "raise_on_failures",
    "run_parity",
    "task_groups",
    "timing_batches",
    "torch_reference",
]

Item = str | tuple[str, str]
_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


@dataclass(frozen=True)
class ParityBatch:
    """Unique texts ``[U, S]`` and the rows ``(row_source, task_index)`` that read them."""

    name: str
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    row_source: np.ndarray
    task_index: np.ndarray


def encode_items(tokenizer: Any, items: Sequence[Item], max_length: int) -> tuple[np.ndarray, ...]:
    """Tokenize singles and pairs one by one (truncated to max_length), pad to the longest: int64 arrays."""
    encs = []
    for item in items:
        a, b = (item, None) if isinstance(item, str) else item
        encs.append(tokenizer(a, b, truncation=True, max_length=max_length, return_token_type_ids=True))
    S = max(len(e["input_ids"]) for e in encs)
    pad = tokenizer.pad_token_id or 0
    ids = np.full((len(encs), S), pad, dtype=np.int64)
    mask = np.zeros((len(encs), S), dtype=np.int64)
    tt = np.zeros((len(encs), S), dtype=np.int64)
    for i, e in enumerate(encs):
        n = len(e["input_ids"])
        ids[i, :n], mask[i, :n] = e["input_ids"], 1
        tt[i, :n] = e.get("token_type_ids") or [0] * n
    return ids, mask, tt


PARITY_GROUP = 8  # tasks per parity batch: bounds the rows of one onnxruntime call (and the models alive)


def task_groups(num_tasks: int, group: int | None = None) -> list[range]:
    """Task indices in consecutive groups of ``group`` (default ``PARITY_GROUP``, read at call time): the unit
    in which references and parity stream."""
    size = group or PARITY_GROUP
    return [range(g, min(g + size, num_tasks)) for g in range(0, num_tasks, size)]


def parity_batches(tokenizer: Any, num_tasks: int, max_length: int, group: int | None = None) -> list[ParityBatch]:
    """Per group of ``group`` tasks: a mixed batch (max-length row, padded rows, singles, pairs, every text of
    the group fanned out to every task of the group) and an unpadded batch of one short text fanned out to
    the group's tasks, in that order (a group's batches are adjacent, so its head sessions live once).

    One batch holds at most ``6 * group`` rows whatever N is (at N = 64 one batch of all 384 rows padded to
    max_length was most of the export's memory, and it grew with N); every task still sees every text.
    """
    long_text = " ".join(["the movie was a great story and the actor was very good"] * max_length)
    items: list[Item] = [
        long_text,
        "the movie was good",
        ("it is great", "the story was terrible"),
        "a very bad film and a boring plot , i hate it",
        ("the company said its shares were up two percent", "shares of the company rose"),
        "yes",
    ]
    ids, mask, tt = encode_items(tokenizer, items, max_length)
    ids1, mask1, tt1 = encode_items(tokenizer, ["a good film"], max_length)
    groups = task_groups(max(num_tasks, 1), group)
    batches = []
    for tasks in groups:
        g = tasks.start
        tag = "" if len(groups) == 1 else f"[{g}:{tasks.stop}]"
        pairs = [(u, t) for t in tasks for u in range(len(items))]
        order = np.random.default_rng(g).permutation(len(pairs))  # interleave tasks and texts
        rs = np.array([pairs[i][0] for i in order], dtype=np.int64)
        ti = np.array([pairs[i][1] for i in order], dtype=np.int64)
        batches.append(ParityBatch(f"mixed{tag}", ids, mask, tt, rs, ti))
        fan_ti = np.arange(tasks.start, min(tasks.stop, num_tasks), dtype=np.int64)
        batches.append(
            ParityBatch(f"fan_out_unpadded{tag}", ids1, mask1, tt1, np.zeros(len(fan_ti), dtype=np.int64), fan_ti)
        )
    return batches


def batch_bank(
    rows: Sequence[Mapping[str, torch.Tensor]], keys: Sequence[str], batch: ParityBatch
) -> tuple[ParityBatch, list[np.ndarray]]:
    """The batch with ``task_index`` renumbered over its own tasks, and the bank of only those tasks.

    What the runtime does too (only the batch's rows reach onnxruntime): the bank of one batch is at most
    a group's rows, never all N tasks'. Zero-padding to the batch's largest bottleneck / rank is exact.
    """
    from adapterdeploy.exporter.featurizer import stack_bank

    present = np.unique(batch.task_index)
    local = np.searchsorted(present, batch.task_index).astype(np.int64)
    bank = [b.numpy() for b in stack_bank([rows[int(t)] for t in present], keys)]
    return dataclasses.replace(batch, task_index=local), bank


@dataclass
class _Reference:
    features: dict[str, np.ndarray]  # output name -> [U, H] ([U, S, H] for tokens)
    logits: np.ndarray  # [U, out] ([U, S, out] for a tagging head)


def torch_reference(models: Mapping[int, EncoderWithAdapters], batch: ParityBatch) -> dict[int, _Reference]:
    """PyTorch features and logits on every unique text of the batch, for each task ``t`` of ``models`` with rows
    in it (``{t: reference}``); tasks of other groups are the caller's next call."""
    ids, mask, tt = (torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids))
    present = set(batch.task_index.tolist())
    refs: dict[int, _Reference] = {}
    with torch.no_grad():
        for t, model in models.items():
            if t not in present:
                continue
            h = model.encode(ids, mask, tt)
            pooler = getattr(model.base, "pooler", None) if model.base_info.has_pooler else None
            feats = {"cls": h[:, 0], "mean": mean_pool(h, mask)}
            if pooler is not None:
                feats["pooled"] = pooler(h)
            if model.head_config.feature == TOKENS_OUTPUT:  # [U, S, H]: kept only for the tasks that read it
                feats[TOKENS_OUTPUT] = h
            logits = model.head(h, mask, pooler)  # [U, out], or [U, S, out] for a tagging head
            refs[t] = _Reference({k: v.float().numpy() for k, v in feats.items()}, logits.float().numpy())
    return refs


def _session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feed(session: Any, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs cast to the dtypes the graph declares (fp16 banks, int64 indices)."""
    return {i.name: np.ascontiguousarray(values[i.name], dtype=_NP.get(i.type, None)) for i in session.get_inputs()}


class GraphRunner:
    """trunk -> adapted (with a bank) -> head.onnx per task, on plain onnxruntime CPU sessions.

    Head sessions open on first use and close when :meth:`keep_heads` no longer names them, so at most a
    group's heads are open at once (one session per task of N was memory that grew with N).
    """

    def __init__(
        self,
        trunk: str | Path,
        adapted: str | Path,
        heads: Mapping[str, str | Path],
        threads: int | None = None,
        *,
        factory: Any = None,
        shrink_arena: bool = False,
    ) -> None:
        """``factory``: a runtime ``SessionFactory`` to open the two graphs exactly as ``Deployment.open``
        does (thread count, spin); default: plain sessions with ``threads`` intra-op threads.

        ``shrink_arena``: every run hands the activations in onnxruntime's CPU arena back when it ends
        (``memory.enable_memory_arena_shrinkage``), so sessions kept open across add-task's groups hold their
        weights only, not the activations of their largest batch (measured: docs/performance.md, section 10;
        a session with no arena at all peaked higher still).
        """
        import onnxruntime as ort

        if factory is not None:
            self.trunk, self.adapted = factory.session(Path(trunk)), factory.session(Path(adapted))
        else:
            self.trunk, self.adapted = _session(trunk, threads), _session(adapted, threads)
        self.threads = threads
        self.run_options = ort.RunOptions()
        if shrink_arena:
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.head_paths = dict(heads)
        self.heads: dict[str, Any] = {}
        # Whether the adapted graph has the optional ``cls_only`` input (the last layer at token 0 only).
        self.cls_only = CLS_ONLY_INPUT in optional_inputs(self.adapted)
        self._int8 = {i.name for i in self.adapted.get_inputs() if i.type == "tensor(int8)"}
        # The bank keys in graph order; an int8 variant's <key>_scale inputs are derived from their key's rows.
        self.bank_names = [
            n
            for n in [i.name for i in self.adapted.get_inputs()][4:]
            if not (n.endswith(SCALE_SUFFIX) and n.removesuffix(SCALE_SUFFIX) in self._int8)
        ]

    def bank_feeds(self, bank: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``bank_names``' fp32 arrays as the graph's feeds: int8 inputs quantized as the runtime does it at load."""
        if isinstance(bank, Mapping):
            return dict(bank)
        feeds = {}
        for name, arr in zip(self.bank_names, bank, strict=True):
            if name in self._int8:
                feeds[name], feeds[name + SCALE_SUFFIX] = quantize_columns(arr)
            else:
                feeds[name] = arr
        return feeds

    def features(
        self, batch: ParityBatch, bank: Sequence[np.ndarray] | Mapping[str, np.ndarray], cls_only: bool = False
    ) -> dict[str, np.ndarray]:
        """Pooled features of ``batch``; ``bank``: fp32 arrays in ``bank_names`` order, or :meth:`bank_feeds`.
        ``cls_only``: feed the adapted graph's optional input of that name True (the last layer at token 0)."""
        return self.adapted_features(batch, self.hidden(batch), self.bank_feeds(bank), cls_only)

    def hidden(self, batch: ParityBatch) -> np.ndarray:
        """The trunk's output for ``batch`` (what the adapted graph reads)."""
        text = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "token_type_ids": batch.token_type_ids,
        }
        (hidden,) = self.trunk.run(None, _feed(self.trunk, text), self.run_options)
        return hidden

    def adapted_features(
        self, batch: ParityBatch, hidden: np.ndarray, feeds: Mapping[str, np.ndarray], cls_only: bool = False
    ) -> dict[str, np.ndarray]:
        """The adapted graph on the trunk's ``hidden`` with the bank ``feeds`` (:meth:`bank_feeds`), so that a
        second pass (``cls_only``) reuses the trunk's output and the quantized rows."""
        values = {
            "hidden": hidden,
            "attention_mask": batch.attention_mask,
            "row_source": batch.row_source,
            "task_index": batch.task_index,
            **feeds,
        }
        feed = _feed(self.adapted, values)
        if cls_only:
            feed[CLS_ONLY_INPUT] = np.array(True)
        outs = self.adapted.run(None, feed, self.run_options)
        return {o.name: v.astype(np.float32) for o, v in zip(self.adapted.get_outputs(), outs, strict=True)}

    def use_heads(self, heads: Mapping[str, str | Path]) -> None:
        """Check another set of task heads with the same trunk and adapted sessions (add-task: the next group)."""
        self.keep_heads([])
        self.head_paths = dict(heads)

    def keep_heads(self, tasks: Sequence[str]) -> None:
        """Close the head sessions of tasks not in ``tasks``."""
        keep = set(tasks)
        for name in [n for n in self.heads if n not in keep]:
            del self.heads[name]

    def head(self, task: str, features: np.ndarray) -> np.ndarray:
        session = self.heads.get(task)
        if session is None:
            session = self.heads[task] = _session(self.head_paths[task], self.threads)
        return session.run(None, _feed(session, {"features": features}), self.run_options)[0].astype(np.float32)


@dataclass
class ParityResult:
    """Max abs differences per task and output over every batch, argmax agreement of the logits."""

    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: int = 0

    def add(self, task: str, key: str, diff: float) -> None:
        slot = self.per_task.setdefault(task, {})
        slot[key] = max(slot.get(key, 0.0), float(diff))

    def agreement(self, task: str, agree: int, total: int) -> None:
        slot = self.per_task.setdefault(task, {})
        a, n = slot.get("_agree", 0.0) + agree, slot.get("_n", 0.0) + total
        slot["_agree"], slot["_n"] = a, n

    def summary(self, task: str | None = None) -> dict[str, Any]:
        """``{"logits_max_abs_diff", "features_max_abs_diff", "argmax_agreement", "rows"}`` (one or all tasks)."""
        tasks = [task] if task is not None else list(self.per_task)
        slots = [self.per_task[t] for t in tasks if t in self.per_task]
        logits = max((v for s in slots for k, v in s.items() if k.startswith("logits")), default=0.0)
        feats = max((v for s in slots for k, v in s.items() if k.startswith("features.")), default=0.0)
        n = sum(s.get("_n", 0.0) for s in slots)
        out: dict[str, Any] = {"logits_max_abs_diff": _fmt(logits)}
        if any(k.startswith("features.") for s in slots for k in s):
            out["features_max_abs_diff"] = _fmt(feats)
        out["argmax_agreement"] = round(sum(s.get("_agree", 0.0) for s in slots) / n, 6) if n else None
        if task is None:
            out["rows"] = self.rows
        return out

    def merge(self, other: ParityResult) -> None:
        """Add another group's result (its tasks are not in this one)."""
        self.per_task.update(other.per_task)
        self.rows += other.rows

    def failures(self, tolerance: float) -> dict[str, float]:
        return {
            f"{task} {key}": v
            for task, slot in self.per_task.items()
            for key, v in slot.items()
            if not key.startswith("_") and v > tolerance
        }


def _fmt(x: float) -> float:
    return float(f"{x:.3e}")


def run_parity(
    runner: GraphRunner,
    tasks: Sequence[str],
    features: Sequence[str],
    classification: Sequence[bool],
    rows: Sequence[Mapping[str, torch.Tensor]],
    batches: Sequence[ParityBatch],
    refs: Sequence[Mapping[int, _Reference]],
) -> ParityResult:
    """Run the graphs on every batch and compare with the PyTorch references (``refs[batch][task]``).

    ``rows[t]`` are task t's bank rows; each batch gets the bank of its own tasks only (:func:`batch_bank`).
    ``features[t]`` is the adapted output task t's head reads (``cls`` / ``mean`` / ``pooled``, or ``tokens``
    for a tagging head, whose logits are compared at every real token, padding excluded).
    """
    result = ParityResult()
    keys = runner.bank_names
    for batch, batch_refs in zip(batches, refs, strict=True):
        local, bank = batch_bank(rows, keys, batch)
        runner.keep_heads([tasks[int(t)] for t in np.unique(batch.task_index)])
        hidden, feeds = runner.hidden(local), runner.bank_feeds(bank)
        feats = runner.adapted_features(local, hidden, feeds)
        first = runner.adapted_features(local, hidden, feeds, cls_only=True) if runner.cls_only else None
        del bank, feeds, hidden
        result.rows += len(batch.row_source)
        for t in np.unique(batch.task_index).tolist():
            task = tasks[t]
            sel = np.nonzero(batch.task_index == t)[0]
            src = batch.row_source[sel]
            ref = batch_refs[t]  # every task with rows in a batch has its reference
            real = batch.attention_mask[src].astype(bool)  # [rows, S]: tokens that are not padding
            for name, value in feats.items():
                if name == TOKENS_OUTPUT and features[t] != TOKENS_OUTPUT:
                    continue  # every token's hidden state is judged only for the tasks that read it (tagging)
                diff = np.abs(value[sel] - ref.features[name][src])
                result.add(task, f"features.{name}", (diff[real] if name == TOKENS_OUTPUT else diff).max())
            if features[t] == TOKENS_OUTPUT:
                tok = feats[TOKENS_OUTPUT][sel]
                logits = runner.head(task, tok.reshape(-1, tok.shape[-1])).reshape(*tok.shape[:2], -1)[real]
                expected = ref.logits[src][real]
            else:
                logits = runner.head(task, feats[features[t]][sel])
                expected = ref.logits[src]
            result.add(task, "logits", np.abs(logits - expected).max())
            if classification[t]:
                result.agreement(task, int((logits.argmax(-1) == expected.argmax(-1)).sum()), len(logits))
            if first is not None:  # the same rows with cls_only: the features it keeps exact, and their heads
                for name in CLS_ONLY_FEATURES & set(first):
                    result.add(
                        task, f"features.{name} (cls_only)", np.abs(first[name][sel] - ref.features[name][src]).max()
                    )
                if features[t] in CLS_ONLY_FEATURES:
                    logits = runner.head(task, first[features[t]][sel])
                    result.add(task, "logits (cls_only)", np.abs(logits - ref.logits[src]).max())
    runner.keep_heads([])
    return result


def compare_standalone(
    path: str | Path,
    task: str,
    t: int,
    classification: bool,
    batches: Sequence[ParityBatch],
    refs: Sequence[Mapping[int, _Reference]],
) -> ParityResult:
    """A standalone graph's logits on every unique text vs the task's PyTorch logits."""
    session = _session(path)
    result = ParityResult()
    for batch, batch_refs in zip(batches, refs, strict=True):
        ref = batch_refs.get(t)
        if ref is None:  # a batch of another task group
            continue
        text = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "token_type_ids": batch.token_type_ids,
        }
        logits = session.run(None, _feed(session, text))[0].astype(np.float32)
        expected = ref.logits
        result.rows += len(logits)
        if logits.ndim == 3:  # a tagging task: every real token (padding excluded)
            real = batch.attention_mask.astype(bool)
            logits, expected = logits[real], expected[real]
        result.add(task, "logits", np.abs(logits - expected).max())
        if classification:
            result.agreement(task, int((logits.argmax(-1) == expected.argmax(-1)).sum()), len(logits))
    return result


def raise_on_failures(result: ParityResult, tolerance: float, what: str) -> None:
    """ParityError naming every output over the tolerance."""
    failures = result.failures(tolerance)
    if failures:
        listed = "; ".join(f"{k}: {v:.3e}" for k, v in sorted(failures.items()))
        raise ParityError(
            f"{what}: ONNX differs from PyTorch beyond the tolerance {tolerance:g} (max abs diff) in "
            f"{len(failures)} output(s): {listed}. Nothing was written. Check the checkpoint, or raise "
            "--tolerance if the difference is expected (e.g. a large base)",
            failures,
        )


def timing_batches(tokenizer: Any, num_tasks: int, max_length: int) -> list[ParityBatch]:
    """The small batches plain and fused variants are timed on: 1 row x 32 tokens, 8 mixed rows x 32 tokens."""
    words = "the company said its shares were up two percent after the new film was a great story".split()
    items: list[Item] = [
        " ".join(words * 3),
        "the movie was good",
        ("it is great", "the story was terrible"),
        " ".join(words[:9]),
    ]
    ids, mask, tt = encode_items(tokenizer, items, min(32, max_length))
    rows = np.arange(8, dtype=np.int64)
    one = ParityBatch("1x32", ids[:1], mask[:1], tt[:1], np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    return [one, ParityBatch("8x32", ids, mask, tt, rows % len(items), rows % max(num_tasks, 1))]
