"""The CPU matrix's correctness set: a tiny ViLT in float32, bfloat16 and int8, the fast path on (forced,
and as the probes choose) and off, each against the plain path, on whatever CPU runs it.

``x86.sh`` runs it under emulated x86 CPUs (Haswell: AVX2 without AVX512; Nehalem: no AVX at all) and
``arm64.sh`` under emulated ARM64 ones; it also runs natively (``python tools/cpu-matrix/check.py``).
Emulation proves correctness only: no timing here means anything, so none is printed.

Checks, each printed as one line (``ok`` or ``FAIL``); the exit status is 1 if any failed:

* what ``vilt.devices.cpu_features()`` sees, and that ``dtype="auto"`` picks bfloat16 only where the CPU
  multiplies it in hardware (``--expect-native-bf16 yes|no`` also checks which);
* for each precision: the fast path forced on (every cached product), as the probes choose, and off,
  against the float32 plain path within the precision's tolerance, and the fast path against the plain
  path in the same precision;
* bfloat16 on a CPU without bfloat16 hardware: one warning naming the faster choice.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # tests/tiny.py: the tiny model

from tiny import SMALL_VOCAB, WIDE_INIT, tiny_config  # noqa: E402

import vilt  # noqa: E402
from vilt import layers, tuning  # noqa: E402
from vilt.devices import cpu_features, select_device_and_dtype  # noqa: E402

# Tolerances against float32 (the tiny model's logits lie within about +-3 and spread over about 2):
# float32's fast path only reorders sums (1e-5); bfloat16 keeps 8 bits of mantissa, ~0.4% per product
# (0.1 absolute); int8 rounds weights and inputs to 1/254 (x86: inputs to 1/127) of their range, ~1% per
# product (10% of the logits' spread, checked relatively). The same precision, fast path against plain
# path, differs by rounding only: 1e-5 in float32, bfloat16's rounding in bfloat16; in int8 a rounding
# difference upstream (the patch embedding's packed product) can move an input across a quantization
# step's edge, so the int8 tolerance again.
TOLERANCE = {"float32": 1e-5, "bfloat16": 0.1, "int8": 0.1}
SAME_PATH = {"float32": 1e-5, "bfloat16": 0.05, "int8": 0.1}


def tiny_model() -> vilt.ViltForQuestionAnswering:
    torch.manual_seed(0)
    config = tiny_config(vocab_size=SMALL_VOCAB, num_labels=7, initializer_range=WIDE_INIT)
    return vilt.ViltForQuestionAnswering(config).eval()


def inputs() -> dict[str, torch.Tensor]:
    """Three examples; text and image padding in different ones."""
    generator = torch.Generator().manual_seed(1)
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[1, 6:] = 0
    pixel_mask = torch.ones(3, 48, 64, dtype=torch.long)
    pixel_mask[2, :, 40:] = 0
    return {
        "input_ids": torch.randint(1, SMALL_VOCAB, (3, 9), generator=generator),
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(3, 3, 48, 64, generator=generator),
        "pixel_mask": pixel_mask,
    }


def variant(model: vilt.ViltForQuestionAnswering, precision: str) -> vilt.ViltForQuestionAnswering:
    copied = copy.deepcopy(model)
    if precision == "int8":
        return layers.quantize_int8(copied)
    return copied.to(getattr(torch, precision))


def run(model: torch.nn.Module, fast: str) -> torch.Tensor:
    """Logits with the fast path "off", "forced" on for every block, or as the "probed" choices say."""
    tuning.forget()
    model.set_fast_path(fast != "off")
    real = layers.fast_pays
    if fast == "forced":
        layers.fast_pays = lambda *_: True
    try:
        with torch.inference_mode():
            return model(**inputs()).logits.float()
    finally:
        layers.fast_pays = real


class Report:
    def __init__(self) -> None:
        self.failures = 0

    def check(self, what: str, passed: bool, detail: str = "") -> None:
        self.failures += not passed
        print(f"{'ok  ' if passed else 'FAIL'} {what}{': ' + detail if detail else ''}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-native-bf16", choices=("yes", "no"), help="check what the CPU reports")
    args = parser.parse_args()
    started = time.perf_counter()
    report = Report()
    features = cpu_features()
    print(f"CPU: {features.describe()}; torch {torch.__version__}", flush=True)
    auto = select_device_and_dtype("cpu")[1]
    report.check(
        "auto picks bfloat16 only with bfloat16 hardware",
        auto == (torch.bfloat16 if features.native_bf16 else torch.float32),
        f"auto = {auto}, native bfloat16 = {features.native_bf16}",
    )
    if args.expect_native_bf16:
        expected = args.expect_native_bf16 == "yes"
        report.check(
            "native bfloat16 as expected", features.native_bf16 == expected, str(features.native_bf16)
        )

    model = tiny_model()
    reference = run(copy.deepcopy(model), "off")  # float32, plain
    spread = (reference.max(-1).values - reference.min(-1).values).min().item()
    for precision in ("float32", "bfloat16", "int8"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            candidate = variant(model, precision)
            outputs = {fast: run(candidate, fast) for fast in ("off", "forced", "probed")}
        limit = TOLERANCE[precision] * (spread if precision == "int8" else 1.0)
        for fast, logits in outputs.items():
            diff = (logits - reference).abs().max().item()
            report.check(
                f"{precision}, fast path {fast}, vs float32 plain",
                diff <= limit,
                f"max |diff| {diff:.2e} (<= {limit:.2e})",
            )
        diff = (outputs["forced"] - outputs["off"]).abs().max().item()
        same = SAME_PATH[precision] * (spread if precision == "int8" else 1.0)
        report.check(
            f"{precision}, fast path vs plain path", diff <= same, f"max |diff| {diff:.2e} (<= {same:.2e})"
        )
        if precision == "bfloat16":
            slow = [w for w in caught if "bfloat16 on this CPU" in str(w.message)]
            report.check(
                "bfloat16 warns once where the CPU lacks it",
                len(slow) == (0 if features.native_bf16 else 1),
                str(slow[0].message) if slow else "no warning",
            )
    packed = [m.packed() for m in variant(model, "bfloat16").modules() if isinstance(m, layers.CachedProduct)]
    report.check(
        "bfloat16 products use oneDNN exactly where it supports bfloat16",
        all(p.onednn == features.onednn_bf16 for p in packed),
        f"oneDNN bfloat16 = {features.onednn_bf16}",
    )
    print(f"{report.failures} failed; {time.perf_counter() - started:.0f} s after import", flush=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
