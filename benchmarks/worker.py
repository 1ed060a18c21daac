"""The worker process: ``python -m benchmarks.worker``, one system per process (see harness.Worker).

Requests (one JSON object per stdin line) and what each answers (one ``@@bench {json}`` line):

    load  {system, spec, threads}   build the system           -> {load_s, rss_bytes}
    case  {case, payload}           prepare a callable          -> {}
    run   {case, n}                 call it n times             -> {times: [s, ...]}
    call  {method, kwargs}          system.<method>(**kwargs)   -> {result}
    rss   {}                                                    -> {rss_bytes, peak_rss_bytes}
    exit  {}

The protocol uses a duplicate of the original stdout; fd 1 itself is pointed at stderr (the log) so
that nothing a library prints can corrupt it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks.memory import rss_bytes

__all__ = ["main", "rss_bytes"]

PROTOCOL_PREFIX = "@@bench "


def prepare(system: Any, payload: dict[str, Any]) -> Callable[[], object]:
    """The system's callable for ``payload``; kind ``batches`` = each call runs the next batch in turn."""
    if payload["kind"] != "batches":
        return system.prepare(payload)
    fns = [system.prepare({"kind": "batch", "rows": rows}) for rows in payload["batches"]]
    state = {"i": 0}

    def next_batch() -> object:
        fn = fns[state["i"] % len(fns)]
        state["i"] += 1
        return fn()

    return next_batch


def _unknown(op: object) -> None:
    raise ValueError(f"unknown worker op {op!r}; known: load, case, run, call, rss, exit")


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    system: Any = None
    cases: dict[str, Callable[[], object]] = {}
    clock: Callable[[], float] = time.perf_counter

    def answer(**payload: Any) -> None:
        proto.write(PROTOCOL_PREFIX + json.dumps({"ok": True, **payload}) + "\n")

    for line in sys.stdin:
        msg = json.loads(line)
        op = msg.get("op")
        try:
            if op == "exit":
                answer()
                break
            if op == "load":
                from benchmarks.systems import create_system

                # "clock": "thread" in a spec times calls in CPU seconds of the calling thread (one-thread systems
                # on a shared machine: other processes' load barely moves it); default wall time.
                clock = time.thread_time if msg["spec"].get("clock") == "thread" else time.perf_counter
                t0 = time.perf_counter()
                system = create_system(msg["system"], msg["spec"], int(msg["threads"]))
                answer(load_s=time.perf_counter() - t0, **rss_bytes())
            elif op == "case":
                cases[msg["case"]] = prepare(system, msg["payload"])
                answer()
            elif op == "run":
                fn = cases[msg["case"]]
                times = []
                for _ in range(int(msg["n"])):
                    t0 = clock()
                    fn()
                    times.append(clock() - t0)
                answer(times=times)
            elif op == "call":
                result = getattr(system, msg["method"])(**msg.get("kwargs", {}))
                answer(result=result)
            elif op == "rss":
                answer(**rss_bytes())
            else:
                _unknown(op)
        except Exception as exc:
            traceback.print_exc()
            error = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            proto.write(PROTOCOL_PREFIX + json.dumps(error) + "\n")


if __name__ == "__main__":
    main()
