"""The deployment writer lock: one writer (``export --force``, ``add-task``, ``remove-task``) at a time.

Without it two ``add-task`` runs both read the manifest, both write theirs, and the last rename wins: both
print "added", one task is gone. The lock is a file beside the deployment, ``.<name>.lock`` (beside, not
inside, because ``export --force`` replaces the whole directory), taken with the ``filelock`` library
(``flock``: the kernel releases it when the holder dies, so a crash never leaves a stale lock). It is held
from reading the manifest to the final rename. The holder writes who it is (pid, host, command, since) to
``.<name>.lock.json`` so that a writer that gives up can name it.

Pure Python (filelock + json): usable by every writer, none of which needs torch for the lock itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from adapterdeploy.artifacts import current_umask
from adapterdeploy.errors import ArtifactError, LockedError

__all__ = ["DEFAULT_LOCK_TIMEOUT_S", "lock_paths", "writer_lock"]

DEFAULT_LOCK_TIMEOUT_S = 600.0


def lock_paths(deploy_dir: str | Path) -> tuple[Path, Path]:
    """(lock file, holder info file) of a deployment directory."""
    target = Path(deploy_dir).expanduser().absolute()
    return target.parent / f".{target.name}.lock", target.parent / f".{target.name}.lock.json"


def _holder(info_file: Path) -> str:
    try:
        info: dict[str, Any] = json.loads(info_file.read_text(encoding="utf-8"))
        return f"pid {info.get('pid')} on {info.get('host')} running {info.get('command')!r} since {info.get('since')}"
    except (OSError, ValueError, AttributeError):
        return "an unknown process (no lock info)"


@contextlib.contextmanager
def writer_lock(
    deploy_dir: str | Path,
    *,
    timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the deployment's exclusive writer lock for the block.

    Waits up to ``timeout`` seconds (0: fail at once; negative: wait forever) for another writer, then raises
    LockedError naming the holder. ``command`` is recorded for whoever waits on us.
    """
    lock_file, info_file = lock_paths(deploy_dir)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot create {lock_file.parent} for the writer lock: {exc.strerror}") from exc
    lock = FileLock(str(lock_file), mode=0o666 & ~current_umask())
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if log is not None:
            log(f"waiting for the writer lock on {deploy_dir}: held by {_holder(info_file)}")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise LockedError(
                f"deployment {deploy_dir} is being changed by another writer ({_holder(info_file)}); "
                f"gave up after {timeout:g} s: retry when it finishes, or raise --lock-timeout"
            ) from None
    except OSError as exc:
        raise ArtifactError(
            f"cannot take the writer lock {lock_file}: {exc}; the directory holding the deployment must be writable"
        ) from exc
    try:
        _write_info(info_file, command)
        yield
    finally:
        with contextlib.suppress(OSError):
            info_file.unlink()
        lock.release()


def _write_info(info_file: Path, command: str | None) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or " ".join(sys.argv),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = info_file.with_name(info_file.name + f".{os.getpid()}.tmp")
    with contextlib.suppress(OSError):  # the info is a courtesy for waiters: never fail the write for it
        tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
        os.replace(tmp, info_file)
