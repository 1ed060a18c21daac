"""adapterdeploy's benchmarks: ``python -m benchmarks [--quick]`` (or ``adapterdeploy bench``).

Layout: ``harness`` (worker processes, interleaved timing, load monitor), ``worker`` (the process side),
``systems`` (what is compared), ``peak`` (GEMM peak, FLOP counts), ``workloads`` (the inputs), ``prepare``
(models, exports, deployments), ``sections/`` (one module per report section), ``report`` + ``targets``
(markdown, JSON, plots), ``runner`` / ``__main__`` (the command). Results go to ``benchmarks/results/``.
"""

__all__: list[str] = []
