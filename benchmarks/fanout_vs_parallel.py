"""Fan-out A/B in one process: deployments' ``fan_out([text], n tasks)`` and single ``predict`` against the
adapters library's ``Parallel(n)`` and single-adapter call, interleaved rounds, medians.

    python -m benchmarks.fanout_vs_parallel --deployment old=DIR --deployment new=DIR --adapter-drop 3

Each ``--deployment`` gets ``n`` clone tasks of its ``t0000`` (``benchmarks.prepare.clone_tasks``, written
under ``--work``) and is timed in every precision it has. ``--clock cpu`` (process CPU time; use it with
``--threads 1``) is what to quote on a shared machine: wall time of 2 threads there measures the other
processes as much as the code (eager PyTorch with 2 OpenMP threads took 1.3-2.4 s per MiniLM call at load
average 8). Why one process rather than the section's workers: two exports of the same tasks (before /
after a featurizer change) run under the same conditions, call by call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

TEXT = "/ but daphne , you 're too buff / fred thinks he 's tough / and velma - wow , you 've lost weight !"


@click.command()
@click.option("--deployment", "deployments", multiple=True, required=True, help="NAME=DIR (repeatable).")
@click.option("--adapter-drop", type=int, required=True, help="K of the deployments (the library leaves out [0, K)).")
@click.option("--tasks", "n", type=int, default=8, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--clock", type=click.Choice(["cpu", "wall"]), default="cpu", show_default=True)
@click.option("--rounds", type=int, default=9, show_default=True)
@click.option("--block-s", type=float, default=0.2, show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/fanout-ab"), show_default=True)
@click.option("--no-parallel", is_flag=True, help="Leave the adapters library out.")
def main(
    deployments: tuple[str, ...],
    adapter_drop: int,
    n: int,
    threads: int,
    clock: str,
    rounds: int,
    block_s: float,
    work: Path,
    no_parallel: bool,
) -> None:
    from adapterdeploy.models.base import default_base_dir
    from adapterdeploy.runtime import Deployment
    from benchmarks.prepare import ADAPTER_STD, REDUCTION_FACTOR, clone_tasks
    from benchmarks.systems import create_system

    now = time.process_time if clock == "cpu" else time.perf_counter
    cases: dict[str, Callable[[], Any]] = {}
    tokenizer = ""
    for spec in deployments:
        name, _, folder = spec.partition("=")
        root = Path(folder)
        tokenizer = str(root / "tokenizer.json")
        clones = clone_tasks(SimpleNamespace(work=work / name), root, "t0000", "f", n)  # type: ignore[arg-type]
        for precision in Deployment.open(root).manifest.precisions:
            d = Deployment.open(root, precision=precision, threads=threads)
            tasks = [d.load_task(c).name for c in clones]
            cases[f"{name}-{precision} fan-out"] = lambda d=d, t=tasks: d.fan_out([TEXT], tasks=t)
            cases[f"{name}-{precision} single"] = lambda d=d, t=tasks: d.predict([TEXT], task=t[0])
    if not no_parallel:
        spec_ = {
            "base_dir": str(default_base_dir()),
            "adapters": n,
            "reduction_factor": REDUCTION_FACTOR,
            "activation": "relu",
            "init_std": ADAPTER_STD,
            "adapter_drop": adapter_drop,
            "tokenizer": tokenizer,
            "max_length": 128,
        }
        lib = create_system("torch_adapterhub_parallel", spec_, threads)
        names = [f"t{i}" for i in range(n)]
        cases["Parallel fan-out"] = lib.prepare({"kind": "fanout", "text": TEXT, "tasks": names})
        cases["Parallel single"] = lib.prepare({"kind": "separate", "text": TEXT, "tasks": names[:1]})
    for fn in cases.values():
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    items = list(cases.items())
    for r in range(rounds):
        for key, fn in items[r % len(items) :] + items[: r % len(items)]:
            t0, calls = now(), 0
            while now() - t0 < block_s:
                fn()
                calls += 1
            times[key].append((now() - t0) / calls)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    click.echo(f"{n} tasks, K={adapter_drop}, {threads} thread(s), {clock} time, {rounds} rounds; ms per call")
    for key, ms in med.items():
        click.echo(f"  {key:>24}  {ms:8.2f}")
    for system in dict.fromkeys(k.rsplit(" ", 1)[0] for k in med):
        line = f"  {system}: fan-out / single = {med[system + ' fan-out'] / med[system + ' single']:.2f}x"
        if "Parallel fan-out" in med and system != "Parallel":
            line += f"; Parallel fan-out / this fan-out = {med['Parallel fan-out'] / med[system + ' fan-out']:.2f}x"
        click.echo(line)


if __name__ == "__main__":
    main()
