"""The contract every model class keeps, checked for each one (vilt.heads.MODEL_CLASSES and
ViltForPreTraining) on a tiny random model fed by the processor: the documented output fields,
``return_dict=False`` as ``to_tuple()``, extra keyword arguments accepted, deterministic eval, the fast
path within 1e-5 of the plain path without renaming a weight, and a save/load round trip.

The tiny config keeps the real vocabulary (the processor's tokenizer makes the ids) and takes the model
tests' odd MLP width, so the fast path's packed products meet a width that is a multiple of nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny import HIDDEN_SIZE, NLVR2, NUM_LAYERS, ODD_MLP_WIDTH, tiny_config
from tiny_models import random_image, tiny_processor

from vilt.heads import MODEL_CLASSES, ViltForPreTraining
from vilt.layers import CachedProduct
from vilt.modeling import ModelOutput
from vilt.train.objectives import MaskingSpec, pretraining_inputs

PRETRAINING = "ViltForPreTraining"
CLASSES = {**MODEL_CLASSES, PRETRAINING: ViltForPreTraining}
NUM_LABELS = 3
TEXTS = ["what color is the circle?", "two", "is there a red square to the left of the blue circle?"]
SIZES = [(32, 48), (48, 32), (40, 40)]  # resized to a 32-pixel shorter side, padded to 48x48


def tiny_model(class_name: str) -> torch.nn.Module:
    """The tiny model in eval mode with noise on every parameter (the init leaves the image CLS, the
    position grid, LayerNorms and biases at constants), so that each one matters to the outputs."""
    torch.manual_seed(0)
    model = CLASSES[class_name](
        tiny_config(class_name, intermediate_size=ODD_MLP_WIDTH, num_labels=NUM_LABELS)
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def processor_inputs(class_name: str) -> dict[str, torch.Tensor]:
    """The processor's batch of three texts of different lengths and three images of different sizes
    (pairs for NLVR2); for pretraining, the masked texts and ITM images made from it."""
    processor = tiny_processor()
    images: list[Any] = [random_image(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    if class_name == NLVR2:
        images = [[image, images[(i + 1) % len(images)]] for i, image in enumerate(images)]
    batch = dict(processor(images=images, text=TEXTS, padding=True, return_tensors="pt"))
    if class_name != PRETRAINING:
        return batch
    batch.update(
        false_pixel_values=batch["pixel_values"].roll(1, 0), false_pixel_mask=batch["pixel_mask"].roll(1, 0)
    )
    spec = MaskingSpec.from_tokenizer(processor.tokenizer)
    return pretraining_inputs(batch, spec, torch.Generator().manual_seed(0))


def expected_fields(class_name: str, output: ModelOutput, text_length: int) -> dict[str, tuple[int, ...]]:
    """{field: shape} of an eval forward without labels (pretraining always has its losses)."""
    batch, vocab = len(TEXTS), tiny_config().vocab_size
    if class_name == "ViltModel":
        length = text_length + output.image_mask.shape[1]  # text tokens, then image CLS and patches
        return {"last_hidden_state": (batch, length, HIDDEN_SIZE), "pooler_output": (batch, HIDDEN_SIZE)}
    if class_name == PRETRAINING:
        losses = dict.fromkeys(["loss", "mlm_loss", "itm_loss", "wpa_loss"], ())
        return {**losses, "mlm_logits": (batch, text_length, vocab), "itm_logits": (batch, 2)}
    logits = {
        "ViltForQuestionAnswering": (batch, NUM_LABELS),
        "ViltForMaskedLM": (batch, text_length, vocab),
        NLVR2: (batch, NUM_LABELS),
        "ViltForImageAndTextRetrieval": (batch, 1),
        "ViltForTokenClassification": (batch, text_length, NUM_LABELS),
        "ViltForImageTextMatching": (batch, 2),
    }
    return {"logits": logits[class_name]}


def tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of an output or a (nested) tuple or list of them, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, ModelOutput):
        value = value.to_tuple()
    return [tensor for item in value for tensor in tensors(item)]


def assert_identical(got: Any, expected: Any) -> None:
    """Bit equality, for two calls of one model object in one process (the same kernels on the same
    weights): eval must be deterministic."""
    got, expected = tensors(got), tensors(expected)
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def caches(model: torch.nn.Module) -> list[bool]:
    """Whether each of the fast path's cached products holds its packed weights."""
    return [module.cached for module in model.modules() if isinstance(module, CachedProduct)]


@pytest.mark.usefixtures("fast_path_pays")
@pytest.mark.parametrize("class_name", list(CLASSES))
def test_model_contract(class_name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(class_name)
    inputs = processor_inputs(class_name)
    names = list(model.state_dict())
    # pretraining's forward has no output flags; the other classes return every hidden state
    flags = {} if class_name == PRETRAINING else {"output_hidden_states": True}

    # the documented fields, and eval is deterministic (the fast path, taken: caches are built)
    with torch.no_grad():
        output, again = model(**inputs, **flags), model(**inputs, **flags)
    fields = expected_fields(class_name, output, inputs["input_ids"].shape[1])
    assert output.keys() == [*fields, *(["hidden_states"] if flags else [])]
    assert {name: tuple(output[name].shape) for name in fields} == fields
    if flags:  # the embeddings and each layer's output (for each image of NLVR2)
        per_image = output.hidden_states if class_name == NLVR2 else [output.hidden_states]
        assert [len(states) for states in per_image] == [NUM_LAYERS + 1] * (2 if class_name == NLVR2 else 1)
    assert all(torch.isfinite(tensor).all() for tensor in tensors(output))
    assert_identical(again, output)
    assert caches(model) and all(caches(model))

    # the fast path within 1e-5 of the plain path, and no weight renamed by either
    assert list(model.state_dict()) == names
    with torch.no_grad():
        plain = model.set_fast_path(False)(**inputs, **flags)
    assert not any(caches(model))
    torch.testing.assert_close(tensors(output), tensors(plain), atol=1e-5, rtol=1e-5)
    assert list(model.optimize_for_inference().state_dict()) == names

    if class_name != PRETRAINING:  # pretraining is ours only: no reference tuple, no Trainer arguments
        with torch.no_grad():
            as_tuple = model(**inputs, **flags, return_dict=False)
            extras = model(**inputs, **flags, num_items_in_batch=torch.tensor(7), use_cache=False)
        assert isinstance(as_tuple, tuple)
        if (
            class_name == NLVR2
        ):  # the reference's tuple keeps None for the absent attentions (test_modeling.py)
            assert as_tuple[-1] is None
            as_tuple = as_tuple[:-1]
        assert_identical(as_tuple, output.to_tuple())
        assert_identical(extras, output)

    # save and load: the same config and tensors; outputs within 1e-6, as the loaded copy of the weights
    # sits elsewhere in memory, which can change a kernel's summation order, hence the last bit
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert list(loaded_state) == names
    assert all(torch.equal(loaded_state[name], state[name]) for name in names)
    with torch.no_grad():
        torch.testing.assert_close(tensors(loaded(**inputs, **flags)), tensors(output), atol=1e-6, rtol=1e-6)
