"""Stack ("stack and adapt", MAD-X): a lower adapter (e.g. a language adapter) with a task adapter on top.

A stacked task checkpoint carries the lower adapter too (frozen weights under ``lower.{layer}.{site}.*``
and its description in ``task.json``'s ``stack_on``), so a checkpoint is self-contained; a deployment
stores each distinct lower adapter once under ``shared/`` and the runtime loads it once for every task
stacked on it. The site math is :func:`adapterdeploy.models.adapters.site_with_lower`.

Both adapters of a stack must have the same signature (placement, activation, site options): they run
at the same sites with the same options, as in the adapters library where both are ``seq_bn`` or both
``double_seq_bn``. Their bottleneck sizes and layer sets may differ.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from adapterdeploy.config import AdapterConfig
from adapterdeploy.errors import ConfigError, UnsupportedAdapterError

__all__ = ["LOWER_PREFIX", "LowerAdapter", "check_stackable", "lower_digest"]

LOWER_PREFIX = "lower."


@dataclass(frozen=True)
class LowerAdapter:
    """The lower adapter of a stack: its name (e.g. ``en``), config, and where it came from."""

    name: str
    config: AdapterConfig
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config.to_dict(), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LowerAdapter:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("config"), dict):
            raise ConfigError(f"stack_on must be an object with 'name' and 'config', got {d!r:.120}")
        return cls(name=d["name"], config=AdapterConfig.from_dict(d["config"]), source=dict(d.get("source") or {}))


def check_stackable(lower: AdapterConfig, upper: AdapterConfig, where: str) -> None:
    """Refuse a stack whose two adapters would need different site graphs."""
    a, b = lower.signature(), upper.signature()
    if a != b:
        raise UnsupportedAdapterError(
            f"{where}: the lower and the upper adapter of a stack must have the same placement, activation and "
            f"site options ({a.describe_difference(b)}); train both with the same adapter config (e.g. both seq_bn)"
        )
    if lower.per_task_layernorm:
        raise UnsupportedAdapterError(f"{where}: a lower adapter with its own LayerNorms cannot be stacked on")


def lower_digest(weights: dict[str, Tensor]) -> str:
    """sha256 over a lower adapter's tensors (names, shapes, float32 bytes): equal digests = one shared copy."""
    h = hashlib.sha256()
    for k in sorted(weights):
        t = weights[k].detach().to(torch.float32).contiguous().cpu()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
