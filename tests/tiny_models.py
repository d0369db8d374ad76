"""Tiny random-weight ViLT models with processors, saved to directories, and test images, for the
pipeline, CLI, export, server and explain tests (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from tiny import IMAGE_SIZE, PATCH_SIZE, WIDE_INIT, tiny_config

import vilt
from vilt.heads import MODEL_CLASSES
from vilt.image_processing import ViltImageProcessor

BUNDLED = Path(vilt.__file__).parent / "data" / "easy-vqa"
LABELS = {
    "ViltForQuestionAnswering": ["circle", "red", "yes", "no", "blue"],
    "ViltForTokenClassification": ["O", "COLOR", "SHAPE"],
}


def tiny_processor() -> vilt.ViltProcessor:
    """The bundled vocabulary and images resized to a 32-pixel shorter side, multiples of 8."""
    return vilt.ViltProcessor(image_processor=ViltImageProcessor(size=IMAGE_SIZE, size_divisor=PATCH_SIZE))


def save_tiny(directory: Path, architecture: str, seed: int = 0) -> Path:
    """Save a random-weight tiny model of ``architecture`` (the real vocabulary, the wide init, the labels
    of ``LABELS``) and its processor to ``directory``."""
    import torch

    labels = LABELS.get(architecture)
    config = tiny_config(
        architecture,
        initializer_range=WIDE_INIT,
        id2label=dict(enumerate(labels)) if labels else None,
        architectures=[architecture],
    )
    torch.manual_seed(seed)
    model = MODEL_CLASSES[architecture](config)
    model.save_pretrained(directory)
    tiny_processor().save_pretrained(directory)
    return directory


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
