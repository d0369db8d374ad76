"""``vilt export``: write a model as ONNX with dynamic batch, text length and image size.

Only argparse is imported at the top; the exporter (torch, onnx) is imported by the handler.
"""

from __future__ import annotations

import argparse

from ..tasks import task_names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command to the ``vilt`` parser."""
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (needs the onnx extra)",
        description="Export a model to DIR/model.onnx with its config and processor files. Batch, text "
        "length and image size stay dynamic (image sides: multiples of the patch size). Run it with "
        "vilt.export.OnnxModel or vilt.pipeline(..., backend='onnxruntime').",
        epilog="example: vilt export --model dandelin/vilt-b32-finetuned-vqa --format onnx --output vqa-onnx",
    )
    parser.add_argument("--model", required=True, help="hub id or model directory")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    parser.add_argument(
        "--task",
        choices=task_names("export"),
        help="head to export (default: the checkpoint's own architecture; the base model when it names none)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset, 17 to 22 (default 18)")
    parser.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantization of the weights")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty output directory")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Export, then print what was written."""
    import logging

    from .exporter import export_onnx

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vilt").setLevel(logging.INFO)  # our progress lines, not the exporter's internals
    opset = {} if args.opset is None else {"opset": args.opset}
    result = export_onnx(
        args.model, args.output, task=args.task, quantize=args.quantize, force=args.force, **opset
    )
    print(
        f"wrote {result.path} ({result.architecture}, opset {result.opset}, "
        f"{result.quantize or 'float32'}, {result.size_bytes / 2**20:.1f} MiB); "
        f"max |onnxruntime - PyTorch| on a check batch: {result.max_abs_diff:.2e}"
    )
    return 0
