"""The inference fast path (``model.optimize_for_inference()``, vilt.optimize): same outputs as the plain
layers, rebuilt when weights change, never used where gradients or probabilities are needed."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import pytest
import torch
from torch import nn

import vilt
from vilt import optimize
from vilt.optimize import PackedEncoder


def tiny_vqa(seed: int = 0, **changes: object) -> vilt.ViltForQuestionAnswering:
    torch.manual_seed(seed)
    config = vilt.ViltConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=7,
        vocab_size=99,
        initializer_range=0.2,
        **changes,
    )
    return vilt.ViltForQuestionAnswering(config).eval()


def padded_inputs(batch: int = 3) -> dict[str, torch.Tensor]:
    """Text and images of different lengths and sizes, so that both masks pad something."""
    generator = torch.Generator().manual_seed(1)
    attention_mask = torch.ones(batch, 9, dtype=torch.long)
    attention_mask[1, 6:] = 0
    pixel_mask = torch.ones(batch, 48, 64, dtype=torch.long)
    pixel_mask[2, :, 40:] = 0
    return {
        "input_ids": torch.randint(1, 99, (batch, 9), generator=generator),
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(batch, 3, 48, 64, generator=generator),
        "pixel_mask": pixel_mask,
    }


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu", "silu"])
def test_optimized_matches_plain_float32(hidden_act: str) -> None:
    plain = tiny_vqa(hidden_act=hidden_act)
    optimized = copy.deepcopy(plain).optimize_for_inference()
    inputs = padded_inputs()
    torch.testing.assert_close(logits(optimized, inputs), logits(plain, inputs), atol=1e-5, rtol=1e-5)
    assert optimized.vilt.embeddings.patch_embeddings.packed.product is not None  # the packed patches ran


def test_optimized_bfloat16_close_to_float32() -> None:
    plain = tiny_vqa()
    optimized = copy.deepcopy(plain).to(torch.bfloat16).optimize_for_inference()
    inputs = padded_inputs()
    torch.testing.assert_close(logits(optimized, inputs).float(), logits(plain, inputs), atol=0.1, rtol=0.05)


def test_hidden_states_match_and_state_dict_is_unchanged() -> None:
    plain = tiny_vqa()
    keys = list(plain.state_dict())
    optimized = copy.deepcopy(plain).optimize_for_inference()
    assert list(optimized.state_dict()) == keys
    with torch.inference_mode():
        expected = plain(**padded_inputs(), output_hidden_states=True).hidden_states
        actual = optimized(**padded_inputs(), output_hidden_states=True).hidden_states
    assert len(actual) == len(expected) == 3
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_cache_is_rebuilt_when_a_weight_changes() -> None:
    plain = tiny_vqa()
    optimized = copy.deepcopy(plain).optimize_for_inference()
    inputs = padded_inputs()
    logits(optimized, inputs)  # builds the cache
    other = tiny_vqa(seed=5).state_dict()
    plain.load_state_dict(other)
    optimized.load_state_dict(other)
    torch.testing.assert_close(logits(optimized, inputs), logits(plain, inputs), atol=1e-5, rtol=1e-5)


def test_fast_path_is_skipped_for_gradients_probabilities_and_training() -> None:
    model = tiny_vqa().optimize_for_inference()
    packed = model.vilt.encoder.packed
    assert isinstance(packed, PackedEncoder)
    inputs = padded_inputs()
    out = model(**inputs, output_attentions=True)  # eval with gradients: plain layers
    assert out.attentions is not None and len(out.attentions) == 2
    out.logits.sum().backward()
    assert model.vilt.encoder.layer[0].attention.attention.query.weight.grad is not None
    assert packed.layers == []  # never built: every call above needed the plain path
    model.train()
    assert not packed.applies([None, None], eager=False)


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_copies_and_pickles_get_their_own_caches(duplicate: Callable[[nn.Module], nn.Module]) -> None:
    model = tiny_vqa().optimize_for_inference()
    inputs = padded_inputs()
    expected = logits(model, inputs)  # builds both caches, which hold packed oneDNN tensors
    clone = duplicate(model)
    assert clone.vilt.encoder.packed.encoder is clone.vilt.encoder
    patches = clone.vilt.embeddings.patch_embeddings
    assert patches.packed.projection is patches.projection
    torch.testing.assert_close(logits(clone, inputs), expected)


def test_attention_length_pads_bfloat16_cpu_sequences_a_little() -> None:
    bf16, fp32 = torch.zeros(1, 1, 1, dtype=torch.bfloat16), torch.zeros(1, 1, 1)
    assert [optimize.attention_length(n, bf16) for n in (185, 192, 221, 257, 281)] == [
        192,
        192,
        224,
        257,
        288,
    ]
    assert optimize.attention_length(185, fp32) == 185  # float32: the products dominate, never padded


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_sequence_gives_the_unpadded_outputs(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """Forced padding (16 extra rows, both masks padding something) changes outputs only by rounding."""
    model = tiny_vqa().to(dtype).optimize_for_inference()
    inputs = padded_inputs()
    with torch.inference_mode():
        expected = model(**inputs, output_hidden_states=True)
        monkeypatch.setattr(optimize, "attention_length", lambda length, x: length + 16)
        padded = model(**inputs, output_hidden_states=True)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.05}
    torch.testing.assert_close(padded.logits, expected.logits, **tolerance)
    assert [h.shape for h in padded.hidden_states] == [h.shape for h in expected.hidden_states]
    for actual, wanted in zip(padded.hidden_states, expected.hidden_states):
        torch.testing.assert_close(actual, wanted, **tolerance)


def test_a_model_built_under_inference_mode_optimizes() -> None:
    with torch.inference_mode():
        model = tiny_vqa().optimize_for_inference()  # inference tensors: no version counters
        torch.testing.assert_close(model(**padded_inputs()).logits, logits(tiny_vqa(), padded_inputs()))


def test_padded_hidden_states_are_contiguous(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_vqa().optimize_for_inference()
    monkeypatch.setattr(optimize, "attention_length", lambda length, x: length + 16)
    with torch.inference_mode():
        hidden_states = model(**padded_inputs(), output_hidden_states=True).hidden_states
    assert all(h.is_contiguous() for h in hidden_states)


def test_large_bfloat16_cpu_batches_run_in_pieces() -> None:
    def passes(batch: int, dtype: torch.dtype = torch.bfloat16) -> int:
        return optimize.batch_passes(torch.zeros(batch, 185, 1, dtype=dtype))

    assert [passes(b) for b in (1, 16, 22, 23, 32, 64)] == [1, 1, 1, 2, 2, 3]
    assert passes(32, torch.float32) == 1


@pytest.mark.parametrize("pieces", [2, 3])
def test_a_batch_in_pieces_gives_the_whole_batchs_outputs(
    monkeypatch: pytest.MonkeyPatch, pieces: int
) -> None:
    model = tiny_vqa().optimize_for_inference()
    inputs = padded_inputs()  # 3 examples, text and image padding in different ones
    with torch.inference_mode():
        expected = model(**inputs, output_hidden_states=True)
        monkeypatch.setattr(optimize, "batch_passes", lambda x: pieces)
        split = model(**inputs, output_hidden_states=True)
    torch.testing.assert_close(split.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert len(split.hidden_states) == len(expected.hidden_states)
    for actual, wanted in zip(split.hidden_states, expected.hidden_states):
        torch.testing.assert_close(actual, wanted, atol=1e-5, rtol=1e-5)
