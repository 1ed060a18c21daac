"""Section 0: this machine's measured GEMM peak (fp32, int8), the denominator of every '% of peak'."""

from __future__ import annotations

from benchmarks.sections.common import SectionResult, Table, monitored
from benchmarks.settings import Context

__all__ = ["run"]


def run(ctx: Context) -> SectionResult:
    result = SectionResult("peak", "0. Machine peak: measured GEMM throughput")
    # Shapes of the encoders' own GEMMs (tokens x hidden x FFN) and two square ones.
    shapes = [[4096, 384, 1536], [4096, 768, 3072], [1024, 1024, 1024]]
    if ctx.settings.quick:
        shapes = [[512, 256, 1024]]
    w = ctx.worker("peak", "peak", {"shapes": shapes, "min_time": 0.15 if ctx.settings.quick else 1.0})

    def measure() -> dict:
        with w:
            w.start().wait_loaded()
            return w.request("call", method="measure")["result"]

    peak = monitored(result, "peak", measure)
    ctx.peak = peak
    result.raw = peak
    t = Table(
        "GEMM throughput per shape (M x K x N), median of repeated calls",
        ["backend", "precision", "shape", "GFLOP/s (GOP/s for int8)"],
    )
    for r in peak["rows"]:
        t.rows.append([r["backend"], r["precision"], " x ".join(map(str, r["shape"])), f"{r['gflops']:.1f}"])
    result.tables.append(t)
    result.notes.append(
        f"peak fp32 {peak['peak_gflops']['fp32']:.1f} GFLOP/s, int8 {peak['peak_gflops']['int8']:.1f} GOP/s "
        f"with {peak['threads']} threads (the best shape of each precision)."
    )
    return result
