"""Checkpoint I/O: transformers checkpoints load here and ours load in transformers (identical tensors
and outputs), both MLM layouts, head/base mismatches, dtype and sharding, safe unpickling and the
errors a user sees for broken or unreachable checkpoints."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_inputs import REFERENCE_CLASSES, WritesAFile
from safetensors.torch import load_file, save_file
from tiny import MODEL_TESTS, NLVR2, SMALL_VOCAB, tiny_config, tiny_kwargs

from vilt import ViltConfig
from vilt.heads import MODEL_CLASSES

LOGGER = "vilt.checkpoint"

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every weight with noise (zero-initialised ones included), so a missed key shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def _ours(name: str) -> torch.nn.Module:
    return _randomize(MODEL_CLASSES[name](tiny_config(name, **MODEL_TESTS)))


def _reference(transformers, name: str) -> torch.nn.Module:
    return _randomize(
        getattr(transformers, name)(transformers.ViltConfig(**tiny_kwargs(name, **MODEL_TESTS)))
    )


def _inputs(name: str) -> dict[str, torch.Tensor]:
    """Two texts (the second padded) and two unpadded 32x32 images (two per text for NLVR2)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, SMALL_VOCAB, (2, 7), generator=generator)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 5:] = 0
    images = 2 if name == NLVR2 else 1
    pixel_values = torch.randn(2, images, 3, 32, 32, generator=generator)  # (B, n, C, H, W)
    pixel_values = pixel_values if name == NLVR2 else pixel_values[:, 0]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def _main_output(output) -> torch.Tensor:
    return output.logits if "logits" in output.keys() else output.last_hidden_state


def _run_ours(model: torch.nn.Module, name: str) -> torch.Tensor:
    """Our forward with the reference's eager attention (bit-identical arithmetic)."""
    base = model if name == "ViltModel" else model.vilt
    base.set_attn_implementation("eager")
    with torch.no_grad():
        return _main_output(model(**_inputs(name)))


def _run_reference(model: torch.nn.Module, name: str, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """The reference's forward with its random patch order replaced by the natural order (hf-vilt.md §3.5)."""
    from transformers.models.vilt import modeling_vilt

    with monkeypatch.context() as patch:
        patch.setattr(
            modeling_vilt.torch, "multinomial", lambda w, n, replacement=False: torch.arange(n) % w.numel()
        )
        with torch.no_grad():
            return _main_output(model(**_inputs(name)))


def _assert_same_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    for key, tensor in ours.items():
        assert torch.equal(tensor, theirs[key]), key


def _assert_same_outputs(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Outputs of two model objects with equal weights. Not bit equality: where each copy of the weights
    sits in memory (and the thread count) can change the kernel's summation order, hence the last bit."""
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def _assert_clean(info: dict) -> None:
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def _save_reference(model: torch.nn.Module, directory: Path, layout: str) -> None:
    """transformers' own save; ``bin`` is what transformers v4 wrote (v5 writes safetensors only)."""
    if layout == "bin":
        model.config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    else:
        model.save_pretrained(directory, max_shard_size="20KB" if layout == "sharded" else "5GB")
    assert (layout == "sharded") == (directory / "model.safetensors.index.json").exists()


def _save_ours(model: torch.nn.Module, directory: Path, layout: str) -> None:
    model.save_pretrained(
        directory, max_shard_size="20KB" if layout == "sharded" else "5GB", safe_serialization=layout != "bin"
    )
    assert (layout == "sharded") == (directory / "model.safetensors.index.json").exists()
    assert (layout == "bin") == (directory / "pytorch_model.bin").exists()


# ----------------------------------------------------------------------------- round trips


@pytest.mark.reference
@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
@pytest.mark.parametrize("name", REFERENCE_CLASSES)
def test_transformers_checkpoint_loads_here(name, layout, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    reference = _reference(transformers, name)
    _save_reference(reference, tmp_path, layout)

    model, info = MODEL_CLASSES[name].from_pretrained(tmp_path, output_loading_info=True)

    _assert_clean(info)
    _assert_same_tensors(model.state_dict(), reference.state_dict())
    _assert_same_outputs(_run_ours(model, name), _run_reference(reference, name, monkeypatch))


@pytest.mark.reference
@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
@pytest.mark.parametrize("name", REFERENCE_CLASSES)
def test_our_checkpoint_loads_in_transformers(name, layout, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    model = _ours(name)
    _save_ours(model, tmp_path, layout)

    reference, info = getattr(transformers, name).from_pretrained(tmp_path, output_loading_info=True)

    _assert_clean(info)
    _assert_same_tensors(reference.state_dict(), model.state_dict())
    _assert_same_outputs(_run_reference(reference.eval(), name, monkeypatch), _run_ours(model, name))


def test_float32_checkpoint_loads_as_bfloat16(tmp_path):
    model = _ours("ViltForQuestionAnswering")
    model.save_pretrained(tmp_path)

    half = MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    also_half = MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(tmp_path, dtype="bfloat16")

    for key, tensor in model.state_dict().items():
        assert half.state_dict()[key].dtype == torch.bfloat16, key
        assert torch.equal(half.state_dict()[key], tensor.to(torch.bfloat16)), key
    assert also_half.dtype == torch.bfloat16
    with torch.no_grad():
        assert half(**_inputs("ViltForQuestionAnswering")).logits.dtype == torch.bfloat16


def test_auto_dtype_follows_the_saved_weights(tmp_path):
    _ours("ViltForQuestionAnswering").to(torch.bfloat16).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(tmp_path, torch_dtype="auto")
    assert loaded.dtype == torch.bfloat16
    assert MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(tmp_path).dtype == torch.float32


# ----------------------------------------------------------------------------- MLM layouts


def _v4_mlm_checkpoint(directory: Path, with_decoder_bias: bool) -> torch.nn.Module:
    """What transformers v4.37 saved for ViltForMaskedLM (hf-vilt.md §2.4): an untied decoder and the
    bias as ``mlm_score.bias``; its safetensors drop ``mlm_score.decoder.bias``, its .bin keeps both."""
    model = _ours("ViltForMaskedLM")
    state = dict(model.state_dict())
    state["mlm_score.bias"] = state["mlm_score.decoder.bias"].clone()
    if with_decoder_bias:
        torch.save(state, directory / "pytorch_model.bin")
    else:
        del state["mlm_score.decoder.bias"]
        save_file(state, directory / "model.safetensors")
    model.config.save_pretrained(directory)
    return model


@pytest.mark.parametrize("with_decoder_bias", [False, True], ids=["v4-safetensors", "v4-bin"])
def test_v4_mlm_layout_loads_with_its_bias(with_decoder_bias, tmp_path):
    original = _v4_mlm_checkpoint(tmp_path, with_decoder_bias)

    model, info = MODEL_CLASSES["ViltForMaskedLM"].from_pretrained(tmp_path, output_loading_info=True)

    _assert_clean(info)
    assert torch.equal(model.mlm_score.decoder.bias, original.mlm_score.decoder.bias)
    assert torch.equal(model.mlm_score.decoder.weight, original.mlm_score.decoder.weight)
    _assert_same_outputs(_run_ours(model, "ViltForMaskedLM"), _run_ours(original, "ViltForMaskedLM"))


@pytest.mark.reference
def test_v4_mlm_safetensors_lose_their_bias_in_transformers_v5(tmp_path):
    """The regression the loader above fixes: transformers 5 reports the v4 bias missing."""
    transformers = pytest.importorskip("transformers")
    _v4_mlm_checkpoint(tmp_path, with_decoder_bias=False)
    _, info = transformers.ViltForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert "mlm_score.decoder.bias" in info["missing_keys"]


@pytest.mark.reference
def test_v5_tied_mlm_layout_loads_tied(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    reference = _reference(transformers, "ViltForMaskedLM")
    reference.save_pretrained(tmp_path)
    assert "mlm_score.decoder.weight" not in load_file(tmp_path / "model.safetensors")

    model, info = MODEL_CLASSES["ViltForMaskedLM"].from_pretrained(tmp_path, output_loading_info=True)

    _assert_clean(info)
    assert model.mlm_score.decoder.weight is model.vilt.embeddings.text_embeddings.word_embeddings.weight
    _assert_same_outputs(
        _run_ours(model, "ViltForMaskedLM"), _run_reference(reference, "ViltForMaskedLM", monkeypatch)
    )


def test_untied_decoder_is_kept_untied_under_a_tied_config(tmp_path):
    """A config saying tie_word_embeddings=true (as transformers 5 writes) must not overwrite a
    checkpoint's own decoder weight with the word embeddings."""
    original = _ours("ViltForMaskedLM")
    original.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))

    model = MODEL_CLASSES["ViltForMaskedLM"].from_pretrained(tmp_path)

    assert torch.equal(model.mlm_score.decoder.weight, original.mlm_score.decoder.weight)
    assert model.mlm_score.decoder.weight is not model.vilt.embeddings.text_embeddings.word_embeddings.weight


# ----------------------------------------------------------------------------- head and base mismatches


def _backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("vilt."): v for k, v in state.items() if k.startswith("vilt.")}


def test_head_class_from_base_checkpoint_initialises_and_names_the_head(tmp_path, caplog):
    base = _ours("ViltModel")
    base.save_pretrained(tmp_path)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model, info = MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(
            tmp_path, output_loading_info=True
        )

    head_keys = [k for k in model.state_dict() if k.startswith("classifier.")]
    assert sorted(info["missing_keys"]) == sorted(head_keys)
    assert not info["unexpected_keys"]
    assert all(key in caplog.text for key in head_keys)
    assert "newly initialized" in caplog.text
    norm, linear = model.classifier[1], model.classifier[0]  # initialised as the reference does
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not linear.bias.any()
    assert 0.01 < linear.weight.std().item() < 0.03  # normal(0, initializer_range=0.02)
    _assert_same_tensors(_backbone(model.state_dict()), base.state_dict())


def test_base_class_from_head_checkpoint_drops_the_head(tmp_path, caplog):
    head = _ours("ViltForQuestionAnswering")
    head.save_pretrained(tmp_path)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model, info = MODEL_CLASSES["ViltModel"].from_pretrained(tmp_path, output_loading_info=True)

    assert sorted(info["unexpected_keys"]) == sorted(
        k for k in head.state_dict() if k.startswith("classifier.")
    )
    assert not info["missing_keys"]
    assert not caplog.records  # dropping another task's head is expected
    _assert_same_tensors(model.state_dict(), _backbone(head.state_dict()))


def test_ignore_mismatched_sizes_reheads_a_vqa_model(tmp_path):
    original = _ours("ViltForQuestionAnswering")  # 3 answers
    original.save_pretrained(tmp_path)
    answers = {0: "yes", 1: "no", 2: "red", 3: "blue", 4: "two"}

    with pytest.raises(
        ValueError, match=r"model\.safetensors.*classifier\.3\.weight.*ignore_mismatched_sizes"
    ):
        MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(tmp_path, id2label=answers)
    model, info = MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(
        tmp_path, id2label=answers, ignore_mismatched_sizes=True, output_loading_info=True
    )

    assert sorted(info["mismatched_keys"]) == [
        ("classifier.3.bias", (3,), (5,)),
        ("classifier.3.weight", (3, 64), (5, 64)),
    ]
    assert model.config.id2label == answers and model.classifier[3].out_features == 5
    kept = {k: v for k, v in original.state_dict().items() if not k.startswith("classifier.3.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())


def test_loading_info_reports_missing_and_unexpected_keys(tmp_path, caplog):
    state = dict(_ours("ViltForQuestionAnswering").state_dict())
    del state["vilt.pooler.dense.bias"]
    state["vilt.encoder.layer.7.output.dense.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    tiny_config(**MODEL_TESTS).save_pretrained(tmp_path)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, info = MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(
            tmp_path, output_loading_info=True
        )

    assert info == {  # sets, as transformers v5 gives them
        "missing_keys": {"vilt.pooler.dense.bias"},
        "unexpected_keys": {"vilt.encoder.layer.7.output.dense.weight"},
        "mismatched_keys": set(),
        "error_msgs": [],
    }
    assert (
        "vilt.pooler.dense.bias" in caplog.text and "vilt.encoder.layer.7.output.dense.weight" in caplog.text
    )


@pytest.mark.reference
def test_a_file_of_other_tensors_loads_with_every_key_reported_as_transformers_does(tmp_path):
    """A weights file holding nothing of the model (here one int64 tensor): every weight is missing and the
    tensor is unexpected, in both libraries; it is not refused for its dtype, which is no weight's."""
    transformers = pytest.importorskip("transformers")
    _ours("ViltForQuestionAnswering").save_pretrained(tmp_path)
    save_file({"tensor": torch.tensor([1, 2])}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, info = MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(
        tmp_path, output_loading_info=True
    )
    _, reference = transformers.ViltForQuestionAnswering.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == reference["unexpected_keys"] == {"tensor"}
    assert info["missing_keys"] == reference["missing_keys"] == set(model.state_dict())


# ----------------------------------------------------------------------------- saving


def test_save_replaces_weights_of_an_earlier_save_and_keeps_files_readable(tmp_path):
    first, second = _ours("ViltForQuestionAnswering"), _randomize(_ours("ViltForQuestionAnswering"), seed=5)
    first.save_pretrained(tmp_path, max_shard_size="20KB")
    second.save_pretrained(tmp_path, safe_serialization=False)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "pytorch_model.bin"]
    first.save_pretrained(tmp_path / "again")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "again").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"]  # readable like any new file
    loaded = MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(tmp_path)
    _assert_same_tensors(loaded.state_dict(), second.state_dict())


# ----------------------------------------------------------------------------- safety and errors


def test_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    model_dir, marker = tmp_path / "model", tmp_path / "pwned.txt"
    model_dir.mkdir()
    tiny_config(**MODEL_TESTS).save_pretrained(model_dir)
    torch.save(
        {"embeddings.cls_token": torch.zeros(1, 1, 32), "payload": WritesAFile(marker)},
        model_dir / "pytorch_model.bin",
    )

    with pytest.raises(
        ValueError, match=r"refusing to load .*pytorch_model\.bin: its pickle refers to io\.open"
    ):
        MODEL_CLASSES["ViltModel"].from_pretrained(model_dir)
    assert not marker.exists()

    torch.load(model_dir / "pytorch_model.bin", weights_only=False)  # what the refusal prevented
    assert marker.exists()


def test_directory_without_weights_names_the_directory(tmp_path):
    tiny_config(**MODEL_TESTS).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"no weights found at {tmp_path}.*model\.safetensors"):
        MODEL_CLASSES["ViltModel"].from_pretrained(tmp_path)


def test_directory_without_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/config\.json does not exist"):
        MODEL_CLASSES["ViltModel"].from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("safe", "message"),
    [(True, "is not a readable safetensors file"), (False, "is not a readable PyTorch checkpoint")],
    ids=["safetensors", "bin"],
)
def test_truncated_weights_name_the_file(safe, message, tmp_path):
    _ours("ViltModel").save_pretrained(tmp_path, safe_serialization=safe)
    weights = tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{weights} {message}.*truncated"):
        MODEL_CLASSES["ViltModel"].from_pretrained(tmp_path)


def test_wrong_shape_names_the_file_and_the_key(tmp_path):
    _ours("ViltModel").save_pretrained(tmp_path)
    with pytest.raises(
        ValueError,
        match=rf"{tmp_path}/model\.safetensors: .*tensor 'pooler\.dense\.weight' has shape \(32, 32\)",
    ):
        MODEL_CLASSES["ViltModel"].from_pretrained(tmp_path, hidden_size=64, num_attention_heads=4)


def test_config_of_another_model_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ValueError, match=rf"{tmp_path}/config\.json.*'bert'"):
        MODEL_CLASSES["ViltModel"].from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- the hub

REPO = "dandelin/vilt-b32-mlm"


def test_hub_id_loads_from_the_cache_offline(tmp_path, monkeypatch):
    """A hub id resolves through the huggingface_hub cache layout, with no network when HF_HUB_OFFLINE=1."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--dandelin--vilt-b32-mlm"
    model = _ours("ViltForMaskedLM")
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    loaded = MODEL_CLASSES["ViltForMaskedLM"].from_pretrained(REPO, cache_dir=tmp_path)
    pinned = MODEL_CLASSES["ViltForMaskedLM"].from_pretrained(REPO, cache_dir=tmp_path, revision=commit)

    _assert_same_tensors(loaded.state_dict(), model.state_dict())
    _assert_same_tensors(pinned.state_dict(), model.state_dict())


def test_offline_hub_without_cache_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(
        OSError, match=r"'config\.json' of 'dandelin/vilt-b32-mlm'.*HF_HUB_OFFLINE.*hf download"
    ):
        MODEL_CLASSES["ViltForMaskedLM"].from_pretrained(REPO, cache_dir=tmp_path)


def test_unreachable_hub_fails_with_how_to_work_offline(tmp_path, monkeypatch, connections):
    """No HF_HUB_OFFLINE and no network: one refused connection, then the cache, then our one-line fix."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port
    with pytest.raises(OSError, match=r"cannot be reached and it is not in the cache.*Fix:.*hf download"):
        MODEL_CLASSES["ViltForMaskedLM"].from_pretrained(REPO, cache_dir=tmp_path)
    assert connections == [("127.0.0.1", 9)]  # one attempt: no retry, and nothing else asked of the hub


# In the fresh process, every connection attempt is counted and printed when the load fails.
_COUNTING_LOAD = """
import socket
tried = []
create_connection = socket.create_connection
def counted(address, *args, **kwargs):
    tried.append(address)
    return create_connection(address, *args, **kwargs)
socket.create_connection = counted
from vilt import ViltForMaskedLM
try:
    ViltForMaskedLM.from_pretrained({repo!r})
finally:
    print("connections:", len(tried))
"""


def test_unreachable_hub_fails_once_and_fast_in_a_fresh_process(tmp_path):
    """The same with the real environment variables: one attempt, one message."""
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-c", _COUNTING_LOAD.format(repo=REPO)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "connections: 1" in result.stdout
    assert result.stderr.count("cannot be reached") == 1 and "Retry" not in result.stderr
    assert "hf download dandelin/vilt-b32-mlm" in result.stderr


def test_a_cached_model_loads_when_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE, no network, the model in the cache: it loads from the cache."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--dandelin--vilt-b32-mlm"
    model = _ours("ViltForMaskedLM")
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = MODEL_CLASSES["ViltForMaskedLM"].from_pretrained(REPO, cache_dir=tmp_path)
    _assert_same_tensors(loaded.state_dict(), model.state_dict())


# ----------------------------------------------------------------------------- loading stays inside its directory


def _sharded_bin(directory: Path, marker: Path) -> None:
    """A tiny model saved as .bin shards, with an index, plus a shard whose pickle would create ``marker``."""
    model = _ours("ViltModel")
    model.save_pretrained(directory, max_shard_size="20KB")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    weight_map = {key: "pytorch_model-00001-of-00001.bin" for key in index["weight_map"]}
    torch.save(model.state_dict(), directory / "pytorch_model-00001-of-00001.bin")
    for file in directory.glob("model*.safetensors*"):
        file.unlink()
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    torch.save({"payload": WritesAFile(marker)}, directory.parent / "evil.bin")


def _point_index_at(directory: Path, shard: str) -> None:
    index_file = directory / "pytorch_model.bin.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["pooler.dense.weight"] = shard
    index_file.write_text(json.dumps(index))


@pytest.mark.parametrize(
    "shard", ["../evil.bin", "{parent}/evil.bin", "sub/../../evil.bin", "sub/pytorch_model.bin", ".."]
)
def test_index_naming_a_shard_outside_the_directory_is_refused_unopened(shard, tmp_path):
    from vilt.errors import ViltInputError

    model_dir, marker = tmp_path / "model", tmp_path / "pwned.txt"
    _sharded_bin(model_dir, marker)
    MODEL_CLASSES["ViltModel"].from_pretrained(model_dir)  # loads before the index is changed
    _point_index_at(model_dir, shard.format(parent=tmp_path))
    with pytest.raises(
        ViltInputError, match=r"pytorch_model\.bin\.index\.json names the shard .*plain \*\.bin"
    ):
        MODEL_CLASSES["ViltModel"].from_pretrained(model_dir)
    assert not marker.exists()


def test_shard_that_links_outside_the_directory_is_refused_unopened(tmp_path):
    from vilt.errors import ViltInputError

    model_dir, marker = tmp_path / "model", tmp_path / "pwned.txt"
    _sharded_bin(model_dir, marker)
    (model_dir / "pytorch_model-00002-of-00002.bin").symlink_to(tmp_path / "evil.bin")
    _point_index_at(model_dir, "pytorch_model-00002-of-00002.bin")
    with pytest.raises(ViltInputError, match=r"resolves to .*evil\.bin, outside the model directory"):
        MODEL_CLASSES["ViltModel"].from_pretrained(model_dir)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"])
def test_a_weight_file_that_links_outside_the_directory_is_refused_unopened(name, tmp_path):
    """The single weight file (or the index) is confined to the model directory as shards are."""
    from vilt.errors import ViltInputError

    model_dir, marker = tmp_path / "model", tmp_path / "pwned.txt"
    model = _ours("ViltModel")
    model.save_pretrained(model_dir, max_shard_size="20KB" if name.endswith(".index.json") else "5GB")
    outside = tmp_path / f"outside-{name}"
    if name == "pytorch_model.bin":
        torch.save({"payload": WritesAFile(marker)}, outside)
        for file in model_dir.glob("model*.safetensors*"):
            file.unlink()
    else:
        (model_dir / name).rename(outside)
    (model_dir / name).symlink_to(outside)
    with pytest.raises(
        ViltInputError, match=rf"{name} is a link, which resolves to .*outside-{name}, outside the"
    ):
        MODEL_CLASSES["ViltModel"].from_pretrained(model_dir)
    assert not marker.exists()
    (model_dir / name).unlink()
    (model_dir / name).symlink_to(Path("..", outside.name))  # a relative link out is the same
    with pytest.raises(ViltInputError, match="outside the model directory"):
        MODEL_CLASSES["ViltModel"].from_pretrained(model_dir)


def test_a_link_inside_the_directory_loads(tmp_path):
    model_dir = tmp_path / "model"
    model = _ours("ViltModel")
    model.save_pretrained(model_dir)
    (model_dir / "weights").mkdir()
    (model_dir / "model.safetensors").rename(model_dir / "weights" / "v1.safetensors")
    (model_dir / "model.safetensors").symlink_to(Path("weights", "v1.safetensors"))
    _assert_same_tensors(
        MODEL_CLASSES["ViltModel"].from_pretrained(model_dir).state_dict(), model.state_dict()
    )


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_tensors_the_model_does_not_take_are_never_read(safe, tmp_path, monkeypatch):
    """Only the model's tensors are made from a safetensors file, and only those are read (checked,
    copied) from either kind: 2,000 unused ones, one of them NaN, cost nothing and refuse nothing."""
    import vilt.checkpoint as checkpoint

    model = _ours("ViltModel")
    state = dict(model.state_dict())
    unused = {f"other_head.{i}.weight": torch.zeros(3) for i in range(2000)}
    unused["other_head.0.weight"][1] = float("nan")
    (tmp_path / "m").mkdir()
    model.config.to_json_file(tmp_path / "m" / "config.json")
    if safe:
        save_file({**state, **unused}, tmp_path / "m" / "model.safetensors")
    else:
        torch.save({**state, **unused}, tmp_path / "m" / "pytorch_model.bin")
    made, checked = [], []
    weights_getitem, check_weights = checkpoint.Weights.__getitem__, checkpoint.check_weights
    monkeypatch.setattr(
        checkpoint.Weights, "__getitem__", lambda self, key: made.append(key) or weights_getitem(self, key)
    )
    monkeypatch.setattr(
        checkpoint,
        "check_weights",
        lambda tensors, source: checked.extend(tensors) or check_weights(tensors, source),
    )
    loaded = MODEL_CLASSES["ViltModel"].from_pretrained(tmp_path / "m")
    _assert_same_tensors(loaded.state_dict(), model.state_dict())
    assert not set(made) & set(unused) and not set(checked) & set(unused)
    assert set(checked) == set(state) - {"embeddings.text_embeddings.position_ids"}


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
def test_an_unused_2_gib_tensor_is_not_read(tmp_path):
    """A safetensors file with an unused 2 GiB tensor whose bytes are a hole (a sparse file): loading it
    costs the memory of the model alone (peak RSS measured in a fresh process, beside the same load
    without that tensor); it used to read the 2 GiB in full."""
    import struct

    model = _ours("ViltModel")
    for name in ("plain", "sparse"):
        model.save_pretrained(tmp_path / name)
    file = tmp_path / "sparse" / "model.safetensors"
    raw = file.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8 : 8 + size]), raw[8 + size :]
    huge = 2**31
    header["unused.huge"] = {
        "dtype": "F32",
        "shape": [huge // 4],
        "data_offsets": [len(data), len(data) + huge],
    }
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(file, "wb") as fh:
        fh.write(struct.pack("<Q", len(encoded)) + encoded + data)
        fh.truncate(8 + len(encoded) + len(data) + huge)  # the tensor's bytes: a hole, no disk used
    code = (  # VmHWM: this process's peak (ru_maxrss would include the parent's, which execve keeps)
        "import sys\n"
        "from vilt.heads import MODEL_CLASSES\n"
        "for path in sys.argv[1:]:\n"
        "    MODEL_CLASSES['ViltModel'].from_pretrained(path)\n"
        "    print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "plain"), str(file.parent)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    plain, sparse = (int(line) * 1024 for line in result.stdout.split())
    assert sparse - plain < 2**28, f"peak RSS grew by {(sparse - plain) / 2**20:.0f} MiB"


def test_sharded_hub_snapshot_links_into_its_blobs_and_loads(tmp_path, monkeypatch):
    """A hub cache snapshot's files are links into ../../blobs: inside the repository, so they load (by
    hub id and by the snapshot's path); a snapshot link that leaves the repository is refused."""
    from vilt.errors import ViltInputError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _ours("ViltModel")
    model.save_pretrained(tmp_path / "saved", max_shard_size="20KB")
    repo, commit = tmp_path / "cache" / "models--org--sharded", "f" * 40
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in (tmp_path / "saved").iterdir():
        file.rename(repo / "blobs" / f"blob-{file.name}")
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", f"blob-{file.name}"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shards = sorted(p.name for p in snapshot.glob("model-*.safetensors"))
    assert len(shards) > 1

    for source, options in (("org/sharded", {"cache_dir": tmp_path / "cache"}), (snapshot, {})):
        loaded = MODEL_CLASSES["ViltModel"].from_pretrained(source, **options)
        _assert_same_tensors(loaded.state_dict(), model.state_dict())

    (tmp_path / "outside.safetensors").write_bytes((repo / "blobs" / f"blob-{shards[0]}").read_bytes())
    (snapshot / shards[0]).unlink()
    (snapshot / shards[0]).symlink_to(Path("..", "..", "..", "..", "outside.safetensors"))
    with pytest.raises(ViltInputError, match="outside the model directory"):
        MODEL_CLASSES["ViltModel"].from_pretrained("org/sharded", cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- weights and configs checked


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "holds NaN or infinite values"),
        (float("inf"), "holds NaN or infinite values"),
        (None, "is int64, but ViLT weights are floating point"),
    ],
    ids=["nan", "inf", "int64"],
)
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_weights_that_are_not_finite_floats_are_refused_by_name(value, message, safe, tmp_path):
    from vilt.errors import ViltInputError

    model = _ours("ViltModel")
    with torch.no_grad():
        if value is None:
            model.pooler.dense.weight = torch.nn.Parameter(
                torch.ones(32, 32, dtype=torch.int64), requires_grad=False
            )
        else:
            model.pooler.dense.weight[3, 5] = value
    model.save_pretrained(tmp_path, safe_serialization=safe)
    with pytest.raises(ViltInputError, match=rf"tensor 'pooler\.dense\.weight' {message}"):
        MODEL_CLASSES["ViltModel"].from_pretrained(tmp_path)


def test_weights_near_the_float32_limit_are_finite(tmp_path):
    """A sum that overflows on finite values is checked element by element, not refused."""
    model = _ours("ViltModel")
    with torch.no_grad():
        model.pooler.dense.weight.fill_(3e38)
    model.save_pretrained(tmp_path)
    loaded = MODEL_CLASSES["ViltModel"].from_pretrained(tmp_path)
    assert torch.equal(loaded.pooler.dense.weight, model.pooler.dense.weight)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_hidden_layers": 100000}, "num_hidden_layers"),
        ({"hidden_size": 4_000_000, "num_attention_heads": 1}, "hidden_size"),
        ({"vocab_size": 10**11}, "vocab_size"),
        ({"num_labels": 10**12}, "num_labels"),
        ({"num_hidden_layers": True}, "num_hidden_layers"),
    ],
)
def test_absurd_config_is_refused_before_anything_is_allocated(changes, field, tmp_path, monkeypatch):
    """Naming the field, before any module is built, and without reading the weights (a pickle that would
    run code sits where they are). 100000 layers of ViLT-B/32 would take 2.6 TB."""
    from vilt.errors import ViltInputError

    def no_module(*args, **kwargs):
        raise AssertionError("a module was built before the config was refused")

    marker = tmp_path / "pwned.txt"
    config = ViltConfig().to_dict()  # ViLT-B/32's sizes
    del config["id2label"], config["label2id"]  # (which would set num_labels)
    (tmp_path / "config.json").write_text(json.dumps({**config, **changes}))
    torch.save({"payload": WritesAFile(marker)}, tmp_path / "pytorch_model.bin")
    monkeypatch.setattr(torch.nn.Module, "__init__", no_module)
    with pytest.raises(ViltInputError, match=field):
        MODEL_CLASSES["ViltModel"].from_pretrained(tmp_path)
    assert not marker.exists()
