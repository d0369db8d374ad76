"""Devices and dtypes: the one place that names dtypes, reads the CPU's features and picks where to run.

``select_device_and_dtype(device, dtype)`` is what the pipelines, the CLI and the server call:
None or "auto" means CUDA with bfloat16 when a GPU is present, else the CPU with bfloat16 when the CPU
multiplies bfloat16 natively (AVX512-BF16 or AMX: several times faster than float32), else float32.
"""

from __future__ import annotations

import functools
import platform

import torch

from .errors import ViltInputError

# every dtype name accepted anywhere (--dtype, dtype=, --save-dtype, torch_dtype=)
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # the canonical names, for choices and help texts


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype, or one of the names of :data:`DTYPES` (``"bfloat16"``, ``"bf16"``, ...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ViltInputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags of this CPU (``/proc/cpuinfo`` on Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            line = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()


@functools.cache
def cpu_name() -> str:
    """The CPU's model name, e.g. "AMD EPYC 9R14" (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix products (AVX512-BF16 or AMX).

    Reads the ``amx_bf16``/``avx512_bf16`` flags and PyTorch's reported CPU capability.
    """
    capability = torch.backends.cpu.get_cpu_capability().upper()
    return "AMX" in capability or "BF16" in capability or bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def select_device_and_dtype(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """The device and dtype to run on; None or "auto" picks the fastest that keeps answers right.

    Args:
        device: "cpu", "cuda", "cuda:1"... or None/"auto": CUDA when available, else the CPU.
        dtype: a torch dtype or its name, or None/"auto": bfloat16 on CUDA (float16 on GPUs without
            bfloat16) and on CPUs with AVX512-BF16 or AMX, float32 on other CPUs.

    Returns:
        (device, dtype).

    Raises:
        ViltInputError: an unknown device or dtype, or CUDA asked for where there is none.
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ViltInputError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ViltInputError(
            f"device {str(device)!r} was asked for but no CUDA GPU is available; run on the CPU: "
            "--device cpu (device='cpu' in Python)"
        )
    if dtype is None or dtype == "auto":
        if device.type == "cuda":  # GPUs before Ampere lack bfloat16: float16 there
            return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return device, torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else torch.float32
    return device, parse_dtype(dtype)
