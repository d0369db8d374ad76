"""ViLT model behaviour that needs no reference: padding, patch selection, bfloat16, input validation,
attention paths, gradient checkpointing, the retrieval and ITM losses, tied weights, image tokens and
match scores. What every class must do (determinism, fast path, save/load...) is test_model_contract.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from model_inputs import PADDED_SIZES, TEXT_LENGTHS, padded_images, text_inputs
from tiny import HIDDEN_SIZE, MODEL_TESTS, NUM_LAYERS, PATCH_SIZE, SMALL_VOCAB, tiny_config
from torch import nn

import vilt.modeling
from vilt import (
    ViltConfig,
    ViltForImageTextMatching,
    ViltForQuestionAnswering,
    ViltInputError,
)
from vilt.heads import MODEL_CLASSES

TOL = 1e-5
# patch grids (rows, columns) of PADDED_SIZES with patch 8 on the 40x40 canvas; the 30x37 image keeps
# the patches whose top-left pixel is inside it: rows 0, 8, 16, 24 and columns 0, 8, 16, 24, 32
PADDED_GRIDS = [(4, 4), (3, 5), (5, 2), (4, 5)]


def tiny_model(class_name: str, seed: int = 0, **changes: Any) -> nn.Module:
    """A tiny model in eval mode whose every parameter is random (the init leaves the image CLS and the
    position grid at zero, LayerNorms at one/zero): each one then matters to the outputs."""
    torch.manual_seed(seed)
    model = MODEL_CLASSES[class_name](tiny_config(class_name, **MODEL_TESTS, **changes))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def padded_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Texts of TEXT_LENGTHS tokens and images of PADDED_SIZES, padded."""
    g = torch.Generator().manual_seed(seed)
    pixel_values, pixel_mask = padded_images(PADDED_SIZES, g)
    return {
        **text_inputs(SMALL_VOCAB, TEXT_LENGTHS, g),
        "pixel_values": pixel_values,
        "pixel_mask": pixel_mask,
    }


def row_major(rows: int, cols: int) -> list[list[int]]:
    return [[r, c] for r in range(rows) for c in range(cols)]


# ----------------------------------------------------------------------------- padding and patch selection


def test_an_image_padded_into_a_larger_batch_gives_its_solo_outputs() -> None:
    """A 24x40 image with a 5-token text, alone, then first in a batch with larger images and longer texts."""
    g = torch.Generator().manual_seed(0)
    pixel_values, pixel_mask = padded_images([(24, 40), (40, 48), (32, 56)], g)
    batch = {
        **text_inputs(SMALL_VOCAB, [5, 7, 3], g),
        "pixel_values": pixel_values,
        "pixel_mask": pixel_mask,
    }
    solo = {
        "input_ids": batch["input_ids"][:1, :5],
        "token_type_ids": batch["token_type_ids"][:1, :5],
        "pixel_values": pixel_values[:1, :, :24, :40],
    }
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0, 0]  # the text of the first row is padded
    qa = tiny_model("ViltForQuestionAnswering")
    with torch.no_grad():
        assert (qa(**batch).logits[0] - qa(**solo).logits[0]).abs().max() <= TOL
        alone, padded = qa.vilt(**solo), qa.vilt(**batch)
    tokens = 1 + 3 * 5  # image CLS + the 3x5 patch grid
    assert (padded.pooler_output[0] - alone.pooler_output[0]).abs().max() <= TOL
    assert (padded.last_hidden_state[0, :5] - alone.last_hidden_state[0, :5]).abs().max() <= TOL  # text
    image_part = padded.last_hidden_state[0, 7 : 7 + tokens] - alone.last_hidden_state[0, 5 : 5 + tokens]
    assert image_part.abs().max() <= TOL
    assert padded.image_mask[0].sum() == tokens and alone.image_mask[0].sum() == tokens


def test_eval_patch_index_is_row_major_on_each_images_grid() -> None:
    model = tiny_model("ViltModel")
    with torch.no_grad():
        out = model(**padded_batch())
    assert out.image_grid_size == (5, 5)
    assert out.patch_index.shape == (4, 20, 2)  # the largest image has 20 patches
    for b, (rows, cols) in enumerate(PADDED_GRIDS):
        valid = rows * cols
        assert out.image_mask[b].tolist() == [1] * (1 + valid) + [0] * (20 - valid)
        assert out.patch_index[b, :valid].tolist() == row_major(rows, cols)


def test_training_with_max_image_length_samples_reproducibly_with_a_generator() -> None:
    model = tiny_model("ViltModel", max_image_length=6).train()  # dropout is 0: only the sampling is random
    inputs = padded_batch()

    def sample(seed: int) -> Any:
        return model(**inputs, generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        first, again, other = sample(3), sample(3), sample(4)
    assert torch.equal(first.patch_index, again.patch_index)
    assert torch.equal(first.last_hidden_state, again.last_hidden_state)
    assert not torch.equal(first.patch_index, other.patch_index)
    assert first.patch_index.shape == (4, 6, 2)
    for b, (rows, cols) in enumerate(PADDED_GRIDS):  # 6 distinct patches inside the image, in random order
        chosen = [tuple(p) for p in first.patch_index[b].tolist()]
        assert len(set(chosen)) == 6 and all(r < rows and c < cols for r, c in chosen)
    assert any(first.patch_index[b].tolist() != row_major(*PADDED_GRIDS[b])[:6] for b in range(4))


def test_eval_with_max_image_length_is_deterministic_and_evenly_spaced() -> None:
    """Documented rule: token k of an image with n valid patches is its valid patch of rank floor(k * n / 4)."""
    model = tiny_model("ViltModel", max_image_length=4)
    with torch.no_grad():
        first, second = model(**padded_batch()), model(**padded_batch())
    assert torch.equal(first.last_hidden_state, second.last_hidden_state)
    assert torch.equal(first.patch_index, second.patch_index)
    # 4x4 grid, 16 patches: ranks 0, 4, 8, 12 -> the first patch of each row
    assert first.patch_index[0].tolist() == [[0, 0], [1, 0], [2, 0], [3, 0]]
    # 3x5 grid, 15 patches: ranks 0, 3, 7, 11
    assert first.patch_index[1].tolist() == [[0, 0], [0, 3], [1, 2], [2, 1]]


# ----------------------------------------------------------------------------- bfloat16


@pytest.mark.parametrize("mode", ["bf16 weights", "autocast"])
def test_bfloat16_vqa_logits_are_within_2e_2_of_float32(mode: str) -> None:
    """A small-but-not-tiny model with the reference init, a random batch of 64."""
    config = ViltConfig(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        image_size=64,
        patch_size=16,
        num_labels=13,
    )
    torch.manual_seed(0)
    model = ViltForQuestionAnswering(config).eval()
    g = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(1, config.vocab_size, (64, 12), generator=g),
        "pixel_values": torch.randn(64, 3, 64, 64, generator=g),
    }
    with torch.no_grad():
        reference = model(**inputs).logits
        if mode == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(**inputs).logits
        else:
            logits = copy.deepcopy(model).to(torch.bfloat16)(**inputs).logits
    assert logits.dtype == torch.bfloat16
    relative = (logits.float() - reference).norm() / reference.norm()
    assert relative <= 2e-2, f"relative error {relative:.3g}"


# ----------------------------------------------------------------------------- bad input


def _valid_inputs() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    pixel_values, pixel_mask = padded_images([(32, 32), (24, 32)], g)
    return {
        "input_ids": torch.randint(1, SMALL_VOCAB, (2, 5), generator=g),
        "pixel_values": pixel_values,
        "pixel_mask": pixel_mask,
    }


def _all_zero_mask_for_image_1(inputs: dict[str, Any]) -> None:
    inputs["pixel_mask"][1] = 0
    inputs["pixel_values"][1] = 0


def _pixel(value: float) -> Any:
    def change(inputs: dict[str, Any]) -> None:
        inputs["pixel_values"][1, 2, 5, 7] = value

    return change


def _empty_batch(inputs: dict[str, Any]) -> None:
    inputs.update(
        input_ids=inputs["input_ids"][:0],
        pixel_values=inputs["pixel_values"][:0],
        pixel_mask=inputs["pixel_mask"][:0],
    )


BAD_INPUTS = {
    "text longer than max_position_embeddings": (
        lambda x: x.update(input_ids=torch.ones(2, 41, dtype=torch.long)),
        "41 tokens long but this model reads at most 40",
    ),
    "an all-zero pixel_mask for one image": (
        _all_zero_mask_for_image_1,
        r"pixel_mask marks no pixel of image\(s\) \[1\]",
    ),
    "text and image batch sizes differ": (
        lambda x: x.update(pixel_values=x["pixel_values"][:1], pixel_mask=x["pixel_mask"][:1]),
        "text batch has 2 examples but the image batch has 1",
    ),
    "wrong channel count": (
        lambda x: x.update(pixel_values=x["pixel_values"][:, :1]),
        "1 channels but the model expects 3",
    ),
    "image smaller than one patch": (
        lambda x: x.update(pixel_values=torch.zeros(2, 3, 6, 32), pixel_mask=None),
        "smaller than one 8x8 patch",
    ),
    "both input_ids and inputs_embeds": (
        lambda x: x.update(inputs_embeds=torch.zeros(2, 5, 32)),
        "exactly one of input_ids or inputs_embeds",
    ),
    "neither input_ids nor inputs_embeds": (
        lambda x: x.pop("input_ids"),
        "exactly one of input_ids or inputs_embeds",
    ),
    "both pixel_values and image_embeds": (
        lambda x: x.update(image_embeds=torch.zeros(2, 17, 32)),
        "exactly one of pixel_values or image_embeds",
    ),
    "neither pixel_values nor image_embeds": (
        lambda x: x.update(pixel_values=None, pixel_mask=None),
        "exactly one of pixel_values or image_embeds",
    ),
    "attention_mask of the wrong shape": (
        lambda x: x.update(attention_mask=torch.ones(2, 4, dtype=torch.long)),
        r"attention_mask must have shape \(2, 5\)",
    ),
    "pixel_mask of the wrong shape": (
        lambda x: x.update(pixel_mask=torch.ones(2, 16, 32, dtype=torch.long)),
        r"pixel_mask must have shape \(2, 32, 32\)",
    ),
    "a NaN pixel": (_pixel(float("nan")), r"pixel_values of image\(s\) \[1\] hold NaN or infinite values"),
    "an infinite pixel": (_pixel(float("-inf")), r"pixel_values of image\(s\) \[1\] hold NaN or infinite"),
    "a token id past the vocabulary": (
        lambda x: x["input_ids"].__setitem__((0, 1), 99),
        r"input_ids must lie in \[0, 99\) for this model, got \[99\]; encode the text with this model's",
    ),
    "a negative token id": (lambda x: x["input_ids"].__setitem__((1, 0), -3), r"input_ids .* got \[-3\]"),
    "a token type id past type_vocab_size": (
        lambda x: x.update(token_type_ids=torch.full((2, 5), 2)),
        r"token_type_ids must lie in \[0, 2\) for this model, got \[2\]",
    ),
    "an empty batch": (_empty_batch, r"the batch is empty \(0 examples\)"),
    "an empty text": (lambda x: x.update(input_ids=x["input_ids"][:, :0]), "the text is empty"),
    "image_embeds with a pixel_mask of the wrong size": (
        lambda x: x.update(
            pixel_values=None, image_embeds=torch.zeros(2, 17, 32), pixel_mask=torch.ones(2, 16)
        ),
        "pixel_mask must mark each of the 17 image tokens",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_a_vilt_input_error_naming_the_problem(case: str) -> None:
    change, message = BAD_INPUTS[case]
    inputs = _valid_inputs()
    change(inputs)
    with pytest.raises(ViltInputError, match=message):
        tiny_model("ViltForQuestionAnswering")(**inputs)


def test_huge_but_finite_pixels_are_accepted() -> None:
    """Their float32 sum overflows to infinity; the exact check then finds every value finite."""
    inputs = _valid_inputs()
    inputs["pixel_values"][:, :, :2] = 3e38
    with torch.no_grad():
        tiny_model("ViltModel")(**inputs)


def test_embed_images_checks_its_pixels() -> None:
    model = tiny_model("ViltModel")
    pixels = torch.randn(2, 3, 32, 32)
    pixels[0, 0, 0, 0] = float("nan")
    with pytest.raises(ViltInputError, match=r"image\(s\) \[0\] hold NaN"):
        model.embed_images(pixels)
    with pytest.raises(ViltInputError, match="1 channels but the model expects 3"):
        model.embed_images(pixels[:, :1])


def test_images_and_text_classification_refuses_the_wrong_number_of_images() -> None:
    inputs = _valid_inputs()
    inputs["pixel_values"] = inputs["pixel_values"][:, None].expand(-1, 3, -1, -1, -1)  # (B, 3, C, H, W)
    inputs.pop("pixel_mask")
    with pytest.raises(ViltInputError, match="compares 2 images per text, got 3"):
        tiny_model("ViltForImagesAndTextClassification")(**inputs)


# ----------------------------------------------------------------------------- attention paths


def test_eager_and_sdpa_attention_agree() -> None:
    model = tiny_model("ViltModel")
    inputs = padded_batch()
    with torch.no_grad():
        sdpa = model(**inputs, output_hidden_states=True)
        model.set_attn_implementation("eager")
        eager = model(**inputs, output_hidden_states=True)
    for a, b in zip(sdpa.hidden_states, eager.hidden_states, strict=True):
        assert (a - b).abs().max() <= TOL
    assert (sdpa.last_hidden_state - eager.last_hidden_state).abs().max() <= TOL
    assert (sdpa.pooler_output - eager.pooler_output).abs().max() <= TOL
    with pytest.raises(ViltInputError, match="'sdpa' or 'eager'"):
        model.set_attn_implementation("flash")


def test_eager_attention_does_not_ask_the_encoder_for_probabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    """The "eager" implementation runs the explicit softmax; probabilities are kept only when asked for."""
    model = tiny_model("ViltModel")
    model.set_attn_implementation("eager")
    calls = []
    forward = vilt.modeling.ViltEncoder.forward

    def spy(self, x, mask, head_mask, output_attentions, output_hidden_states, eager=False, fast=False):  # type: ignore[no-untyped-def]
        calls.append((output_attentions, eager))
        return forward(self, x, mask, head_mask, output_attentions, output_hidden_states, eager, fast)

    monkeypatch.setattr(vilt.modeling.ViltEncoder, "forward", spy)
    with torch.no_grad():
        assert model(**padded_batch()).attentions is None
        assert len(model(**padded_batch(), output_attentions=True).attentions) == NUM_LAYERS
    assert calls == [(False, True), (True, True)]


@pytest.mark.parametrize("explicit_up_to", [512, 0])
def test_the_backward_path_gives_the_inference_paths_outputs(explicit_up_to: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With gradients on, attention runs one fused QKV product and, on CPU for sequences up to
    EXPLICIT_TRAINING_MAX_LENGTH, the explicit softmax (else SDPA); without, three products and SDPA.
    Every path must give the same hidden states."""
    monkeypatch.setattr(vilt.modeling, "EXPLICIT_TRAINING_MAX_LENGTH", explicit_up_to)
    model = tiny_model("ViltModel")
    inputs = padded_batch()
    with torch.no_grad():
        inference = model(**inputs, output_hidden_states=True)
    backward = model(**inputs, output_hidden_states=True)
    assert backward.last_hidden_state.requires_grad
    for a, b in zip(inference.hidden_states, backward.hidden_states, strict=True):
        assert (a - b).abs().max() <= TOL
    assert (inference.pooler_output - backward.pooler_output).abs().max() <= TOL


@pytest.mark.parametrize("size", [(64, 64), (70, 45)])
def test_the_patch_product_is_the_patch_convolution(size: tuple[int, int]) -> None:
    """The reduced-precision patch embedding (a matrix product) equals the float32 convolution,
    including images whose sides are not whole patches."""
    embed = tiny_model("ViltModel").embeddings.patch_embeddings
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        convolution = embed(pixels)  # float32: the convolution
        product = embed.patch_product(pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = embed(pixels)
    assert convolution.shape == (2, size[0] // PATCH_SIZE, size[1] // PATCH_SIZE, HIDDEN_SIZE)
    assert (product - convolution).abs().max() <= TOL
    assert autocast.dtype == torch.bfloat16  # autocast takes the product
    assert (autocast.float() - convolution).abs().max() <= 5e-2 * convolution.abs().max()


# ----------------------------------------------------------------------------- gradient checkpointing


def test_grad_checkpointing_gives_the_same_loss_and_gradients() -> None:
    model = tiny_model("ViltForQuestionAnswering").train()  # dropout 0
    inputs = padded_batch()
    labels = torch.rand(4, MODEL_TESTS["num_labels"], generator=torch.Generator().manual_seed(1))
    calls = []
    model.vilt.encoder.layer[0].register_forward_pre_hook(
        lambda *_: calls.append(1)
    )  # recomputation stops early

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = loss_and_grads()
    assert len(calls) == 1
    model.set_grad_checkpointing(True)
    checkpointed_loss, checkpointed_grads = loss_and_grads()
    assert len(calls) == 3, "layer 0 should run again in backward"
    assert torch.equal(loss, checkpointed_loss)
    for name, grad in grads.items():
        assert (checkpointed_grads[name] - grad).abs().max() <= 1e-7, name


# ----------------------------------------------------------------------------- retrieval and ITM losses


def test_retrieval_loss_is_cross_entropy_over_each_images_candidate_texts() -> None:
    model = tiny_model("ViltForImageAndTextRetrieval")
    g = torch.Generator().manual_seed(0)
    groups, k = 2, 3  # 2 images, 3 candidate texts each: 6 consecutive pairs
    pixel_values = torch.randn(groups, 3, 32, 32, generator=g).repeat_interleave(k, dim=0)
    inputs = {
        "input_ids": torch.randint(1, SMALL_VOCAB, (groups * k, 6), generator=g),
        "pixel_values": pixel_values,
    }
    labels = torch.tensor([0, 2])
    out = model(**inputs, labels=labels)
    scores = out.logits[:, 0].reshape(groups, k)
    by_hand = -sum(scores[i, labels[i]] - scores[i].exp().sum().log() for i in range(groups)) / groups
    assert out.logits.shape == (6, 1)
    assert abs(out.loss.item() - by_hand.item()) <= 1e-6
    out.loss.backward()
    assert model.rank_output.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.tensor([0, 3]), "must index a candidate in each group of 3"),
        (torch.tensor([0, 0, 0, 0]), "4 groups"),
    ],
)
def test_retrieval_labels_that_do_not_fit_the_batch_are_refused(labels: torch.Tensor, message: str) -> None:
    model = tiny_model("ViltForImageAndTextRetrieval")
    inputs = {"input_ids": torch.randint(1, SMALL_VOCAB, (6, 4)), "pixel_values": torch.randn(6, 3, 32, 32)}
    with pytest.raises(ViltInputError, match=message):
        model(**inputs, labels=labels)


def test_image_text_matching_loss_is_cross_entropy_of_the_match_logits() -> None:
    model = tiny_model("ViltForImageTextMatching")
    assert isinstance(model, ViltForImageTextMatching)
    inputs = padded_batch()
    labels = torch.tensor([1, 0, 0, 1])
    out = model(**inputs, labels=labels)
    log_probs = out.logits - out.logits.exp().sum(dim=1, keepdim=True).log()  # (B, 2)
    by_hand = -log_probs[torch.arange(4), labels].mean()
    assert out.logits.shape == (4, 2)
    assert abs(out.loss.item() - by_hand.item()) <= 1e-6
    with torch.no_grad():
        pooled = model.vilt(**inputs).pooler_output
    assert (
        out.logits - F.linear(pooled, model.itm_score.fc.weight, model.itm_score.fc.bias)
    ).abs().max() <= TOL


# ----------------------------------------------------------------------------- tied weights after save/load


def test_a_tied_masked_lm_model_loads_back_tied(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("ViltForMaskedLM", tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.mlm_score.decoder.weight is loaded.get_input_embeddings().weight
    assert torch.equal(loaded.mlm_score.decoder.weight, model.mlm_score.decoder.weight)


# ----------------------------------------------------------------------------- image tokens and match scores


def test_embed_images_tokens_give_the_pixel_forwards_outputs() -> None:
    model = tiny_model("ViltModel")
    inputs = padded_batch()
    with torch.no_grad():
        expected = model(**inputs)
        tokens = model.embed_images(inputs["pixel_values"], inputs["pixel_mask"])
        text = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        got = model(**text, image_embeds=tokens.embeddings, pixel_mask=tokens.mask)
    assert tokens.embeddings.shape == (4, 1 + 20, HIDDEN_SIZE) and tokens.mask.shape == (4, 21)
    assert torch.equal(tokens.mask, expected.image_mask)
    assert (got.last_hidden_state - expected.last_hidden_state).abs().max() <= TOL
    assert (got.pooler_output - expected.pooler_output).abs().max() <= TOL


@pytest.mark.parametrize("class_name", ["ViltForImageAndTextRetrieval", "ViltForImageTextMatching"])
def test_match_scores_are_the_full_forwards_score_logits(class_name: str) -> None:
    """Retrieval: rank_output; ITM: the "match" logit (class 1). Images embedded once, paired by
    ``select``, or one image broadcast over every text."""
    model = tiny_model(class_name)
    inputs = padded_batch()
    text = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    column = 0 if class_name == "ViltForImageAndTextRetrieval" else 1
    with torch.no_grad():
        full = model(**inputs).logits[:, column]  # (4,)
        tokens = model.embed_images(inputs["pixel_values"], inputs["pixel_mask"])
        scores = model.match_scores(text["input_ids"], text["attention_mask"], text["token_type_ids"], tokens)
        rows = [2, 2, 0, 3]  # image 2 with texts 0 and 1, image 0 with text 2, image 3 with text 3
        paired = model.match_scores(text["input_ids"], text["attention_mask"], None, tokens.select(rows))
        by_pixels = model(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            pixel_values=inputs["pixel_values"][rows],
            pixel_mask=inputs["pixel_mask"][rows],
        ).logits[:, column]
        one = model.match_scores(text["input_ids"], text["attention_mask"], None, tokens.select([1]))
        one_by_pixels = model(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            pixel_values=inputs["pixel_values"][[1, 1, 1, 1]],
            pixel_mask=inputs["pixel_mask"][[1, 1, 1, 1]],
        ).logits[:, column]
    assert scores.shape == (4,)
    assert (scores - full).abs().max() <= TOL
    assert (paired - by_pixels).abs().max() <= TOL
    assert (one - one_by_pixels).abs().max() <= TOL
