"""Each training objective's loss falls on a learnable toy batch, and the masking / IPOT pieces behave."""

from __future__ import annotations

import pytest
import torch
from tiny import TRAIN_INIT, tiny_config

from vilt.alignment import ipot
from vilt.heads import (
    ViltForImageAndTextRetrieval,
    ViltForImagesAndTextClassification,
    ViltForPreTraining,
    ViltForQuestionAnswering,
)
from vilt.processing import ViltProcessor
from vilt.train.objectives import MaskingSpec, draw_itm_labels, mask_whole_words, pretraining_inputs

STEPS = 60


@pytest.fixture(scope="module")
def tokenizer():
    return ViltProcessor().tokenizer


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, 32, 32) distinct random images, one per toy example."""
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _fit(model: torch.nn.Module, loss_fn, steps: int = STEPS) -> tuple[float, float]:
    """(first loss, last loss) of ``steps`` Adam steps on one fixed batch."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def _text(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, padding="longest", return_tensors="pt"))


def test_vqa_bce_loss_falls(tokenizer):
    torch.manual_seed(0)
    model = ViltForQuestionAnswering(tiny_config(num_labels=3, initializer_range=TRAIN_INIT))
    text = _text(tokenizer, ["what is it?"] * 6)
    labels = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]  # each image has its own answer
    first, last = _fit(model, lambda m: m(**text, pixel_values=_images(6), labels=labels).loss)
    assert last < 0.5 * first


def test_nlvr2_pair_loss_falls(tokenizer):
    torch.manual_seed(0)
    model = ViltForImagesAndTextClassification(
        tiny_config("ViltForImagesAndTextClassification", initializer_range=TRAIN_INIT)
    )
    text = _text(tokenizer, ["the left image is brighter"] * 4)
    pairs = _images(8).view(4, 2, 3, 32, 32)  # (B, 2, C, H, W)
    labels = torch.tensor([0, 1, 1, 0])
    first, last = _fit(model, lambda m: m(**text, pixel_values=pairs, labels=labels).loss)
    assert last < 0.5 * first


def test_retrieval_group_loss_falls(tokenizer):
    torch.manual_seed(0)
    model = ViltForImageAndTextRetrieval(tiny_config(initializer_range=TRAIN_INIT))
    captions = ["a red square", "a blue ball", "a green tree", "a white cat"]
    # 4 images, each with its true caption first then the 3 others: 16 pairs in groups of 4
    texts = [captions[(i + j) % 4] for i in range(4) for j in range(4)]
    pixels = _images(4).repeat_interleave(4, dim=0)  # (16, C, H, W)
    text = _text(tokenizer, texts)
    first, last = _fit(
        model, lambda m: m(**text, pixel_values=pixels, labels=torch.zeros(4, dtype=torch.long)).loss
    )
    assert last < 0.5 * first


def _pretraining_batch(tokenizer) -> dict[str, torch.Tensor]:
    captions = ["a red circle", "a blue triangle", "a green rectangle", "a gray circle"] * 2
    pixels = _images(8)
    batch = _text(tokenizer, captions)
    batch.update(
        pixel_values=pixels,
        pixel_mask=torch.ones(8, 32, 32, dtype=torch.long),
        false_pixel_values=pixels.roll(1, dims=0),  # another example's image
        false_pixel_mask=torch.ones(8, 32, 32, dtype=torch.long),
    )
    return batch


@pytest.mark.parametrize("objective", ["mlm_loss", "itm_loss", "wpa_loss", "loss"])
def test_pretraining_objective_falls(tokenizer, objective):
    torch.manual_seed(0)
    model = ViltForPreTraining(tiny_config(initializer_range=TRAIN_INIT))
    spec = MaskingSpec.from_tokenizer(tokenizer)
    inputs = pretraining_inputs(_pretraining_batch(tokenizer), spec, torch.Generator().manual_seed(0))
    first, last = _fit(model, lambda m: getattr(m(**inputs), objective))
    assert last < first - 0.5 * abs(first) if objective != "wpa_loss" else last < first - 0.01


def test_whole_word_masking_masks_whole_words(tokenizer):
    spec = MaskingSpec.from_tokenizer(tokenizer)
    texts = ["the giraffe stands beside a tremendously tall tree"] * 200
    enc = _text(tokenizer, texts)
    words = tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    masked, labels = mask_whole_words(
        enc["input_ids"], enc["attention_mask"], spec, generator=torch.Generator().manual_seed(0)
    )
    chosen = labels != -100  # (200, Lt)
    real = len(words) - 2
    assert (chosen.sum(1) >= 1).all() and (chosen.sum(1) <= round(0.15 * real)).all()
    assert not chosen[:, 0].any() and not chosen[:, len(words) - 1].any()  # never [CLS] / [SEP]
    for pos, token in enumerate(words):
        if token.startswith("##"):  # a word piece is chosen exactly when the piece before it is
            assert torch.equal(chosen[:, pos], chosen[:, pos - 1])
    replaced = masked[chosen] == tokenizer.mask_token_id
    assert 0.6 < replaced.float().mean() < 0.95  # about 80% become [MASK]
    assert torch.equal(masked[~chosen], enc["input_ids"][~chosen])


def test_itm_labels_are_half_positive():
    labels = draw_itm_labels(9, torch.Generator().manual_seed(0))
    assert labels.sum() == 4 and set(labels.tolist()) == {0, 1}


def test_ipot_plan_has_uniform_marginals():
    cost = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(0))
    text_pad = torch.zeros(2, 5, dtype=torch.bool)
    image_pad = torch.zeros(2, 7, dtype=torch.bool)
    text_pad[1, 3:] = True
    image_pad[1, 6:] = True
    cost = cost.masked_fill(text_pad.unsqueeze(-1) | image_pad.unsqueeze(-2), 0)
    plan = ipot(cost, text_pad, image_pad, iterations=500)  # (B, N, M)
    assert torch.allclose(plan[0].sum(0), torch.full((5,), 1 / 5), atol=1e-3)  # text marginal
    assert torch.allclose(plan[1].sum(1)[:6], torch.full((6,), 1 / 6), atol=1e-3)  # image marginal
    assert plan[1, :, 3:].abs().sum() == 0 and plan[1, 6:].abs().sum() == 0  # nothing on padding
