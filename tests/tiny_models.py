"""Tiny random-weight ViLT models with processors, saved to directories, for the pipeline, CLI and
explain tests (imported by those test files; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

import vilt
from vilt.heads import MODEL_CLASSES
from vilt.image_processing import ViltImageProcessor

BUNDLED = Path(vilt.__file__).parent / "data" / "easy-vqa"
LABELS = {
    "ViltForQuestionAnswering": ["circle", "red", "yes", "no", "blue"],
    "ViltForTokenClassification": ["O", "COLOR", "SHAPE"],
}


def tiny_config(architecture: str) -> vilt.ViltConfig:
    """image_size 32, patch 8, hidden 32, 2 layers, 4 heads, the real 30522-word vocabulary."""
    labels = LABELS.get(architecture)
    nlvr2 = architecture == "ViltForImagesAndTextClassification"
    return vilt.ViltConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        initializer_range=0.2,  # larger than usual, so that different inputs give clearly different outputs
        num_images=2 if nlvr2 else -1,
        modality_type_vocab_size=3 if nlvr2 else 2,
        id2label=dict(enumerate(labels)) if labels else None,
        architectures=[architecture],
    )


def tiny_processor() -> vilt.ViltProcessor:
    """The bundled vocabulary and images resized to a 32-pixel shorter side, multiples of 8."""
    return vilt.ViltProcessor(image_processor=ViltImageProcessor(size=32, size_divisor=8))


def save_tiny(directory: Path, architecture: str, seed: int = 0) -> Path:
    """Save a random-weight model of ``architecture`` and its processor to ``directory``."""
    import torch

    torch.manual_seed(seed)
    model = MODEL_CLASSES[architecture](tiny_config(architecture))
    model.save_pretrained(directory)
    tiny_processor().save_pretrained(directory)
    return directory


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
