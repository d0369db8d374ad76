"""Benchmark: preprocess 64 photographs read from files, ours against the reference, in one run.

The photographs are scikit-image's sample images (colour and grayscale, PNG and JPEG) and matplotlib's
``grace_hopper.jpg``, copied into a temporary directory and cycled to 64 paths of mixed sizes.

* ours: ``vilt.ViltImageProcessor()(paths, return_tensors="pt")``, the default (parallel) path;
* reference: what a ``transformers`` user writes, ``ViltImageProcessorPil()`` applied to
  ``[Image.open(path).convert("RGB") for path in paths]``.

The two run alternately for several repetitions after a warm-up; the outputs must agree (pixel_values
within 1e-6, pixel_mask identical). Medians and their ratio are printed and written to
``benchmarks/results/preprocess.txt``. Run as ``python benchmarks/bench_preprocess.py``.
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


def timed(function, *args) -> tuple[float, dict]:
    start = time.perf_counter()
    output = function(*args)
    return time.perf_counter() - start, output


def main() -> None:
    torch.set_num_threads(2)
    reference, ours = ViltImageProcessorPil(), ViltImageProcessor()
    with tempfile.TemporaryDirectory() as directory:
        paths = make_paths(directory)
        sizes = sorted({Image.open(path).size for path in paths})
        reference_times, our_times = [], []
        for repetition in range(REPETITIONS + 1):  # the first round is a warm-up
            reference_time, expected = timed(run_reference, reference, paths)
            our_time, actual = timed(run_ours, ours, paths)
            max_diff = (expected["pixel_values"] - actual["pixel_values"]).abs().max().item()
            if max_diff > 1e-6 or not torch.equal(expected["pixel_mask"], actual["pixel_mask"]):
                raise AssertionError(f"outputs differ: pixel_values max abs diff {max_diff}")
            if repetition > 0:
                reference_times.append(reference_time)
                our_times.append(our_time)
    reference_median, our_median = statistics.median(reference_times), statistics.median(our_times)
    lines = [
        f"Preprocess {NUM_IMAGES} photographs from files ({len(sizes)} distinct sizes, "
        f"{sizes[0][0]}x{sizes[0][1]} to {sizes[-1][0]}x{sizes[-1][1]} (WxH)); output {tuple(actual['pixel_values'].shape)}",
        f"{os.cpu_count()} CPUs, torch.set_num_threads(2); python {platform.python_version()}, torch {torch.__version__}, "
        f"Pillow {PIL.__version__}, transformers {transformers.__version__}, vilt {vilt.__version__}",
        f"{REPETITIONS} alternating repetitions after one warm-up; outputs checked equal each time "
        f"(pixel_values max abs diff {max_diff:.1e}, pixel_mask identical)",
        f"reference ViltImageProcessorPil + Image.open(...).convert('RGB'): median {1e3 * reference_median:.1f} ms "
        f"(min {1e3 * min(reference_times):.1f}, max {1e3 * max(reference_times):.1f})",
        f"ours ViltImageProcessor(paths):                                 median {1e3 * our_median:.1f} ms "
        f"(min {1e3 * min(our_times):.1f}, max {1e3 * max(our_times):.1f})",
        f"speed-up (median reference / median ours): {reference_median / our_median:.2f}x",
    ]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
