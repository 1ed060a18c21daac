"""AdapterBank: one task's adapter weights as bank rows, and the stacked bank inputs of a batch.

The adapted featurizer graph takes every adapter weight as an input stacked over tasks (``down_w [T, H, m]``)
and gathers per row with ``task_index``. A task's ``adapters.safetensors`` holds its own row (no T axis,
its own bottleneck m). This module turns that file into ready-to-feed ``[1, ...]`` arrays at load time
and stacks the rows of a batch's tasks at run time.

Semantics (bottleneck padding, exact for any activation because the padded up-projection rows are zero):

    down_w[t] = [W_down | 0]  (H x M)      down_b[t] = [b_down, 0]  (M)
    up_w[t]   = [W_up ; 0]    (M x H)      up_b[t]   = b_up
    => up(act(down(x))) is unchanged: the extra units get act(0) but multiply zero rows of up_w.

PEFT rows (LoRA ``lora_a [T, in, R]`` / ``lora_b [T, R, out]``, IA3 deltas) pad the same way along the rank
axis R; a task without them gets zero rows, which is exactly "no delta".

Layers a task has no adapter on are zero rows (``a = 0``, so the site adds nothing), except when that is
not the identity (adapter LayerNorm after a residual-before-LN add, per-task LayerNorms): then the task
file must carry the row and a missing one is an error.

AdapterFusion: a fusion featurizer's sites have N adapter slots (``bank.{layer}.{site}_fuse{j}.*``) and
attention rows (``bank.{layer}.{site}_fusion.*``); a plain task's are all zero (its plain site, gate 0), and
its large zero ``[H, H]`` rows are one shared read-only array, not a copy per task.

Stack: a stacked featurizer also has lower-adapter inputs (``bank.{layer}.{site}_lower.*``, their own
bottleneck axis). A stacked task's lower rows come from the deployment's ``shared/`` file, built once
(:meth:`BankLayout.lower_rows`) and referenced, not copied, by every task stacked on it; a plain task gets
zero lower rows (the identity, checked at export).

int8 bank rows: the int8 variant's adapted graph (exports since issue 15) takes the adapter projections
``down_w`` / ``up_w`` as int8 inputs plus an fp32 ``<name>_scale`` input ``[T, 1, N]`` (one scale per
output column, symmetric, :func:`quantize_columns`) and multiplies them with ``MatMulInteger``. Task files
keep their fp32 weights; rows are quantized here, once, at load (so the same task file serves every
variant, and an int8 deployment's bank takes a quarter of the memory). A graph with fp32 bank inputs (int8
variants exported before) is fed fp32 rows as before: the graph's input types decide.

Two ways to feed the graph (``rows`` is the default; see ``gather`` and ``stack``):
  rows:     stack only the rows of the tasks in this batch; task_index counts within them. A single-task
            batch passes the task's own arrays (no copy at all).
  resident: stack every loaded task once per change of the loaded set and pass the whole bank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from adapterdeploy.config import LOWER_SUFFIX, RANK_AXIS, AdapterSignature
from adapterdeploy.errors import ArtifactError

__all__ = ["INT8_ROW_LIMIT", "SCALE_SUFFIX", "BankInput", "BankLayout", "LowerRows", "TaskRows", "quantize_columns"]

# An int8 bank input's per-column scales: the graph input ``<name>_scale`` ([T, 1, N], fp32).
SCALE_SUFFIX = "_scale"
# Axis of the bottleneck m in each projection input (T axis included); down_w's scales run along its m.
M_AXIS = {"down_w": 2, "down_b": 1, "up_w": 1, "down_w" + SCALE_SUFFIX: 2}
ZERO_IS_IDENTITY = (
    "down_w",
    "down_b",
    "up_w",
    "up_b",
    "ln_before_w",
    "ln_before_b",
    "lora_a",
    "lora_b",
    "ia3_in",
    "ia3_out",
    # AdapterFusion (models/fusion.py): zero attention, mask and gate rows are a plain task's site exactly.
    "fuse_qk",
    "fuse_qb",
    "fuse_v",
    "fuse_mask",
    "fuse_gate",
)
# Zero rows of these are large ([H, H]) and the same for every plain task: one shared read-only array.
SHARED_ZERO_ROLES = ("fuse_qk", "fuse_v")
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
INT8 = "tensor(int8)"


# Bank rows use 7 bits of int8 (+-63), as ``quantize_dynamic``'s ``reduce_range``: on CPUs without VNNI
# onnxruntime's u8 x s8 kernels sum pairs of products in int16 (AVX2 ``vpmaddubsw``), which saturates past
# 255 * 63 * 2. Measured on this session's AVX2-only container with the tiny Stack deployment of
# tests/test_stack.py (wide language adapter): int8 parity logits diff 1.42 with +-127 rows, 0.60 with +-63
# (0.098 with fp32 adapter rows).
INT8_ROW_LIMIT = 63


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights per output column of ``x @ w``: ``w [..., K, N]`` -> (int8 ``[..., K, N]`` in
    ``[-INT8_ROW_LIMIT, INT8_ROW_LIMIT]``, fp32 scales ``[..., 1, N]``), ``w ~ q * scale``.

    Hand-written (a few numpy lines) because onnxruntime's quantizer works on graph initializers, not on
    the bank rows the runtime loads; it is the same scheme as its per-channel QInt8 weights with
    ``reduce_range`` (max |w| / 63, zero point 0). An all-zero column (padding, a layer without adapter)
    gets scale 0: exactly zero.
    """
    w = np.asarray(w, dtype=np.float32)
    scale = np.abs(w).max(axis=-2, keepdims=True) / np.float32(INT8_ROW_LIMIT)
    q = np.divide(w, scale, out=np.zeros_like(w), where=scale > 0)
    return np.clip(np.rint(q), -INT8_ROW_LIMIT, INT8_ROW_LIMIT).astype(np.int8), scale.astype(np.float32)


@dataclass(frozen=True)
class BankInput:
    """One bank input of the adapted graph: name, shape with the T axis (None = dynamic), dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: type

    @property
    def role(self) -> str:
        """``down_w`` ... ``ln_after_b``, or ``w`` / ``b`` for per-task LayerNorms."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def m_axis(self) -> int | None:
        return M_AXIS.get(self.role)

    @property
    def rank_axis(self) -> int | None:
        return RANK_AXIS.get(self.role)

    @property
    def fixed_m(self) -> int | None:
        ax = self.m_axis
        return None if ax is None else self.shape[ax]

    @property
    def int8(self) -> bool:
        """Rows quantized at load (:func:`quantize_columns`), with the scales in ``<name>_scale``."""
        return self.dtype is np.int8

    @property
    def scale(self) -> bool:
        """The per-column scales of an int8 input (filled together with that input's rows)."""
        return self.role.endswith(SCALE_SUFFIX)

    @property
    def lower(self) -> bool:
        """An input of a Stack's lower adapter (``bank.3.ffn_lower.down_w``)."""
        return self.name.rsplit(".", 2)[-2].endswith(LOWER_SUFFIX)


@dataclass(frozen=True)
class LowerRows:
    """A Stack's lower adapter as ready ``[1, ...]`` feeds at bottleneck ``m``: one object per deployment."""

    name: str
    arrays: dict[str, np.ndarray]
    m: int

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


@dataclass(frozen=True)
class TaskRows:
    """A loaded task's bank rows, each ``[1, ...]`` in the graph's dtype, at bottleneck ``m`` and LoRA ``rank``.

    ``m_lower`` is the bottleneck of the lower-adapter inputs (stacked featurizers); ``shared`` names the
    arrays that belong to a shared lower adapter: they are not counted in this task's ``nbytes``.
    """

    name: str
    arrays: dict[str, np.ndarray]
    m: int
    m_lower: int = 1
    shared: frozenset[str] = frozenset()
    rank: int = 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for k, a in self.arrays.items() if k not in self.shared)


class BankLayout:
    """The adapted graph's bank inputs, and how task rows become feeds."""

    def __init__(self, inputs: Sequence[BankInput], hidden_size: int, signature: AdapterSignature) -> None:
        self.inputs = {i.name: i for i in inputs}
        self.hidden_size = hidden_size
        self.signature = signature
        self.fixed_m: int | None = _fixed_m([i for i in inputs if not i.lower])
        self.fixed_m_lower: int | None = _fixed_m([i for i in inputs if i.lower])
        self._shared_zeros: dict[tuple[tuple[int, ...], type], np.ndarray] = {}

    @classmethod
    def from_session_inputs(
        cls, node_args: Sequence[object], bank_names: Sequence[str], hidden_size: int, signature: AdapterSignature
    ) -> BankLayout:
        """Build from ``session.get_inputs()`` (onnxruntime NodeArg: name, shape, type)."""
        by_name = {a.name: a for a in node_args}  # type: ignore[attr-defined]
        missing = [n for n in bank_names if n not in by_name]
        if missing:
            raise ArtifactError(f"the adapted graph lacks bank inputs the manifest lists: {missing[:5]}")
        inputs = []
        for n in bank_names:
            arg = by_name[n]
            int8 = arg.type == INT8  # type: ignore[attr-defined]
            dtype = np.int8 if int8 else ORT_DTYPES.get(arg.type)  # type: ignore[attr-defined]
            if dtype is None:
                raise ArtifactError(f"bank input {n} has type {arg.type}, expected a float tensor")  # type: ignore[attr-defined]
            inputs.append(BankInput(n, _shape(arg), dtype))
            if int8:  # quantized adapter projection: its scales are the next input of the bank
                scale = by_name.get(n + SCALE_SUFFIX)
                if scale is None or ORT_DTYPES.get(scale.type) is not np.float32:  # type: ignore[attr-defined]
                    raise ArtifactError(
                        f"the adapted graph's int8 bank input {n} has no fp32 {n + SCALE_SUFFIX} input; "
                        "the featurizer is inconsistent: re-export the deployment"
                    )
                inputs.append(BankInput(n + SCALE_SUFFIX, _shape(scale), np.float32))
        return cls(inputs, hidden_size, signature)

    def _zero_allowed(self, role: str) -> bool:
        if role in ZERO_IS_IDENTITY:
            return True
        return role in ("ln_after_w", "ln_after_b") and not self.signature.site.adapter_residual_before_ln

    @property
    def stacked(self) -> bool:
        return any(i.lower for i in self.inputs.values())

    def lower_rows(self, name: str, tensors: Mapping[str, np.ndarray], bottleneck: int) -> LowerRows:
        """Validate a shared lower adapter's file against the lower inputs; shape it into ``[1, ...]`` rows."""
        specs = {n: s for n, s in self.inputs.items() if s.lower}
        unexpected = sorted(set(tensors) - set(specs))
        if not specs or unexpected:
            raise ArtifactError(
                f"lower adapter {name!r} has weights this featurizer has no lower-adapter input for: "
                f"{unexpected[:4] or sorted(tensors)[:4]}; the deployment is inconsistent: re-export it"
            )
        arrays, m = self._rows(f"lower adapter {name!r}", specs, tensors, bottleneck, self.fixed_m_lower)
        return LowerRows(name=name, arrays=arrays, m=m)

    def task_rows(
        self, task: str, tensors: Mapping[str, np.ndarray], bottleneck: int, lower: LowerRows | None = None
    ) -> TaskRows:
        """Validate a task file's tensors against the bank and shape them into ``[1, ...]`` rows.

        ``lower``: the shared lower adapter of a stacked task (its arrays are referenced, not copied); a
        task without one gets zero lower rows in a stacked featurizer.
        """
        unexpected = sorted(k for k in tensors if k.startswith("bank.") and k not in self.inputs)
        if unexpected:
            raise ArtifactError(
                f"task {task!r} has bank weights this featurizer has no input for: {unexpected[:4]}; "
                "it was exported for another featurizer layout (re-export it with 'adapterdeploy add-task')"
            )
        lower_in = sorted(k for k in tensors if k in self.inputs and self.inputs[k].lower)
        if lower_in:
            raise ArtifactError(
                f"task {task!r} carries lower-adapter rows ({lower_in[:2]}) in its own file; they "
                "belong in the deployment's shared/ directory: re-export the task"
            )
        own = {n: s for n, s in self.inputs.items() if not s.lower}
        # The LoRA rank comes from the weights read (every module of a task shares it; absent = no LoRA).
        rank = max((int(t.shape[-1]) for k, t in tensors.items() if k.endswith(".lora_a") and k in own), default=1)
        arrays, m = self._rows(f"task {task!r}", own, tensors, bottleneck, self.fixed_m, rank)
        shared = frozenset(k for k, a in arrays.items() if self.is_shared_zero(a))
        m_lower = 1
        if lower is not None:
            arrays.update(lower.arrays)
            shared, m_lower = shared | frozenset(lower.arrays), lower.m
        elif self.stacked:
            zeros, m_lower = self._rows(
                f"task {task!r}", {n: s for n, s in self.inputs.items() if s.lower}, {}, 1, self.fixed_m_lower
            )
            arrays.update(zeros)
        return TaskRows(name=task, arrays=arrays, m=m, m_lower=m_lower, shared=shared, rank=rank)

    def _rows(
        self,
        what: str,
        specs: Mapping[str, BankInput],
        tensors: Mapping[str, np.ndarray],
        bottleneck: int,
        fixed_m: int | None,
        rank: int = 1,
    ) -> tuple[dict[str, np.ndarray], int]:
        # Allocation sizes come from the weights read, never from task.json alone: the m of the tensors present
        # must agree with each other and with the declared bottleneck; zero rows of absent sites use that m.
        found = {
            int(tensors[n].shape[spec.m_axis - 1])
            for n, spec in specs.items()
            if spec.m_axis is not None and n in tensors and len(tensors[n].shape) == len(spec.shape) - 1
        }
        if len(found) > 1 or (found and found != {bottleneck}):
            raise ArtifactError(
                f"{what}: its task.json says bottleneck {bottleneck}, its adapter weights have "
                f"{sorted(found)}; the task files are inconsistent: re-export the task"
            )
        bottleneck = found.pop() if found else 1  # no adapter weights at all: zero rows, any m is exact
        m = bottleneck
        if fixed_m is not None:
            if m > fixed_m:
                raise ArtifactError(
                    f"{what} has bottleneck {m}, the featurizer's bank holds at most {fixed_m}; "
                    "re-export the deployment including this task so the bank is sized for it"
                )
            m = fixed_m
        arrays: dict[str, np.ndarray] = {}
        for name, spec in specs.items():
            if spec.scale:  # filled with its int8 input's rows, below
                continue
            row_shape: list[int | None] = list(spec.shape[1:])
            if spec.m_axis is not None:
                row_shape[spec.m_axis - 1] = bottleneck
            if spec.rank_axis is not None:
                row_shape[spec.rank_axis - 1] = rank
            shape = [self.hidden_size if d is None else d for d in row_shape]
            t = tensors.get(name)
            if t is None:
                if not self._zero_allowed(spec.role):
                    raise ArtifactError(
                        f"{what} lacks {name}, which cannot be left out (a zero row would not be the "
                        "identity); re-export the task"
                    )
                if spec.role in SHARED_ZERO_ROLES:  # a plain task in a fusion featurizer: no copy per task
                    arrays[name] = self._shared_zero((1, *shape), spec.dtype)
                    continue
                arr: np.ndarray = np.zeros(shape, dtype=spec.dtype)
            else:
                if list(t.shape) != shape:
                    raise ArtifactError(
                        f"{what}: {name} has shape {list(t.shape)}, the bank expects {shape} "
                        f"(bottleneck {bottleneck}, LoRA rank {rank}, hidden {self.hidden_size}); the task file is "
                        "inconsistent"
                    )
                arr = np.asarray(t, dtype=np.float32 if spec.int8 else spec.dtype)
            if spec.int8:
                arr, scale = quantize_columns(arr)
                scale_name = name + SCALE_SUFFIX
                arrays[scale_name] = _pad_m(scale[None], self.inputs[scale_name].m_axis, m)
            arrays[name] = _pad_m(arr[None], spec.m_axis, m)
        return arrays, m

    def _shared_zero(self, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        key = (shape, dtype)
        arr = self._shared_zeros.get(key)
        if arr is None:
            arr = np.zeros(shape, dtype=dtype)
            arr.flags.writeable = False
            arr = self._shared_zeros.setdefault(key, arr)
        return arr

    def is_shared_zero(self, arr: np.ndarray) -> bool:
        """Whether ``arr`` is one of the shared all-zero fusion rows (not counted in a task's bytes)."""
        return any(arr is z for z in self._shared_zeros.values())

    def zero_rows(self, name: str) -> TaskRows:
        """All-zero rows (bottleneck 1, padded to the bank's m): the plain encoder where a zero adapter adds
        nothing (``runtime.embedding.zero_adapter_is_base``; the caller checks). Used for base embeddings."""
        return self.task_rows(name, {}, self.fixed_m or 1)

    def gather(self, tasks: Sequence[TaskRows]) -> dict[str, np.ndarray]:
        """The bank feeds for ``tasks`` in order (row t = tasks[t]); bottlenecks padded to the largest."""
        if len(tasks) == 1:
            return tasks[0].arrays
        m, m_lower = max(t.m for t in tasks), max(t.m_lower for t in tasks)
        rank = max(t.rank for t in tasks)
        out: dict[str, np.ndarray] = {}
        # Each input's axes are read once per call, not once per task, and arrays already at size are not
        # re-padded: a gather of 8 MiniLM tasks took 0.24 ms, mostly in those property lookups; now 0.17 ms.
        for name, spec in self.inputs.items():
            m_axis, rank_axis, size = spec.m_axis, spec.rank_axis, m_lower if spec.lower else m
            parts = [t.arrays[name] for t in tasks]
            if m_axis is not None and any(a.shape[m_axis] != size for a in parts):
                parts = [_pad_m(a, m_axis, size) for a in parts]
            if rank_axis is not None and any(a.shape[rank_axis] != rank for a in parts):
                parts = [_pad_m(a, rank_axis, rank) for a in parts]
            out[name] = np.concatenate(parts, axis=0)
        return out


def _shape(arg: object) -> tuple[int | None, ...]:
    """An onnxruntime NodeArg's shape, dynamic axes as None."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)  # type: ignore[attr-defined]


def _fixed_m(inputs: Sequence[BankInput]) -> int | None:
    fixed = {m for i in inputs if i.m_axis is not None and (m := i.fixed_m) is not None}
    if len(fixed) > 1:
        raise ArtifactError(f"the adapted graph's bank inputs disagree on the bottleneck size: {sorted(fixed)}")
    return fixed.pop() if fixed else None


def _pad_m(arr: np.ndarray, axis: int | None, m: int) -> np.ndarray:
    """Zero-pad ``arr`` along its bottleneck axis to ``m`` (no copy when it already has m)."""
    if axis is None or arr.shape[axis] == m:
        return arr
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (0, m - arr.shape[axis])
    return np.pad(arr, pad)
