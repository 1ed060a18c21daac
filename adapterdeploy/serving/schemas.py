"""The plain JSON API's request/response models (pydantic) and the limit checks run before tokenization.

Bodies are parsed by :func:`parse_body` (strict JSON: NaN/Infinity refused, UTF-8 only) and then
validated in pydantic's strict mode, so ``"1"`` is never silently a number nor ``1`` a text. A
validation failure becomes one ``InputError`` whose message names the field (``inputs[3]: ...``).
The settings-dependent limits (rows, characters per text, tasks per request) are checked by
:func:`check_rows` right after, still before any tokenization.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from adapterdeploy.errors import InputError, PayloadTooLargeError
from adapterdeploy.serving.settings import Settings

__all__ = [
    "EmbedRequest",
    "EmbedResponse",
    "ErrorResponse",
    "FanOutRequest",
    "FanOutResponse",
    "LoadParameters",
    "LoadRequest",
    "PredictRequest",
    "PredictResponse",
    "PredictionOut",
    "RepositoryIndexRequest",
    "RepositoryModel",
    "TaskName",
    "TextOrPair",
    "check_rows",
    "check_text",
    "parse_body",
    "validate",
]

M = TypeVar("M", bound=BaseModel)


def check_text(text: str, where: str) -> None:
    """Refuse texts the tokenizer must never see: NUL bytes, unpaired surrogates, whitespace only."""
    if "\x00" in text:
        raise InputError(f"{where} contains a NUL byte (\\u0000); remove control characters from the text")
    if not text.strip():
        raise InputError(f"{where} is empty; every text needs at least one non-space character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where} contains an unpaired UTF-16 surrogate; send valid Unicode text") from None


def _row(value: Any) -> str | tuple[str, str]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(x, str) for x in value):
        return (value[0], value[1])
    got = f"a list of {len(value)} items" if isinstance(value, list) else type(value).__name__
    raise PydanticCustomError(
        "text_or_pair", "must be a text or a [text_a, text_b] pair of two texts, got {got}", {"got": got}
    )


TEXT_SCHEMA = {"type": "string", "minLength": 1}
TextOrPair = Annotated[
    str | tuple[str, str],
    PlainValidator(_row),
    WithJsonSchema(
        {
            "anyOf": [TEXT_SCHEMA, {"type": "array", "items": TEXT_SCHEMA, "minItems": 2, "maxItems": 2}],
            "description": "A text, or a [text_a, text_b] pair for pair tasks.",
        }
    ),
]
TaskName = Annotated[str, Field(min_length=1, max_length=200, description="A task of the deployment.")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PredictRequest(_Strict):
    """``POST /v1/predict``: run one task over a list of texts or pairs."""

    task: TaskName
    inputs: list[TextOrPair] = Field(min_length=1, description="Texts or [text_a, text_b] pairs.")
    spans: bool = Field(
        False,
        description="Tagging tasks: also merge the words' BIO / IOB tags into 'entities' (word, start, end, "
        "label, score).",
    )


class FanOutRequest(_Strict):
    """``POST /v1/fan-out``: run several tasks over the same texts (the featurizer runs once per text)."""

    tasks: list[TaskName] = Field(min_length=1)
    inputs: list[TextOrPair] = Field(min_length=1)
    spans: bool = Field(
        False,
        description="Tagging tasks: also merge the words' BIO / IOB tags into 'entities' (word, start, end, "
        "label, score).",
    )


class EmbedRequest(_Strict):
    """``POST /v1/embed``: L2-normalised embeddings from the base model (no task) or a task's featurizer."""

    inputs: list[TextOrPair] = Field(min_length=1, description="Texts (or [text_a, text_b] pairs) to embed.")
    task: TaskName | None = Field(None, description="Embed with this task's adapted featurizer; null: the base model.")
    pooling: Literal["mean", "cls", "pooler"] = Field(
        "mean",
        description="mean: masked mean of the last layer (sentence-transformers' default); cls: the first "
        "token; pooler: the base's pooler (if it has one).",
    )


class EmbedResponse(BaseModel):
    task: str | None
    pooling: str
    dimensions: int
    embeddings: list[list[float]] = Field(description="One unit-length vector per input, in input order.")
    truncated: list[bool]


class WordOut(BaseModel):
    """A tagging task's label for one word: ``text[start:end] == word``."""

    word: str
    start: int
    end: int
    label: str
    score: float


class PredictionOut(BaseModel):
    """``Prediction.to_dict()``: classification fills label/score/probabilities, regression value/score;
    multi-label adds ``labels`` (every label at or over its threshold) and its probabilities are sigmoids;
    tagging has ``label`` null, ``score`` the mean word score, ``tokens`` (and ``entities`` with ``spans``)."""

    task: str
    label: str | None
    score: float
    probabilities: dict[str, float] | None
    value: float | None
    truncated: bool
    labels: list[str] | None = Field(None, description="Multi-label tasks only: the labels that are on.")
    tokens: list[WordOut] | None = Field(
        None, description="Tagging tasks only: one label per word (its first subword's), with character offsets."
    )
    entities: list[WordOut] | None = Field(
        None, description="Tagging tasks with spans=true: the words' BIO tags merged (label without B-/I-)."
    )


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]


class FanOutResponse(BaseModel):
    predictions: dict[str, list[PredictionOut]]


class ErrorResponse(BaseModel):
    """Every error: the v2 protocol's ``{"error": ...}`` plus a stable type and the request id."""

    error: str
    error_type: str
    request_id: str


class LoadParameters(_Strict):
    pin: bool = Field(False, description="Never evict this task (until unloaded).")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher-priority tasks are evicted last.")
    path: str | None = Field(
        None, max_length=4096, description="A task directory (from `adapterdeploy add-task`/export) to load from."
    )


class LoadRequest(_Strict):
    """Triton's model-repository load body; pinning is a parameter."""

    parameters: LoadParameters = Field(default_factory=LoadParameters)


class RepositoryIndexRequest(_Strict):
    """Triton's index body, plus paging for deployments of thousands of tasks (tasks sorted by name)."""

    ready: bool = Field(False, description="List only tasks that are loaded.")
    offset: int = Field(0, ge=0, le=1_000_000_000, description="Skip this many tasks (sorted by name).")
    limit: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="List at most this many (default: all). "
        "The x-adapterdeploy-total-tasks header gives the total to page through.",
    )


class RepositoryModel(BaseModel):
    """One task in the repository index (Triton's fields first, then adapterdeploy's)."""

    name: str
    version: str = ""
    state: str = Field(description="READY when loaded, UNAVAILABLE when only known (it loads on first use).")
    reason: str = ""
    load_state: str = Field(description="known | loaded | pinned | failed (out of service until reloaded)")
    size_bytes: int
    use_count: int
    last_used: float | None
    priority: int


def parse_body(body: bytes, *, allow_empty: bool = False) -> Any:
    """Strict JSON: UTF-8 and no NaN/Infinity (Python's json accepts both by default); errors give the position."""
    if not body.strip():
        if allow_empty:
            return {}
        raise InputError("the request body is empty; send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the request body is not UTF-8 (byte {exc.start}); send UTF-8 JSON") from None

    def no_constants(name: str) -> Any:
        raise InputError(f"the request body contains {name}, which is not valid JSON; send finite numbers")

    try:
        return json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits (CPython's int_max_str_digits)
        raise InputError(f"the request body has a value Python refuses to parse: {exc}") from None
    except RecursionError:
        raise InputError("the request body nests too deeply") from None


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validate(model: type[M], data: Any) -> M:
    """Validate ``data`` into ``model``; a failure names its first field: ``inputs[3]: must be a text ...``."""
    if not isinstance(data, dict):
        raise InputError(f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise InputError(f"{_path(tuple(first['loc']))}: {first['msg']}{more}") from None


def check_rows(
    inputs: list[str | tuple[str, str]], settings: Settings, *, n_tasks: int = 1, field: str = "inputs"
) -> None:
    """The cheap limits, before tokenization: rows per request (413), characters and content per text (400)."""
    rows = len(inputs) * n_tasks
    if rows > settings.max_rows_per_request:
        what = f"{len(inputs)} inputs x {n_tasks} tasks = {rows} rows" if n_tasks > 1 else f"{rows} inputs"
        raise PayloadTooLargeError(
            f"{field}: {what}, the limit is {settings.max_rows_per_request} rows per request "
            "(--max-rows-per-request); split the request"
        )
    limit = settings.max_chars_per_text
    for i, row in enumerate(inputs):
        parts = (row,) if isinstance(row, str) else row
        for j, text in enumerate(parts):
            where = f"{field}[{i}]" if isinstance(row, str) else f"{field}[{i}][{j}]"
            if len(text) > limit:
                raise InputError(
                    f"{where} has {len(text)} characters, the limit is {limit} (--max-chars-per-text); "
                    "shorten the text or raise the limit"
                )
            check_text(text, where)
