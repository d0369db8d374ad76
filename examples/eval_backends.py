"""Accuracy of every backend and precision against PyTorch float32: easy-VQA, and ViLT-B/32 on photographs.

Part 1, the bundled easy-VQA model (or ``--model``) on the easy-VQA test split (9,673 questions): exports
it to ONNX (float32, int8) and OpenVINO (float32 weights, int8 weights) and answers every question with
pipelines built by ``vilt.pipeline``:

* PyTorch float32 and bfloat16 (the torch backend's default on CPUs with native bfloat16), and int8
  (``dtype="int8"``: int8 encoder weights, dynamic quantization);
* onnxruntime float32 and int8 (dynamic quantization);
* OpenVINO float32 and bfloat16 (the same IR computed in each precision), and int8 weights
  (NNCF weight compression) computed in bfloat16 where the CPU has it, else float32.

For each: top-1 accuracy, how often its answer equals PyTorch float32's, the largest score difference
and the file size.

Part 2, ViLT-B/32 (the default config, 3,129 answers, random weights written by ``transformers``: the
published weights cannot be downloaded here) on 16 photographs from scikit-image and matplotlib with 8
questions each: how often each low-precision backend's top answer equals float32's. With random weights
the answers' logits lie close together, so this measures the precision's noise against small margins:
a harder test than a trained model's, not an accuracy.

The report is printed and written to ``results/eval_backends.txt``. ``benchmarks/bench_backends.py``
measures the speed of the same backends. Run as
``python examples/eval_backends.py [--model DIR] [--limit N] [--skip-photographs]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import easy_vqa
import numpy as np
import torch
from PIL import Image

import vilt
from vilt.devices import cpu_features, cpu_supports_bf16
from vilt.export import export_model
from vilt.hub import BUNDLED_MODEL_DIR

RESULTS_FILE = Path(__file__).resolve().parent.parent / "results" / "eval_backends.txt"
QUESTIONS = (
    "what is in the picture?",
    "what color is it?",
    "how many animals are there?",
    "is it outside?",
    "what is the man doing?",
    "where is this?",
    "is there a cat?",
    "what is on the table?",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL_DIR), help="easy-VQA model (default: bundled)")
    parser.add_argument("--limit", type=int, help="answer only the first N test questions (default: all)")
    parser.add_argument("--batch-size", type=int, default=64, help="questions per forward pass (default 64)")
    parser.add_argument("--skip-photographs", action="store_true", help="skip part 2 (ViLT-B/32)")
    parser.add_argument("--output", default=str(RESULTS_FILE), help=f"report file (default {RESULTS_FILE})")
    return parser.parse_args()


def backends(source: Path, scratch: Path, task: str) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (a function building the pipeline, the size in bytes of what it loads)."""
    onnx = {q: export_model(source, scratch / f"onnx-{q}", "onnx", task, quantize=q) for q in (None, "int8")}
    ov = {q: export_model(source, scratch / f"ov-{q}", "openvino", task, quantize=q) for q in (None, "int8")}
    checkpoint = sum(f.stat().st_size for f in source.glob("*.safetensors"))
    low = "bfloat16" if cpu_supports_bf16() else "float32"

    def make(model: Path | str, **options: str) -> Callable[[], object]:
        return lambda: vilt.pipeline("vqa", model=str(model), device="cpu", **options)

    return {
        "PyTorch float32": (make(source, dtype="float32"), checkpoint),
        "PyTorch bfloat16": (make(source, dtype="bfloat16"), checkpoint),
        "PyTorch int8": (make(source, dtype="int8"), checkpoint),
        "onnxruntime float32": (make(onnx[None].path.parent, backend="onnxruntime"), onnx[None].size_bytes),
        "onnxruntime int8": (make(onnx["int8"].path.parent, backend="onnxruntime"), onnx["int8"].size_bytes),
        "OpenVINO float32": (
            make(ov[None].path.parent, backend="openvino", dtype="float32"),
            ov[None].size_bytes,
        ),
        "OpenVINO bfloat16": (
            make(ov[None].path.parent, backend="openvino", dtype="bfloat16"),
            ov[None].size_bytes,
        ),
        f"OpenVINO int8 weights ({low})": (
            make(ov["int8"].path.parent, backend="openvino", dtype=low),
            ov["int8"].size_bytes,
        ),
    }


def easy_vqa_part(source: Path, limit: int | None, batch_size: int, scratch: Path) -> list[str]:
    questions, truth, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    items = [{"image": paths[i], "question": q} for q, i in zip(questions, image_ids)][:limit]
    truth = truth[: len(items)]
    runs, sizes = {}, {}
    for name, (make, size) in backends(source, scratch / "easy-vqa", "vqa").items():
        runs[name] = [r[0] for r in make()(items, top_k=1, batch_size=batch_size)]  # type: ignore[operator]
        sizes[name] = size
    reference = runs["PyTorch float32"]
    config = vilt.ViltConfig.from_pretrained(source)
    lines = [
        f"## Part 1: easy-VQA test split, {len(items)} questions; model {source.name} "
        f"({config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_labels} answers)",
        "",
        f"{'backend':<34} {'accuracy':>9} {'vs float32':>11} {'same answer':>12} {'max |score diff|':>17} {'MiB':>6}",
    ]
    base = 100 * np.mean([r["answer"] == t for r, t in zip(reference, truth)])
    for name, results in runs.items():
        accuracy = 100 * np.mean([r["answer"] == t for r, t in zip(results, truth)])
        same = sum(r["answer"] == e["answer"] for r, e in zip(results, reference))
        diff = max(abs(r["score"] - e["score"]) for r, e in zip(results, reference))
        lines.append(
            f"{name:<34} {accuracy:>8.2f}% {accuracy - base:>+10.2f}p {f'{same}/{len(items)}':>12} "
            f"{diff:>17.1e} {sizes[name] / 2**20:>6.1f}"
        )
    lines.append(
        "(PyTorch's size is the checkpoint's safetensors as stored; it runs in the precision named.)"
    )
    return lines


def photographs() -> list[np.ndarray]:
    """16 photographs (HWC uint8 RGB) from scikit-image's and matplotlib's sample data."""
    import matplotlib.cbook
    from skimage import data

    color = (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "immunohistochemistry",
        "hubble_deep_field",
        "retina",
    )
    gray = ("camera", "coins", "moon", "clock", "brick", "grass")  # grayscale photographs, as RGB
    images = [getattr(data, name)() for name in color]
    images.append(data.stereo_motorcycle()[0])  # the left view
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        with matplotlib.cbook.get_sample_data(name) as handle:
            images.append(np.asarray(Image.open(handle).convert("RGB")))
    images += [np.stack([getattr(data, name)()] * 3, axis=-1) for name in gray]
    return images


def photographs_part(scratch: Path) -> list[str]:
    import transformers

    torch.manual_seed(0)
    source = scratch / "vilt-b32"
    transformers.ViltForQuestionAnswering(transformers.ViltConfig(num_labels=3129)).save_pretrained(source)
    vilt.ViltProcessor().save_pretrained(source)
    items = [{"image": image, "question": q} for image in photographs() for q in QUESTIONS]
    top = {}
    for name, (make, _) in backends(source, scratch / "vilt-b32-exports", "vqa").items():
        top[name] = [r[0]["answer"] for r in make()(items, top_k=1, batch_size=8)]  # type: ignore[operator]
    lines = [
        f"## Part 2: ViLT-B/32 (random weights, 3129 answers), {len(items)} questions on 16 photographs",
        "",
        f"{'backend':<34} {'top-1 same as float32':>22}",
    ]
    for name, answers in top.items():
        same = sum(a == b for a, b in zip(answers, top["PyTorch float32"]))
        lines.append(f"{name:<34} {f'{same}/{len(items)} ({100 * same / len(items):.1f}%)':>22}")
    return lines


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    import onnxruntime
    import openvino

    lines = [
        f"CPU: {cpu_features().describe()}, {os.cpu_count()} cores, native bfloat16: {cpu_supports_bf16()}; torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}, "
        f"vilt {vilt.__version__}",
        "",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        lines += easy_vqa_part(Path(args.model), args.limit, args.batch_size, Path(scratch))
        if not args.skip_photographs:
            lines += ["", *photographs_part(Path(scratch))]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
