"""onnxruntime execution providers: CPU by default, CUDA and TensorRT on request, never a silent fallback.

A user asks for providers by short name (``"cpu"``, ``"cuda"``, ``"tensorrt"``) or by onnxruntime's own name,
optionally with options: ``("tensorrt", {"trt_fp16_enable": True})``. The list is a *fallback list* in order
of preference: ``["cuda"]`` means CUDA or an error, ``["cuda", "cpu"]`` means CUDA, else CPU with a logged
warning. TensorRT gets CUDA (when available) as its partner for the nodes TensorRT does not take; CPU is
always last in the session's list because onnxruntime places unsupported nodes there; neither is a fallback
in the user's sense.

Why the explicit checks: onnxruntime silently runs on CPU when the CUDA libraries or the GPU are missing,
so a deployment that "uses CUDA" can be 20x slower without anyone noticing. We check before the session
(is the provider compiled in? is there a device?) and after (did the session keep it?).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterdeploy.errors import ConfigError, ProviderError
from adapterdeploy.runtime.options import ProviderSpec

__all__ = [
    "CPU",
    "CUDA",
    "TENSORRT",
    "ProviderChoice",
    "ProviderSpec",
    "cuda_device_problem",
    "normalize_providers",
    "provider_problem",
    "session_provider_list",
    "trt_profile_options",
]

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
GPU_PROVIDERS = (CUDA, TENSORRT)


@dataclass(frozen=True)
class ProviderChoice:
    """One requested provider: onnxruntime name + options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_gpu(self) -> bool:
        return self.name in GPU_PROVIDERS


def normalize_providers(providers: Sequence[ProviderSpec] | ProviderSpec | None) -> list[ProviderChoice]:
    """Turn the user's ``providers`` argument into ProviderChoices (None -> CPU only)."""
    if providers is None:
        return [ProviderChoice(CPU)]
    if isinstance(providers, str) or (
        isinstance(providers, tuple) and len(providers) == 2 and isinstance(providers[1], dict)
    ):
        providers = [providers]
    out: list[ProviderChoice] = []
    for spec in providers:
        name, options = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
        if not isinstance(name, str):
            raise ConfigError(f"a provider is a name or (name, options), got {spec!r}")
        full = ALIASES.get(name.lower(), name)
        if full not in (CPU, CUDA, TENSORRT):
            raise ConfigError(
                f"unknown execution provider {name!r}; choose cpu, cuda or tensorrt "
                "(or CPUExecutionProvider / CUDAExecutionProvider / TensorrtExecutionProvider)"
            )
        out.append(ProviderChoice(full, options))
    if not out:
        raise ConfigError("providers is an empty list; pass None for CPU or e.g. ['cuda', 'cpu']")
    return out


def cuda_device_problem() -> str | None:
    """Why no CUDA device can be used here, or None when the driver reports at least one device.

    Asks the NVIDIA driver API directly (libcuda) so that no CUDA toolkit, torch or session is needed.
    """
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return "no CUDA device (the NVIDIA driver library libcuda was not found on this machine)"
    try:
        if lib.cuInit(0) != 0:
            return "no CUDA device (the NVIDIA driver is installed but cuInit failed: no GPU visible)"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            return "no CUDA device (the NVIDIA driver reports 0 GPUs; check CUDA_VISIBLE_DEVICES)"
    except AttributeError:
        return "no CUDA device (libcuda lacks the driver API)"
    return None


def provider_problem(name: str, available: Sequence[str]) -> str | None:
    """Why provider ``name`` cannot run here (None when it can, as far as can be told before a session)."""
    if name == CPU:
        return None
    if name not in available:
        offered = ", ".join(available) or "nothing"
        return (
            f"onnxruntime-gpu is not installed: this onnxruntime build offers {offered}, not {name}; "
            "pip uninstall onnxruntime && pip install 'adapterdeploy[gpu]' (it brings onnxruntime-gpu)"
        )
    return cuda_device_problem()


def session_provider_list(
    choice: ProviderChoice,
    available: Sequence[str],
    *,
    precision: str,
    cache_dir: Path | None,
    trt_profiles: dict[str, str] | None = None,
) -> list[Any]:
    """The provider list handed to ``InferenceSession`` for one primary choice (partners and CPU appended)."""
    if choice.name == CPU:
        return [(CPU, dict(choice.options))]
    providers: list[Any] = []
    if choice.name == TENSORRT:
        opts: dict[str, Any] = {"trt_fp16_enable": precision == "fp16"}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            opts.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(cache_dir),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(cache_dir),
            )
        opts.update(trt_profiles or {})
        opts.update(choice.options)
        providers.append((TENSORRT, opts))
        if CUDA in available:
            providers.append((CUDA, {}))
    else:
        providers.append((CUDA, dict(choice.options)))
    providers.append((CPU, {}))
    return providers


def trt_profile_options(
    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
) -> dict[str, str]:
    """TensorRT dynamic-shape profile options from ``{input: (min_shape, opt_shape, max_shape)}``.

    One profile covering every shape the runtime can send (batch 1..max rows, sequence 1..max_length, bank
    1..max tasks) means no engine rebuild at run time; the opt shape is what TensorRT tunes for.
    """

    def fmt(i: int) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in s[i])}" for name, s in shapes.items())

    return {"trt_profile_min_shapes": fmt(0), "trt_profile_opt_shapes": fmt(1), "trt_profile_max_shapes": fmt(2)}


def raise_unavailable(requested: list[ProviderChoice], problems: list[str]) -> None:
    names = ", ".join(c.name for c in requested)
    raise ProviderError(
        f"execution provider(s) {names} requested but not usable here: "
        + "; ".join(problems)
        + ". Pass providers=[..., 'cpu'] (CLI: --provider cuda --provider cpu) to fall back to CPU explicitly."
    )
