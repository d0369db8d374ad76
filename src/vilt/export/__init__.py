"""Export ViLT to ONNX and run it with onnxruntime (the ``onnx`` extra: ``pip install 'vilt[onnx]'``).

``export_onnx(model_or_path, output_dir, task=None, opset=18, quantize=None, force=False)`` writes
``model.onnx``, ``config.json`` and the processor files; ``OnnxModel.from_pretrained(output_dir)`` runs
them (and ``vilt.pipeline(task, model=output_dir, backend="onnxruntime")`` builds a pipeline on it).
Names load lazily, so ``import vilt.export`` (and the ``vilt`` command) works without the extra.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_onnx": "vilt.export.exporter",
    "ExportResult": "vilt.export.exporter",
    "OnnxModel": "vilt.export.runtime",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vilt.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
