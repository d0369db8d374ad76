"""The tiny ViLT of the test suite, defined once: 32-pixel images in 8-pixel patches (a 4x4 grid), 32 wide,
2 layers of 4 heads, an MLP 64 wide, BERT's 30522-word vocabulary and the default init.

Tests pass the few documented variations below as arguments. Only tests that need another size on
purpose build other configs: ViLT-B/32's defaults (test_modeling.py), the wider bfloat16 model
(test_modeling_behaviour.py), the 17 MB model of the kill tests (test_saves.py) and the published repos'
384-pixel images (hub_cache.py). Imported by the tests and helper modules (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from typing import Any

from vilt import ViltConfig

IMAGE_SIZE = 32
PATCH_SIZE = 8
HIDDEN_SIZE = 32
NUM_LAYERS = 2
NUM_HEADS = 4
INTERMEDIATE_SIZE = 64
SHAPE: dict[str, Any] = {
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
    "hidden_size": HIDDEN_SIZE,
    "num_hidden_layers": NUM_LAYERS,
    "num_attention_heads": NUM_HEADS,
    "intermediate_size": INTERMEDIATE_SIZE,
}

# ----------------------------------------------------------------------------- the variations

# Model tests that make their own token ids (no tokenizer): a 99-word vocabulary keeps the word
# embeddings and the MLM decoder small, an MLP width of 37 (a prime) lets no product rely on an aligned
# width, and three labels. Models fed by the real tokenizer (processor, pipelines, CLI, training) keep
# the real vocabulary.
SMALL_VOCAB = 99
ODD_MLP_WIDTH = 37
MODEL_TESTS: dict[str, Any] = {"vocab_size": SMALL_VOCAB, "intermediate_size": ODD_MLP_WIDTH, "num_labels": 3}
# Pipeline, CLI and server tests: a wide init, so that different inputs give clearly different outputs.
WIDE_INIT = 0.2
# Training tests: with BERT's 0.02 the toy objectives can stall on a plateau for a while, depending on
# float summation order (thread count); with 0.08 (as for the bundled model) each one converges within
# the tests' steps for every seed and thread count tried.
TRAIN_INIT = 0.08

NLVR2 = "ViltForImagesAndTextClassification"


def tiny_kwargs(class_name: str | None = None, **changes: Any) -> dict[str, Any]:
    """The tiny config's fields with ``changes``, plus what ``class_name`` needs: the NLVR2 head compares
    ``num_images`` images (2 unless changed), each with its own modality embedding. Also fits
    ``transformers.ViltConfig``."""
    kwargs = {**SHAPE, **changes}
    if class_name == NLVR2:
        kwargs.setdefault("num_images", 2)
        kwargs.setdefault("modality_type_vocab_size", kwargs["num_images"] + 1)
    return kwargs


def tiny_config(class_name: str | None = None, **changes: Any) -> ViltConfig:
    """:func:`tiny_kwargs` as a :class:`vilt.ViltConfig`."""
    return ViltConfig(**tiny_kwargs(class_name, **changes))
