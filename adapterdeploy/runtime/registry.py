"""TaskRegistry: tasks *known* (on disk) vs *loaded* (weights in memory), with LRU eviction under a budget.

Two levels, as in vLLM's LoRA manager: registering a task only records where it lives; its weights are read
on first use (or an explicit load) and evicted when the budget (a count and/or a byte size) needs room.
The victim is the unpinned loaded task with the lowest priority, least recently used among equals.
Evicted tasks stay known and reload on demand. Pinned tasks are never evicted; when every loaded task is
pinned and the budget is full, loading another raises RegistryFullError naming the pins and the fix.

The registry is generic: a ``loader(name, source)`` returns ``(payload, size_bytes)``; the runtime's payload
is a task's bank rows + head. Thread-safe: one lock guards the tables; the file read happens outside it
(a per-task lock stops two threads reading the same task twice), so a slow load never blocks predictions
of loaded tasks. A payload handed out stays valid after its eviction (it is simply no longer cached), so
an in-flight batch never sees its weights change under it.

A task whose loader raised (unreadable or corrupt files, MemoryError, ...) or that the runtime reported
with :meth:`TaskRegistry.mark_failed` (its head or weights failed in a batch) is *failed*: it holds no
weights, its uses raise TaskFailedError at once (no retry storm against broken files), and it stays so
until an explicit :meth:`TaskRegistry.load` (a reload) or a new source clears it.

Scale: a deployment may know 10,000 tasks with 1,000 loaded. Every per-request operation (get, load,
evict, counts) costs O(1) or O(loaded), never O(known): the loaded tasks sit in their own ordered dict
(least recently used first) with running byte and count totals; only the listings walk every known task.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from adapterdeploy.errors import ConfigError, RegistryFullError, TaskFailedError, UnknownTaskError

__all__ = ["TaskInfo", "TaskRegistry", "failed_error"]

State = Literal["known", "loaded", "pinned", "failed"]
Loader = Callable[[str, Path], tuple[Any, int]]
EvictCallback = Callable[[str, int, str], None]  # (name, bytes freed, "evicted" | "unloaded" | "replaced" | "failed")


@dataclass(frozen=True)
class TaskInfo:
    """A snapshot of one task's registry entry."""

    name: str
    state: State
    size_bytes: int  # bytes held in memory when loaded; last loaded size (or 0) otherwise
    last_used: float | None  # wall-clock time of the last use, None if never used
    use_count: int
    priority: int
    source: str  # the task directory it loads from
    error: str | None = None  # why the task failed (state "failed"); None otherwise


@dataclass
class _Entry:
    name: str
    source: str  # kept as a str: 10,000 Path objects cost ~0.1-0.3 s at open; the loader gets a Path
    priority: int = 0
    pinned: bool = False
    payload: Any = None
    size: int = 0
    last_used: float | None = None
    tick: int = 0
    use_count: int = 0
    error: str | None = None  # set while the task is failed

    @property
    def loaded(self) -> bool:
        return self.payload is not None


class TaskRegistry:
    """Known and loaded tasks with a count / byte budget and LRU + priority eviction (thread-safe)."""

    def __init__(
        self,
        loader: Loader,
        *,
        max_loaded: int | None = None,
        max_bytes: int | None = None,
        on_evict: EvictCallback | None = None,
    ) -> None:
        if max_loaded is not None and max_loaded < 1:
            raise ConfigError(f"max_loaded_tasks must be >= 1 or None (no limit), got {max_loaded}")
        if max_bytes is not None and max_bytes < 1:
            raise ConfigError(f"memory_budget_bytes must be >= 1 or None (no limit), got {max_bytes}")
        self._loader = loader
        self.max_loaded = max_loaded
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self._entries: dict[str, _Entry] = {}
        self._loaded: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._loaded_bytes = 0
        self._failed: set[str] = set()  # names whose entry has an error: failed() is O(failed), not O(known)
        self._lock = threading.RLock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._tick = 0
        self.version = 0  # bumped whenever the loaded set changes

    # ---- known level -------------------------------------------------------------------------
    def add(self, name: str, source: str | Path, *, priority: int = 0) -> None:
        """Register a task (known, not loaded). Re-adding a name with a new source drops its loaded weights."""
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old.source == str(source):
                return
            if old is not None and old.loaded:
                self._drop(old, "replaced")
            self._entries[name] = _Entry(name=name, source=str(source), priority=priority)
            self._failed.discard(name)

    def remove(self, name: str) -> None:
        """Forget a task entirely (unload it first if loaded)."""
        with self._lock:
            entry = self._get(name)
            if entry.loaded:
                self._drop(entry, "unloaded")
            del self._entries[name]
            self._failed.discard(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries  # one dict lookup is atomic under the GIL: no lock on the hot path

    def __len__(self) -> int:
        return len(self._entries)

    def known_summary(self, shown: int = 10) -> str:
        """``a, b, c, ... (N tasks)``: error messages name a few tasks, not 10,000."""
        with self._lock:
            names = sorted(self._entries)
        if not names:
            return "none"
        more = f", ... ({len(names)} tasks)" if len(names) > shown else ""
        return ", ".join(names[:shown]) + more

    def is_loaded(self, name: str) -> bool:
        """Whether ``name`` is known and its weights are in memory now (no use counted, no load)."""
        return name in self._loaded

    # ---- loaded level ------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        """The task's payload, loading it if needed; counts as a use (LRU order, use_count)."""
        return self._ensure(name, touch=True)

    def load(self, name: str, *, pin: bool | None = None, priority: int | None = None) -> TaskInfo:
        """Load (if needed) and optionally pin / re-prioritise; does not count as a use."""
        with self._lock:
            entry = self._get(name)
            if priority is not None:
                entry.priority = int(priority)
        self._ensure(name, touch=False, pin=pin, reload=True)
        return self.info(name)

    def prefetch(self, name: str) -> None:
        """Load ahead of use, as a use would (no use counted): a failed task, or one whose read fails now,
        raises TaskFailedError (not retried: only :meth:`load` reloads a failed task)."""
        self._ensure(name, touch=False)

    def unload(self, name: str) -> None:
        """Drop the task's weights (it stays known) and unpin it; a no-op when it is not loaded."""
        with self._lock:
            entry = self._get(name)
            entry.pinned = False
            if entry.loaded:
                self._drop(entry, "unloaded")

    def mark_failed(self, name: str, reason: str) -> TaskFailedError:
        """Take a task out of service (its weights are dropped) until it is reloaded; returns the error to raise.

        Called by the runtime when a task's head or weights failed inside a batch. Unknown names are ignored
        (the task was removed meanwhile).
        """
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                self._fail(entry, reason)
            return failed_error(name, reason)

    def error_of(self, name: str) -> str | None:
        """Why ``name`` failed, or None (also for unknown names); O(1), for per-request checks."""
        with self._lock:
            entry = self._entries.get(name)
            return entry.error if entry is not None else None

    def failed(self) -> dict[str, str]:
        """Failed tasks and why, sorted by name (O(failed): a readiness probe or a scrape never walks every task)."""
        with self._lock:
            return {n: str(self._entries[n].error) for n in sorted(self._failed)}

    def failed_count(self) -> int:
        return len(self._failed)

    def pin(self, name: str, pinned: bool = True) -> None:
        """Pin (never evicted) or unpin a task; pinning loads it."""
        if pinned:
            self._ensure(name, touch=False, pin=True)
        else:
            with self._lock:
                self._get(name).pinned = False

    def info(self, name: str) -> TaskInfo:
        with self._lock:
            return self._info(self._get(name))

    def infos(self, *, offset: int = 0, limit: int | None = None, loaded_only: bool = False) -> list[TaskInfo]:
        """Entries sorted by name; ``offset`` / ``limit`` page through them (``loaded_only``: loaded ones only)."""
        if offset < 0 or (limit is not None and limit < 0):
            raise ConfigError(f"offset and limit must be >= 0, got offset={offset}, limit={limit}")
        with self._lock:
            names = sorted(self._loaded if loaded_only else self._entries)
            stop = None if limit is None else offset + limit
            return [self._info(self._entries[n]) for n in names[offset:stop]]  # slicing takes any int

    def loaded_names(self) -> list[str]:
        """Loaded tasks, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def loaded_count(self) -> int:
        return len(self._loaded)

    def loaded_snapshot(self) -> tuple[int, list[Any]]:
        """(version, payloads of every loaded task), taken atomically; no use is counted."""
        with self._lock:
            return self.version, [e.payload for e in self._loaded.values()]

    def loaded_bytes(self) -> int:
        return self._loaded_bytes

    # ---- internals ---------------------------------------------------------------------------
    def _get(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            known = self.known_summary()
            raise UnknownTaskError(
                f"unknown task {name!r}; known tasks: {known}. Add one with load_task(PATH) or 'adapterdeploy add-task'"
            )
        return entry

    def _info(self, e: _Entry) -> TaskInfo:
        state: State = (
            "failed"
            if e.error is not None
            else "pinned"
            if e.pinned and e.loaded
            else "loaded"
            if e.loaded
            else "known"
        )
        return TaskInfo(
            name=e.name,
            state=state,
            size_bytes=e.size,
            last_used=e.last_used,
            use_count=e.use_count,
            priority=e.priority,
            source=str(e.source),
            error=e.error,
        )

    def _fail(self, entry: _Entry, reason: str) -> None:
        if entry.loaded:
            self._drop(entry, "failed")
        entry.error = reason
        self._failed.add(entry.name)

    def _touch(self, entry: _Entry, use: bool) -> None:
        self._tick += 1
        entry.tick = self._tick
        if entry.name in self._loaded:
            self._loaded.move_to_end(entry.name)
        if use:
            entry.use_count += 1
            entry.last_used = time.time()

    def _ensure(self, name: str, *, touch: bool, pin: bool | None = None, reload: bool = False) -> Any:
        """The payload, loading it when needed. A failed task raises TaskFailedError unless ``reload``."""
        with self._lock:
            entry = self._get(name)
            if entry.error is not None and not reload:
                raise failed_error(name, entry.error)
            if entry.loaded:
                self._touch(entry, touch)
                if pin is not None:
                    entry.pinned = pin
                return entry.payload
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:
            with self._lock:
                entry = self._get(name)
                if entry.error is not None and not reload:  # it failed while we waited
                    raise failed_error(name, entry.error)
                if entry.loaded:  # another thread loaded it while we waited
                    self._touch(entry, touch)
                    if pin is not None:
                        entry.pinned = pin
                    return entry.payload
                source = entry.source
                self._victim(name, 0)  # fail before reading the file when only pins fill the count budget
            try:
                payload, size = self._loader(name, Path(source))  # file I/O outside the registry lock
            except Exception as exc:  # any failure (unreadable file, MemoryError, ...) takes the task out
                with self._lock:
                    current = self._entries.get(name)
                    if current is not None and current.source == source:
                        self._fail(current, _describe(exc))
                if reload:
                    raise  # an explicit (re)load reports the loader's own typed error
                raise failed_error(name, _describe(exc)) from exc
            with self._lock:
                entry = self._get(name)
                if entry.source != source:  # re-registered elsewhere meanwhile: our read is stale
                    return self._ensure(name, touch=touch, pin=pin, reload=reload)
                self._make_room(name, size)
                entry.payload, entry.size, entry.error = payload, size, None
                self._failed.discard(name)
                self._loaded[name] = entry
                self._loaded_bytes += size
                if pin is not None:
                    entry.pinned = pin
                self._touch(entry, touch)
                self.version += 1
                return payload

    def _make_room(self, name: str, size: int) -> None:
        """Evict until ``size`` more bytes and one more task fit; raise when only pins are left."""
        while (victim := self._victim(name, size)) is not None:
            self._drop(victim, "evicted")

    def _victim(self, name: str, size: int) -> _Entry | None:
        """The entry to evict for ``name`` to fit (None: it fits); RegistryFullError when it never can."""
        if self.max_bytes is not None and size > self.max_bytes:
            raise RegistryFullError(
                f"task {name!r} needs {size} bytes, more than the whole memory_budget_bytes={self.max_bytes}; "
                "raise memory_budget_bytes (CLI: --memory-budget)"
            )
        me = self._loaded.get(name)
        others = len(self._loaded) - (me is not None)
        over_count = self.max_loaded is not None and others + 1 > self.max_loaded
        used = self._loaded_bytes - (me.size if me is not None else 0)
        over_bytes = self.max_bytes is not None and used + size > self.max_bytes
        if not (over_count or over_bytes):
            return None
        loaded = [e for e in self._loaded.values() if e is not me]
        victims = [e for e in loaded if not e.pinned]
        if not victims:
            pins = ", ".join(sorted(e.name for e in loaded))
            budget = (
                f"max_loaded_tasks={self.max_loaded}"
                if over_count
                else f"memory_budget_bytes={self.max_bytes} ({used} in use, {size} needed)"
            )
            raise RegistryFullError(
                f"cannot load task {name!r}: the budget ({budget}) is full and every loaded task is pinned "
                f"({pins}); unpin or unload one (unload_task / load_task(name, pin=False)) or raise the budget"
            )
        return min(victims, key=lambda e: e.priority)  # min keeps the first of equals: LRU order

    def _drop(self, entry: _Entry, reason: str) -> None:
        """Forget the payload; the callback runs under the registry lock, so it must be quick."""
        size = entry.size
        entry.payload = None
        entry.pinned = False
        if self._loaded.pop(entry.name, None) is not None:
            self._loaded_bytes -= size
        self.version += 1
        if self._on_evict is not None:
            self._on_evict(entry.name, size, reason)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def failed_error(name: str, reason: str) -> TaskFailedError:
    """The error a failed task's rows get: the reason and how to bring the task back."""
    return TaskFailedError(
        f"task {name!r} failed and is out of service until it is reloaded ({reason}); fix its files, then "
        f"reload it (admin: POST /v2/repository/models/{name}/load; Python: Deployment.load_task) or restart"
    )
