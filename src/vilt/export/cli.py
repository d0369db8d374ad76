"""``vilt export``: write a model as ONNX or OpenVINO with dynamic batch, text length and image size.

Only argparse and the import-free tables are imported at the top; the exporter (torch, onnx, openvino)
is imported by the handler.
"""

from __future__ import annotations

import argparse
import os

from .. import arguments as check
from ..tasks import task_names
from .graph import FORMATS, OPSETS, QUANTIZATIONS, missing_extra


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command to the ``vilt`` parser."""
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX or OpenVINO (needs the onnx or openvino extra)",
        description="Export a model to DIR (model.onnx, or openvino_model.xml and .bin) with its config and "
        "processor files. Batch, text length and image size stay dynamic (image sides: multiples of the "
        "patch size). Run it with vilt.pipeline(..., backend='onnxruntime' or 'openvino') or "
        "vilt serve --backend.",
        epilog="example: vilt export --model dandelin/vilt-b32-finetuned-vqa --format openvino --output vqa-ov",
    )
    parser.add_argument(
        "--model", default="bundled", help="hub id, model directory or 'bundled' (default: the bundled model)"
    )
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="export format (default onnx)")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    parser.add_argument(
        "--task",
        choices=task_names("export"),
        help="head to export (default: the checkpoint's own architecture; the base model when it names none)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset, 17 to 22 (default 18)")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="int8 weights: onnxruntime dynamic quantization (onnx) or NNCF weight compression (openvino)",
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    parser.set_defaults(
        handler=run_export,
        checks=[
            lambda args: [message for message in [missing_extra(args.format)] if message],
            check.model(),
            _opset,
            check.output_directory("output", inputs=_model_directory),
        ],
    )


def _opset(args: argparse.Namespace) -> list[str]:
    if args.opset is None or args.opset in OPSETS:
        return []
    return [f"--opset {args.opset} is not supported; choose {OPSETS[0]}..{OPSETS[-1]}"]


def _model_directory(args: argparse.Namespace) -> list[str]:
    """The model directory exported, when it is one (the output must not be or hold it)."""
    from ..hub import model_source

    try:
        source = model_source(args.model)
    except FileNotFoundError:  # the model check says so
        return []
    return [source] if os.path.isdir(source) else []


def run_export(args: argparse.Namespace) -> int:
    """Export, then print what was written."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vilt").setLevel(logging.INFO)  # our progress lines, not the exporter's internals
    opset = {} if args.opset is None else {"opset": args.opset}
    with check.announce_slow(f"vilt export: loading {args.model} (torch, then the weights)..."):
        from .exporter import export_model
    result = export_model(
        args.model,
        args.output,
        args.format,
        task=args.task,
        quantize=args.quantize,
        force=args.force,
        **opset,
    )
    print(
        f"wrote {result.path} ({result.architecture}, {result.format}, opset {result.opset}, "
        f"{result.quantize or 'float32'} weights, {result.size_bytes / 2**20:.1f} MiB); "
        f"max |exported - PyTorch| on a check batch: {result.max_abs_diff:.2e}"
    )
    return 0
