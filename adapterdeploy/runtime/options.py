"""How a deployment is run: one frozen ``RuntimeOptions`` from the command line, the server or Python code.

``predict``, ``check`` and ``serve`` declare these flags through one click decorator (:func:`runtime_options`)
and hand :meth:`Deployment.open <adapterdeploy.runtime.deployment.Deployment.open>` the whole object, so a
flag is declared, validated and documented once and reaches onnxruntime in one hop. The server's
``Settings`` holds one too (``Settings.runtime``) and ships it to ``--workers`` and Ray replicas as JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

import click

from adapterdeploy.errors import ConfigError

__all__ = [
    "BANK_MODES",
    "DEFAULT_SPIN_US",
    "PRECISIONS",
    "ProviderSpec",
    "RuntimeOptions",
    "parse_bytes",
    "runtime_options",
]

PRECISIONS = ("fp32", "int8", "fp16")
BANK_MODES = ("rows", "resident")
# Bounded spin of idle intra-op workers: 50 us kept MiniLM batch-1 latency at 3.84 ms against 4.73 ms with
# spinning off and 7.98 ms unbounded on 2 cores (docs/performance.md); 0 is best on cores shared with others.
DEFAULT_SPIN_US = 50

F = TypeVar("F", bound=Callable[..., Any])
# An execution provider: a name ("cuda", "CUDAExecutionProvider") or (name, provider options).
ProviderSpec = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class RuntimeOptions:
    """Everything about *how* to run a deployment (what to run is the deployment directory).

    Attributes:
        precision: featurizer variant to run (fp32, int8, fp16: see ``Manifest.precisions``).
        providers: None (CPU), or execution providers in preference order, e.g. ``("cuda", "cpu")``;
            ``("cuda",)`` alone raises ProviderError when CUDA cannot run here.
        threads: intra-op threads per session (None: one per core).
        spin_us: microseconds idle intra-op workers spin before sleeping (None: onnxruntime's default).
        batch_size: rows per forward pass; larger inputs are split into length-sorted buckets.
        max_loaded_tasks / memory_budget_bytes: the task registry's budget (None: unlimited).
        bank_mode: ``rows`` (stack only the batch's tasks; CPU default) or ``resident`` (the whole bank kept
            on the device; GPU default); None picks by device.
        shared_thread_pool: one process-wide onnxruntime pool instead of per-session pools (opt-in: slower
            under load, process-wide in effect; see sessions.py).
        engine_cache_dir: TensorRT engine cache (None: beside the deployment, or under ~/.cache when it is
            read-only).
    """

    precision: str = "fp32"
    providers: tuple[ProviderSpec, ...] | None = None
    threads: int | None = None
    spin_us: int | None = DEFAULT_SPIN_US
    batch_size: int = 64
    max_loaded_tasks: int | None = None
    memory_budget_bytes: int | None = None
    bank_mode: str | None = None
    shared_thread_pool: bool = False
    engine_cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.precision, str) or not self.precision:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.providers is not None:
            object.__setattr__(self, "providers", _provider_tuple(self.providers))
        _positive("batch_size", self.batch_size)
        for name in ("threads", "max_loaded_tasks", "memory_budget_bytes"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.spin_us is not None and (not _is_int(self.spin_us) or self.spin_us < 0):
            raise ConfigError(f"spin_us must be an integer >= 0 (0: never spin) or None, got {self.spin_us!r}")
        if self.bank_mode is not None and self.bank_mode not in BANK_MODES:
            raise ConfigError(f"bank_mode must be one of {', '.join(BANK_MODES)}, got {self.bank_mode!r}")
        if self.engine_cache_dir is not None:
            object.__setattr__(self, "engine_cache_dir", str(self.engine_cache_dir))

    def with_changes(self, **changes: Any) -> RuntimeOptions:
        """A copy with some options changed; an unknown name is a ConfigError naming the known ones."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(
                f"unknown runtime option(s) {', '.join(unknown)}; known: {', '.join(f.name for f in fields(self))}"
            )
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeOptions:
        if not isinstance(data, Mapping):
            raise ConfigError(f"runtime options must be a JSON object, got {type(data).__name__}")
        return cls().with_changes(**data)

    @classmethod
    def from_cli(cls, opts: dict[str, Any]) -> RuntimeOptions:
        """Pop the flags :func:`runtime_options` declared out of a click command's keyword arguments."""
        providers = tuple(opts.pop("providers", ()) or ())
        return cls(
            precision=opts.pop("precision"),
            providers=providers or None,
            threads=opts.pop("threads"),
            spin_us=opts.pop("spin_us"),
            max_loaded_tasks=opts.pop("max_loaded_tasks"),
            memory_budget_bytes=parse_bytes(opts.pop("memory_budget")),
            bank_mode=opts.pop("bank_mode"),
        )


def _provider_tuple(providers: object) -> tuple[ProviderSpec, ...] | None:
    """Names or ``(name, options)`` pairs, as a tuple (JSON turns the pairs into lists: turned back here)."""
    one = isinstance(providers, str) or (
        isinstance(providers, (list, tuple)) and len(providers) == 2 and isinstance(providers[1], dict)
    )
    items = [providers] if one else list(providers)  # type: ignore[call-overload]
    out: list[ProviderSpec] = []
    for spec in items:
        if isinstance(spec, str):
            out.append(spec)
        elif (
            isinstance(spec, (list, tuple))
            and len(spec) == 2
            and isinstance(spec[0], str)
            and isinstance(spec[1], dict)
        ):
            out.append((spec[0], dict(spec[1])))
        else:
            raise ConfigError(f"a provider is a name or (name, options), got {spec!r}")
    return tuple(out) or None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(name: str, value: object) -> None:
    if not _is_int(value) or int(value) < 1:  # type: ignore[call-overload]
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_bytes(text: str | None) -> int | None:
    """``"512MiB"`` -> 536870912; None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size; write e.g. 1048576, 512KiB, 256MiB or 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def runtime_options(f: F) -> F:
    """The runtime flags of ``predict``, ``check`` and ``serve``; read them back with ``RuntimeOptions.from_cli``."""
    decorators = [
        click.option(
            "--precision",
            default="fp32",
            show_default=True,
            type=click.Choice(PRECISIONS),
            help="Featurizer variant: fp32 (reference), int8 (smaller and faster on CPU, small accuracy "
            "cost), fp16 (GPU). Only variants the deployment was exported with exist.",
        ),
        click.option(
            "--provider",
            "providers",
            multiple=True,
            help="Execution provider, in preference order; repeat for a fallback list (--provider cuda "
            "--provider cpu). A single GPU provider that cannot run here is an error, never a silent CPU run.",
        ),
        click.option(
            "--threads",
            type=click.IntRange(min=1),
            default=None,
            help="Intra-op threads per onnxruntime session (default: one per core; serve divides the cores "
            "among --workers). Fewer threads leave cores to other processes at some latency cost.",
        ),
        click.option(
            "--spin-us",
            type=click.IntRange(min=0),
            default=DEFAULT_SPIN_US,
            show_default=True,
            help="Microseconds idle onnxruntime workers spin before sleeping: low batch-1 latency on "
            "dedicated cores; 0 = never spin, best when other busy processes share the cores.",
        ),
        click.option(
            "--max-loaded-tasks",
            type=click.IntRange(min=1),
            default=None,
            help="Tasks kept loaded; least recently used go first (default: no limit).",
        ),
        click.option("--memory-budget", default=None, help="Bytes of task weights kept loaded, e.g. 256MiB."),
        click.option(
            "--bank-mode",
            type=click.Choice(BANK_MODES),
            default=None,
            help="rows: stack only each batch's tasks (CPU default); resident: keep the whole bank on the "
            "device (GPU default).",
        ),
    ]
    for decorate in reversed(decorators):
        f = decorate(f)
    return f
