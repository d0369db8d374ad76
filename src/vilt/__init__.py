"""vilt: ViLT, the Vision-and-Language Transformer (Kim, Son, Kim, ICML 2021), in PyTorch.

A drop-in for the ``transformers`` ViLT family: ``from vilt import ViltForQuestionAnswering`` works
like ``from transformers import ViltForQuestionAnswering``, loads the same checkpoints and gives the
same outputs. Names are resolved lazily, so ``import vilt`` stays cheap and optional parts
(training, serving, export) are only imported when used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "ViltConfig": "vilt.configuration",
    "ViltModel": "vilt.modeling",
    "ViltPreTrainedModel": "vilt.modeling",
    "ModelOutput": "vilt.modeling",
    "ViltForMaskedLM": "vilt.heads",
    "ViltForQuestionAnswering": "vilt.heads",
    "ViltForImagesAndTextClassification": "vilt.heads",
    "ViltForImageAndTextRetrieval": "vilt.heads",
    "ViltForTokenClassification": "vilt.heads",
    "ViltForImageTextMatching": "vilt.heads",
    "ViltImageProcessor": "vilt.image_processing",
    "ViltFeatureExtractor": "vilt.image_processing",
    "ViltTokenizer": "vilt.tokenization",
    "ViltProcessor": "vilt.processing",
    "convert_original_checkpoint": "vilt.convert",
    "pipeline": "vilt.pipelines",
    "ViltInputError": "vilt.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vilt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
