"""Folders vilt saves open in transformers' Auto classes as the ViLT classes, and folders transformers'
Auto classes save open in vilt: the same settings, weights and preprocessing both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import save_tiny, tiny_processor

import vilt
from vilt.heads import MODEL_CLASSES

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.reference

QA = "ViltForQuestionAnswering"
# transformers' Auto class -> the ViLT class it must give (the Auto model classes that map ViLT)
AUTO_MODELS = {"AutoModel": "ViltModel", "AutoModelForVisualQuestionAnswering": QA}
IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
TEXT = "what color is the circle?"


def _same_preprocessing(ours, theirs) -> None:
    mine = ours(images=IMAGE, text=TEXT, return_tensors="pt")
    reference = theirs(images=IMAGE, text=TEXT, return_tensors="pt")
    for key in ("input_ids", "token_type_ids", "attention_mask", "pixel_mask"):
        assert torch.equal(mine[key], reference[key]), key
    torch.testing.assert_close(mine["pixel_values"], reference["pixel_values"], rtol=0, atol=1e-6)


def _same_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    reference = theirs.state_dict()
    for key, tensor in ours.state_dict().items():
        assert torch.equal(tensor, reference[key]), key


def test_a_processor_folder_opens_in_auto_processor_as_vilt_processor(tmp_path):
    """Without a model's config.json beside it (the folder of a processor alone), AutoProcessor needs
    the processor_class that vilt now writes; before, it returned a BertTokenizer."""
    tiny_processor().save_pretrained(tmp_path)
    loaded = transformers.AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "ViltProcessor"
    _same_preprocessing(tiny_processor(), loaded)


def test_a_model_folder_opens_in_every_auto_class_as_vilt(tmp_path):
    directory = save_tiny(tmp_path / "model", QA)
    assert type(transformers.AutoConfig.from_pretrained(directory)).__name__ == "ViltConfig"
    assert type(transformers.AutoProcessor.from_pretrained(directory)).__name__ == "ViltProcessor"
    image_processor = transformers.AutoImageProcessor.from_pretrained(directory)
    assert type(image_processor).__name__.startswith("ViltImageProcessor")
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    assert type(tokenizer).__name__.startswith("BertTokenizer")  # what transformers maps ViLT to
    assert tokenizer.model_max_length == 40
    ours = MODEL_CLASSES[QA].from_pretrained(directory)
    for auto, expected in AUTO_MODELS.items():
        model = getattr(transformers, auto).from_pretrained(directory)
        assert type(model).__name__ == expected
        _same_weights(ours if expected == QA else ours.vilt, model)
    _same_preprocessing(
        vilt.ViltProcessor.from_pretrained(directory), transformers.AutoProcessor.from_pretrained(directory)
    )


def test_folders_saved_by_transformers_auto_classes_open_in_vilt(tmp_path):
    source = save_tiny(tmp_path / "ours", QA)
    processor = transformers.AutoProcessor.from_pretrained(source)
    model = transformers.AutoModelForVisualQuestionAnswering.from_pretrained(source)
    processor.save_pretrained(tmp_path / "theirs")
    model.save_pretrained(tmp_path / "theirs")
    transformers.AutoImageProcessor.from_pretrained(source).save_pretrained(tmp_path / "image-processor")
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path / "tokenizer")

    _same_preprocessing(vilt.ViltProcessor.from_pretrained(tmp_path / "theirs"), processor)
    assert (
        vilt.ViltImageProcessor.from_pretrained(tmp_path / "image-processor")
        == tiny_processor().image_processor
    )
    assert (
        vilt.ViltTokenizer.from_pretrained(tmp_path / "tokenizer")(TEXT)["input_ids"]
        == processor.tokenizer(TEXT)["input_ids"]
    )
    loaded, info = MODEL_CLASSES[QA].from_pretrained(tmp_path / "theirs", output_loading_info=True)
    assert not any(info.values()), info
    _same_weights(loaded, model)
    assert loaded.config.id2label == model.config.id2label
