"""Resident memory of this process, as the benchmarks report it (Linux /proc; no dependency)."""

from __future__ import annotations

__all__ = ["rss_bytes"]


def rss_bytes() -> dict[str, int]:
    """Current resident set size (VmRSS) and this process's peak (VmHWM), from /proc/self/status.

    Not ``ru_maxrss``: Linux keeps that across execve, so a worker spawned by a large parent would report
    the parent's peak.
    """
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0]) * 1024  # kB
    return {"rss_bytes": fields["VmRSS"], "peak_rss_bytes": fields["VmHWM"]}
