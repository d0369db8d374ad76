"""The memory the fast path's caches take: ViLT-B/32 (VQA head, 3129 answers), float32 and bfloat16.

For each dtype, in a fresh process: load the model (``common.model_dir``), then build every cache
(``optimize_for_inference()``, which a first fast forward does too) and report the bytes the cached
products hold (prepacked weights and the concatenated QKV biases: their element counts times element
sizes) and the growth of the process's resident memory (``VmRSS``) over that step. The parameters
themselves are listed for scale.

Run: ``python benchmarks/bench_cache_memory.py``.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys

import torch
from common import model_dir, table

DTYPES = ("float32", "bfloat16")
MIB = 2**20


def rss_mib() -> float:
    with open("/proc/self/status", encoding="utf-8") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def measure(dtype_name: str) -> list[str]:
    """One row: dtype, parameter MiB, cache MiB (from tensor sizes), resident growth MiB."""
    from vilt import ViltForQuestionAnswering
    from vilt.layers import CachedProduct

    model = ViltForQuestionAnswering.from_pretrained(
        model_dir(), torch_dtype=getattr(torch, dtype_name)
    ).eval()
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    before = rss_mib()
    model.optimize_for_inference()
    gc.collect()
    grown = rss_mib() - before
    held = 0
    for module in model.modules():
        if isinstance(module, CachedProduct):
            product = module.packed()
            storages = {p.data_ptr() for p in module.parameters()}
            # a prepacked weight is always a copy (and has no data_ptr); otherwise what is not a parameter's
            # storage is a copy too (the concatenated QKV weight and bias)
            owned = [
                t
                for t in (product.weight, product.bias)
                if t is not None and (t.is_mkldnn or t.data_ptr() not in storages)
            ]
            held += sum(t.numel() * t.element_size() for t in owned)
    return [dtype_name, f"{parameters / MIB:.0f}", f"{held / MIB:.0f}", f"{grown:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=DTYPES, help="measure one dtype in this process")
    args = parser.parse_args()
    if args.dtype:
        print("\t".join(measure(args.dtype)))
        return
    rows = [
        subprocess.run(
            [sys.executable, __file__, "--dtype", name], check=True, capture_output=True, text=True
        ).stdout.split()
        for name in DTYPES
    ]
    print(table(["dtype", "parameters MiB", "caches MiB (tensor sizes)", "resident memory growth MiB"], rows))


if __name__ == "__main__":
    main()
