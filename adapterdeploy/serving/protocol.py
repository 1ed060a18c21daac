"""The KServe / Triton Open Inference Protocol v2 (REST) for text tasks: request parsing, responses, metadata.

Each task is a model. Inputs are ``BYTES`` tensors sent as JSON strings: ``text`` of shape ``[N]`` (or
``[N, 1]``) and, for text pairs, ``text_pair`` of the same shape. Outputs, all of shape ``[N]`` unless
noted: classification ``label`` (BYTES), ``score`` (FP32, the label's probability), ``probabilities``
(FP32 ``[N, C]``, row-major, columns in the order of the output's ``parameters.labels``); regression
``value`` and ``score`` (FP32); multi-label adds ``labels`` (BOOL ``[N, C]``: label c is on, i.e. its
sigmoid probability reached its threshold; columns as ``parameters.labels``, thresholds in
``parameters.thresholds``) and its ``probabilities`` are independent sigmoids; every task ``truncated``
(BOOL). A request may name the outputs it wants;
``embedding`` (FP32 ``[N, H]``, the task's adapted featurizer, L2-normalised; output parameter ``pooling``:
mean | cls | pooler, default mean) is sent only when named, and runs in the same batch as the rest.
Errors use the protocol's ``{"error": message}`` (plus ``error_type`` and ``request_id``).
Not supported (refused with a clear 400): the binary tensor extension, non-BYTES inputs, model versions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapterdeploy.errors import InputError

__all__ = [
    "EMBEDDING_OUTPUT",
    "INPUT_NAMES",
    "InferInput",
    "InferOutputRequest",
    "InferenceRequest",
    "TaskMeta",
    "embedding_pooling",
    "infer_response",
    "model_metadata",
    "rows_from_request",
    "server_metadata",
]

INPUT_NAMES = ("text", "text_pair")
Scalar = str | int | float | bool


@dataclass(frozen=True)
class TaskMeta:
    """What the protocol needs to know about a task (from its ``task.json``)."""

    name: str
    problem_type: str
    labels: tuple[str, ...]
    text_pair: bool
    hidden_size: int = -1  # the embedding output's width (-1: unknown)
    thresholds: tuple[float, ...] = ()  # multi-label: one per label

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label_classification"

    @property
    def regression(self) -> bool:
        return self.problem_type == "regression"

    def output_names(self) -> tuple[str, ...]:
        if self.regression:
            return ("value", "score", "truncated")
        if self.multi_label:
            return ("labels", "label", "score", "probabilities", "truncated")
        return ("label", "score", "probabilities", "truncated")


class _V2(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class InferInput(_V2):
    # Validated as plain strings (our messages name the field); the enums document the accepted values.
    name: str = Field(max_length=64, description="'text', or 'text_pair' for the second texts of pairs.",
                      json_schema_extra={"enum": list(INPUT_NAMES)})
    shape: list[int] = Field(min_length=1, max_length=2, description="[N] or [N, 1].")
    datatype: str = Field(max_length=16, description="Must be BYTES.", json_schema_extra={"enum": ["BYTES"]})
    parameters: dict[str, Scalar] | None = None
    data: list[Any] = Field(description="The N texts (flat, or nested as the shape says).")


class InferOutputRequest(_V2):
    name: str = Field(max_length=64)
    parameters: dict[str, Scalar] | None = None


class InferenceRequest(_V2):
    """``POST /v2/models/{task}/infer``."""

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Scalar] | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=2)
    outputs: list[InferOutputRequest] | None = Field(None, max_length=8)


def _flatten(data: list[Any], where: str) -> list[Any]:
    out: list[Any] = []
    stack = [(data, where, 0)]
    while stack:
        item, at, depth = stack.pop()
        if isinstance(item, list):
            if depth > 2:
                raise InputError(f"{at} nests deeper than the shape [N, 1] allows")
            stack.extend((x, f"{at}[{i}]", depth + 1) for i, x in reversed(list(enumerate(item))))
        else:
            out.append((item, at))
    return out


def _texts(inp: InferInput, index: int) -> list[str]:
    where = f"inputs[{index}]"
    if inp.datatype != "BYTES":
        raise InputError(f"{where}.datatype is {inp.datatype!r}; text inputs are BYTES")
    if inp.parameters and inp.parameters.get("binary_data_size") is not None:
        raise InputError(f"{where}: the binary tensor data extension is not supported; send JSON strings")
    if any(d < 0 for d in inp.shape) or (len(inp.shape) == 2 and inp.shape[1] != 1):
        raise InputError(f"{where}.shape is {inp.shape}; a text input has shape [N] or [N, 1]")
    flat = _flatten(inp.data, f"{where}.data")
    expected = math.prod(inp.shape)
    if len(flat) != expected:
        raise InputError(f"{where}.data holds {len(flat)} elements but shape {inp.shape} says {expected}")
    texts = []
    for value, at in flat:
        if not isinstance(value, str):
            raise InputError(f"{at} is a {type(value).__name__}; BYTES elements are JSON strings")
        texts.append(value)
    return texts


def rows_from_request(req: InferenceRequest, task: TaskMeta) -> list[str | tuple[str, str]]:
    """The request's rows: texts, or (text, text_pair) tuples when a ``text_pair`` input is present."""
    by_name: dict[str, list[str]] = {}
    for i, inp in enumerate(req.inputs):
        if inp.name not in INPUT_NAMES:
            raise InputError(
                f"inputs[{i}].name is {inp.name!r}; task {task.name!r} takes 'text'"
                + (" and 'text_pair'" if task.text_pair else "")
            )
        if inp.name in by_name:
            raise InputError(f"inputs[{i}]: input {inp.name!r} is given twice")
        by_name[inp.name] = _texts(inp, i)
    if "text" not in by_name:
        raise InputError("inputs: no input named 'text'; send the texts as a BYTES input named 'text'")
    texts = by_name["text"]
    if "text_pair" not in by_name:
        return list(texts)
    pairs = by_name["text_pair"]
    if len(pairs) != len(texts):
        raise InputError(f"inputs: 'text' has {len(texts)} elements but 'text_pair' has {len(pairs)}; they pair up")
    return list(zip(texts, pairs, strict=True))


EMBEDDING_OUTPUT = "embedding"


def _requested(req: InferenceRequest, task: TaskMeta) -> tuple[str, ...]:
    names = task.output_names()
    if not req.outputs:
        return names
    names = (*names, EMBEDDING_OUTPUT)
    wanted = []
    for i, out in enumerate(req.outputs):
        if out.name not in names:
            raise InputError(f"outputs[{i}].name is {out.name!r}; task {task.name!r} has outputs {list(names)}")
        wanted.append(out.name)
    return tuple(dict.fromkeys(wanted))


def check_outputs(req: InferenceRequest, task: TaskMeta) -> None:
    """Validate the requested output names before running anything."""
    _requested(req, task)


def embedding_pooling(req: InferenceRequest, task: TaskMeta) -> tuple[bool, str | None]:
    """(whether the request needs the task's head rows, the ``embedding`` output's pooling or None)."""
    wanted = _requested(req, task)
    pooling = None
    for i, out in enumerate(req.outputs or ()):
        if out.name == EMBEDDING_OUTPUT:
            value = (out.parameters or {}).get("pooling", "mean")
            if value not in ("mean", "cls", "pooler"):
                raise InputError(f"outputs[{i}].parameters.pooling is {value!r}; choose mean, cls or pooler")
            pooling = str(value)
    return any(n != EMBEDDING_OUTPUT for n in wanted), pooling


def infer_response(req: InferenceRequest, task: TaskMeta, predictions: Sequence[Any],
                   embeddings: Sequence[Any] = ()) -> dict[str, Any]:
    """The protocol's response for ``predictions`` (runtime ``Prediction`` rows, in input order) and, when
    the ``embedding`` output was asked for, ``embeddings`` (runtime ``Embedding`` rows, same order)."""
    n = max(len(predictions), len(embeddings))
    outputs = []
    for name in _requested(req, task):
        if name == EMBEDDING_OUTPUT:
            dim = len(embeddings[0].vector) if embeddings else max(task.hidden_size, 0)
            outputs.append({"name": name, "datatype": "FP32", "shape": [n, dim],
                            "data": [float(x) for e in embeddings for x in e.vector],
                            "parameters": {"pooling": embeddings[0].pooling if embeddings else "mean"}})
        elif name == "labels":
            labels = list(task.labels)
            outputs.append({"name": name, "datatype": "BOOL", "shape": [n, len(labels)],
                            "data": [lab in (p.labels or ()) for p in predictions for lab in labels],
                            "parameters": {"labels": ",".join(labels),
                                           "thresholds": ",".join(f"{t:g}" for t in task.thresholds)}})
        elif name == "label":
            outputs.append({"name": name, "datatype": "BYTES", "shape": [n], "data": [p.label for p in predictions]})
        elif name in ("score", "value"):
            outputs.append({"name": name, "datatype": "FP32", "shape": [n],
                            "data": [float(getattr(p, name)) for p in predictions]})
        elif name == "probabilities":
            labels = list(predictions[0].probabilities) if n else list(task.labels)
            data = [float(p.probabilities[label]) for p in predictions for label in labels]
            outputs.append({"name": name, "datatype": "FP32", "shape": [n, len(labels)], "data": data,
                            "parameters": {"labels": ",".join(labels)}})
        else:
            outputs.append({"name": name, "datatype": "BOOL", "shape": [n],
                            "data": [bool(p.truncated) for p in predictions]})
    response: dict[str, Any] = {"model_name": task.name, "model_version": "1", "outputs": outputs}
    if req.id is not None:
        response["id"] = req.id
    return response


def model_metadata(task: TaskMeta) -> dict[str, Any]:
    """``GET /v2/models/{task}``."""
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    if task.text_pair:
        inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [-1]})
    shapes = {"labels": ("BOOL", [-1, len(task.labels)]), "label": ("BYTES", [-1]), "score": ("FP32", [-1]),
              "value": ("FP32", [-1]),
              "probabilities": ("FP32", [-1, len(task.labels)]), "truncated": ("BOOL", [-1])}
    outputs = [{"name": n, "datatype": shapes[n][0], "shape": shapes[n][1]} for n in task.output_names()]
    outputs.append({"name": EMBEDDING_OUTPUT, "datatype": "FP32", "shape": [-1, task.hidden_size],
                    "parameters": {"on_request": True, "poolings": "mean,cls,pooler", "normalized": "l2"}})
    return {
        "name": task.name,
        "versions": ["1"],
        "platform": "adapterdeploy_onnxruntime",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {"problem_type": task.problem_type, "labels": ",".join(task.labels),
                       "text_pair": task.text_pair,
                       **({"thresholds": ",".join(f"{t:g}" for t in task.thresholds)} if task.thresholds else {})},
    }


def server_metadata(version: str, admin: bool) -> dict[str, Any]:
    """``GET /v2``: the model-repository extension is listed only when the admin API is on."""
    return {"name": "adapterdeploy", "version": version, "extensions": ["model_repository"] if admin else []}
