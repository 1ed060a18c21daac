"""One module per report section; each exposes ``run(ctx) -> SectionResult`` (see benchmarks.runner)."""

__all__: list[str] = []
