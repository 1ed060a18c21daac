"""onnxruntime sessions with explicit provider selection and thread pools that do not fight each other.

Why this matters: the trunk, adapted and (rarely) head sessions each get an intra-op pool; pools whose idle
workers *spin* without bound burn the cores the next session needs, which made batch-1 latency ~3x worse on
2 cores (DESIGN.md). Measured on MiniLM on this 2-core machine while other jobs loaded it (load average
7-12; medians of 60 batch-1 / 6 batch-32 calls, fresh process per mode, 2 rounds):

    per-session pools, spinning (onnxruntime's default)   b1 44-55 ms   b32 474-544 ms
    ONE process-wide pool (global thread pool, spins)     b1 30-31 ms   b32 388-459 ms
    per-session pools, spinning off                       b1 18-20 ms   b32 153-348 ms

Turning spinning off, though, costs ~20% at batch 1 on an idle machine: every operator wakes the sleeping
workers again. onnxruntime >= 1.26 can *bound* the spin (``session.intra_op.spin_duration_us``): idle
workers spin that long and then sleep, which covers the microsecond gaps between the operators of one
run without burning cores between runs. Measured on an idle 2-core EPYC (MiniLM K=0, batch 1 pair of 35
tokens, in-process medians of 4 x 300 calls; optimum O3 with onnxruntime's default spinning: 3.4-3.6 ms):

    spin_us          0 (off)   10     30     50     100    300    unbounded
    ours fp32 ms     4.73      4.12   3.97   3.84   3.94   3.82   7.98 (two pools spinning at each other)
    ours int8 ms     2.52      -      -      1.94   1.82-2.43  -   -

and with two busy processes on the same 2 cores: off 6.9-7.0 ms, 10 us 7.7-8.3, 30 us 8.2-9.2, 100 us 10.4.
At batch 32 the setting makes no difference (88-90 ms). Those runs had two pools (trunk and adapted); with
the K = 0 trunk on the calling thread (one pool left) the same test gave, idle: 50 us 3.59-3.65 ms,
200 us 3.41-3.56, onnxruntime's default 3.42-3.48 (O3 3.29-3.34); with the two busy processes: off 6.7,
50 us 8.9, 200 us 10.9, default 14.2 (O3 11.2). So the default is per-session pools with a short
bounded spin (DEFAULT_SPIN_US); ``spin_us=0`` turns spinning off (best on cores shared with other busy
processes), ``spin_us=None`` keeps onnxruntime's own default. The process-wide pool
(``set_global_thread_pool_sizes`` + ``use_per_session_threads = False``) stays available with
``shared_pool=True``, with a caveat that makes it opt-in: once created, onnxruntime refuses every later
session of the process that does not also opt out of per-session threads (an exporter, a user's own
session), and its spinning cannot be set from Python. It is sized once per process; a later, different
``threads`` is logged and ignored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterdeploy.errors import ArtifactError, ConfigError
from adapterdeploy.runtime.options import DEFAULT_SPIN_US
from adapterdeploy.runtime.providers import (
    CPU,
    ProviderChoice,
    provider_problem,
    raise_unavailable,
    session_provider_list,
)

__all__ = ["SessionFactory", "global_pool_threads", "optional_inputs"]

log = logging.getLogger(__name__)


_POOL_LOCK = threading.Lock()
_POOL: dict[str, Any] = {"configured": False, "threads": None, "usable": True}


def optional_inputs(session: Any) -> set[str]:
    """Names of a session's optional inputs: graph inputs that have a same-named initializer (their default),
    which onnxruntime leaves out of ``get_inputs()`` (e.g. the adapted graph's ``cls_only``)."""
    return {i.name for i in getattr(session, "get_overridable_initializers", list)()}


def global_pool_threads() -> int | None:
    """The intra-op size the process-wide pool was created with (None: onnxruntime's default, or not yet)."""
    return _POOL["threads"]


def _configure_pool(threads: int | None) -> bool:
    """Create the global pool once; True when sessions can use it."""
    import onnxruntime as ort

    with _POOL_LOCK:
        if _POOL["configured"]:
            if threads != _POOL["threads"]:
                log.warning(
                    "onnxruntime's thread pool is process-wide and already sized for threads=%s; threads=%s is ignored",
                    _POOL["threads"],
                    threads,
                )
            return bool(_POOL["usable"])
        setter: Any = getattr(getattr(ort.capi, "_pybind_state", None), "set_global_thread_pool_sizes", None)
        usable = setter is not None
        if usable:
            setter(int(threads or 0), 1)
        else:
            log.warning(
                "this onnxruntime %s has no global thread pool API; each session gets its own pool", ort.__version__
            )
        _POOL.update(configured=True, threads=threads, usable=usable)
        return usable


@dataclass
class SessionFactory:
    """Builds every session of a deployment with the same options and the chosen provider."""

    threads: int | None = None
    shared_pool: bool = False
    precision: str = "fp32"
    cache_dir: Path | None = None
    choice: ProviderChoice | None = None  # the provider that won; set by ``open_first``
    trt_profiles: dict[str, dict[str, str]] | None = None  # per graph file name
    # Graph file names run on the calling thread alone (no pool): graphs too small to gain from threads,
    # e.g. a trunk that is only the embeddings (K = 0), whose extra pool only costs wake-ups.
    single_threaded: frozenset[str] = frozenset()
    spin_us: int | None = DEFAULT_SPIN_US  # per-session pools: 0 = no spinning, None = onnxruntime's default

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or None (onnxruntime picks), got {self.threads}")
        if self.spin_us is not None and (not isinstance(self.spin_us, int) or self.spin_us < 0):
            raise ConfigError(f"spin_us must be an integer >= 0 (0 = no spinning) or None, got {self.spin_us!r}")
        self._use_pool = self.shared_pool and _configure_pool(self.threads)

    def options(self, threads: int | None = None) -> Any:
        """Session options; ``threads`` overrides the factory's intra-op thread count for one session."""
        import onnxruntime as ort

        threads = threads or self.threads
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self._use_pool:
            so.use_per_session_threads = False
        else:
            if threads:
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
            if self.spin_us == 0:
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            elif self.spin_us is not None:
                so.add_session_config_entry("session.intra_op.allow_spinning", "1")
                so.add_session_config_entry("session.intra_op.spin_duration_us", str(self.spin_us))
        return so

    def session(self, path: Path, choice: ProviderChoice | None = None) -> Any:
        """One session for ``path`` on ``choice`` (default: the provider already chosen)."""
        import onnxruntime as ort

        choice = choice or self.choice or ProviderChoice(CPU)
        providers = session_provider_list(
            choice,
            ort.get_available_providers(),
            precision=self.precision,
            cache_dir=self.cache_dir,
            trt_profiles=(self.trt_profiles or {}).get(path.name),
        )
        try:
            threads = 1 if path.name in self.single_threaded else None
            return ort.InferenceSession(str(path), self.options(threads), providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException types
            if self._use_pool and "GlobalThreadPools" in str(exc):
                log.warning("onnxruntime refused the shared thread pool (%s); using per-session pools", exc)
                self._use_pool = False
                return self.session(path, choice)
            if choice.name != CPU:
                raise
            raise ArtifactError(
                f"onnxruntime cannot load {path} on CPU: {exc}. Its checksum matched, so the graph needs kernels "
                "this onnxruntime lacks (an fp16 variant may need --provider cuda) or comes from an "
                "incompatible exporter: upgrade onnxruntime or re-export the deployment"
            ) from exc

    def open_first(self, choices: Sequence[ProviderChoice], paths: Sequence[Path]) -> list[Any]:
        """Sessions for ``paths`` on the first usable provider of ``choices``; ProviderError when none is."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        problems: list[str] = []
        for i, choice in enumerate(choices):
            problem = provider_problem(choice.name, available)
            sessions: list[Any] = []
            if problem is None:
                try:
                    sessions = [self.session(p, choice) for p in paths]
                except ArtifactError:
                    raise
                except Exception as exc:
                    problem = f"{choice.name} failed to start: {exc}"
            if problem is None and any(s.get_providers()[0] != choice.name for s in sessions):
                problem = (
                    f"onnxruntime could not start {choice.name} (CUDA / cuDNN / TensorRT libraries missing "
                    "or incompatible; it fell back to CPU on its own)"
                )
            if problem is None:
                if i:
                    log.warning("execution provider fallback: using %s because %s", choice.name, "; ".join(problems))
                self.choice = choice
                return sessions
            problems.append(problem)
        raise_unavailable(list(choices), problems)
        raise AssertionError("unreachable")
