"""Converting the original Lightning ``.ckpt`` files: synthetic checkpoints of all five kinds, in the
original key layout, convert to the model a hand-written mapping builds; the ITM head scores as
computed by hand; the file is read without running code; ``vilt convert`` and its errors."""

from __future__ import annotations

import json
import logging
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from model_inputs import WritesAFile
from tiny import HIDDEN_SIZE, IMAGE_SIZE, NUM_HEADS, NUM_LAYERS, PATCH_SIZE, SMALL_VOCAB, tiny_config

from vilt import ViltProcessor
from vilt.cli import main
from vilt.convert import convert_original_checkpoint
from vilt.heads import MODEL_CLASSES

TEXT = 40  # max_text_len
GRID = IMAGE_SIZE // PATCH_SIZE  # 4 x 4 patches: transformer.pos_embed is (1, 17, 32)
ANSWERS = ["yes", "no", "2", "red", "cat"]
FILE_NAMES = {  # the released names (original-vilt.md §5.3)
    "mlm_itm": "vilt_200k_mlm_itm.ckpt",
    "vqa": "vilt_vqa.ckpt",
    "nlvr2": "vilt_nlvr2.ckpt",
    "irtr_coco": "vilt_irtr_coco.ckpt",
    "irtr_f30k": "vilt_irtr_f30k.ckpt",
}
CLASSES = {
    "mlm_itm": "ViltForMaskedLM",
    "vqa": "ViltForQuestionAnswering",
    "nlvr2": "ViltForImagesAndTextClassification",
    "irtr_coco": "ViltForImageAndTextRetrieval",
    "irtr_f30k": "ViltForImageAndTextRetrieval",
}


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- synthetic originals


def original_state(kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the original module names and shapes (original-vilt.md §6.1)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.5

    d = HIDDEN_SIZE
    state = {
        "text_embeddings.position_ids": torch.arange(TEXT)[None],
        "text_embeddings.word_embeddings.weight": rand(SMALL_VOCAB, d),
        "text_embeddings.position_embeddings.weight": rand(TEXT, d),
        "text_embeddings.token_type_embeddings.weight": rand(2, d),
        "text_embeddings.LayerNorm.weight": rand(d),
        "text_embeddings.LayerNorm.bias": rand(d),
        "token_type_embeddings.weight": rand(3 if kind == "nlvr2" else 2, d),
        "transformer.cls_token": rand(1, 1, d),
        "transformer.pos_embed": rand(1, GRID * GRID + 1, d),
        "transformer.patch_embed.proj.weight": rand(d, 3, PATCH_SIZE, PATCH_SIZE),
        "transformer.patch_embed.proj.bias": rand(d),
        "transformer.norm.weight": rand(d),
        "transformer.norm.bias": rand(d),
        "pooler.dense.weight": rand(d, d),
        "pooler.dense.bias": rand(d),
    }
    for i in range(NUM_LAYERS):
        block = f"transformer.blocks.{i}."
        state |= {
            block + "norm1.weight": rand(d),
            block + "norm1.bias": rand(d),
            block + "attn.qkv.weight": rand(3 * d, d),
            block + "attn.qkv.bias": rand(3 * d),
            block + "attn.proj.weight": rand(d, d),
            block + "attn.proj.bias": rand(d),
            block + "norm2.weight": rand(d),
            block + "norm2.bias": rand(d),
            block + "mlp.fc1.weight": rand(4 * d, d),
            block + "mlp.fc1.bias": rand(4 * d),
            block + "mlp.fc2.weight": rand(d, 4 * d),
            block + "mlp.fc2.bias": rand(d),
        }
    itm = {"itm_score.fc.weight": rand(2, d), "itm_score.fc.bias": rand(2)}
    if kind == "mlm_itm":
        state |= itm | {
            "mlm_score.transform.dense.weight": rand(d, d),
            "mlm_score.transform.dense.bias": rand(d),
            "mlm_score.transform.LayerNorm.weight": rand(d),
            "mlm_score.transform.LayerNorm.bias": rand(d),
            "mlm_score.decoder.weight": rand(SMALL_VOCAB, d),
            "mlm_score.bias": rand(SMALL_VOCAB),
        }
    elif kind in ("vqa", "nlvr2"):
        width, labels = (2 * d, len(ANSWERS)) if kind == "vqa" else (2 * d, 2)
        state |= {
            f"{kind}_classifier.0.weight": rand(width, width // 2 if kind == "vqa" else width),
            f"{kind}_classifier.0.bias": rand(width),
            f"{kind}_classifier.1.weight": rand(width),
            f"{kind}_classifier.1.bias": rand(width),
            f"{kind}_classifier.3.weight": rand(labels, width),
            f"{kind}_classifier.3.bias": rand(labels),
        }
    else:
        state |= itm | {"rank_output.weight": rand(1, d), "rank_output.bias": rand(1)}
    return state


def save_lightning(state: dict[str, torch.Tensor], path: Path, **extra) -> Path:
    """Save as PyTorch Lightning does: weights under "state_dict", the training config beside them."""
    hyper_parameters = {"config": {"num_heads": NUM_HEADS, "hidden_size": HIDDEN_SIZE, "max_text_len": TEXT}}
    torch.save({"state_dict": state, "hyper_parameters": hyper_parameters, "epoch": 0, **extra}, path)
    return path


def expected_model(kind: str, original: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Our model built from the original tensors by a hand-written mapping (independent of vilt.convert)."""
    o, d = original, HIDDEN_SIZE
    state = {
        "vilt.embeddings.cls_token": o["transformer.cls_token"],
        "vilt.embeddings.position_embeddings": o["transformer.pos_embed"],
        "vilt.embeddings.patch_embeddings.projection.weight": o["transformer.patch_embed.proj.weight"],
        "vilt.embeddings.patch_embeddings.projection.bias": o["transformer.patch_embed.proj.bias"],
        "vilt.embeddings.token_type_embeddings.weight": o["token_type_embeddings.weight"],
        "vilt.layernorm.weight": o["transformer.norm.weight"],
        "vilt.layernorm.bias": o["transformer.norm.bias"],
        "vilt.pooler.dense.weight": o["pooler.dense.weight"],
        "vilt.pooler.dense.bias": o["pooler.dense.bias"],
    }
    for name in ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight"):
        state[f"vilt.embeddings.text_embeddings.{name}"] = o[f"text_embeddings.{name}"]
    for name in ("weight", "bias"):
        state[f"vilt.embeddings.text_embeddings.LayerNorm.{name}"] = o[f"text_embeddings.LayerNorm.{name}"]
    for i in range(NUM_LAYERS):
        old, new = f"transformer.blocks.{i}.", f"vilt.encoder.layer.{i}."
        for name in ("weight", "bias"):
            qkv = o[old + f"attn.qkv.{name}"]
            state[new + f"attention.attention.query.{name}"] = qkv[:d]
            state[new + f"attention.attention.key.{name}"] = qkv[d : 2 * d]
            state[new + f"attention.attention.value.{name}"] = qkv[2 * d :]
            state[new + f"attention.output.dense.{name}"] = o[old + f"attn.proj.{name}"]
            state[new + f"layernorm_before.{name}"] = o[old + f"norm1.{name}"]
            state[new + f"layernorm_after.{name}"] = o[old + f"norm2.{name}"]
            state[new + f"intermediate.dense.{name}"] = o[old + f"mlp.fc1.{name}"]
            state[new + f"output.dense.{name}"] = o[old + f"mlp.fc2.{name}"]
    # the original's MLP is 4 times as wide as the model
    config = {"vocab_size": SMALL_VOCAB, "intermediate_size": 4 * d, "max_position_embeddings": TEXT}
    if kind == "mlm_itm":
        state |= {k: v for k, v in o.items() if k.startswith("mlm_score.") and k != "mlm_score.bias"}
        state["mlm_score.decoder.bias"] = o["mlm_score.bias"]
    elif kind in ("vqa", "nlvr2"):
        for index in (0, 1, 3):
            for name in ("weight", "bias"):
                state[f"classifier.{index}.{name}"] = o[f"{kind}_classifier.{index}.{name}"]
        config["id2label"] = dict(enumerate(ANSWERS)) if kind == "vqa" else {0: "False", 1: "True"}
    else:
        state |= {"rank_output.weight": o["rank_output.weight"], "rank_output.bias": o["rank_output.bias"]}
    model = MODEL_CLASSES[CLASSES[kind]](tiny_config(CLASSES[kind], **config))
    model.load_state_dict(state, strict=True)
    return model.eval()


def inputs(kind: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    images = (2,) if kind == "nlvr2" else ()
    return {
        "input_ids": torch.randint(1, SMALL_VOCAB, (2, 6), generator=generator),
        "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2]),
        "pixel_values": torch.randn(2, *images, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
    }


def logits(model: torch.nn.Module, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(kind)).logits


# ----------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("kind", list(CLASSES))
def test_each_kind_converts_to_the_hand_mapped_model(kind, tmp_path, caplog):
    original = original_state(kind)
    src = save_lightning(original, tmp_path / FILE_NAMES[kind])
    answers = tmp_path / "vqa_dict.json"
    answers.write_text(json.dumps({str(i): a for i, a in enumerate(ANSWERS)}))
    expected = expected_model(kind, original)

    with caplog.at_level(logging.WARNING):
        model = convert_original_checkpoint(src, tmp_path / "out", answers=answers if kind == "vqa" else None)
        loaded = MODEL_CLASSES[CLASSES[kind]].from_pretrained(tmp_path / "out")

    assert not caplog.records, caplog.text  # nothing missing, nothing unused, kind detected
    assert type(model).__name__ == CLASSES[kind]
    for converted in (model, loaded):
        assert converted.state_dict().keys() == expected.state_dict().keys()
        for key, tensor in expected.state_dict().items():
            assert torch.equal(converted.state_dict()[key], tensor), key
        # two model objects: memory alignment can change the last bit of the products (not a property)
        torch.testing.assert_close(logits(converted, kind), logits(expected, kind), rtol=0, atol=1e-6)
    for field in ("num_labels", "id2label", "num_images", "modality_type_vocab_size", "num_attention_heads"):
        assert getattr(loaded.config, field) == getattr(expected.config, field), field
    assert loaded.config.extra["converted_from"] == {"file": FILE_NAMES[kind], "kind": kind}
    assert ViltProcessor.from_pretrained(tmp_path / "out").tokenizer.model_max_length == TEXT


def test_mlm_itm_directory_loads_both_heads_and_itm_scores_by_hand(tmp_path, caplog):
    original = original_state("mlm_itm")
    convert_original_checkpoint(
        save_lightning(original, tmp_path / "vilt_200k_mlm_itm.ckpt"), tmp_path / "out"
    )
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["ViltForMaskedLM", "ViltForImageTextMatching"]

    with caplog.at_level(logging.WARNING):
        itm, info = MODEL_CLASSES["ViltForImageTextMatching"].from_pretrained(
            tmp_path / "out", output_loading_info=True
        )
        mlm = MODEL_CLASSES["ViltForMaskedLM"].from_pretrained(tmp_path / "out")

    assert not caplog.records, caplog.text  # the other head's tensors are expected, not a problem
    assert not info["missing_keys"]
    assert torch.equal(mlm.mlm_score.decoder.bias, original["mlm_score.bias"])
    assert torch.equal(mlm.mlm_score.decoder.weight, original["mlm_score.decoder.weight"])
    with torch.no_grad():
        out = itm(**inputs("mlm_itm"))
        text_cls = itm.vilt(**inputs("mlm_itm")).last_hidden_state[:, 0]  # (B, D): the pooled token
    pooled = torch.tanh(text_cls @ original["pooler.dense.weight"].T + original["pooler.dense.bias"])
    by_hand = pooled @ original["itm_score.fc.weight"].T + original["itm_score.fc.bias"]  # (B, 2)
    torch.testing.assert_close(out.logits, by_hand, rtol=1e-6, atol=1e-6)


def test_retrieval_conversion_drops_the_itm_head(tmp_path):
    src = save_lightning(original_state("irtr_coco"), tmp_path / "vilt_irtr_coco.ckpt")
    convert_original_checkpoint(src, tmp_path / "out")
    from safetensors.torch import load_file

    assert not [k for k in load_file(tmp_path / "out" / "model.safetensors") if k.startswith("itm_score")]


@pytest.mark.reference
@pytest.mark.parametrize("kind", ["mlm_itm", "vqa", "nlvr2", "irtr_f30k"])
def test_converted_directory_loads_in_transformers(kind, tmp_path):
    transformers = pytest.importorskip("transformers")
    original = original_state(kind)
    answers = ANSWERS if kind == "vqa" else None
    model = convert_original_checkpoint(
        save_lightning(original, tmp_path / FILE_NAMES[kind]), tmp_path / "out", answers=answers
    )

    reference, info = getattr(transformers, CLASSES[kind]).from_pretrained(
        tmp_path / "out", output_loading_info=True
    )

    assert not info["missing_keys"] and not info["mismatched_keys"]
    for key, tensor in model.state_dict().items():
        assert torch.equal(reference.state_dict()[key], tensor), key
    assert reference.config.id2label == model.config.id2label


# ----------------------------------------------------------------------------- answers and kinds


@pytest.mark.parametrize(
    "answers",
    [ANSWERS, {str(i): a for i, a in enumerate(ANSWERS)}, {a: i for i, a in enumerate(ANSWERS)}],
    ids=["list", "id-to-answer", "answer-to-id"],
)
def test_answer_list_formats_give_the_same_labels(answers, tmp_path):
    src = save_lightning(original_state("vqa"), tmp_path / "vilt_vqa.ckpt")
    model = convert_original_checkpoint(src, tmp_path / "out", answers=answers)
    assert model.config.id2label == dict(enumerate(ANSWERS))
    assert model.config.label2id == {a: i for i, a in enumerate(ANSWERS)}


def test_answer_list_with_a_gap_names_the_missing_id(tmp_path, caplog):
    """The released vqa_dict.json skips an id (dandelin/ViLT#77): the gap is named, not fatal."""
    src = save_lightning(original_state("vqa"), tmp_path / "vilt_vqa.ckpt")
    gappy = {str(i): a for i, a in enumerate(ANSWERS) if i != 2}
    with caplog.at_level(logging.WARNING):
        model = convert_original_checkpoint(src, tmp_path / "out", answers=gappy)
    assert model.config.id2label[2] == "LABEL_2" and model.config.id2label[3] == "red"
    assert "[2]" in caplog.text


def test_answer_list_larger_than_the_classifier_is_refused(tmp_path):
    src = save_lightning(original_state("vqa"), tmp_path / "vilt_vqa.ckpt")
    with pytest.raises(ValueError, match=r"ids \[5\] outside the classifier's 5 outputs"):
        convert_original_checkpoint(src, tmp_path / "out", answers=[*ANSWERS, "blue"])


def test_retrieval_dataset_comes_from_the_training_config(tmp_path):
    src = tmp_path / "retrieval.ckpt"
    state = original_state("irtr_f30k")
    torch.save(
        {"state_dict": state, "hyper_parameters": {"config": {"num_heads": NUM_HEADS, "datasets": ["f30k"]}}},
        src,
    )
    model = convert_original_checkpoint(src, tmp_path / "out")
    assert model.config.extra["converted_from"]["kind"] == "irtr_f30k"


def test_retrieval_of_unknown_dataset_asks_for_the_kind(tmp_path):
    src = save_lightning(original_state("irtr_coco"), tmp_path / "retrieval.ckpt")
    with pytest.raises(ValueError, match="kind='irtr_coco' or kind='irtr_f30k'"):
        convert_original_checkpoint(src, tmp_path / "out")
    assert convert_original_checkpoint(src, tmp_path / "out", kind="irtr_coco").config.architectures


def test_answers_for_another_kind_are_refused(tmp_path):
    src = save_lightning(original_state("nlvr2"), tmp_path / "vilt_nlvr2.ckpt")
    with pytest.raises(ValueError, match="answers apply to VQA checkpoints only.*nlvr2"):
        convert_original_checkpoint(src, tmp_path / "out", answers=ANSWERS)


def test_a_kind_the_heads_contradict_is_refused(tmp_path):
    src = save_lightning(original_state("nlvr2"), tmp_path / "vilt_nlvr2.ckpt")
    with pytest.raises(ValueError, match="not a vqa checkpoint: its heads are those of a nlvr2 checkpoint"):
        convert_original_checkpoint(src, tmp_path / "out", kind="vqa")


def test_heads_count_falls_back_to_an_override(tmp_path):
    src = tmp_path / "bare.ckpt"
    torch.save(original_state("vqa"), src)  # a state dict only, no training config
    with pytest.raises(ValueError, match="pass num_attention_heads"):
        convert_original_checkpoint(src, tmp_path / "out")
    model = convert_original_checkpoint(src, tmp_path / "out", num_attention_heads=NUM_HEADS)
    expected = logits(expected_model("vqa", original_state("vqa")), "vqa")
    torch.testing.assert_close(logits(model, "vqa"), expected, rtol=0, atol=1e-6)  # two objects: not bitwise


# ----------------------------------------------------------------------------- safe reading


def _fake_lightning(monkeypatch: pytest.MonkeyPatch) -> tuple[type, type]:
    """Classes pickled under Lightning's module names, as a real Lightning checkpoint holds them."""
    parsing = types.ModuleType("pytorch_lightning.utilities.parsing")
    callbacks = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    attribute_dict = type("AttributeDict", (dict,), {"__module__": parsing.__name__})
    model_checkpoint = type("ModelCheckpoint", (), {"__module__": callbacks.__name__})
    parsing.AttributeDict, callbacks.ModelCheckpoint = attribute_dict, model_checkpoint
    for name in ("pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, parsing.__name__, parsing)
    monkeypatch.setitem(sys.modules, callbacks.__name__, callbacks)
    return attribute_dict, model_checkpoint


def test_lightning_bookkeeping_is_read_without_lightning(tmp_path):
    src = tmp_path / "vilt_vqa.ckpt"
    with pytest.MonkeyPatch.context() as patch:
        attribute_dict, model_checkpoint = _fake_lightning(patch)
        torch.save(
            {
                "state_dict": original_state("vqa"),
                "hyper_parameters": attribute_dict(config={"num_heads": NUM_HEADS}),
                "callbacks": {model_checkpoint: {"best_model_score": torch.tensor(0.7)}},
            },
            src,
        )
    assert "pytorch_lightning" not in sys.modules
    model = convert_original_checkpoint(src, tmp_path / "out")
    assert model.config.num_attention_heads == NUM_HEADS


def test_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    src, marker = tmp_path / "vilt_vqa.ckpt", tmp_path / "pwned.txt"
    with pytest.MonkeyPatch.context() as patch:
        attribute_dict, _ = _fake_lightning(patch)
        hyper_parameters = attribute_dict(config={"num_heads": NUM_HEADS}, hook=WritesAFile(marker))
        torch.save({"state_dict": original_state("vqa"), "hyper_parameters": hyper_parameters}, src)

    with pytest.raises(ValueError, match=r"refusing to load .*vilt_vqa\.ckpt: its pickle refers to io\.open"):
        convert_original_checkpoint(src, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- command line


def test_cli_converts_and_protects_an_existing_directory(tmp_path, capsys):
    src = save_lightning(original_state("vqa"), tmp_path / "vilt_vqa.ckpt")
    answers = tmp_path / "vqa_dict.json"
    answers.write_text(json.dumps(ANSWERS))
    dest = tmp_path / "out"

    assert main(["convert", str(src), str(dest), "--answers", str(answers)]) == 0
    assert "ViltForQuestionAnswering.from_pretrained" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in dest.iterdir()
    }

    assert main(["convert", str(src), str(dest)]) == 2
    assert f"{dest} already exists and is not empty" in capsys.readouterr().err
    assert main(["convert", str(src), str(dest), "--kind", "vqa", "--answers", str(answers), "--force"]) == 0
    assert MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(dest).config.id2label[4] == "cat"


def test_cli_names_a_missing_checkpoint(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope.ckpt'} does not exist" in err and "Traceback" not in err


def test_cli_writes_through_a_linked_output_and_never_onto_its_source(tmp_path, capsys):
    src = save_lightning(original_state("vqa"), tmp_path / "vilt_vqa.ckpt")
    real, link = tmp_path / "disk" / "vqa", tmp_path / "vqa"
    assert main(["convert", str(src), str(real)]) == 0
    link.symlink_to(real, target_is_directory=True)
    (real / "config.json").write_text("{}")  # damaged: the second conversion must replace it
    assert main(["convert", str(src), str(link), "--force"]) == 0
    assert link.is_symlink() and link.resolve() == real.resolve()
    MODEL_CLASSES["ViltForQuestionAnswering"].from_pretrained(link)
    leftovers = [p.name for p in tmp_path.rglob("*") if ".vilt-" in p.name]
    assert not leftovers, leftovers
    capsys.readouterr()

    folder = tmp_path / "weights"
    folder.mkdir()
    inside = save_lightning(original_state("vqa"), folder / "pytorch_model.bin")  # named like a weight file
    before = inside.read_bytes()
    assert main(["convert", str(inside), str(folder), "--force"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"the output directory '.*weights' holds the input '.*pytorch_model.bin'", err), err
    assert inside.read_bytes() == before
