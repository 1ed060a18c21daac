"""AdapterBank: one task's adapter weights as bank rows, and the stacked bank inputs of a batch.

The adapted featurizer graph takes every adapter weight as an input stacked over tasks (``down_w [T, H, m]``)
and gathers per row with ``task_index``. A task's ``adapters.safetensors`` holds its own row (no T axis,
its own bottleneck m). This module turns that file into ready-to-feed ``[1, ...]`` arrays at load time
and stacks the rows of a batch's tasks at run time.

Semantics (bottleneck padding, exact for any activation because the padded up-projection rows are zero):

    down_w[t] = [W_down | 0]  (H x M)      down_b[t] = [b_down, 0]  (M)
    up_w[t]   = [W_up ; 0]    (M x H)      up_b[t]   = b_up
    => up(act(down(x))) is unchanged: the extra units get act(0) but multiply zero rows of up_w.

Layers a task has no adapter on are zero rows (``a = 0``, so the site adds nothing), except when that is
not the identity (adapter LayerNorm after a residual-before-LN add, per-task LayerNorms): then the task
file must carry the row and a missing one is an error.

Two ways to feed the graph (``rows`` is the default; see ``gather`` and ``stack``):
  rows:     stack only the rows of the tasks in this batch; task_index counts within them. A single-task
            batch passes the task's own arrays (no copy at all).
  resident: stack every loaded task once per change of the loaded set and pass the whole bank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from adapterdeploy.config import AdapterSignature
from adapterdeploy.errors import ArtifactError

__all__ = ["BankInput", "BankLayout", "TaskRows"]

# Axis of the bottleneck m in each projection input (T axis included).
M_AXIS = {"down_w": 2, "down_b": 1, "up_w": 1}
ZERO_IS_IDENTITY = ("down_w", "down_b", "up_w", "up_b", "ln_before_w", "ln_before_b")
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


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
    def fixed_m(self) -> int | None:
        ax = self.m_axis
        return None if ax is None else self.shape[ax]


@dataclass(frozen=True)
class TaskRows:
    """A loaded task's bank rows, each ``[1, ...]`` in the graph's dtype, at bottleneck ``m``."""

    name: str
    arrays: dict[str, np.ndarray]
    m: int

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


class BankLayout:
    """The adapted graph's bank inputs, and how task rows become feeds."""

    def __init__(self, inputs: Sequence[BankInput], hidden_size: int, signature: AdapterSignature) -> None:
        self.inputs = {i.name: i for i in inputs}
        self.hidden_size = hidden_size
        self.signature = signature
        fixed = {i.fixed_m for i in inputs if i.m_axis is not None} - {None}
        if len(fixed) > 1:
            raise ArtifactError(f"the adapted graph's bank inputs disagree on the bottleneck size: {sorted(fixed)}")
        self.fixed_m: int | None = fixed.pop() if fixed else None

    @classmethod
    def from_session_inputs(cls, node_args: Sequence[object], bank_names: Sequence[str], hidden_size: int,
                            signature: AdapterSignature) -> BankLayout:
        """Build from ``session.get_inputs()`` (onnxruntime NodeArg: name, shape, type)."""
        by_name = {a.name: a for a in node_args}  # type: ignore[attr-defined]
        missing = [n for n in bank_names if n not in by_name]
        if missing:
            raise ArtifactError(f"the adapted graph lacks bank inputs the manifest lists: {missing[:5]}")
        inputs = []
        for n in bank_names:
            arg = by_name[n]
            dtype = ORT_DTYPES.get(arg.type)  # type: ignore[attr-defined]
            if dtype is None:
                raise ArtifactError(f"bank input {n} has type {arg.type}, expected a float tensor")  # type: ignore[attr-defined]
            shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)  # type: ignore[attr-defined]
            inputs.append(BankInput(n, shape, dtype))
        return cls(inputs, hidden_size, signature)

    def _zero_allowed(self, role: str) -> bool:
        if role in ZERO_IS_IDENTITY:
            return True
        return role in ("ln_after_w", "ln_after_b") and not self.signature.site.adapter_residual_before_ln

    def task_rows(self, task: str, tensors: Mapping[str, np.ndarray], bottleneck: int) -> TaskRows:
        """Validate a task file's tensors against the bank and shape them into ``[1, ...]`` rows."""
        unexpected = sorted(k for k in tensors if k.startswith("bank.") and k not in self.inputs)
        if unexpected:
            raise ArtifactError(
                f"task {task!r} has bank weights this featurizer has no input for: {unexpected[:4]}; "
                "it was exported for another featurizer layout (re-export it with 'adapterdeploy add-task')"
            )
        m = bottleneck
        if self.fixed_m is not None:
            if m > self.fixed_m:
                raise ArtifactError(
                    f"task {task!r} has bottleneck {m}, the featurizer's bank holds at most {self.fixed_m}; "
                    "re-export the deployment including this task so the bank is sized for it"
                )
            m = self.fixed_m
        arrays: dict[str, np.ndarray] = {}
        for name, spec in self.inputs.items():
            row_shape = list(spec.shape[1:])
            if spec.m_axis is not None:
                row_shape[spec.m_axis - 1] = bottleneck
            row_shape = [self.hidden_size if d is None else d for d in row_shape]
            t = tensors.get(name)
            if t is None:
                if not self._zero_allowed(spec.role):
                    raise ArtifactError(
                        f"task {task!r} lacks {name}, which cannot be left out (a zero row would not be the "
                        "identity); re-export the task"
                    )
                arr = np.zeros(row_shape, dtype=spec.dtype)
            else:
                if list(t.shape) != row_shape:
                    raise ArtifactError(
                        f"task {task!r}: {name} has shape {list(t.shape)}, the bank expects {row_shape} "
                        f"(bottleneck {bottleneck}, hidden {self.hidden_size}); the task file is inconsistent"
                    )
                arr = np.asarray(t, dtype=spec.dtype)
            arrays[name] = _pad_m(arr[None], spec.m_axis, m)
        return TaskRows(name=task, arrays=arrays, m=m)

    def zero_rows(self, name: str) -> TaskRows:
        """All-zero rows (bottleneck 1, padded to the bank's m): the plain encoder where a zero adapter adds
        nothing (``runtime.embedding.zero_adapter_is_base``; the caller checks). Used for base embeddings."""
        return self.task_rows(name, {}, self.fixed_m or 1)

    def gather(self, tasks: Sequence[TaskRows]) -> dict[str, np.ndarray]:
        """The bank feeds for ``tasks`` in order (row t = tasks[t]); bottlenecks padded to the largest."""
        if len(tasks) == 1:
            return tasks[0].arrays
        m = max(t.m for t in tasks)
        return {
            name: np.concatenate([_pad_m(t.arrays[name], spec.m_axis, m) for t in tasks], axis=0)
            for name, spec in self.inputs.items()
        }


def _pad_m(arr: np.ndarray, axis: int | None, m: int) -> np.ndarray:
    """Zero-pad ``arr`` along its bottleneck axis to ``m`` (no copy when it already has m)."""
    if axis is None or arr.shape[axis] == m:
        return arr
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (0, m - arr.shape[axis])
    return np.pad(arr, pad)
