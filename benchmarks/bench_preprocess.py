"""Benchmark: preprocess 64 photographs read from files, ours against the reference, in one run.

The photographs are scikit-image's sample images (colour and grayscale, PNG and JPEG) and matplotlib's
``grace_hopper.jpg``, copied into a temporary directory and cycled to 64 paths of mixed sizes.

* ours: ``vilt.ViltImageProcessor()(paths, return_tensors="pt")``, the default (parallel) path;
* reference: what a ``transformers`` user writes, ``ViltImageProcessorPil()`` applied to
  ``[Image.open(path).convert("RGB") for path in paths]``.

The two run alternately for several repetitions after a warm-up; the outputs must agree (pixel_values
within 1e-6, pixel_mask identical). Wall-clock and CPU-time medians and their ratios are printed and
written to ``benchmarks/results/preprocess.txt``; the CPU ratio says how much less work ours does,
which matters when the cores are shared. Run as ``python benchmarks/bench_preprocess.py``.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib
import PIL
import skimage
import torch
import transformers
from common import machine_info
from PIL import Image
from transformers import ViltImageProcessorPil

import vilt
from vilt import ViltImageProcessor

NUM_IMAGES = 64
REPETITIONS = 7
RESULTS_FILE = Path(__file__).parent / "results" / "preprocess.txt"


def photograph_files() -> list[str]:
    """The sample photographs without transparency (the reference user's convert("RGB") drops alpha)."""
    files = sorted(
        glob.glob(os.path.join(skimage.data_dir, "*.png"))
        + glob.glob(os.path.join(skimage.data_dir, "*.jpg"))
    )
    files.append(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
    return [file for file in files if Image.open(file).mode in ("RGB", "L")]


def make_paths(directory: str) -> list[str]:
    """Copy the photographs into ``directory`` and return NUM_IMAGES paths cycling through them."""
    copies = []
    for file in photograph_files():
        copies.append(shutil.copy(file, directory))
    return [copies[index % len(copies)] for index in range(NUM_IMAGES)]


def run_reference(processor: ViltImageProcessorPil, paths: list[str]) -> dict:
    images = [Image.open(path).convert("RGB") for path in paths]
    return processor(images, return_tensors="pt")


def run_ours(processor: ViltImageProcessor, paths: list[str]) -> dict:
    return processor(paths, return_tensors="pt")


def timed(function, *args) -> tuple[float, float, dict]:
    """Wall-clock seconds, CPU seconds of the whole process (all threads), and the output of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    output = function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, output


def summary(name: str, seconds: list[float]) -> str:
    return (
        f"{name}: median {1e3 * statistics.median(seconds):7.1f} ms "
        f"(min {1e3 * min(seconds):.1f}, max {1e3 * max(seconds):.1f})"
    )


def main() -> None:
    torch.set_num_threads(2)
    reference, ours = ViltImageProcessorPil(), ViltImageProcessor()
    load_before = os.getloadavg()[0]
    timings: dict[str, list[float]] = {
        "reference wall": [],
        "ours wall": [],
        "reference CPU": [],
        "ours CPU": [],
    }
    with tempfile.TemporaryDirectory() as directory:
        paths = make_paths(directory)
        sizes = sorted({Image.open(path).size for path in paths})
        for repetition in range(REPETITIONS + 1):  # the first round is a warm-up
            reference_wall, reference_cpu, expected = timed(run_reference, reference, paths)
            our_wall, our_cpu, actual = timed(run_ours, ours, paths)
            max_diff = (expected["pixel_values"] - actual["pixel_values"]).abs().max().item()
            if max_diff > 1e-6 or not torch.equal(expected["pixel_mask"], actual["pixel_mask"]):
                raise AssertionError(f"outputs differ: pixel_values max abs diff {max_diff}")
            if repetition > 0:
                for key, value in zip(timings, (reference_wall, our_wall, reference_cpu, our_cpu)):
                    timings[key].append(value)
    median = {key: statistics.median(values) for key, values in timings.items()}
    lines = [
        f"Preprocess {NUM_IMAGES} photographs from files ({len(sizes)} distinct sizes, {sizes[0][0]}x{sizes[0][1]} "
        f"to {sizes[-1][0]}x{sizes[-1][1]} WxH); output {tuple(actual['pixel_values'].shape)}",
        f"{machine_info()['cpu']} (shared: load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after), "
        f"torch.set_num_threads(2); python {platform.python_version()}, torch {torch.__version__}, "
        f"Pillow {PIL.__version__}, transformers {transformers.__version__}, vilt {vilt.__version__}",
        f"{REPETITIONS} alternating repetitions after one warm-up; outputs equal every time "
        f"(pixel_values max abs diff {max_diff:.1e}, pixel_mask identical)",
        "reference = ViltImageProcessorPil()([Image.open(p).convert('RGB') for p in paths]); ours = ViltImageProcessor()(paths)",
        *(summary(key, values) for key, values in timings.items()),
        f"speed-up, wall clock (median reference / median ours): {median['reference wall'] / median['ours wall']:.2f}x",
        f"CPU work ratio (median reference CPU / median ours CPU): {median['reference CPU'] / median['ours CPU']:.2f}x",
    ]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
