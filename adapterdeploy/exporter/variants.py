"""Build the featurizer graphs of every precision: export, fuse, quantize, check parity, time, choose.

For each precision the candidates are the plain graphs and the fused ones (onnxruntime's BERT fusions);
the kept variant is the fastest candidate that passes parity (fp32) or simply the fastest (int8, whose
parity is recorded, not enforced). Speed is the wall time of trunk + adapted per call with sessions opened
as the runtime opens them (its default thread count and spin), median of interleaved runs, summed over two
small batches (1 x 32 and 8 mixed rows x 32 tokens). Earlier exports timed the CPU time of one intra-op
thread, steadier on a shared machine but blind to how each graph gains from a second thread (see
``_time_candidates``). fp16 is converted from the
kept fp32 graphs; its parity is measured where onnxruntime can run it (CPU kernels permitting), and it
is not timed on CPU.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapterdeploy.artifacts import VariantSpec
from adapterdeploy.errors import ParityError
from adapterdeploy.exporter.featurizer import Adapted, Trunk
from adapterdeploy.exporter.onnx_graphs import export_adapted, export_trunk
from adapterdeploy.exporter.optimize import interleaved_medians, op_counts, optimize_graph
from adapterdeploy.exporter.parity import (
    GraphRunner,
    ParityBatch,
    ParityResult,
    batch_bank,
    raise_on_failures,
    run_parity,
)
from adapterdeploy.exporter.quantize import convert_fp16, graph_io_dtypes, quantize_bank_matmuls, quantize_int8

__all__ = ["ParityInputs", "build_variants"]

FP32_IO = ("hidden", "cls", "mean", "pooled", "tokens")


@dataclass
class ParityInputs:
    """Everything parity needs besides the graphs: tasks, heads, bank, batches and references."""

    tasks: Sequence[str]
    features: Sequence[str]  # the adapted output each task's head reads (HeadConfig.feature)
    classification: Sequence[bool]
    heads: dict[str, Path]
    rows: Sequence[Mapping[str, Any]]  # each task's bank rows (torch); a batch's bank is stacked from its tasks'
    batches: Sequence[ParityBatch]
    refs: Sequence[Mapping[int, Any]]
    timing: Sequence[ParityBatch]

    def run(self, trunk: Path, adapted: Path, runner: GraphRunner | None = None) -> tuple[ParityResult, GraphRunner]:
        """Parity of these graphs; ``runner``: sessions of them already open (add-task keeps one per precision
        across its task groups), given these heads."""
        if runner is None:
            runner = GraphRunner(trunk, adapted, self.heads)
        else:
            runner.use_heads(self.heads)
        return run_parity(
            runner, self.tasks, self.features, self.classification, self.rows, self.batches, self.refs
        ), runner


def _timer(runner: GraphRunner, batch: ParityBatch, bank: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: runner.features(batch, bank)


TIMING_REPEATS = 15


def _time_candidates(candidates: dict[str, tuple[Path, Path]], parity: ParityInputs) -> dict[str, Any]:
    """Wall time per call with the sessions the runtime will open (its default threads and spin), interleaved.

    Not the CPU time of one thread: a fused graph's Attention / SkipLayerNormalization kernels gain more
    from a second thread than the unfused graph's many small nodes, so one thread can rank them the other
    way round from what the runtime then runs (issue 15: AdapterHub seq_bn kept the unfused graph).
    """
    from adapterdeploy.runtime.options import RuntimeOptions
    from adapterdeploy.runtime.sessions import SessionFactory

    options = RuntimeOptions()
    runners = {
        n: GraphRunner(t, a, {}, factory=SessionFactory(threads=options.threads, spin_us=options.spin_us))
        for n, (t, a) in candidates.items()
    }
    keys = next(iter(runners.values())).bank_names
    per_batch = {}
    for b in parity.timing:
        local, bank = batch_bank(parity.rows, keys, b)
        fns = {n: _timer(r, local, r.bank_feeds(bank)) for n, r in runners.items()}  # int8 rows: quantized once
        per_batch[b.name] = interleaved_medians(fns, repeats=TIMING_REPEATS, clock=time.perf_counter)
    totals = {n: round(sum(ms[n] for ms in per_batch.values()), 3) for n in candidates}
    return {"batches": per_batch, "candidates": totals, "threads": options.threads, "spin_us": options.spin_us}


def _onnx_load(path: Path):
    import onnx

    return onnx.load(str(path))


def build_variants(
    root: Path,
    work: Path,
    trunk: Trunk,
    adapted: Adapted,
    *,
    example_bank: Sequence[Any],
    precisions: Sequence[str],
    opset: int,
    tolerance: float,
    num_heads: int,
    hidden_size: int,
    vocab_size: int,
    parity: ParityInputs,
    log: Callable[[str], None] = lambda _m: None,
) -> tuple[dict[str, VariantSpec], dict[str, ParityResult]]:
    """Write ``featurizer/trunk[.p].onnx`` / ``adapted[.p].onnx`` under ``root``; return variants and parity.

    ``example_bank`` is the bank the adapted graph is traced with (a few tasks: its T axis is dynamic).
    """
    fz = root / "featurizer"
    fz.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log(f"exporting trunk and adapted graphs (TorchScript, opset {opset})")
    plain = (work / "trunk.plain.onnx", work / "adapted.plain.onnx")
    export_trunk(trunk, plain[0], opset=opset, vocab_size=vocab_size)
    export_adapted(adapted, plain[1], opset=opset, hidden_size=hidden_size, bank=example_bank)
    log("fusing with onnxruntime's transformer optimizer")
    fused = (work / "trunk.fused.onnx", work / "adapted.fused.onnx")
    counts = {"plain": {"trunk": op_counts(_onnx_load(plain[0])), "adapted": op_counts(_onnx_load(plain[1]))}}
    counts["fused"] = {
        "trunk": optimize_graph(plain[0], fused[0], num_heads=num_heads, hidden_size=hidden_size),
        "adapted": optimize_graph(plain[1], fused[1], num_heads=num_heads, hidden_size=hidden_size),
    }
    candidates = {"plain": plain, "fused": fused}

    variants: dict[str, VariantSpec] = {}
    results: dict[str, ParityResult] = {}
    log("checking fp32 parity against PyTorch and timing plain vs fused")
    chosen, spec, result = _choose(candidates, counts, parity, tolerance, enforce=True)
    variants["fp32"] = _place(spec, candidates[chosen], fz, "", "fp32")
    results["fp32"] = result
    if "int8" in precisions:
        log("quantizing to int8 (dynamic) and recording its parity")
        q = {name: (work / f"trunk.{name}.int8.onnx", work / f"adapted.{name}.int8.onnx") for name in candidates}
        int8_bank: dict[str, list[str]] = {}
        for name, (t, a) in candidates.items():
            quantize_int8(t, q[name][0])
            quantize_int8(a, q[name][1])
            int8_bank[name] = quantize_bank_matmuls(q[name][1], q[name][1])  # the adapters' MatMuls too
        qcounts = {
            n: {"trunk": op_counts(_onnx_load(p[0])), "adapted": op_counts(_onnx_load(p[1]))} for n, p in q.items()
        }
        chosen8, spec8, result8 = _choose(q, qcounts, parity, tolerance, enforce=False)
        bank8 = "+int8-bank" if int8_bank[chosen8] else ""  # int8 bank rows (runtime/bank.py), since issue 15
        variants["int8"] = _place(spec8, q[chosen8], fz, ".int8", "int8", f"{chosen8}+int8-dynamic{bank8}")
        results["int8"] = result8
    if "fp16" in precisions:
        log("converting to fp16")
        t16, a16 = work / "trunk.fp16.onnx", work / "adapted.fp16.onnx"
        src = candidates[chosen]
        convert_fp16(src[0], t16, keep_fp32_io=FP32_IO)
        convert_fp16(src[1], a16, keep_fp32_io=FP32_IO)
        spec16: dict[str, Any] = {
            "op_counts": {"trunk": op_counts(_onnx_load(t16)), "adapted": op_counts(_onnx_load(a16))},
            "timings": {"measured": False, "reason": "fp16 targets GPU providers; not timed on CPU"},
        }
        try:
            result16, _ = parity.run(t16, a16)
            spec16["parity"] = {**result16.summary(), "reference": "pytorch fp32", "provider": "CPUExecutionProvider"}
            results["fp16"] = result16
        except Exception as exc:  # onnxruntime raises its own types for missing fp16 CPU kernels
            reason = f"onnxruntime CPU could not run the fp16 graph: {exc}"[:300]
            spec16["parity"] = {"measured": False, "reason": reason}
        variants["fp16"] = _place(spec16, (t16, a16), fz, ".fp16", "fp16", f"{chosen}+fp16")
    return variants, results


def _choose(
    candidates: dict[str, tuple[Path, Path]],
    counts: dict[str, Any],
    parity: ParityInputs,
    tolerance: float,
    *,
    enforce: bool,
) -> tuple[str, dict[str, Any], ParityResult]:
    """Parity of every candidate, interleaved timings, the fastest eligible one."""
    results = {name: parity.run(t, a)[0] for name, (t, a) in candidates.items()}
    eligible = [n for n in candidates if not enforce or not results[n].failures(tolerance)]
    if not eligible:
        worst = min(candidates, key=lambda n: max(results[n].failures(tolerance).values()))
        try:
            raise_on_failures(results[worst], tolerance, f"featurizer ({worst} graphs)")
        except ParityError as exc:
            others = {n: results[n].summary() for n in candidates if n != worst}
            raise ParityError(f"{exc} (other candidates: {others})", exc.failures) from None
    measured = _time_candidates(candidates, parity)
    timings = measured["candidates"]
    chosen = min(eligible, key=lambda n: timings[n])
    spec = {
        "op_counts": counts[chosen],
        "parity": {
            **results[chosen].summary(),
            "tolerance": tolerance if enforce else None,
            "passed": not results[chosen].failures(tolerance) if enforce else None,
        },
        "timings": {
            "unit": "ms of wall time per call of trunk + adapted, sessions opened as the runtime opens them "
            f"(threads {measured['threads'] or 'one per core'}, spin {measured['spin_us']} us), median of "
            f"{TIMING_REPEATS} interleaved runs; candidates = sum over the batches",
            "clock": "wall",
            "threads": measured["threads"],
            "spin_us": measured["spin_us"],
            "batches": measured["batches"],
            "candidates": timings,
            "candidate_parity": {n: results[n].summary() for n in candidates},
            "candidate_op_counts": {n: counts[n] for n in candidates if n != chosen},
            "chosen": chosen,
        },
    }
    return chosen, spec, results[chosen]


def _place(
    spec: dict[str, Any],
    paths: tuple[Path, Path],
    fz: Path,
    suffix: str,
    precision: str,
    optimization: str | None = None,
) -> VariantSpec:
    trunk_dst, adapted_dst = fz / f"trunk{suffix}.onnx", fz / f"adapted{suffix}.onnx"
    shutil.copyfile(paths[0], trunk_dst)  # copies: other precisions are built from the work files
    shutil.copyfile(paths[1], adapted_dst)
    chosen = spec.get("timings", {}).get("chosen")
    return VariantSpec(
        precision=precision,
        trunk=f"featurizer/{trunk_dst.name}",
        adapted=f"featurizer/{adapted_dst.name}",
        optimization=optimization or ("ort-bert-fusions" if chosen == "fused" else "none"),
        op_counts=spec["op_counts"],
        parity=spec.get("parity", {}),
        timings=spec.get("timings", {}),
        io_dtypes={"trunk": graph_io_dtypes(trunk_dst), "adapted": graph_io_dtypes(adapted_dst)},
    )
