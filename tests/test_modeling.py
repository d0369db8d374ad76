"""Parity with the reference (transformers ViLT): the same random weights give the same outputs.

Every test copies the reference model's state_dict into ours with a strict load, runs both on the
same inputs in float32 and compares every output (logits, pooler_output, last_hidden_state, each
hidden state and attention), the loss and the gradient of every parameter to ``TOL``.

The reference shuffles image tokens with ``torch.multinomial``; the autouse fixture makes it pick
in order (hf-vilt.md §3.5) instead of loosening the tolerance. Then valid patches keep their
row-major order and padding tokens are the first invalid patches in row-major order, which is the
order our eval uses, so image-token positions are comparable one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from model_inputs import PADDED_SIZES, REFERENCE_CLASSES, TEXT_LENGTHS, padded_images, text_inputs
from tiny import MODEL_TESTS, tiny_kwargs
from torch import nn

from vilt import ViltConfig
from vilt.heads import MODEL_CLASSES

transformers = pytest.importorskip("transformers")
hf_vilt = pytest.importorskip("transformers.models.vilt.modeling_vilt")

pytestmark = pytest.mark.reference

TOL = 1e-5


@pytest.fixture(autouse=True)
def reference_in_row_major_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the reference's random token choice by the first ``num_samples`` candidates in order."""

    def in_order(
        weights: torch.Tensor, num_samples: int, replacement: bool = False, **_: Any
    ) -> torch.Tensor:
        return torch.arange(num_samples) % weights.numel()

    monkeypatch.setattr(hf_vilt.torch, "multinomial", in_order)


# ----------------------------------------------------------------------------- building models and inputs


def config_kwargs(class_name: str, **changes: Any) -> dict[str, Any]:
    """The model tests' tiny config for ``class_name``, with ``changes``."""
    return tiny_kwargs(class_name, **MODEL_TESTS, **changes)


def perturb_every_parameter(model: nn.Module) -> None:
    """Add N(0, 0.02) noise to every parameter. The reference init leaves the image CLS and the position
    grid at zero, LayerNorms at one and biases at zero; perturbed, each of them matters to the outputs."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.02)


def draw_image_cls_and_positions(model: nn.Module) -> None:
    """The original ViLT init (timm's ViT) of the two parameters the reference leaves at zero: N(0, 0.02)."""
    model.get_parameter("vilt.embeddings.cls_token").normal_(0.0, 0.02)
    model.get_parameter("vilt.embeddings.position_embeddings").normal_(0.0, 0.02)


def build_pair(
    class_name: str, kwargs: dict[str, Any], init: Callable[[nn.Module], None] = perturb_every_parameter
) -> tuple[nn.Module, nn.Module]:
    """(reference, ours) in eval mode with identical random weights: the reference's init, then ``init``.

    Transformers v5 always ties the MLM decoder to the word embeddings, so ours ties them too
    for ViltForMaskedLM, which makes the gradients comparable.
    """
    torch.manual_seed(0)
    reference = getattr(transformers, class_name)(transformers.ViltConfig(**kwargs))
    with torch.no_grad():
        init(reference)
    tie = class_name == "ViltForMaskedLM"
    ours = MODEL_CLASSES[class_name](ViltConfig(**kwargs, tie_word_embeddings=tie))
    state = reference.state_dict()
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state, strict=True)
    return reference.eval(), ours.eval()


def labels_for(
    class_name: str, config: dict[str, Any], inputs: dict[str, Any], generator: torch.Generator
) -> Any:
    """Training labels in each head's format (None where the reference has no loss)."""
    text = inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]
    batch, length = text.shape[:2]
    num_labels = config["num_labels"]
    if class_name == "ViltForQuestionAnswering":  # soft VQA scores
        scores = torch.tensor([0.0, 0.3, 0.6, 0.9, 1.0])
        return scores[torch.randint(0, 5, (batch, num_labels), generator=generator)]
    if class_name in ("ViltForMaskedLM", "ViltForTokenClassification"):
        classes = config["vocab_size"] if class_name == "ViltForMaskedLM" else num_labels
        labels = torch.randint(0, classes, (batch, length), generator=generator)
        ignored = torch.rand(batch, length, generator=generator) < 0.5
        ignored[:, 0] = False  # at least one predicted token per row
        return labels.masked_fill(ignored, -100)
    if class_name == "ViltForImagesAndTextClassification":
        return torch.randint(0, num_labels, (batch,), generator=generator)
    return None  # ViltModel has no loss; the reference retrieval head refuses labels


def image_inputs(
    class_name: str, sizes: list[tuple[int, int]], num_images: int, generator: torch.Generator
) -> dict:
    """pixel_values/pixel_mask for the class: (B, n, ...) for the NLVR2 head, each image its own size."""
    if class_name != "ViltForImagesAndTextClassification":
        pixel_values, pixel_mask = padded_images(sizes, generator)
        return {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
    per_image = [
        padded_images(sizes[i:] + sizes[:i], generator) for i in range(num_images)
    ]  # rotate the sizes
    return {
        "pixel_values": torch.stack([pv for pv, _ in per_image], dim=1),  # (B, n, 3, H, W)
        "pixel_mask": torch.stack([pm for _, pm in per_image], dim=1),  # (B, n, H, W)
    }


# ----------------------------------------------------------------------------- running and comparing


def probe_loss(output: Any) -> torch.Tensor:
    """A loss-sized scalar (a weighted mean) that depends on every output element, for outputs without a loss."""
    tensors = [output.logits] if "logits" in output else [output.last_hidden_state, output.pooler_output]
    total = torch.zeros(())
    for t in tensors:
        weights = torch.cos(torch.arange(t.numel(), dtype=t.dtype)).reshape(t.shape)
        total = total + (t * weights).mean()
    return total


def forward_backward(model: nn.Module, inputs: dict[str, Any], labels: Any, **flags: Any) -> Any:
    """One forward with gradients, then backward of the loss (or of :func:`probe_loss`)."""
    model.zero_grad(set_to_none=True)
    if labels is not None:
        flags["labels"] = labels
    output = model(**inputs, **flags)
    (output.loss if labels is not None else probe_loss(output)).backward()
    return output


def max_diff(ours: Any, reference: Any, what: str) -> float:
    """Largest absolute difference between two (nested tuples/lists of) tensors; checks structure."""
    if reference is None:
        assert ours is None, f"{what}: ours is not None"
        return 0.0
    if isinstance(reference, (tuple, list)):
        assert len(ours) == len(reference), f"{what}: {len(ours)} items vs {len(reference)}"
        return max(
            (max_diff(o, r, f"{what}[{i}]") for i, (o, r) in enumerate(zip(ours, reference))), default=0.0
        )
    assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(reference.shape)}"
    return (ours.detach().double() - reference.detach().double()).abs().max().item()


def assert_outputs_close(ours: Any, reference: Any) -> None:
    """Every field of the reference output (loss, logits, pooler, hidden states, attentions...)."""
    assert set(ours.keys()) == set(reference.keys())
    for field in reference.keys():
        diff = max_diff(ours[field], reference[field], field)
        assert diff <= TOL, f"{field}: max abs diff {diff:.3g} > {TOL}"


def assert_grads_close(ours: nn.Module, reference: nn.Module) -> None:
    reference_grads = {n: p.grad for n, p in reference.named_parameters(remove_duplicate=False)}
    our_grads = {n: p.grad for n, p in ours.named_parameters(remove_duplicate=False)}
    assert set(our_grads) == set(reference_grads)
    assert any(g is not None for g in our_grads.values())
    for name, grad in reference_grads.items():
        diff = max_diff(our_grads[name], grad, f"grad of {name}")
        assert diff <= TOL, f"grad of {name}: max abs diff {diff:.3g} > {TOL}"


def assert_parity(
    class_name: str,
    kwargs: dict[str, Any],
    inputs: dict[str, Any],
    init: Callable[[nn.Module], None] = perturb_every_parameter,
    **flags: Any,
) -> None:
    """Build both models, run forward + backward on ``inputs`` and compare outputs and gradients."""
    reference, ours = build_pair(class_name, kwargs, init)
    labels = labels_for(class_name, kwargs, inputs, torch.Generator().manual_seed(1))
    flags = {"output_hidden_states": True, "output_attentions": True, **flags}
    reference_out = forward_backward(reference, inputs, labels, **flags)
    our_out = forward_backward(ours, inputs, labels, **flags)
    assert_outputs_close(our_out, reference_out)
    assert_grads_close(ours, reference)


# ----------------------------------------------------------------------------- the state_dict


@pytest.mark.parametrize("class_name", REFERENCE_CLASSES)
def test_state_dict_keys_and_shapes_are_the_reference_ones(class_name: str) -> None:
    kwargs = config_kwargs(class_name)
    reference = getattr(transformers, class_name)(transformers.ViltConfig(**kwargs)).state_dict()
    ours = MODEL_CLASSES[class_name](ViltConfig(**kwargs)).state_dict()
    assert sorted(set(ours) - set(reference)) == [] and sorted(set(reference) - set(ours)) == []
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}


# ----------------------------------------------------------------------------- (a) tiny config, (c) padding


@pytest.mark.parametrize("class_name", REFERENCE_CLASSES)
def test_tiny_config_unpadded_batch_with_default_masks(class_name: str) -> None:
    """(a): two 32x32 images, full-length text, no attention_mask / pixel_mask / token_type_ids."""
    kwargs = config_kwargs(class_name)
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1, kwargs["vocab_size"], (2, 6), generator=g)}
    inputs.update(image_inputs(class_name, [(32, 32), (32, 32)], 2, g))
    inputs.pop("pixel_mask")
    assert_parity(class_name, kwargs, inputs)


@pytest.mark.parametrize("class_name", REFERENCE_CLASSES)
def test_padded_images_of_different_sizes_and_texts_of_different_lengths(class_name: str) -> None:
    """(c): four images padded to 40x40 (grids 4x4, 3x5, 5x2, 4x5) and texts of 7, 5, 3, 7 tokens."""
    kwargs = config_kwargs(class_name)
    g = torch.Generator().manual_seed(0)
    inputs = {
        **text_inputs(kwargs["vocab_size"], TEXT_LENGTHS, g),
        **image_inputs(class_name, PADDED_SIZES, 2, g),
    }
    assert_parity(class_name, kwargs, inputs)


# ----------------------------------------------------------------------------- (b) the ViLT-B/32 config


@pytest.mark.parametrize("class_name", ["ViltForQuestionAnswering"])
def test_default_vilt_b32_config_on_a_padded_pair(class_name: str) -> None:
    """(b): ViltConfig() defaults (12 layers, 768 wide, 384 / 32), a 384x384 and a 384x512 image.

    Weights: the reference init plus the original's N(0, 0.02) image CLS and position grid. Our
    vectorised resize of the position grid can differ from F.interpolate by 1 float32 ulp (when both
    axes are resized); 12 layers of weights perturbed everywhere amplify that to ~1e-5 in the deep
    hidden states (logits stay ~1e-6), so this test does not perturb every parameter: the tiny tests do.
    """
    kwargs = {"num_labels": 5}
    g = torch.Generator().manual_seed(0)
    inputs = {
        **text_inputs(ViltConfig().vocab_size, [11, 40], g),
        **image_inputs(class_name, [(384, 384), (384, 512)], 1, g),
    }
    assert_parity(class_name, kwargs, inputs, draw_image_cls_and_positions)


# ----------------------------------------------------------------------------- (d) NLVR2 with 2 and 3 images


@pytest.mark.parametrize("num_images", [2, 3])
def test_images_and_text_classification_with_several_images(num_images: int) -> None:
    class_name = "ViltForImagesAndTextClassification"
    kwargs = config_kwargs(class_name, num_images=num_images)
    g = torch.Generator().manual_seed(0)
    inputs = {
        **text_inputs(kwargs["vocab_size"], TEXT_LENGTHS, g),
        **image_inputs(class_name, PADDED_SIZES, num_images, g),
    }
    assert_parity(class_name, kwargs, inputs)


# ----------------------------------------------------------------------------- (e) head_mask, inputs_embeds, image_embeds


class _ScaleHeads(nn.Module):
    """Multiplies attention probabilities (B, H, L, L) by a per-head mask (H,)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return probs * self.mask[None, :, None, None]


@pytest.mark.parametrize("class_name", ["ViltModel", "ViltForQuestionAnswering"])
def test_head_mask(class_name: str) -> None:
    """Transformers v5 dropped head_mask; v4 multiplied the probabilities after dropout by it. The
    reference's attention dropout (identity in eval) is swapped for that multiplication."""
    kwargs = config_kwargs(class_name)
    g = torch.Generator().manual_seed(0)
    inputs = {
        **text_inputs(kwargs["vocab_size"], TEXT_LENGTHS, g),
        **image_inputs(class_name, PADDED_SIZES, 2, g),
    }
    head_mask = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 0.25]])  # (num_layers, heads)
    reference, ours = build_pair(class_name, kwargs)
    base = reference if class_name == "ViltModel" else reference.vilt
    for layer, mask in zip(base.encoder.layer, head_mask):
        layer.attention.attention.dropout = _ScaleHeads(mask)
    labels = labels_for(class_name, kwargs, inputs, g)
    flags = {"output_hidden_states": True, "output_attentions": True}
    reference_out = forward_backward(reference, inputs, labels, **flags)
    our_out = forward_backward(ours, inputs, labels, head_mask=head_mask, **flags)
    assert_outputs_close(our_out, reference_out)
    assert_grads_close(ours, reference)
    assert our_out.attentions[0][:, 1].abs().max() == 0  # the masked head really is off


@pytest.mark.parametrize("class_name", REFERENCE_CLASSES)
def test_inputs_embeds(class_name: str) -> None:
    """Text given as embeddings (B, Lt, D); its gradient is compared too."""
    kwargs = config_kwargs(class_name)
    g = torch.Generator().manual_seed(0)
    text = text_inputs(kwargs["vocab_size"], TEXT_LENGTHS, g)
    embeds = torch.randn(len(TEXT_LENGTHS), max(TEXT_LENGTHS), kwargs["hidden_size"], generator=g)
    grads = []
    for model in build_pair(class_name, kwargs):
        leaf = embeds.clone().requires_grad_(True)
        inputs = {
            "inputs_embeds": leaf,
            "attention_mask": text["attention_mask"],
            **image_inputs(class_name, PADDED_SIZES, 2, torch.Generator().manual_seed(1)),
        }
        labels = labels_for(class_name, kwargs, inputs, torch.Generator().manual_seed(2))
        grads.append((forward_backward(model, inputs, labels, output_hidden_states=True), model, leaf.grad))
    (reference_out, reference, reference_grad), (our_out, ours, our_grad) = grads
    assert_outputs_close(our_out, reference_out)
    assert_grads_close(ours, reference)
    assert max_diff(our_grad, reference_grad, "inputs_embeds.grad") <= TOL


@pytest.mark.parametrize(
    "class_name", ["ViltModel", "ViltForQuestionAnswering", "ViltForImagesAndTextClassification"]
)
def test_image_embeds(class_name: str) -> None:
    """Precomputed image tokens (B, N, D) with a token mask (B, N) instead of pixels."""
    kwargs = config_kwargs(class_name)
    g = torch.Generator().manual_seed(0)
    text = text_inputs(kwargs["vocab_size"], TEXT_LENGTHS, g)
    batch, num_tokens = len(TEXT_LENGTHS), 9
    shape: tuple[int, ...] = (batch, num_tokens)
    if class_name == "ViltForImagesAndTextClassification":
        shape = (batch, 2, num_tokens)
    image_embeds = torch.randn(*shape, kwargs["hidden_size"], generator=g)
    token_mask = (torch.rand(*shape, generator=g) < 0.7).long()
    token_mask[..., 0] = 1  # the image CLS
    if class_name == "ViltForImagesAndTextClassification":
        token_mask = token_mask[:, :, None, :]  # (B, n, 1, N): the reference indexes pixel_mask[:, i, :, :]
    results = []
    for model in build_pair(class_name, kwargs):
        leaf = image_embeds.clone().requires_grad_(True)
        inputs = {**text, "image_embeds": leaf, "pixel_mask": token_mask}
        labels = labels_for(class_name, kwargs, inputs, torch.Generator().manual_seed(2))
        output = forward_backward(model, inputs, labels, output_hidden_states=True, output_attentions=True)
        results.append((output, model, leaf.grad))
    (reference_out, reference, reference_grad), (our_out, ours, our_grad) = results
    assert_outputs_close(our_out, reference_out)
    assert_grads_close(ours, reference)
    assert max_diff(our_grad, reference_grad, "image_embeds.grad") <= TOL


# ----------------------------------------------------------------------------- the SDPA path


@pytest.mark.parametrize("class_name", REFERENCE_CLASSES)
def test_sdpa_path_matches_the_reference(class_name: str) -> None:
    """Without output_attentions ours uses scaled_dot_product_attention; the reference is always eager."""
    kwargs = config_kwargs(class_name)
    g = torch.Generator().manual_seed(0)
    inputs = {
        **text_inputs(kwargs["vocab_size"], TEXT_LENGTHS, g),
        **image_inputs(class_name, PADDED_SIZES, 2, g),
    }
    assert_parity(class_name, kwargs, inputs, output_attentions=False)


# ----------------------------------------------------------------------------- return_dict=False


@pytest.mark.parametrize(
    "class_name", [c for c in REFERENCE_CLASSES if c != "ViltForImagesAndTextClassification"]
)
def test_return_dict_false_gives_the_reference_tuple(class_name: str) -> None:
    """Same items in the same order. (The reference's NLVR2 return_dict=False crashes with
    output_hidden_states, hf-vilt.md §7.8: its tuple is tested without them below.)"""
    kwargs = config_kwargs(class_name)
    g = torch.Generator().manual_seed(0)
    inputs = {
        **text_inputs(kwargs["vocab_size"], TEXT_LENGTHS, g),
        **image_inputs(class_name, PADDED_SIZES, 2, g),
    }
    labels = labels_for(class_name, kwargs, inputs, g)
    if labels is not None:
        inputs["labels"] = labels
    reference, ours = build_pair(class_name, kwargs)
    with torch.no_grad():
        expected = reference(**inputs, return_dict=False, output_hidden_states=True)
        got = ours(**inputs, return_dict=False, output_hidden_states=True)
    assert isinstance(got, tuple)
    assert max_diff(got, expected, "tuple") <= TOL


@pytest.mark.parametrize("with_labels", [False, True])
def test_images_and_text_classification_return_dict_false_keeps_the_reference_positions(
    with_labels: bool,
) -> None:
    """``(loss, logits, hidden_states, attentions)`` without ``loss`` when no labels are given, None entries
    included (hf-vilt.md §4.3; with hidden states or attentions the reference crashes, §7.8)."""
    class_name = "ViltForImagesAndTextClassification"
    kwargs = config_kwargs(class_name)
    g = torch.Generator().manual_seed(0)
    inputs = {
        **text_inputs(kwargs["vocab_size"], TEXT_LENGTHS, g),
        **image_inputs(class_name, PADDED_SIZES, 2, g),
    }
    if with_labels:
        inputs["labels"] = labels_for(class_name, kwargs, inputs, g)
    reference, ours = build_pair(class_name, kwargs)
    with torch.no_grad():
        expected = reference(**inputs, return_dict=False)
        got = ours(**inputs, return_dict=False)
    assert isinstance(got, tuple) and len(got) == len(expected) == (4 if with_labels else 3)
    assert got[-2:] == expected[-2:] == (None, None)  # no hidden states, no attentions
    assert max_diff(got[:-2], expected[:-2], "tuple") <= TOL


def test_a_model_without_pooler_keeps_the_reference_tuple_positions() -> None:
    """``ViltModel(add_pooling_layer=False)``: ``(last_hidden_state, None, hidden_states)``, as the reference."""
    kwargs = config_kwargs("ViltModel")
    g = torch.Generator().manual_seed(0)
    inputs = {
        **text_inputs(kwargs["vocab_size"], TEXT_LENGTHS, g),
        **image_inputs("ViltModel", PADDED_SIZES, 2, g),
    }
    torch.manual_seed(0)
    reference = transformers.ViltModel(transformers.ViltConfig(**kwargs), add_pooling_layer=False).eval()
    ours = MODEL_CLASSES["ViltModel"](ViltConfig(**kwargs), add_pooling_layer=False).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        expected = reference(**inputs, return_dict=False, output_hidden_states=True)
        got = ours(**inputs, return_dict=False, output_hidden_states=True)
    assert len(got) == len(expected) == 3 and got[1] is None and expected[1] is None
    assert max_diff((got[0], got[2]), (expected[0], expected[2]), "tuple") <= TOL
