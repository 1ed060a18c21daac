"""Typed reading of metadata files (task.json, deployment.json, checkpoint and AdapterHub configs).

Metadata is validated, not trusted: a missing key, a wrong type, an absurd size or an unsafe task name
becomes the project's typed error naming the file, the field and the fix, never a KeyError traceback or an
18 GB allocation. Pure Python (the runtime and the core install read these files too, so no pydantic
here: it is only a dependency of the serving extra). Sizes used for allocation are taken from the weights
actually read (see runtime/bank.py); the limits here only refuse what no real model has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from adapterdeploy.errors import AdapterDeployError, ArtifactError, ConfigError

__all__ = [
    "MAX_BOTTLENECK",
    "MAX_HIDDEN",
    "MAX_LABELS",
    "MAX_LAYERS",
    "Fields",
    "check_task_name",
    "is_task_name",
]

# Far above every real BERT-family model (H <= 4096, <= 100 layers, bottleneck <= H) and far below what
# would exhaust memory: a bottleneck of 1e5 once made a server allocate 18 GB.
MAX_BOTTLENECK = 16_384
MAX_HIDDEN = 16_384
MAX_LAYERS = 256
MAX_LABELS = 100_000
TASK_NAME_MAX = 128
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

T = TypeVar("T")
_MISSING: Any = object()


def read_json_object(path: Path) -> dict[str, Any]:
    """A metadata file that must hold one JSON object; unreadable, non-JSON or non-object -> ArtifactError."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} does not hold a JSON object")
    return data


def is_task_name(name: object) -> bool:
    """A task name becomes a directory name and a URL path part: letters, digits, ``_ . -`` (starting with a
    letter or digit, so never ``.``, ``..``, a hidden file or an option), at most 128 characters."""
    return (
        isinstance(name, str)
        and len(name) <= TASK_NAME_MAX
        and _TASK_NAME.fullmatch(name) is not None
        and name not in (".", "..")
    )


def check_task_name(name: object, where: str = "", error: type[AdapterDeployError] = ConfigError) -> str:
    """Return ``name`` or raise ``error`` saying what a task name may be."""
    if not is_task_name(name):
        shown = repr(name) if isinstance(name, str) else f"{name!r} ({type(name).__name__})"
        raise error(
            f"{where + ': ' if where else ''}task name {shown[:160]} is not a safe name; use letters, digits, "
            f"'_', '.', '-' (starting with a letter or digit, at most {TASK_NAME_MAX} characters)"
        )
    return name  # type: ignore[return-value]


class Fields:
    """Typed reads of one JSON object: ``Fields(data, "tasks/x/task.json", fix="re-export the task")``.

    Every error is ``error`` (ArtifactError by default) and names the file, the field and the fix.
    """

    def __init__(
        self,
        data: Any,
        where: str | Path,
        *,
        fix: str,
        prefix: str = "",
        error: type[AdapterDeployError] = ArtifactError,
    ) -> None:
        self.where, self.fix, self.prefix, self.error = str(where), fix, prefix, error
        if not isinstance(data, dict):
            self.fail("", f"must be a JSON object, got {type(data).__name__}")
        self.data: dict[str, Any] = data

    def fail(self, key: str, problem: str) -> None:
        field = f"field '{self.prefix}{key}' " if key else ""
        raise self.error(f"{self.where}: {field}{problem}; {self.fix}")

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        if key not in self.data:
            if default is _MISSING:
                self.fail(key, "is missing")
            return default
        return self.data[key]

    def text(self, key: str, default: Any = _MISSING) -> str:
        return self._typed(key, str, "a string", default)

    def flag(self, key: str, default: Any = _MISSING) -> bool:
        return self._typed(key, bool, "true or false", default)

    def integer(self, key: str, default: Any = _MISSING, *, lo: int | None = None, hi: int | None = None) -> int:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be an integer, got {value!r:.60}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(key, f"is {value}, outside {lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}")
        return value

    def integers(self, key: str, default: Any = _MISSING, *, lo: int = 0, hi: int | None = None) -> tuple[int, ...]:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            self.fail(key, f"must be a list of integers, got {value!r:.60}")
        bad = [v for v in value if v < lo or (hi is not None and v > hi)]
        if bad:
            self.fail(key, f"has {bad[:5]} outside {lo}..{hi}")
        return tuple(value)

    def obj(self, key: str, default: Any = _MISSING) -> Fields:
        value = self.raw(key, default)
        if not isinstance(value, dict):
            self.fail(key, f"must be a JSON object, got {type(value).__name__}")
        return Fields(value, self.where, fix=self.fix, prefix=f"{self.prefix}{key}.", error=self.error)

    def mapping(self, key: str, default: Any = _MISSING) -> dict[str, Any]:
        value = self.raw(key, default)
        if not isinstance(value, dict):
            self.fail(key, f"must be a JSON object, got {type(value).__name__}")
        return value

    def build(self, key: str, make: Callable[[dict[str, Any]], T], default: Any = _MISSING) -> T:
        """``make(self.dict(key))`` with its ConfigError / TypeError / ValueError reported as this field's."""
        value = self.mapping(key, default)
        try:
            return make(value)
        except (ConfigError, TypeError, ValueError, KeyError) as exc:
            self.fail(key, f"is invalid ({exc})")
            raise  # unreachable: fail raises

    def _typed(self, key: str, kind: type, what: str, default: Any) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, kind):
            self.fail(key, f"must be {what}, got {value!r:.60}")
        return value
