"""What an exported ViLT model is: its formats, files, inputs and output (shared by the exporter and the
runtimes, which import this module and not each other's).
"""

from __future__ import annotations

import importlib.util

from ..tasks import BASE_ARCHITECTURE, find_task, task_names

FORMATS = ("onnx", "openvino")
ONNX_FILE = "model.onnx"
OPENVINO_FILE = "openvino_model.xml"  # and openvino_model.bin beside it
GRAPH_FILES = {"onnx": ONNX_FILE, "openvino": OPENVINO_FILE}
# the pipeline backend that runs each format
BACKEND_OF_FORMAT = {"onnx": "onnxruntime", "openvino": "openvino"}
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask")
QUANTIZATIONS = ("int8",)
# the dynamo exporter writes opset 18 and converts down to 17; onnxruntime's opset-23 Attention
# kernel rejects the (batch, 1, 1, L) padding mask, so 22 is the newest that runs
OPSETS = range(17, 23)
DEFAULT_OPSET = 18
# export --task NAME -> the class exported (the task's preferred head)
TASKS = {name: find_task(name).architectures[0] for name in task_names("export")}
EXPORTABLE = (*TASKS.values(), BASE_ARCHITECTURE)

_EXTRAS = {
    "onnx": ("onnx", ("onnx", "onnxruntime", "onnxscript")),
    "onnxruntime": ("onnx", ("onnxruntime",)),
    "openvino": ("openvino", ("onnx", "onnxscript", "openvino", "nncf")),
}


def output_name(architecture: str) -> str:
    """The graph's one output: ``pooler_output`` for the base model, ``logits`` for the heads."""
    return "pooler_output" if architecture == BASE_ARCHITECTURE else "logits"


def missing_extra(what: str) -> str | None:
    """What to install for ``what`` (a format or backend) when a module it needs is missing, else None."""
    extra, modules = _EXTRAS[what]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{what} needs {', '.join(missing)}: pip install 'vilt[{extra}]'" if missing else None


def require(what: str) -> None:
    """Raise ImportError with the install command when what ``what`` (a format or backend) needs is missing."""
    message = missing_extra(what)
    if message:
        raise ImportError(message)
