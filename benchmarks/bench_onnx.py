"""Benchmark: ViLT-B/32 VQA on the CPU, onnxruntime against PyTorch, in one run.

The model is ``ViltForQuestionAnswering`` with the default (ViLT-B/32) config, 3129 answers (VQAv2's
vocabulary size) and random weights. Inputs are what the processor makes of a 4:3 photograph and a short
question: a 384x576 image (12x18 patches of 32) and 16 text tokens, at batch 1 and batch 8.

Four ways to run it:

* PyTorch float32 and PyTorch bfloat16 (the pipelines' default on CPUs with AVX512-BF16/AMX), both after
  ``model.optimize_for_inference()`` as ``vilt.pipeline`` runs them, under ``torch.inference_mode``;
* onnxruntime float32 and int8 (dynamic quantization), both written by ``vilt.export.export_onnx`` and
  run through ``vilt.export.OnnxModel`` (input checks and numpy conversion included).

All four use the same number of threads (onnxruntime's without spin-waiting, which would take the cores
from the PyTorch runs that alternate with it). They run alternately for several repetitions after a warm-up;
medians give throughput in examples per second. Outputs are compared with PyTorch float32. The report is
printed and written to ``benchmarks/results/onnx.txt``. Run as ``python benchmarks/bench_onnx.py``.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

import vilt
from vilt.export import OnnxModel, export_onnx

THREADS = 2
BATCH_SIZES = (1, 8)
REPETITIONS = 5
IMAGE_SIZE = (384, 576)
TEXT_LENGTH = 16
NUM_ANSWERS = 3129
RESULTS_FILE = Path(__file__).parent / "results" / "onnx.txt"


def make_inputs(config: vilt.ViltConfig, batch: int) -> dict[str, torch.Tensor]:
    """A processor-like batch: one image size, 16 text tokens; in a batch of several, the last text is
    8 tokens padded to 16 (a lone text has no padding, as the processor makes it)."""
    generator = torch.Generator().manual_seed(batch)
    height, width = IMAGE_SIZE
    attention_mask = torch.ones(batch, TEXT_LENGTH, dtype=torch.long)
    if batch > 1:
        attention_mask[-1, TEXT_LENGTH // 2 :] = 0
    return {
        "input_ids": torch.randint(1000, config.vocab_size, (batch, TEXT_LENGTH), generator=generator),
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(batch, TEXT_LENGTH, dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, height, width, generator=generator),
        "pixel_mask": torch.ones(batch, height, width, dtype=torch.long),
    }


def torch_runner(model: torch.nn.Module, dtype: torch.dtype) -> Callable[[dict], torch.Tensor]:
    def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
            return model(**batch).logits.float()

    return run


def onnx_runner(directory: Path) -> Callable[[dict], torch.Tensor]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    # idle onnxruntime threads would otherwise spin on the shared cores while PyTorch's turn runs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = OnnxModel.from_pretrained(directory, session_options=options)
    return lambda inputs: model(**inputs).logits


def timed(run: Callable[[dict], torch.Tensor], inputs: dict) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    output = run(inputs)
    return time.perf_counter() - start, output


def main() -> None:
    torch.set_num_threads(THREADS)
    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    config = vilt.ViltConfig(num_labels=NUM_ANSWERS, architectures=["ViltForQuestionAnswering"])
    fp32_model = vilt.ViltForQuestionAnswering(config).eval()
    bf16_model = vilt.ViltForQuestionAnswering(config)
    bf16_model.load_state_dict(fp32_model.state_dict())
    bf16_model.to(torch.bfloat16).optimize_for_inference()
    with tempfile.TemporaryDirectory() as scratch:
        sizes = {}
        for quantize in (None, "int8"):
            start = time.perf_counter()
            result = export_onnx(fp32_model, Path(scratch) / str(quantize), quantize=quantize)
            sizes[quantize] = (result.size_bytes, time.perf_counter() - start)
            print(
                f"exported {quantize or 'float32'}: {result.size_bytes / 2**20:.0f} MiB in {sizes[quantize][1]:.0f} s"
            )
        runners = {
            "PyTorch float32": torch_runner(fp32_model.optimize_for_inference(), torch.float32),
            "PyTorch bfloat16": torch_runner(bf16_model, torch.bfloat16),
            "onnxruntime float32": onnx_runner(Path(scratch) / "None"),
            "onnxruntime int8": onnx_runner(Path(scratch) / "int8"),
        }
        rows = []
        for batch in BATCH_SIZES:
            inputs = make_inputs(config, batch)
            times: dict[str, list[float]] = {name: [] for name in runners}
            diffs: dict[str, float] = {}
            for repetition in range(REPETITIONS + 1):  # the first round is a warm-up
                outputs = {}
                for name, run in runners.items():
                    elapsed, outputs[name] = timed(run, inputs)
                    if repetition > 0:
                        times[name].append(elapsed)
                reference = outputs["PyTorch float32"]
                diffs = {name: (out - reference).abs().max().item() for name, out in outputs.items()}
            for name in runners:
                median = statistics.median(times[name])
                rows.append((batch, name, batch / median, 1e3 * median, diffs[name]))
                print(f"batch {batch} {name}: {batch / median:.2f} examples/s")
    fp32_rate = {batch: rate for batch, name, rate, _, _ in rows if name == "PyTorch float32"}
    lines = [
        f"ViLT-B/32 VQA ({NUM_ANSWERS} answers, random weights) on the CPU: {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} images "
        f"({IMAGE_SIZE[0] // 32}x{IMAGE_SIZE[1] // 32} patches), {TEXT_LENGTH} text tokens",
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), {THREADS} threads for every backend; "
        f"python {platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"vilt {vilt.__version__}",
        f"ONNX opset 18 graphs from vilt.export.export_onnx: float32 {sizes[None][0] / 2**20:.0f} MiB, "
        f"int8 {sizes['int8'][0] / 2**20:.0f} MiB",
        f"median of {REPETITIONS} alternating repetitions after one warm-up; max |logits - PyTorch float32| "
        "from the last repetition",
        f"1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after (other processes "
        f"share the {os.cpu_count()} CPUs: compare rows within this run, not with other machines)",
        "",
        f"{'batch':>5}  {'backend':<20} {'examples/s':>10} {'ms/batch':>9} {'vs torch fp32':>13} {'max |diff|':>10}",
    ]
    for batch, name, rate, ms, diff in rows:
        lines.append(
            f"{batch:>5}  {name:<20} {rate:>10.2f} {ms:>9.0f} {rate / fp32_rate[batch]:>12.2f}x {diff:>10.1e}"
        )
    report = "\n".join(lines) + "\n"
    print(report, end="")
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
