"""Devices, dtypes and the CPU: the one place that names dtypes, knows what this CPU can do and picks
where and in which precision a model runs.

* :func:`cpu_features` answers what this CPU can do: PyTorch's CPU capability, the instruction sets its
  kernels check (AVX2, AVX512, AVX512-BF16, AMX, VNNI; on ARM bf16, SVE and int8 dot products), and
  whether oneDNN runs float32, bfloat16 and float16 products here. Every fast-path choice asks it
  (:mod:`vilt.layers`), so a kernel this CPU lacks is never tried.
* :func:`select_device_and_dtype` turns a device and a precision name into what a model loads as. It is
  called once per request for a model (by the pipelines, hence the ``vilt`` commands and ``vilt serve``).
  ``None``/``"auto"`` picks the fastest precision that keeps answers right and that this hardware runs
  natively: bfloat16 on GPUs (float16 on those without bfloat16) and on CPUs that multiply bfloat16 in
  hardware (AVX512-BF16, AMX, ARM bf16), float32 on every other CPU. It never picks a precision the CPU
  has no hardware for. ``"int8"`` (:data:`INT8`) asks for int8 weights: float32 computation with the
  encoder's products quantized dynamically (:func:`vilt.layers.quantize_int8`), the fast choice where
  bfloat16 is missing.
* :func:`warn_if_slow`: an explicit bfloat16 on a CPU without bfloat16 hardware runs (correctly) but
  several times slower than float32; it warns once per process, naming the faster choices.
"""

from __future__ import annotations

import functools
import platform
import threading
import warnings
from dataclasses import dataclass

import torch

from .errors import ViltInputError

# every floating dtype name accepted anywhere (--dtype, dtype=, --save-dtype, torch_dtype=)
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # the canonical names, for choices and help texts

# int8 weights: a precision a model runs in (pipelines, commands, the server), not a dtype weights are
# saved in. It stands as torch.qint8 between select_device_and_dtype and the loader that quantizes.
INT8 = "int8"
PRECISION_NAMES = (*DTYPE_NAMES, INT8)  # what dtype= / --dtype take besides "auto"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype, or one of the names of :data:`DTYPES` (``"bfloat16"``, ``"bf16"``, ...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ViltInputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def parse_precision(precision: str | torch.dtype) -> torch.dtype:
    """A dtype name, a torch dtype, or ``"int8"`` (returned as ``torch.qint8``)."""
    if precision == INT8 or precision == torch.qint8:
        return torch.qint8
    if precision not in DTYPES and not isinstance(precision, torch.dtype):
        raise ViltInputError(
            f"unknown dtype {precision!r}; use one of {', '.join((*DTYPES, INT8))} or 'auto'"
        )
    return parse_dtype(precision)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``; ``torch.qint8`` -> ``"int8"``."""
    return INT8 if dtype == torch.qint8 else str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------- the CPU


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields (Linux; empty elsewhere)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags of this CPU as the kernel lists them (x86 ``flags``, ARM ``Features``)."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


# ARM cores by their /proc/cpuinfo "CPU part" (Arm Ltd's, implementer 0x41), for cpu_name
ARM_PARTS = {"0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2"}


@functools.cache
def cpu_name() -> str:
    """The CPU's model name, e.g. "AMD EPYC 9R14" or "ARM Neoverse-N1" (``/proc/cpuinfo``;
    ``platform.processor()`` elsewhere)."""
    info = _cpuinfo()
    if info.get("model name") or info.get("Model"):
        return info.get("model name") or info["Model"]
    if "CPU part" in info:  # ARM lists its implementer and part numbers, no name
        part, implementer = info["CPU part"], info.get("CPU implementer", "?")
        return "ARM " + ARM_PARTS.get(part, f"implementer {implementer} part {part}")
    return platform.processor() or "unknown CPU"


def _torch_check(name: str, fallback: bool) -> bool:
    """``torch.cpu.<name>()`` (PyTorch's own CPUID checks), or ``fallback`` where this torch lacks it."""
    check = getattr(torch.cpu, name, None)
    try:
        return bool(check()) if check is not None else fallback
    except RuntimeError:
        return fallback


def _onednn_check(name: str) -> bool:
    """``torch.ops.mkldnn.<name>()``: whether oneDNN runs that precision here (False without oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(getattr(torch.ops.mkldnn, name)())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU can do, as PyTorch and oneDNN see it.

    The instruction-set answers come from PyTorch's own CPUID checks where it has them (so they are right
    under an emulator, whose ``/proc/cpuinfo`` is the host's), else from the flags the kernel lists.

    Attributes:
        name: the model name.
        machine: ``x86_64``, ``aarch64``, ``arm64``...
        capability: PyTorch's CPU capability: the widest vector kernels it dispatches to here
            (``DEFAULT``, ``AVX2``, ``AVX512``, ``ZVECTOR``, ``SVE256``...).
        avx2, avx512: x86 vector extensions (AVX512: F, BW, VL and DQ, as PyTorch requires).
        avx512_bf16: x86 bfloat16 dot products (AVX512-BF16).
        amx: Intel AMX tiles (bfloat16 and int8 matrix products).
        vnni: int8 dot products: x86 VNNI (AVX512 or AVX), ARM ``asimddp``/``i8mm``.
        arm_bf16: ARM bfloat16 instructions (FEAT_BF16).
        sve: ARM scalable vectors.
        onednn: PyTorch's oneDNN (mkldnn) backend is available.
        onednn_bf16, onednn_fp16: oneDNN runs bfloat16 / float16 products on this CPU (natively or
            emulated on AVX512); without them its prepacked kernels refuse those dtypes.
    """

    name: str
    machine: str
    capability: str
    avx2: bool
    avx512: bool
    avx512_bf16: bool
    amx: bool
    vnni: bool
    arm_bf16: bool
    sve: bool
    onednn: bool
    onednn_bf16: bool
    onednn_fp16: bool

    @property
    def native_bf16(self) -> bool:
        """Whether bfloat16 matrix products run in hardware here (AVX512-BF16, AMX or ARM bf16, with
        oneDNN's support): several times faster than float32. Elsewhere bfloat16 is emulated, slower than
        float32, or (no AVX512) many times slower."""
        return self.onednn_bf16 and (self.avx512_bf16 or self.amx or self.arm_bf16)

    def supports(self, dtype: torch.dtype) -> bool:
        """Whether oneDNN's prepacked products (:mod:`vilt.layers`) run ``dtype`` on this CPU."""
        if dtype == torch.float32:
            return self.onednn
        if dtype == torch.bfloat16:
            return self.onednn_bf16
        return (
            False  # float16: oneDNN's float16 products need AMX-FP16 or AVX512-FP16; the plain product runs
        )

    def describe(self) -> str:
        """One line: the model name, PyTorch's capability and the features that decide precisions."""
        features = [
            name
            for name, present in (
                ("AVX2", self.avx2),
                ("AVX512", self.avx512),
                ("AVX512-BF16", self.avx512_bf16),
                ("AMX", self.amx),
                ("VNNI" if self.machine.lower() in ("x86_64", "amd64") else "DOTPROD", self.vnni),
                ("ARM BF16", self.arm_bf16),
                ("SVE", self.sve),
            )
            if present
        ]
        onednn = ", ".join(
            name
            for name, present in (
                ("float32", self.onednn),
                ("bfloat16", self.onednn_bf16),
                ("float16", self.onednn_fp16),
            )
            if present
        )
        return (
            f"{self.name} ({self.machine}, torch {self.capability}; {' '.join(features) or 'no vector extensions'}; "
            f"oneDNN: {onednn or 'none'})"
        )


@functools.cache
def cpu_features() -> CpuFeatures:
    """This CPU's :class:`CpuFeatures` (read once per process)."""
    flags = cpu_flags()
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
    avx512_flags = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    return CpuFeatures(
        name=cpu_name(),
        machine=platform.machine() or "unknown",
        capability=torch.backends.cpu.get_cpu_capability(),
        avx2=x86 and _torch_check("_is_avx2_supported", "avx2" in flags),
        avx512=x86 and _torch_check("_is_avx512_supported", avx512_flags),
        avx512_bf16=x86 and _torch_check("_is_avx512_bf16_supported", "avx512_bf16" in flags),
        amx=x86 and _torch_check("_is_amx_tile_supported", "amx_bf16" in flags),
        vnni=_torch_check("_is_vnni_supported", bool({"avx512_vnni", "avx_vnni"} & flags))
        if x86
        else bool({"asimddp", "i8mm"} & flags),
        arm_bf16=not x86 and "bf16" in flags,
        sve=not x86 and "sve" in flags,
        onednn=torch.backends.mkldnn.is_available(),
        onednn_bf16=_onednn_check("_is_mkldnn_bf16_supported"),
        onednn_fp16=_onednn_check("_is_mkldnn_fp16_supported"),
    )


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix products (:attr:`CpuFeatures.native_bf16`)."""
    return cpu_features().native_bf16


# ----------------------------------------------------------------------------- choosing


def select_device_and_dtype(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """The device and precision to run on; None or "auto" picks the fastest that keeps answers right.

    Args:
        device: "cpu", "cuda", "cuda:1"... or None/"auto": CUDA when available, else the CPU.
        dtype: a torch dtype or its name, "int8", or None/"auto": bfloat16 on CUDA (float16 on GPUs
            without bfloat16) and on CPUs with native bfloat16 products (AVX512-BF16, AMX, ARM bf16),
            float32 on other CPUs. "int8" (CPU only) comes back as ``torch.qint8``: load float32, then
            quantize (:func:`vilt.layers.quantize_int8`).

    Returns:
        (device, dtype).

    Raises:
        ViltInputError: an unknown device or dtype, CUDA asked for where there is none, int8 on a GPU.
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
    precision = parse_precision(dtype)
    if precision == torch.qint8 and device.type != "cpu":
        raise ViltInputError(f"int8 runs on the CPU, not {device}; use bfloat16 or float16 on a GPU")
    return device, precision


_warned = threading.Event()


def warn_if_slow(dtype: torch.dtype, device: torch.device) -> None:
    """Warn once per process when bfloat16 runs on a CPU without bfloat16 hardware: it works (PyTorch
    emulates it), but several times slower than float32, or many times without AVX512."""
    if dtype != torch.bfloat16 or device.type != "cpu" or _warned.is_set() or cpu_supports_bf16():
        return
    _warned.set()
    features = cpu_features()
    warnings.warn(
        f"bfloat16 on this CPU ({features.describe()}) has no hardware support and runs several times "
        "slower than float32; use dtype='int8' (--dtype int8), the fastest choice here, or float32 "
        "(dtype='auto' picks it)",
        stacklevel=3,
    )
