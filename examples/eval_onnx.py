"""Evaluate an exported easy-VQA model on onnxruntime against PyTorch: accuracy, agreement and size.

Exports the model (default: the bundled easy-VQA model) to ONNX float32 and int8, then answers the
easy-VQA test split (9,673 questions) with three pipelines built by ``vilt.pipeline``:

* PyTorch float32 (``device="cpu", dtype="float32"``);
* onnxruntime float32 and onnxruntime int8 (``backend="onnxruntime"``).

It reports each one's top-1 accuracy, how often its answer equals PyTorch's, the largest score
difference and the file sizes (``benchmarks/bench_onnx.py`` measures speed), prints the report and writes it to
``results/eval_onnx.txt``. Run as ``python examples/eval_onnx.py [--model DIR] [--limit N]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
from pathlib import Path

import easy_vqa
import onnxruntime as ort
import torch

import vilt
from vilt.export import export_onnx
from vilt.hub import BUNDLED_MODEL_DIR

RESULTS_FILE = Path(__file__).resolve().parent.parent / "results" / "eval_onnx.txt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=str(BUNDLED_MODEL_DIR), help="easy-VQA model directory (default: bundled)"
    )
    parser.add_argument("--limit", type=int, help="answer only the first N test questions (default: all)")
    parser.add_argument("--batch-size", type=int, default=64, help="questions per forward pass (default 64)")
    parser.add_argument("--output", default=str(RESULTS_FILE), help=f"report file (default {RESULTS_FILE})")
    return parser.parse_args()


def test_items(limit: int | None) -> tuple[list[dict[str, str]], list[str]]:
    """The easy-VQA test questions as pipeline items, and their true answers."""
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    items = [{"image": paths[i], "question": q} for q, i in zip(questions, image_ids)]
    return items[:limit], answers[:limit]


def answer_all(vqa: vilt.pipelines.Pipeline, items: list[dict[str, str]], batch_size: int) -> list[dict]:
    """Top-1 ``{"answer", "score"}`` per item."""
    return [r[0] for r in vqa(items, top_k=1, batch_size=batch_size)]


def weights_file(directory: Path) -> tuple[int, str]:
    """Size in bytes of the checkpoint's safetensors files, and the dtype they store."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    with safe_open(files[0], framework="pt") as handle:
        dtype = handle.get_slice(next(iter(handle.keys()))).get_dtype()
    return sum(f.stat().st_size for f in files), dtype


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)
    source = Path(args.model)
    items, truth = test_items(args.limit)
    with tempfile.TemporaryDirectory() as scratch:
        exports = {
            name: export_onnx(source, Path(scratch) / name, task="vqa", quantize=quantize)
            for name, quantize in (("float32", None), ("int8", "int8"))
        }
        pipelines = {
            "PyTorch float32": vilt.pipeline("vqa", model=str(source), device="cpu", dtype="float32"),
            "onnxruntime float32": vilt.pipeline(
                "vqa", model=str(exports["float32"].path.parent), backend="onnxruntime"
            ),
            "onnxruntime int8": vilt.pipeline(
                "vqa", model=str(exports["int8"].path.parent), backend="onnxruntime"
            ),
        }
        runs = {name: answer_all(vqa, items, args.batch_size) for name, vqa in pipelines.items()}
    reference = runs["PyTorch float32"]
    accuracy = {
        name: 100 * sum(r["answer"] == t for r, t in zip(results, truth)) / len(truth)
        for name, results in runs.items()
    }
    checkpoint_bytes, checkpoint_dtype = weights_file(source)
    sizes = {
        "PyTorch float32": checkpoint_bytes,
        "onnxruntime float32": exports["float32"].size_bytes,
        "onnxruntime int8": exports["int8"].size_bytes,
    }
    config = vilt.ViltConfig.from_pretrained(source)
    lines = [
        f"easy-VQA test split: {len(truth)} questions; model {source.name} ({config.num_hidden_layers} layers, "
        f"hidden {config.hidden_size}, patch {config.patch_size}, {config.num_labels} answers)",
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; python {platform.python_version()}, "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, vilt {vilt.__version__}; ONNX opset "
        f"{exports['float32'].opset}, batch size {args.batch_size}",
        "",
        f"{'backend':<20} {'accuracy':>9} {'same answer as torch':>21} {'max |score diff|':>17} {'file MiB':>9}",
    ]
    for name, results in runs.items():
        same = sum(r["answer"] == e["answer"] for r, e in zip(results, reference))
        score_diff = max(abs(r["score"] - e["score"]) for r, e in zip(results, reference))
        lines.append(
            f"{name:<20} {accuracy[name]:>8.2f}% {f'{same}/{len(truth)}':>21} {score_diff:>17.1e} "
            f"{sizes[name] / 2**20:>9.1f}"
        )
    gap = accuracy["onnxruntime float32"] - accuracy["PyTorch float32"]
    lines += [
        "",
        f"onnxruntime float32 - PyTorch float32 accuracy: {gap:+.2f} points (must be within 0.10)",
        f"onnxruntime int8 - PyTorch float32 accuracy: {accuracy['onnxruntime int8'] - accuracy['PyTorch float32']:+.2f} "
        "points",
        f"PyTorch's file size is the checkpoint's safetensors as stored ({checkpoint_dtype}); it runs in float32.",
    ]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report, encoding="utf-8")
    if abs(gap) > 0.1:
        raise SystemExit(f"onnxruntime float32 accuracy differs from PyTorch by {gap:+.2f} points (> 0.10)")


if __name__ == "__main__":
    main()
