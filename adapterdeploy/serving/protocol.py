"""The KServe / Triton Open Inference Protocol v2 for text tasks: requests, responses, metadata, versions.

Each task is a model, with one version: :func:`task_version`, derived from the checksums of the task's
files (a re-exported task with other weights gets another version). Inputs are ``BYTES`` tensors:
``text`` of shape ``[N]`` (or ``[N, 1]``) and, for text pairs, ``text_pair`` of the same shape, as JSON
strings or, with the binary tensor data extension (:mod:`adapterdeploy.serving.v2_binary`), as raw
length-prefixed UTF-8. Outputs, all of shape ``[N]`` unless noted: classification ``label`` (BYTES),
``score`` (FP32, the label's probability), ``probabilities`` (FP32 ``[N, C]``, row-major, columns in the
order of the output's ``parameters.labels``); regression ``value`` and ``score`` (FP32); multi-label adds
``labels`` (BOOL ``[N, C]``: label c is on, i.e. its sigmoid probability reached its threshold; columns as
``parameters.labels``, thresholds in ``parameters.thresholds``) and its ``probabilities`` are independent
sigmoids; every task ``truncated`` (BOOL). ``embedding`` (FP32 ``[N, H]``, the task's adapted featurizer,
L2-normalised; output parameter ``pooling``: mean | cls | pooler, default mean) is sent only when a
request names it, and runs in the same batch as the rest. A tagging task's rows have a variable number of
words, so its word outputs are flat over the request's words, row after row, with ``token_count`` (INT64
``[N]``) words per row: ``token_word`` / ``token_label`` (BYTES ``[W]``), ``token_start`` / ``token_end``
(INT64 ``[W]``, character offsets into the row's text), ``token_score`` (FP32 ``[W]``), plus ``score``
(the row's mean word score) and ``truncated``; the merged BIO entities come the same way as ``entity_*``
outputs (``entity_count`` per row), sent only when a request names one of them. A request may name the
outputs it wants and ask for them binary (``parameters.binary_data_output`` for all, an output's
``parameters.binary_data`` for one).

The request's optional fields (``id``, echoed back; ``parameters``; ``model_name`` / ``model_version``,
checked against the URL) are accepted, and unknown top-level fields (other extensions) are ignored; the
fields this server uses are validated strictly. The REST app and the gRPC server share everything here.
Errors use the protocol's ``{"error": message}`` (plus ``error_type`` and ``request_id``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapterdeploy.config import TOKEN_CLASSIFICATION
from adapterdeploy.errors import InputError, UnknownTaskError
from adapterdeploy.runtime.tagging import with_entities
from adapterdeploy.serving import v2_binary

__all__ = [
    "EMBEDDING_OUTPUT",
    "ENTITY_OUTPUTS",
    "INPUT_NAMES",
    "TOKEN_OUTPUTS",
    "InferInput",
    "InferOutputRequest",
    "InferenceRequest",
    "OutputTensor",
    "TaskMeta",
    "binary_sizes",
    "check_input_name",
    "check_outputs",
    "check_target",
    "check_version",
    "embedding_pooling",
    "infer_response",
    "model_metadata",
    "output_tensors",
    "requested_outputs",
    "rows_from_request",
    "rows_from_texts",
    "server_metadata",
    "task_version",
    "texts_of_tensor",
    "with_spans",
]

INPUT_NAMES = ("text", "text_pair")
Scalar = str | int | float | bool
OUTPUT_TYPES = {
    "label": "BYTES",
    "score": "FP32",
    "value": "FP32",
    "probabilities": "FP32",
    "truncated": "BOOL",
    "labels": "BOOL",
    "embedding": "FP32",
    "token_word": "BYTES",
    "token_start": "INT64",
    "token_end": "INT64",
    "token_label": "BYTES",
    "token_score": "FP32",
    "token_count": "INT64",
    "entity_word": "BYTES",
    "entity_start": "INT64",
    "entity_end": "INT64",
    "entity_label": "BYTES",
    "entity_score": "FP32",
    "entity_count": "INT64",
}
TOKEN_OUTPUTS = ("token_word", "token_start", "token_end", "token_label", "token_score", "token_count")
ENTITY_OUTPUTS = ("entity_word", "entity_start", "entity_end", "entity_label", "entity_score", "entity_count")
EMBEDDING_OUTPUT = "embedding"  # on request only (see the module docstring)
EMBED_POOLINGS = ("mean", "cls", "pooler")


def task_version(files: Mapping[str, Any]) -> str:
    """A task's version: 12 hex digits of the sha256 over its files' checksums (``task.json``'s ``files``).

    Stable across restarts and machines, and different as soon as any weight file differs.
    """
    listing = {name: getattr(entry, "sha256", entry) for name, entry in sorted(files.items())}
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TaskMeta:
    """What the protocol needs to know about a task (from its ``task.json``)."""

    name: str
    problem_type: str
    labels: tuple[str, ...]
    text_pair: bool
    version: str = "1"
    hidden_size: int = -1  # the embedding output's width (-1: unknown)
    thresholds: tuple[float, ...] = ()  # multi-label: one per label

    @property
    def regression(self) -> bool:
        return self.problem_type == "regression"

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label_classification"

    @property
    def tagging(self) -> bool:
        return self.problem_type == TOKEN_CLASSIFICATION

    def on_request(self) -> tuple[str, ...]:
        """Outputs sent only when a request names them."""
        return (EMBEDDING_OUTPUT, *ENTITY_OUTPUTS) if self.tagging else (EMBEDDING_OUTPUT,)

    def output_names(self) -> tuple[str, ...]:
        """The default outputs (``embedding`` and ``entity_*`` are sent only when asked for)."""
        if self.tagging:
            return (*TOKEN_OUTPUTS, "score", "truncated")
        if self.regression:
            return ("value", "score", "truncated")
        if self.multi_label:
            return ("labels", "label", "score", "probabilities", "truncated")
        return ("label", "score", "probabilities", "truncated")


def check_version(task: TaskMeta, version: str | None) -> None:
    """404 unless ``version`` is empty/None (the server's choice) or the task's own version."""
    if version and version != task.version:
        raise UnknownTaskError(
            f"task {task.name!r} has no version {version[:64]!r}; its version is {task.version!r} "
            f"(GET /v2/models/{task.name} lists it), or leave the version out"
        )


class _V2(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class InferInput(_V2):
    # Validated as plain strings (our messages name the field); the enums document the accepted values.
    name: str = Field(
        max_length=64,
        description="'text', or 'text_pair' for the second texts of pairs.",
        json_schema_extra={"enum": list(INPUT_NAMES)},
    )
    shape: list[int] = Field(min_length=1, max_length=2, description="[N] or [N, 1].")
    datatype: str = Field(max_length=16, description="Must be BYTES.", json_schema_extra={"enum": ["BYTES"]})
    parameters: dict[str, Scalar] | None = Field(
        None, description="binary_data_size: the tensor's bytes after the JSON header (binary extension)."
    )
    data: list[Any] | None = Field(
        None, description="The N texts (flat, or nested as the shape says); absent when sent binary."
    )


class InferOutputRequest(_V2):
    name: str = Field(max_length=64)
    parameters: dict[str, Scalar] | None = Field(None, description="binary_data: true returns this output binary.")


class InferenceRequest(_V2):
    """``POST /v2/models/{task}[/versions/{version}]/infer``; unknown top-level fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    id: str | None = Field(None, max_length=256, description="Echoed back in the response.")
    model_name: str | None = Field(None, max_length=256, description="If given, must be the task in the URL.")
    model_version: str | None = Field(None, max_length=64, description="If given, must be the task's version.")
    parameters: dict[str, Scalar] | None = Field(
        None, description="binary_data_output: true returns every output binary."
    )
    inputs: list[InferInput] = Field(min_length=1, max_length=2)
    outputs: list[InferOutputRequest] | None = Field(None, max_length=8)


def check_target(task: TaskMeta, model_name: str | None, model_version: str | None, url_version: str | None) -> None:
    """The body's ``model_name`` / ``model_version`` (where a client sends them) must agree with the URL."""
    if model_name and model_name != task.name:
        raise InputError(f"model_name is {model_name[:200]!r} but the URL names task {task.name!r}; they must match")
    if model_version and url_version and model_version != url_version:
        raise InputError(f"model_version is {model_version!r} but the URL names version {url_version!r}")
    check_version(task, model_version or url_version)


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


def texts_of_tensor(name: str, datatype: str, shape: Sequence[int], elements: Sequence[Any], where: str) -> list[str]:
    """A text input tensor's texts, checked: BYTES, shape [N] or [N, 1], N elements, each a str or UTF-8 bytes.

    ``elements`` are (value, position) pairs; values are str (JSON) or bytes (binary / gRPC).
    """
    if datatype != "BYTES":
        raise InputError(f"{where}.datatype is {datatype!r}; text inputs are BYTES")
    shape = list(shape)
    if any(d < 0 for d in shape) or not 1 <= len(shape) <= 2 or (len(shape) == 2 and shape[1] != 1):
        raise InputError(f"{where}.shape is {shape}; a text input has shape [N] or [N, 1]")
    expected = math.prod(shape)
    if len(elements) != expected:
        raise InputError(f"{where} holds {len(elements)} elements but shape {shape} says {expected}")
    texts = []
    for value, at in elements:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{at} is not valid UTF-8 (byte {exc.start}); texts are UTF-8") from None
        elif not isinstance(value, str):
            raise InputError(f"{at} is a {type(value).__name__}; BYTES elements are JSON strings")
        texts.append(value)
    return texts


def _input_texts(inp: InferInput, index: int, raw: bytes | None) -> list[str]:
    where = f"inputs[{index}]"
    if raw is not None:
        if inp.data is not None:
            raise InputError(f"{where} has both 'data' and parameters.binary_data_size; send one of them")
        values = v2_binary.decode_bytes_elements(raw, f"{where} (binary)")
        elements = [(v, f"{where} (binary)[{i}]") for i, v in enumerate(values)]
    elif inp.data is None:
        raise InputError(f"{where} has no 'data' (and no parameters.binary_data_size); send the texts")
    else:
        elements = _flatten(inp.data, f"{where}.data")
    return texts_of_tensor(inp.name, inp.datatype, inp.shape, elements, where)


def binary_sizes(req: InferenceRequest) -> list[object]:
    """Each input's declared ``binary_data_size`` as sent (None where it is sent as JSON); ``split_raw``
    checks that each is a byte count."""
    return [None if not inp.parameters else inp.parameters.get("binary_data_size") for inp in req.inputs]


def rows_from_texts(by_name: Mapping[str, list[str]], task: TaskMeta) -> list[str | tuple[str, str]]:
    """Rows from the named text tensors: texts, or (text, text_pair) tuples when ``text_pair`` is present."""
    if "text" not in by_name:
        raise InputError("inputs: no input named 'text'; send the texts as a BYTES input named 'text'")
    texts = by_name["text"]
    if "text_pair" not in by_name:
        return list(texts)
    pairs = by_name["text_pair"]
    if len(pairs) != len(texts):
        raise InputError(f"inputs: 'text' has {len(texts)} elements but 'text_pair' has {len(pairs)}; they pair up")
    return list(zip(texts, pairs, strict=True))


def check_input_name(name: str, index: int, seen: Mapping[str, Any], task: TaskMeta) -> None:
    if name not in INPUT_NAMES:
        raise InputError(
            f"inputs[{index}].name is {name[:64]!r}; task {task.name!r} takes 'text'"
            + (" and 'text_pair'" if task.text_pair else "")
        )
    if name in seen:
        raise InputError(f"inputs[{index}]: input {name!r} is given twice")


def rows_from_request(
    req: InferenceRequest, task: TaskMeta, raw: Sequence[bytes | None] | None = None
) -> list[str | tuple[str, str]]:
    """The request's rows; ``raw`` holds each input's binary chunk (None where it came as JSON)."""
    by_name: dict[str, list[str]] = {}
    for i, inp in enumerate(req.inputs):
        check_input_name(inp.name, i, by_name, task)
        by_name[inp.name] = _input_texts(inp, i, raw[i] if raw is not None else None)
    return rows_from_texts(by_name, task)


def requested_outputs(names: Sequence[str], task: TaskMeta) -> tuple[str, ...]:
    """The outputs to return, in request order without repeats (all of them when ``names`` is empty)."""
    known = task.output_names()
    if not names:
        return known
    known = (*known, *task.on_request())
    for i, name in enumerate(names):
        if name not in known:
            raise InputError(f"outputs[{i}].name is {name[:64]!r}; task {task.name!r} has outputs {list(known)}")
    return tuple(dict.fromkeys(names))


def check_outputs(req: InferenceRequest, task: TaskMeta) -> None:
    """Validate the requested output names before running anything."""
    requested_outputs([o.name for o in req.outputs or ()], task)


def embedding_pooling(names: Sequence[str], parameters: Sequence[Mapping[str, Any] | None]) -> tuple[bool, str | None]:
    """(whether the requested outputs need the task's head rows, the ``embedding`` output's pooling or None),
    from the requested output names and each one's parameters."""
    pooling = None
    for i, (name, params) in enumerate(zip(names, parameters, strict=True)):
        if name == EMBEDDING_OUTPUT:
            value = (params or {}).get("pooling", "mean")
            if value not in EMBED_POOLINGS:
                raise InputError(f"outputs[{i}].parameters.pooling is {value!r:.40}; choose mean, cls or pooler")
            pooling = str(value)
    return (not names or any(n != EMBEDDING_OUTPUT for n in names)), pooling


@dataclass
class OutputTensor:
    """One output, flat, with its protocol type; rendered as JSON, binary REST or gRPC raw contents."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    parameters: dict[str, Any] = field(default_factory=dict)


def output_tensors(
    names: Sequence[str], task: TaskMeta, predictions: Sequence[Any], embeddings: Sequence[Any] = ()
) -> list[OutputTensor]:
    """The named outputs for ``predictions`` (runtime ``Prediction`` rows, in input order) and, when the
    ``embedding`` output is named, ``embeddings`` (runtime ``Embedding`` rows, same order)."""
    n = max(len(predictions), len(embeddings))
    out = []
    for name in names:
        if name in TOKEN_OUTPUTS or name in ENTITY_OUTPUTS:
            out.append(_word_tensor(name, predictions))
        elif name == EMBEDDING_OUTPUT:
            dim = len(embeddings[0].vector) if embeddings else max(task.hidden_size, 0)
            out.append(
                OutputTensor(
                    name,
                    "FP32",
                    [n, dim],
                    [float(x) for e in embeddings for x in e.vector],
                    {"pooling": embeddings[0].pooling if embeddings else "mean"},
                )
            )
        elif name == "labels":
            labels = list(task.labels)
            out.append(
                OutputTensor(
                    name,
                    "BOOL",
                    [n, len(labels)],
                    [lab in (p.labels or ()) for p in predictions for lab in labels],
                    {"labels": ",".join(labels), "thresholds": ",".join(f"{t:g}" for t in task.thresholds)},
                )
            )
        elif name == "label":
            out.append(OutputTensor(name, "BYTES", [n], [p.label for p in predictions]))
        elif name in ("score", "value"):
            out.append(OutputTensor(name, "FP32", [n], [float(getattr(p, name)) for p in predictions]))
        elif name == "probabilities":
            labels = list(predictions[0].probabilities) if n else list(task.labels)
            data = [float(p.probabilities[label]) for p in predictions for label in labels]
            out.append(OutputTensor(name, "FP32", [n, len(labels)], data, {"labels": ",".join(labels)}))
        else:
            out.append(OutputTensor(name, "BOOL", [n], [bool(p.truncated) for p in predictions]))
    return out


def _word_tensor(name: str, predictions: Sequence[Any]) -> OutputTensor:
    """A tagging output, flat over every row's words (or entities) in row order; ``*_count`` per row."""
    kind, field_name = name.split("_", 1)
    rows = [(p.tokens if kind == "token" else p.entities) or () for p in predictions]
    if field_name == "count":
        return OutputTensor(name, "INT64", [len(rows)], [len(r) for r in rows])
    attr = "label" if field_name == "label" else field_name
    data = [getattr(w, attr) for r in rows for w in r]
    if field_name == "score":
        data = [float(x) for x in data]
    return OutputTensor(name, OUTPUT_TYPES[name], [len(data)], data)


def with_spans(names: Sequence[str], predictions: Sequence[Any], rows: Sequence[Any]) -> list[Any]:
    """Tagging predictions with their merged entities when an ``entity_*`` output is requested."""
    if not any(n in ENTITY_OUTPUTS for n in names):
        return list(predictions)
    return [with_entities(p, r) for p, r in zip(predictions, rows, strict=True)]


def _binary_wanted(req: InferenceRequest) -> dict[str, bool]:
    default = bool((req.parameters or {}).get("binary_data_output", False))
    wanted = {name: default for name in OUTPUT_TYPES}
    for out in req.outputs or ():
        if out.parameters and "binary_data" in out.parameters:
            wanted[out.name] = bool(out.parameters["binary_data"])
    return wanted


def infer_response(
    req: InferenceRequest, task: TaskMeta, predictions: Sequence[Any], embeddings: Sequence[Any] = ()
) -> tuple[dict[str, Any], bytes]:
    """The protocol's response: the JSON part and the binary part (empty unless outputs were asked binary)."""
    names = requested_outputs([o.name for o in req.outputs or ()], task)
    binary = _binary_wanted(req)
    outputs = []
    chunks = []
    for t in output_tensors(names, task, predictions, embeddings):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        params = dict(t.parameters)
        if binary[t.name]:
            raw = v2_binary.encode_tensor(t.datatype, t.data)
            params["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            entry["data"] = t.data
        if params:
            entry["parameters"] = params
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": task.name, "model_version": task.version, "outputs": outputs}
    if req.id is not None:
        response["id"] = req.id
    return response, b"".join(chunks)


def model_metadata(task: TaskMeta) -> dict[str, Any]:
    """``GET /v2/models/{task}``."""
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    if task.text_pair:
        inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [-1]})
    shapes = {
        "labels": ("BOOL", [-1, len(task.labels)]),
        "label": ("BYTES", [-1]),
        "score": ("FP32", [-1]),
        "value": ("FP32", [-1]),
        "probabilities": ("FP32", [-1, len(task.labels)]),
        "truncated": ("BOOL", [-1]),
        **{n: (OUTPUT_TYPES[n], [-1]) for n in (*TOKEN_OUTPUTS, *ENTITY_OUTPUTS)},
    }
    outputs: list[dict[str, Any]] = [
        {"name": n, "datatype": shapes[n][0], "shape": shapes[n][1]} for n in task.output_names()
    ]
    if task.tagging:
        for o in outputs:
            if o["name"] in TOKEN_OUTPUTS[:-1]:
                o["parameters"] = {"per": "word", "rows_from": "token_count"}
        outputs += [
            {
                "name": n,
                "datatype": shapes[n][0],
                "shape": shapes[n][1],
                "parameters": {"on_request": True, "per": "entity", "rows_from": "entity_count"},
            }
            for n in ENTITY_OUTPUTS
        ]
    outputs.append(
        {
            "name": EMBEDDING_OUTPUT,
            "datatype": "FP32",
            "shape": [-1, task.hidden_size],
            "parameters": {"on_request": True, "poolings": ",".join(EMBED_POOLINGS), "normalized": "l2"},
        }
    )
    return {
        "name": task.name,
        "versions": [task.version],
        "platform": "adapterdeploy_onnxruntime",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {
            "problem_type": task.problem_type,
            "labels": ",".join(task.labels),
            "text_pair": task.text_pair,
            **({"thresholds": ",".join(f"{t:g}" for t in task.thresholds)} if task.thresholds else {}),
        },
    }


def server_metadata(version: str, admin: bool) -> dict[str, Any]:
    """``GET /v2``: the binary tensor extension always; the model-repository one only when the admin API is on."""
    extensions = [v2_binary.BINARY_EXTENSION] + (["model_repository"] if admin else [])
    return {"name": "adapterdeploy", "version": version, "extensions": extensions}
