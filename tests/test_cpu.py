"""Every CPU: what vilt.devices knows of it, the precisions it picks, kernels it never tries, the fast path
kept only where a probe finds it faster, the bfloat16 warning, and int8 weights (dtype="int8")."""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections.abc import Callable

import pytest
import torch
from PIL import Image
from tiny import SMALL_VOCAB, WIDE_INIT, tiny_config
from tiny_models import random_image, save_tiny
from torch import nn

import vilt
from vilt import devices, layers, tuning
from vilt.commands import DTYPE_CHOICES
from vilt.devices import CpuFeatures, cpu_features, select_device_and_dtype
from vilt.layers import CachedProduct, quantize_int8

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vqa(seed: int = 0) -> vilt.ViltForQuestionAnswering:
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=SMALL_VOCAB, num_labels=7, initializer_range=WIDE_INIT)
    return vilt.ViltForQuestionAnswering(config).eval()


def inputs(batch: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    attention_mask = torch.ones(batch, 9, dtype=torch.long)
    attention_mask[0, 5:] = 0
    return {
        "input_ids": torch.randint(1, SMALL_VOCAB, (batch, 9), generator=generator),
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(batch, 3, 48, 64, generator=generator),
        "pixel_mask": torch.ones(batch, 48, 64, dtype=torch.long),
    }


def logits(model: nn.Module, batch: int = 3) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs(batch)).logits.float()


def plain_logits(model: vilt.ViltForQuestionAnswering, batch: int = 3) -> torch.Tensor:
    return logits(copy.deepcopy(model).set_fast_path(False), batch)


def features(**changes: object) -> CpuFeatures:
    """This CPU's features with some answers changed: another CPU, as the code that asks sees it."""
    return dataclasses.replace(cpu_features(), **changes)


@pytest.fixture(autouse=True)
def fresh_decisions() -> None:
    tuning.forget()
    yield
    tuning.forget()


# ----------------------------------------------------------------------------- what the CPU can do


def test_cpu_features_are_torchs_and_onednns_own_answers() -> None:
    found = cpu_features()
    assert found.capability == torch.backends.cpu.get_cpu_capability()
    assert found.onednn == torch.backends.mkldnn.is_available()
    assert found.onednn_bf16 == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert found.native_bf16 <= found.onednn_bf16  # hardware bfloat16 is only used through oneDNN
    assert found.supports(torch.float32) == found.onednn
    assert found.supports(torch.bfloat16) == found.onednn_bf16
    assert found.name in found.describe() and found.capability in found.describe()


@pytest.mark.parametrize(
    ("changes", "native"),
    [
        ({"avx512_bf16": True, "onednn_bf16": True}, True),  # AVX512-BF16 (AMD Zen 4, Intel Cooper Lake)
        ({"amx": True, "onednn_bf16": True}, True),  # Intel Sapphire Rapids and later
        ({"arm_bf16": True, "onednn_bf16": True}, True),  # Graviton3, Neoverse V1
        ({"onednn_bf16": True}, False),  # AVX512 without BF16: oneDNN emulates it
        ({"avx512_bf16": True, "onednn_bf16": False}, False),  # oneDNN cannot use it (old build)
        ({}, False),  # AVX2 only, or an ARM CPU without bf16 (Graviton2)
    ],
)
def test_native_bfloat16_needs_the_hardware_and_onednn(changes: dict[str, bool], native: bool) -> None:
    none = {"avx512_bf16": False, "amx": False, "arm_bf16": False, "onednn_bf16": False}
    assert features(**{**none, **changes}).native_bf16 == native


def test_arm_features_and_name_are_read_from_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    info = {"Features": "fp asimd asimddp bf16 sve i8mm", "CPU implementer": "0x41", "CPU part": "0xd40"}
    monkeypatch.setattr(devices, "_cpuinfo", lambda: info)
    devices.cpu_flags.cache_clear()
    devices.cpu_name.cache_clear()
    try:
        assert {"bf16", "sve", "asimddp"} <= devices.cpu_flags()
        assert devices.cpu_name() == "ARM Neoverse-V1"  # ARM lists part numbers, not a model name
    finally:
        devices.cpu_flags.cache_clear()
        devices.cpu_name.cache_clear()


# ----------------------------------------------------------------------------- choosing a precision


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_picks_bfloat16_only_where_the_cpu_has_it(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype
) -> None:
    bf16 = {"avx512_bf16": native, "amx": False, "arm_bf16": False, "onednn_bf16": native}
    monkeypatch.setattr(devices, "cpu_features", lambda: features(**bf16))
    assert select_device_and_dtype("cpu") == (torch.device("cpu"), expected)
    assert select_device_and_dtype("cpu", "auto")[1] == expected
    assert select_device_and_dtype("cpu", "bfloat16")[1] == torch.bfloat16  # asked for: always given


def test_int8_is_one_name_for_the_cpu() -> None:
    assert select_device_and_dtype("cpu", "int8") == (torch.device("cpu"), torch.qint8)
    assert devices.dtype_name(torch.qint8) == "int8"
    assert list(DTYPE_CHOICES) == ["auto", *devices.PRECISION_NAMES]  # vilt commands and vilt serve
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        devices.parse_dtype("int8")  # weights are not saved as int8 (--save-dtype, torch_dtype=)
    with pytest.raises(ValueError, match="unknown dtype 'int4'.*int8"):
        select_device_and_dtype("cpu", "int4")


# ----------------------------------------------------------------------------- kernels the CPU lacks


@pytest.fixture
def packing(monkeypatch: pytest.MonkeyPatch) -> Callable[[Exception | None], list[int]]:
    """Replace oneDNN's weight packing: it raises the given error (or packs as usual); returns the list
    of its calls (one entry each)."""

    def replace(error: Exception | None) -> list[int]:
        calls: list[int] = []
        real = torch.ops.mkldnn._reorder_linear_weight

        def reorder(*args: object) -> torch.Tensor:
            calls.append(1)
            if error is not None:
                raise error
            return real(*args)

        monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", reorder)
        return calls

    return replace


def test_a_dtype_onednn_cannot_run_here_is_never_packed(
    monkeypatch: pytest.MonkeyPatch, packing: Callable[[Exception | None], list[int]]
) -> None:
    """An AVX2-only CPU: oneDNN has no bfloat16 products (packing would raise); the fast path runs its
    cached products as plain ones, and bfloat16 answers as float32 does, within bfloat16's rounding."""
    calls = packing(RuntimeError("bf16 path needs the cpu support avx512bw"))
    monkeypatch.setattr(layers, "cpu_features", lambda: features(onednn_bf16=False))
    monkeypatch.setattr(layers, "fast_pays", lambda *_: True)
    model = tiny_vqa()
    expected = plain_logits(model)
    half = copy.deepcopy(model).to(torch.bfloat16).optimize_for_inference()
    got = logits(half)
    products = [m.packed() for m in half.modules() if isinstance(m, CachedProduct)]
    assert calls == [] and products and not any(p.onednn for p in products)
    # bfloat16 keeps 8 bits of mantissa: each product is off by ~0.4% of its size, and the tiny model's
    # logits (|x| <= ~3) move by at most ~0.1 through two layers, on every CPU class
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.05)


def test_a_weight_onednn_refuses_falls_back_with_one_log_line(
    caplog: pytest.LogCaptureFixture, packing: Callable[[Exception | None], list[int]]
) -> None:
    calls = packing(RuntimeError("mkldnn_reorder_linear_weight: not on this CPU\nmore detail"))
    layers._refused.clear()
    model = tiny_vqa()
    expected = plain_logits(model)
    with caplog.at_level(logging.WARNING, logger="vilt.layers"):
        model.optimize_for_inference()
        got = logits(model)
    products = [m.packed() for m in model.modules() if isinstance(m, CachedProduct)]
    assert calls and not any(p.onednn for p in products)  # each tried, each on the plain product
    assert [r.getMessage() for r in caplog.records] == [
        "oneDNN cannot pack float32 weights on this CPU (mkldnn_reorder_linear_weight: not on this CPU); "
        "those products run the plain way"
    ]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    layers._refused.clear()


# ----------------------------------------------------------------------------- never slower than the plain path


def scripted(monkeypatch: pytest.MonkeyPatch, fast_s: float) -> list[tuple[object, ...]]:
    """Every probe finds the plain way taking 1 s and the candidate ``fast_s``; returns the keys of the
    fast path's own decisions (fast layer, fast patches) as they are made."""
    monkeypatch.setattr(tuning, "median_seconds", lambda *_, **__: {"plain": 1.0, "candidate": fast_s})
    decided: list[tuple[object, ...]] = []
    real = tuning.decide

    def decide(key: tuple[object, ...], probe: Callable[[], dict[str, float]]) -> bool:
        if key[0] in ("fast layer", "fast patches") and key not in tuning.decisions():
            decided.append(key)
        return real(key, probe)

    monkeypatch.setattr(tuning, "decide", decide)
    return decided


def test_where_the_probe_finds_the_plain_layers_faster_they_run(
    monkeypatch: pytest.MonkeyPatch, packed_calls: list[int]
) -> None:
    decided = scripted(monkeypatch, fast_s=1.5)
    model = tiny_vqa()
    got = logits(model)
    assert packed_calls == []  # neither the layers nor the patch embedding took their cached products
    assert sorted(key[0] for key in decided) == ["fast layer", "fast patches"]
    torch.testing.assert_close(got, plain_logits(model), atol=1e-5, rtol=1e-5)


def test_the_fast_path_is_probed_once_per_dtype_and_range_of_rows(
    monkeypatch: pytest.MonkeyPatch, packed_calls: list[int]
) -> None:
    decided = scripted(monkeypatch, fast_s=0.5)
    model = tiny_vqa()
    expected = plain_logits(model, 4)
    assert [layers.rows_bucket(n) for n in (1, 2, 3, 64, 65, 100)] == [1, 2, 4, 64, 128, 128]
    logits(model, 3)  # 3 x 58 tokens: 174 rows, the range of 256; 36 patch rows: 64
    logits(model, 4)  # 232 rows: the same ranges
    assert packed_calls and sorted(key[0] for key in decided) == ["fast layer", "fast patches"]
    logits(model, 1)  # 58 rows and 12 patch rows: new ranges
    logits(copy.deepcopy(model).to(torch.bfloat16), 1)  # another dtype
    assert len(decided) == 6
    torch.testing.assert_close(logits(model, 4), expected, atol=1e-5, rtol=1e-5)


def test_the_real_probe_of_the_whole_layer_runs() -> None:
    model = tiny_vqa()
    logits(model)
    assert {key[0] for key in tuning.decisions()} >= {"fast layer", "fast patches"}


# ----------------------------------------------------------------------------- bfloat16 without hardware


def test_bfloat16_without_hardware_warns_once_naming_the_faster_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(devices, "_warned", threading.Event())
    model = tiny_vqa().to(torch.bfloat16)
    with pytest.warns(
        UserWarning, match=r"bfloat16 on this CPU .* slower than float32; use dtype='int8'"
    ) as seen:
        logits(model)
        logits(model)
    assert len([w for w in seen if "bfloat16 on this CPU" in str(w.message)]) == 1


def test_bfloat16_with_hardware_or_float32_does_not_warn(
    monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    monkeypatch.setattr(devices, "_warned", threading.Event())
    logits(tiny_vqa())
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    logits(tiny_vqa().to(torch.bfloat16))
    assert not [w for w in recwarn if "bfloat16 on this CPU" in str(w.message)]


# ----------------------------------------------------------------------------- int8 weights


def quantized_linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]


def test_int8_weights_are_in_the_encoder_and_close_to_float32() -> None:
    model = tiny_vqa()
    expected = plain_logits(model)
    quantized = quantize_int8(copy.deepcopy(model))
    names = quantized_linears(quantized)
    assert len(names) == 2 * 6  # per layer: query, key, value, attention output, MLP up and down
    assert all(name.startswith("vilt.encoder.layer.") for name in names)
    assert type(quantized.classifier[0]) is nn.Linear  # the head stays float32
    assert list(quantized.state_dict()) != list(model.state_dict())  # packed int8 weights, not saved as ours
    got = logits(quantized)
    # int8 rounds each weight to 1/254 of its row's range and each product's input to 1/254 (1/127 with
    # fbgemm's reduced range, used on x86) of its own: ~1% per product. The tiny model's logits spread
    # over ~2 and move by up to ~0.1 through two layers; 10% of their spread holds on every engine
    spread = (expected.max(-1).values - expected.min(-1).values).min().item()
    assert (got - expected).abs().max().item() < 0.1 * spread
    with pytest.raises(ValueError, match="float32 model"):
        quantize_int8(copy.deepcopy(model).to(torch.bfloat16))


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_query_key_value_run_as_one_product_with_the_same_sums(
    monkeypatch: pytest.MonkeyPatch, per_channel: bool
) -> None:
    """The fast path runs the three int8 projections as one int8 product (the input quantized once);
    per-tensor weights, as plain ``quantize_dynamic`` makes them, too. The patch embedding runs plainly
    here: its packed product rounds differently, and int8 turns a rounding difference in an input into
    a whole quantization step where a value sits on a step's edge."""
    monkeypatch.setattr(layers, "fast_pays", lambda kind, *_: kind == "fast layer")
    model = tiny_vqa()
    if per_channel:
        quantized = quantize_int8(model)
    else:
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    got = logits(quantized)
    fused = [m.packed() for m in quantized.modules() if isinstance(m, layers.QKVProjection)]
    assert len(fused) == 2 and all(isinstance(p, layers.Int8Product) for p in fused)
    torch.testing.assert_close(got, plain_logits(quantized), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def vqa_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny(tmp_path_factory.mktemp("int8") / "vqa", "ViltForQuestionAnswering"))


def test_the_int8_pipeline_answers_as_float32_does(vqa_dir: str) -> None:
    images = [random_image(40, 56, seed) for seed in range(4)]
    int8 = vilt.pipeline("vqa", model=vqa_dir, dtype="int8")
    float32 = vilt.pipeline("vqa", model=vqa_dir, dtype="float32")
    assert int8.dtype == torch.float32 and quantized_linears(int8.model)
    got = int8(images, "what color is it?", top_k=5)
    want = float32(images, "what color is it?", top_k=5)
    for answers, expected in zip(got, want):  # scores are probabilities: int8 moves them by a few percent
        assert {a["answer"] for a in answers} == {a["answer"] for a in expected}
        scores = {a["answer"]: a["score"] for a in expected}
        assert max(abs(a["score"] - scores[a["answer"]]) for a in answers) < 0.05


def test_int8_for_a_model_instance_the_server_and_the_command(
    vqa_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from vilt.cli import main as vilt_main
    from vilt.serve.tasks import load_pipelines

    model = vilt.ViltForQuestionAnswering.from_pretrained(vqa_dir)
    vilt.pipeline("vqa", model=model, dtype="int8", processor=vilt.ViltProcessor.from_pretrained(vqa_dir))
    assert quantized_linears(model)  # quantized in place, as .to() moves a given model in place
    served = load_pipelines(vqa_dir, device="cpu", dtype="int8")
    assert quantized_linears(served["visual-question-answering"].model)
    path = f"{vqa_dir}/image.png"
    Image.fromarray(random_image(40, 56, 0)).save(path)
    assert vilt_main(["vqa", path, "-q", "what?", "--model", vqa_dir, "--dtype", "int8", "--json"]) == 0
    assert "answer" in capsys.readouterr().out


def test_int8_on_an_exported_backend_points_to_the_export(vqa_dir: str) -> None:
    with pytest.raises(ValueError, match="vilt export --quantize int8"):
        vilt.pipeline("vqa", model=vqa_dir, dtype="int8", backend="onnxruntime")
    pytest.importorskip("openvino")
    from vilt.export import OpenVinoModel

    with pytest.raises(ValueError, match="vilt export --quantize int8"):  # before any file is read
        OpenVinoModel.from_file(f"{vqa_dir}/model.onnx", vilt.ViltConfig(), dtype="int8")
