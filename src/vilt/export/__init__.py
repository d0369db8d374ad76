"""Export ViLT to ONNX or OpenVINO and run the result (the ``onnx`` and ``openvino`` extras).

``export_model(model_or_path, output_dir, format="onnx", task=None, opset=18, quantize=None,
force=False)`` writes the graph (``model.onnx``, or ``openvino_model.xml``/``.bin``), ``config.json`` and
the processor files; ``OnnxModel.from_pretrained(output_dir)`` / ``OpenVinoModel.from_pretrained(output_dir)``
run them, and ``vilt.pipeline(task, model=output_dir, backend="onnxruntime" | "openvino")`` builds a
pipeline on them. Names load lazily, so ``import vilt.export`` (and the ``vilt`` command) works without
the extras.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_model": "vilt.export.exporter",
    "export_onnx": "vilt.export.exporter",
    "ExportResult": "vilt.export.exporter",
    "OnnxModel": "vilt.export.runtime",
    "OpenVinoModel": "vilt.export.runtime",
    "load_exported": "vilt.export.runtime",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vilt.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
