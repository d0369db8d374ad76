"""The inference fast path (vilt.layers, vilt.tuning): taken by default in eval without gradients, same
outputs as the plain layers, caches that follow the parameters, and CPU choices decided by probes."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Iterator

import pytest
import torch
from tiny import SMALL_VOCAB, WIDE_INIT, tiny_config
from torch import nn

import vilt
from vilt import layers, modeling, tuning
from vilt.devices import cpu_features
from vilt.layers import CachedProduct


def tiny_vqa(seed: int = 0, **changes: object) -> vilt.ViltForQuestionAnswering:
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=SMALL_VOCAB, num_labels=7, initializer_range=WIDE_INIT, **changes)
    return vilt.ViltForQuestionAnswering(config).eval()


def padded_inputs(batch: int = 3) -> dict[str, torch.Tensor]:
    """Text and images of different lengths and sizes, so that both masks pad something."""
    generator = torch.Generator().manual_seed(1)
    attention_mask = torch.ones(batch, 9, dtype=torch.long)
    attention_mask[1, 6:] = 0
    pixel_mask = torch.ones(batch, 48, 64, dtype=torch.long)
    pixel_mask[2, :, 40:] = 0
    return {
        "input_ids": torch.randint(1, SMALL_VOCAB, (batch, 9), generator=generator),
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(batch, 3, 48, 64, generator=generator),
        "pixel_mask": pixel_mask,
    }


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits


def plain(model: vilt.ViltForQuestionAnswering) -> vilt.ViltForQuestionAnswering:
    return copy.deepcopy(model).set_fast_path(False)


def caches(model: nn.Module) -> list[bool]:
    """Whether each cached-product module of the model holds its cache now."""
    return [m.cached for m in model.modules() if isinstance(m, CachedProduct)]


MEDIAN_SECONDS = tuning.median_seconds  # the real timing, which the autouse fixture replaces


FAST_PAYS = layers.fast_pays  # the real probe of the whole fast path, which the autouse fixture replaces


@pytest.fixture(autouse=True)
def even_probes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The fast path pays (its layers and patch embedding run on the cached products), and every finer
    probe finds the plain and candidate ways even (so keeps the plain way), without running them, unless
    a test scripts other times; each test decides afresh and leaves no decision behind."""
    monkeypatch.setattr(layers, "fast_pays", lambda *_: True)
    scripted_probes(monkeypatch, {"plain": 1.0, "candidate": 1.0})
    tuning.forget()
    yield
    tuning.forget()


def scripted_probes(monkeypatch: pytest.MonkeyPatch, times: dict[str, float]) -> list[str]:
    """Replace every probe's timing by ``times`` ({"plain": s, "candidate": s}); returns the probed
    contestant sets, one entry per probe."""
    probed: list[str] = []

    def medians(contestants: dict[str, Callable[[], object]], *_: object, **__: object) -> dict[str, float]:
        probed.append(",".join(contestants))
        return dict(times)

    monkeypatch.setattr(tuning, "median_seconds", medians)
    return probed


# ----------------------------------------------------------------------------- same outputs


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu", "silu"])
def test_fast_path_matches_the_plain_layers_in_float32(hidden_act: str, packed_calls: list[int]) -> None:
    model = tiny_vqa(hidden_act=hidden_act)
    inputs = padded_inputs()
    expected = logits(plain(model), inputs)
    assert not packed_calls
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=1e-5)
    assert len(packed_calls) == 2 * 4 + 1  # 4 products per layer, and the patch projection


def test_fast_path_in_bfloat16_is_close_to_float32() -> None:
    model = tiny_vqa()
    inputs = padded_inputs()
    fast = logits(copy.deepcopy(model).to(torch.bfloat16), inputs)
    torch.testing.assert_close(fast.float(), logits(plain(model), inputs), atol=0.1, rtol=0.05)


def test_hidden_states_match_and_state_dict_names_are_unchanged() -> None:
    model = tiny_vqa()
    keys = list(model.state_dict())
    reference = plain(model)
    with torch.inference_mode():
        expected = reference(**padded_inputs(), output_hidden_states=True).hidden_states
        actual = model(**padded_inputs(), output_hidden_states=True).hidden_states
    assert all(caches(model))
    assert list(model.state_dict()) == keys == list(model.optimize_for_inference().state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert "vilt.encoder.layer.1.attention.attention.query.weight" in keys
    assert len(actual) == len(expected) == 3
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- when the fast path runs


def test_fast_path_is_the_default_in_eval_without_gradients(packed_calls: list[int]) -> None:
    model = tiny_vqa()
    assert not any(caches(model))  # nothing is packed before the first call
    with torch.no_grad():
        model(**padded_inputs())
    assert packed_calls and all(caches(model))
    packed_calls.clear()
    logits(model, padded_inputs())  # inference mode too, on the same caches
    assert len(packed_calls) == 9


def test_fast_path_is_skipped_for_gradients_probabilities_head_masks_and_training(
    packed_calls: list[int],
) -> None:
    model = tiny_vqa()
    inputs = padded_inputs()
    out = model(**inputs)  # eval with gradients
    out.logits.sum().backward()
    assert model.vilt.encoder.layer[0].attention.attention.query.weight.grad is not None
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
        model(**inputs, head_mask=torch.ones(4))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**inputs)
        model.vilt.set_attn_implementation("eager")
        model(**inputs)
        model.vilt.set_attn_implementation("sdpa")
        model.train()
        model(**inputs)
    assert attentions is not None and len(attentions) == 2
    assert packed_calls == [] and not any(caches(model))


def test_frozen_model_with_gradients_on_takes_the_fast_path_unless_the_input_needs_them(
    packed_calls: list[int],
) -> None:
    model = tiny_vqa().requires_grad_(False)
    model(**padded_inputs())
    assert packed_calls
    packed_calls.clear()
    pixels = padded_inputs()["pixel_values"].requires_grad_(True)
    out = model(**{**padded_inputs(), "pixel_values": pixels})
    out.logits.sum().backward()
    assert packed_calls == [] and pixels.grad is not None


def test_train_releases_the_caches_and_eval_rebuilds_them() -> None:
    model = tiny_vqa()
    inputs = padded_inputs()
    expected = logits(model, inputs)
    assert all(caches(model))
    model.train()
    assert not any(caches(model))
    model.eval()
    torch.testing.assert_close(logits(model, inputs), expected)
    assert all(caches(model))


def test_set_fast_path_false_turns_it_off_and_optimize_for_inference_turns_it_on(
    packed_calls: list[int],
) -> None:
    model = tiny_vqa()
    inputs = padded_inputs()
    expected = logits(model, inputs)
    assert model.set_fast_path(False) is model
    assert not any(caches(model))
    packed_calls.clear()
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=1e-5)
    assert packed_calls == []
    assert model.optimize_for_inference() is model
    assert all(caches(model))  # packed now, before any call
    logits(model, inputs)
    assert packed_calls


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_the_environment_variable_turns_it_off_for_models_built_afterwards(
    monkeypatch: pytest.MonkeyPatch, packed_calls: list[int], value: str
) -> None:
    monkeypatch.setenv("VILT_FAST_PATH", value)
    model = tiny_vqa()
    assert not model.vilt.fast_path
    logits(model, padded_inputs())
    assert packed_calls == []
    monkeypatch.setenv("VILT_FAST_PATH", "1")
    assert tiny_vqa().vilt.fast_path


# ----------------------------------------------------------------------------- caches follow the parameters


def test_caches_are_rebuilt_after_load_state_dict() -> None:
    model = tiny_vqa()
    inputs = padded_inputs()
    logits(model, inputs)  # builds the caches
    other = tiny_vqa(seed=5)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(logits(model, inputs), logits(plain(other), inputs), atol=1e-5, rtol=1e-5)


def test_caches_are_rebuilt_after_an_in_place_change() -> None:
    model = tiny_vqa()
    inputs = padded_inputs()
    before = logits(model, inputs)
    with torch.no_grad():
        model.vilt.encoder.layer[1].output.dense.weight.mul_(2.0)
        model.vilt.embeddings.patch_embeddings.projection.bias.add_(0.5)
    after = logits(model, inputs)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, logits(plain(model), inputs), atol=1e-5, rtol=1e-5)


def test_to_drops_the_caches_and_the_new_dtype_runs_fast(packed_calls: list[int]) -> None:
    model = tiny_vqa()
    logits(model, padded_inputs())
    model.to(torch.bfloat16)
    assert not any(caches(model))
    packed_calls.clear()
    assert logits(model, padded_inputs()).dtype == torch.bfloat16
    assert packed_calls


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_copies_and_pickles_get_their_own_caches(duplicate: Callable[[nn.Module], nn.Module]) -> None:
    model = tiny_vqa()
    inputs = padded_inputs()
    expected = logits(model, inputs)  # builds the caches, which hold packed oneDNN tensors
    clone = duplicate(model)
    assert not any(caches(clone))
    torch.testing.assert_close(logits(clone, inputs), expected)
    assert all(caches(clone)) and all(caches(model))


def test_a_model_built_under_inference_mode_runs_fast() -> None:
    expected = logits(plain(tiny_vqa()), padded_inputs())
    with torch.inference_mode():
        model = tiny_vqa()  # inference tensors: no version counters
        torch.testing.assert_close(model(**padded_inputs()).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:.*quantiz.*:UserWarning")
def test_a_dynamically_quantized_model_runs_its_quantized_linears(monkeypatch: pytest.MonkeyPatch) -> None:
    """``quantize_dynamic`` puts quantized Linears (whose ``weight`` is a method) in place of the plain
    ones; the blocks built on them run the plain way, and the outputs are the quantized model's."""
    # the patch embedding runs plainly: int8 turns its packed product's rounding into whole steps
    monkeypatch.setattr(layers, "fast_pays", lambda kind, *_: kind == "fast layer")
    model = tiny_vqa()
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    # every Linear swapped, as in transformers' model
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    inputs = padded_inputs()
    expected = logits(plain(quantized), inputs)
    torch.testing.assert_close(logits(quantized, inputs), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        logits(quantized.optimize_for_inference(), inputs), expected, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(expected, logits(model, inputs), atol=0.1, rtol=0.1)  # int8 near float32


class Adapted(nn.Module):
    """A wrapper as LoRA tools put in place of a Linear: it shows the wrapped ``weight`` but adds to it."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.base = linear
        self.delta = nn.Linear(linear.in_features, linear.out_features, bias=False)
        nn.init.normal_(self.delta.weight, std=0.5)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)


def test_a_wrapped_linear_is_called_not_bypassed_by_the_cache() -> None:
    model = tiny_vqa()
    inputs = padded_inputs()
    before = logits(model, inputs)
    layer = model.vilt.encoder.layer[0]
    layer.attention.attention.query = Adapted(layer.attention.attention.query)
    layer.intermediate.dense = Adapted(layer.intermediate.dense)
    after = logits(model, inputs)
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, logits(plain(model), inputs), atol=1e-5, rtol=1e-5)
    with torch.enable_grad():  # with a backward to follow (the fused training product): the wrapper too
        trained = model(**inputs).logits
    torch.testing.assert_close(trained.detach(), after, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the probes


def test_median_seconds_alternates_and_reads_the_injected_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    cost = {"plain": 3.0, "candidate": 1.0}
    order: list[str] = []

    def call(name: str) -> Callable[[], None]:
        def run() -> None:
            order.append(name)
            clock[0] += cost[name]

        return run

    monkeypatch.setattr(tuning, "timer", lambda: clock[0])
    medians = MEDIAN_SECONDS({name: call(name) for name in cost}, repetitions=3, budget_s=1e9)
    assert medians == {"plain": 3.0, "candidate": 1.0}
    assert order == ["plain", "candidate"] * 2 + ["candidate", "plain", "plain", "candidate"]  # warm-up first
    order.clear()
    MEDIAN_SECONDS({name: call(name) for name in cost}, repetitions=9, budget_s=5.0)
    assert len(order) == 2 + 2 * 2  # the budget stops it after two rounds
    order.clear()
    MEDIAN_SECONDS({name: call(name) for name in cost}, repetitions=9, budget_s=5.0, least=3)
    assert len(order) == 2 + 3 * 2  # three rounds asked for


def test_fastest_rounds_outvote_bursts_of_other_work(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    costs = {"plain": iter([1.0] * 4), "candidate": iter([0.5, 0.5, 3.0, 3.0])}  # warm-up, then 3 rounds

    def call(name: str) -> Callable[[], None]:
        return lambda: clock.__setitem__(0, clock[0] + next(costs[name]))

    monkeypatch.setattr(tuning, "timer", lambda: clock[0])
    contestants = {name: call(name) for name in costs}
    fastest = MEDIAN_SECONDS(contestants, repetitions=3, budget_s=1e9, statistic=min)
    assert fastest == {"plain": 1.0, "candidate": 0.5}  # the median would say 1.0 against 3.0


def test_a_decision_needs_the_margin_and_is_probed_once() -> None:
    assert tuning.faster(1.0, 0.96) and not tuning.faster(1.0, 0.98) and not tuning.faster(1.0, 1.2)
    probes: list[int] = []

    def probe(candidate: float) -> Callable[[], dict[str, float]]:
        return lambda: probes.append(1) or {"plain": 1.0, "candidate": candidate}

    assert tuning.decide("a", probe(0.5)) and tuning.decide("a", probe(2.0))  # the first answer stays
    assert not tuning.decide("b", probe(0.99))
    assert len(probes) == 2 and tuning.decisions() == {"a": True, "b": False}


def bfloat16_sequence(batch: int, length: int) -> torch.Tensor:
    return torch.zeros(batch, length, 32, dtype=torch.bfloat16)


def attention_length(encoder: modeling.ViltEncoder, x: torch.Tensor) -> int:
    return layers.attention_length(x, encoder._probe_layer, *encoder.layer_sizes)


def batch_pieces(encoder: modeling.ViltEncoder, x: torch.Tensor) -> int:
    return layers.batch_pieces(x, encoder._probe_layer, *encoder.layer_sizes)


@pytest.mark.parametrize(("candidate_s", "padded"), [(0.5, True), (0.99, False), (1.5, False)])
def test_attention_length_pads_only_when_the_probe_finds_it_faster(
    monkeypatch: pytest.MonkeyPatch, candidate_s: float, padded: bool
) -> None:
    probed = scripted_probes(monkeypatch, {"plain": 1.0, "candidate": candidate_s})
    encoder = tiny_vqa().to(torch.bfloat16).vilt.encoder
    lengths = (185, 192, 221, 257, 281)
    chosen = [attention_length(encoder, bfloat16_sequence(2, n)) for n in lengths]
    assert chosen == ([192, 192, 224, 257, 288] if padded else list(lengths))
    assert probed == ["plain,candidate"]  # once for every length (192 and 257 are no candidates)
    assert attention_length(encoder, torch.zeros(2, 185, 32)) == (192 if padded else 185)
    assert len(probed) == len(tuning.decisions()) == 2  # float32 is decided apart


def test_batch_pieces_split_only_large_batches_and_only_when_the_probe_finds_it_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probed = scripted_probes(monkeypatch, {"plain": 1.0, "candidate": 0.5})
    encoder = tiny_vqa().to(torch.bfloat16).vilt.encoder
    assert [batch_pieces(encoder, bfloat16_sequence(b, 185)) for b in (1, 16, 22, 23, 32, 64)] == [
        1,
        1,
        1,
        2,
        2,
        3,
    ]
    assert len(probed) == 1
    tuning.forget()
    scripted_probes(monkeypatch, {"plain": 1.0, "candidate": 0.98})  # within the margin
    assert batch_pieces(encoder, bfloat16_sequence(32, 185)) == 1


@pytest.mark.parametrize(("candidate_s", "rows"), [(0.5, 1), (1.0, None)])
def test_the_layout_probe_chooses_the_packed_layout(
    monkeypatch: pytest.MonkeyPatch, candidate_s: float, rows: int | None
) -> None:
    scripted_probes(monkeypatch, {"plain": 1.0, "candidate": candidate_s})
    model = tiny_vqa().optimize_for_inference()
    products = [m.packed() for m in model.modules() if isinstance(m, CachedProduct)]
    # the patch projection (probed), then per layer: QKV, attention output, up-projection (oneDNN's
    # default layout), down-projection (probed)
    assert [p.packed_rows for p in products] == [rows] + [None, None, None, rows] * 2
    assert len(tuning.decisions()) == 2  # one per product shape: the down-projection, the patch projection
    assert torch.isfinite(logits(model, padded_inputs())).all()


def test_the_real_probes_run_and_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unscripted: each probe times real calls (within its budget) and records a decision."""
    monkeypatch.setattr(tuning, "median_seconds", MEDIAN_SECONDS)
    monkeypatch.setattr(layers, "MAX_ROWS_PER_PASS", 64)
    model = tiny_vqa().to(torch.bfloat16)
    encoder = model.vilt.encoder
    with torch.inference_mode():
        attention_length(encoder, bfloat16_sequence(1, 31))
        batch_pieces(encoder, bfloat16_sequence(8, 31))
        model.optimize_for_inference()
    kinds = sorted(key[0] for key in tuning.decisions())
    # the layout probe packs bfloat16 weights: only where oneDNN runs bfloat16 (not on AVX2-only CPUs)
    layouts = ["one-row weight layout"] * 2 if cpu_features().supports(torch.bfloat16) else []
    assert kinds == sorted(["batch pieces", "padded attention", *layouts])


# ----------------------------------------------------------------------------- padding and pieces


def force_padding(monkeypatch: pytest.MonkeyPatch, extra: int) -> None:
    monkeypatch.setattr(modeling, "attention_length", lambda x, *_: x.shape[1] + extra)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_padded_sequence_gives_the_unpadded_outputs(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """Forced padding (16 extra rows, both masks padding something) changes outputs only by rounding."""
    model = tiny_vqa().to(dtype)
    inputs = padded_inputs()
    with torch.inference_mode():
        expected = model(**inputs, output_hidden_states=True)
        force_padding(monkeypatch, 16)
        padded = model(**inputs, output_hidden_states=True)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.05}
    torch.testing.assert_close(padded.logits, expected.logits, **tolerance)
    assert [h.shape for h in padded.hidden_states] == [h.shape for h in expected.hidden_states]
    assert all(h.is_contiguous() for h in padded.hidden_states)
    for actual, wanted in zip(padded.hidden_states, expected.hidden_states):
        torch.testing.assert_close(actual, wanted, **tolerance)


@pytest.mark.parametrize("pieces", [2, 3])
def test_a_batch_in_pieces_gives_the_whole_batchs_outputs(
    monkeypatch: pytest.MonkeyPatch, pieces: int
) -> None:
    model = tiny_vqa()
    inputs = padded_inputs()  # 3 examples, text and image padding in different ones
    with torch.inference_mode():
        expected = model(**inputs, output_hidden_states=True)
        monkeypatch.setattr(modeling, "batch_pieces", lambda *_: pieces)
        split = model(**inputs, output_hidden_states=True)
    torch.testing.assert_close(split.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert len(split.hidden_states) == len(expected.hidden_states)
    for actual, wanted in zip(split.hidden_states, expected.hidden_states):
        torch.testing.assert_close(actual, wanted, atol=1e-5, rtol=1e-5)
