"""Benchmark 7: the model forward on every backend, side by side with the reference, in one process.

ViLT-B/32 VQA (3129 answers, random weights saved by transformers), 384x384 images, 40 tokens, batch 1
and 8, float32 and (where oneDNN runs it on this CPU) bfloat16. Contestants, all alternating within
every repetition:

* the reference: transformers' ``ViltForQuestionAnswering`` in the dtype;
* vilt as loaded: ``ViltForQuestionAnswering.from_pretrained(dir, torch_dtype=dtype)`` under
  ``torch.inference_mode()``, no other call (the fast path is the default, where its probes find it
  faster);
* vilt, plain path: the same with ``set_fast_path(False)``: the plain layers, which the fast path must
  never be slower than;
* vilt int8 (float32 rows): ``dtype="int8"`` as the pipelines load it: the float32 model with int8
  encoder weights (``vilt.layers.quantize_int8``), ``optimize_for_inference()``;
* onnxruntime: the float32 ONNX export (float32 rows only: onnxruntime's CPU kernels have no bfloat16),
  and its int8 dynamic quantization;
* OpenVINO: the OpenVINO export computed in the dtype, and its int8 weights (NNCF) computed in the dtype.

Every engine uses one thread per core; onnxruntime's idle threads do not spin (they would take the cores
from the contestant whose turn it is). Each figure is the median time per example; the ratio is the
reference's time over the contestant's; "% of peak" is the forward's FLOPs (counted on the reference)
over its time, against the fastest matrix product measured in the same alternation (the same load).
``examples/eval_backends.py`` measures the accuracy of the same backends.

Run: ``python benchmarks/bench_backends.py [--repetitions N]``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import (
    PeakProbe,
    Section,
    alternate,
    count_flops,
    forward_inputs,
    load_models,
    machine_info,
    model_dir,
    set_threads,
    table,
)

from vilt.devices import cpu_features
from vilt.export import OnnxModel, OpenVinoModel, export_model
from vilt.layers import quantize_int8

BATCHES = (1, 8)
# bfloat16 where oneDNN runs it here: without AVX512 or ARM bf16 it is emulated, ~20x slower than float32
DTYPES = (torch.float32, torch.bfloat16) if cpu_features().supports(torch.bfloat16) else (torch.float32,)
HEIGHT = WIDTH = 384
ACCURACY_FILE = Path(__file__).resolve().parent.parent / "results" / "eval_backends.txt"
PRECISIONS = (  # (dtype, contestant here, its row in eval_backends.txt) for the speed-and-accuracy table
    ("float32", "vilt (as loaded)", "PyTorch float32"),
    ("bfloat16", "vilt (as loaded)", "PyTorch bfloat16"),
    ("float32", "vilt int8", "PyTorch int8"),
    ("float32", "onnxruntime", "onnxruntime float32"),
    ("float32", "onnxruntime int8", "onnxruntime int8"),
    ("float32", "OpenVINO", "OpenVINO float32"),
    ("bfloat16", "OpenVINO", "OpenVINO bfloat16"),
    ("bfloat16", "OpenVINO int8 weights", "OpenVINO int8 weights (bfloat16)"),
)


def exported(directory: Path, scratch: Path) -> dict[str, Path]:
    """The four exports of the model: name -> directory."""
    exports = {}
    for fmt in ("onnx", "openvino"):
        for quantize in (None, "int8"):
            name = f"{fmt}-{quantize or 'float32'}"
            exports[name] = export_model(directory, scratch / name, fmt, quantize=quantize).path.parent
    return exports


def onnx_call(directory: Path, threads: int) -> Callable[[dict[str, torch.Tensor]], Callable[[], Any]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = OnnxModel.from_pretrained(directory, session_options=options)
    return lambda inputs: lambda: model(**inputs).logits


def openvino_call(
    directory: Path, dtype: torch.dtype, threads: int
) -> Callable[[dict[str, torch.Tensor]], Callable[[], Any]]:
    model = OpenVinoModel.from_pretrained(directory, dtype=dtype, threads=threads)
    return lambda inputs: lambda: model(**inputs).logits


def torch_call(model: torch.nn.Module) -> Callable[[dict[str, torch.Tensor]], Callable[[], Any]]:
    def bind(inputs: dict[str, torch.Tensor]) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode():
                return model(**inputs).logits

        return call

    return bind


def accuracies(text: str) -> dict[str, list[str]]:
    """eval_backends.txt's rows: backend -> [easy-VQA accuracy, its change from float32, ViLT-B/32 top-1
    agreement with float32]."""
    easy_vqa, _, photographs = text.partition("## Part 2")
    found: dict[str, list[str]] = {}
    for _, _, backend in PRECISIONS:
        row = next((line for line in easy_vqa.splitlines() if line.startswith(backend + "  ")), None)
        agreement = next((line for line in photographs.splitlines() if line.startswith(backend + "  ")), None)
        if row is not None and agreement is not None:
            accuracy, change = row[len(backend) :].split()[:2]
            found[backend] = [accuracy, change, agreement[len(backend) :].strip()]
    return found


def speed_and_accuracy(speeds: dict[tuple[str, int, str], list[str]]) -> str:
    """One table per precision: the speed measured here beside the accuracy that
    ``examples/eval_backends.py`` committed to results/eval_backends.txt."""
    found = accuracies(ACCURACY_FILE.read_text(encoding="utf-8")) if ACCURACY_FILE.exists() else {}
    rows = []
    for dtype, label, backend in PRECISIONS:
        if (dtype, BATCHES[0], label) not in speeds:  # a precision this CPU did not run
            continue
        measured = [cell for batch in BATCHES for cell in speeds[(dtype, batch, label)]]
        rows.append([backend, *measured, *found.get(backend, ["not measured"] * 3)])
    header = [
        "backend (computes in)",
        *[f"batch {batch} {column}" for batch in BATCHES for column in ("ms/example", "vs reference")],
        "easy-VQA accuracy (bundled model)",
        "vs float32",
        "ViLT-B/32 top-1 same as float32",
    ]
    return table(header, rows)


def run(repetitions: int = 5) -> Section:
    """Every backend at batch 1 and 8, float32 and bfloat16; the rows are also printed as they come."""
    threads = set_threads()
    logging.getLogger("nncf").setLevel(logging.WARNING)
    directory = model_dir()
    rows, figures = [], {}
    speeds: dict[tuple[str, int, str], list[str]] = {}  # (dtype, batch, contestant) -> [ms, vs reference]
    with tempfile.TemporaryDirectory() as scratch:
        exports = exported(directory, Path(scratch))
        for dtype in DTYPES:
            name = str(dtype).removeprefix("torch.")
            ours, reference = load_models(directory, dtype)
            plain, _ = load_models(directory, dtype)
            contestants = {
                "reference": torch_call(reference),
                "vilt (as loaded)": torch_call(ours),
                "vilt (plain path)": torch_call(plain.set_fast_path(False)),
            }
            if dtype == torch.float32:
                int8 = quantize_int8(load_models(directory, dtype)[0]).optimize_for_inference()
                contestants["vilt int8"] = torch_call(int8)
                contestants["onnxruntime"] = onnx_call(exports["onnx-float32"], threads)
            contestants["onnxruntime int8"] = onnx_call(exports["onnx-int8"], threads)
            contestants["OpenVINO"] = openvino_call(exports["openvino-float32"], dtype, threads)
            contestants["OpenVINO int8 weights"] = openvino_call(exports["openvino-int8"], dtype, threads)
            probe = PeakProbe(dtype)
            flops = count_flops(reference, forward_inputs(1, HEIGHT, WIDTH, dtype))
            for batch in BATCHES:
                inputs = forward_inputs(batch, HEIGHT, WIDTH, dtype)
                calls = {label: bind(inputs) for label, bind in contestants.items()}
                expected = calls["reference"]().float()
                diffs = {
                    label: (call().float() - expected).abs().max().item() for label, call in calls.items()
                }
                timings = alternate({**calls, "matmul peak": probe}, repetitions, warmup=0)  # warmed up above
                peak = probe.flops / min(timings.seconds["matmul peak"])
                reference_s = timings.median("reference")
                for label in contestants:
                    seconds = timings.median(label)
                    row = [
                        name, str(batch), label, f"{1e3 * seconds / batch:.1f}", f"{reference_s / seconds:.2f}x",
                        f"{100 * flops * batch / seconds / peak:.0f}%", f"{diffs[label]:.1e}",
                    ]  # fmt: skip
                    print(" | ".join(row), flush=True)
                    rows.append(row)
                    speeds[(name, batch, label)] = row[3:5]
                    figures[f"{name} batch {batch}: {label} / reference"] = reference_s / seconds
                figures[f"{name} batch {batch}: vilt / OpenVINO"] = timings.median(
                    "OpenVINO"
                ) / timings.median("vilt (as loaded)")
                figures[f"{name} batch {batch}: vilt as loaded / plain path"] = timings.median(
                    "vilt (plain path)"
                ) / timings.median("vilt (as loaded)")
            del ours, reference, plain
    header = ["dtype", "batch", "backend", "ms/example", "vs reference", "% of peak", "max abs logit diff"]
    lines = [
        "## 7. Backends: PyTorch, onnxruntime and OpenVINO (VQA head, ViLT-B/32, 384x384, 40 tokens)",
        "",
        table(header, rows),
        "",
        f"CPU: {cpu_features().describe()}. Medians of {repetitions} alternating repetitions (after an "
        "accuracy check that warms every contestant up, and in which vilt's probes decide). int8 rows run "
        "int8 weights (vilt int8 and onnxruntime: dynamic quantization, computing in float32 and int8; "
        "OpenVINO: NNCF weight compression, computing in the row's dtype). The logit difference is against "
        "the reference in the row's dtype. Accuracy of each backend on real data: "
        "`examples/eval_backends.py` ([results/eval_backends.txt](../results/eval_backends.txt))."
        + (
            ""
            if torch.bfloat16 in DTYPES
            else " No bfloat16 rows: oneDNN has no bfloat16 products on this CPU."
        ),
        "",
        "Our default path against OpenVINO (OpenVINO's time / ours; above 1 means ours is faster): "
        + ", ".join(
            f"{k.split(':')[0]} {v:.2f}x" for k, v in figures.items() if k.endswith("vilt / OpenVINO")
        ),
        "",
        "### int8 and the other precisions: speed (ViLT-B/32, measured above) and accuracy",
        "",
        speed_and_accuracy(speeds),
        "",
        "Accuracy columns: `examples/eval_backends.py` as committed in "
        "[results/eval_backends.txt](../results/eval_backends.txt) (easy-VQA test split, 9673 questions, for "
        "the bundled model; 128 questions on 16 photographs for ViLT-B/32). The int8 rows are vilt's "
        "`dtype=\"int8\"` and onnxruntime's dynamic quantization, and OpenVINO's NNCF int8 weights.",
        "",
    ]
    return Section("\n".join(lines), figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    print(machine_info())
    print(run(args.repetitions).markdown)


if __name__ == "__main__":
    main()
