"""ViltConfig: the reference's fields and defaults, config.json both ways, and validation errors."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
from tiny import MODEL_TESTS, NLVR2, tiny_config

from vilt import ViltConfig
from vilt.heads import MODEL_CLASSES, ViltForImagesAndTextClassification

# fields of ours that are bookkeeping, or transformers' base-config fields, not ViltConfig's own
_OURS_ONLY = {"extra", "architectures", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder"}
# transformers v5 forces tie_word_embeddings=True whatever is passed; we keep v4's default False, which is
# what every dandelin checkpoint was converted with (their MLM decoder is not tied to the word embeddings).
_DOCUMENTED_DIFFERENCES = {"tie_word_embeddings"}
# the fields we compare with the reference after a round trip through config.json
_MODEL_FIELDS = [f.name for f in fields(ViltConfig) if f.name not in _OURS_ONLY | _DOCUMENTED_DIFFERENCES]


def _a_reference_config(transformers):  # type: ignore[no-untyped-def]
    """A reference config with non-default values in every group of fields."""
    return transformers.ViltConfig(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=8,
        intermediate_size=99,
        image_size=64,
        patch_size=16,
        max_image_length=20,
        num_images=2,
        modality_type_vocab_size=3,
        hidden_act="gelu_new",
        layer_norm_eps=1e-6,
        qkv_bias=False,
        pad_token_id=0,
        id2label={0: "False", 1: "True", 2: "Maybe"},
    )


# ----------------------------------------------------------------------------- defaults


@pytest.mark.reference
def test_every_field_and_default_matches_the_reference() -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.ViltConfig()
    ours = ViltConfig()
    reference_fields = set(transformers.ViltConfig.__annotations__)
    assert reference_fields <= {f.name for f in fields(ViltConfig)}, "a reference field is missing"
    for name in _MODEL_FIELDS:
        assert getattr(ours, name) == getattr(reference, name), name
    assert ours.model_type == reference.model_type == "vilt"
    assert reference.tie_word_embeddings is True and ours.tie_word_embeddings is False


def test_id2label_sets_num_labels_and_label2id() -> None:
    config = ViltConfig(id2label={"0": "no", "1": "yes", "2": "maybe"})
    assert config.num_labels == 3
    assert config.id2label == {0: "no", 1: "yes", 2: "maybe"}
    assert config.label2id == {"no": 0, "yes": 1, "maybe": 2}
    assert ViltConfig(num_labels=4).id2label == {i: f"LABEL_{i}" for i in range(4)}


# ----------------------------------------------------------------------------- reading and writing config.json


@pytest.mark.reference
def test_reads_a_reference_config_json_and_keeps_unknown_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    reference = _a_reference_config(transformers)
    reference.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["custom_setting"] = {"nested": [1, 2]}
    path.write_text(json.dumps(data))

    ours = ViltConfig.from_json_file(path)
    for name in _MODEL_FIELDS:
        if name != "label2id":  # the reference writes label2id=null after an id2label-only init
            assert getattr(ours, name) == getattr(reference, name), name
    assert ours.label2id == {"False": 0, "True": 1, "Maybe": 2}
    assert ours.extra["custom_setting"] == {"nested": [1, 2]}
    assert ours.extra["transformers_version"] == data["transformers_version"]

    written = ours.to_dict()
    assert written["custom_setting"] == {"nested": [1, 2]}
    assert written["transformers_version"] == data["transformers_version"]
    assert written["model_type"] == "vilt"
    assert ViltConfig.from_dict(written) == ours


@pytest.mark.reference
def test_the_reference_reads_our_config_json_to_an_equal_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    ours = ViltConfig(
        hidden_size=48,
        num_attention_heads=6,
        image_size=96,
        patch_size=16,
        num_images=3,
        modality_type_vocab_size=4,
        max_image_length=10,
        id2label={0: "a", 1: "b", 2: "c", 3: "d"},
        extra={"custom_setting": 7},
    )
    ours.save_pretrained(tmp_path)
    for reference in (
        transformers.ViltConfig.from_json_file(str(tmp_path / "config.json")),
        transformers.ViltConfig.from_pretrained(str(tmp_path)),
    ):
        for name in _MODEL_FIELDS:
            assert getattr(reference, name) == getattr(ours, name), name
        assert reference.id2label == {0: "a", 1: "b", 2: "c", 3: "d"}  # int keys
        assert reference.num_labels == 4
        assert reference.label2id == {"a": 0, "b": 1, "c": 2, "d": 3}
        assert reference.custom_setting == 7


def test_our_json_round_trip_is_lossless(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = ViltConfig(num_images=2, modality_type_vocab_size=3, id2label={0: "x", 1: "y"}, extra={"k": [1]})
    config.to_json_file(tmp_path / "config.json")
    assert ViltConfig.from_json_file(tmp_path / "config.json") == config
    assert ViltConfig.from_pretrained(tmp_path) == config


# ----------------------------------------------------------------------------- transformers' config conventions


@pytest.mark.reference
def test_unknown_keywords_are_kept_as_attributes_and_saved(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """As transformers' configs: ``ViltConfig(is_decoder=False)`` works, the key is an attribute and is saved."""
    transformers = pytest.importorskip("transformers")
    ours = ViltConfig(is_decoder=False, custom={"nested": [1]})
    reference = transformers.ViltConfig(is_decoder=False, custom={"nested": [1]})
    assert ours.is_decoder is reference.is_decoder is False
    assert ours.custom == reference.custom == {"nested": [1]}
    assert ours.extra == {"is_decoder": False, "custom": {"nested": [1]}}
    ours.use_cache = False  # a tool setting a key after the fact
    assert ours.use_cache is False and ours.to_dict()["use_cache"] is False
    with pytest.raises(AttributeError):
        _ = ours.not_a_setting
    ours.save_pretrained(tmp_path)
    assert ViltConfig.from_pretrained(tmp_path).is_decoder is False
    assert transformers.ViltConfig.from_pretrained(tmp_path).custom == {"nested": [1]}
    del ours.use_cache
    assert "use_cache" not in ours.to_dict()


@pytest.mark.reference
def test_setting_num_labels_rebuilds_the_label_maps() -> None:
    transformers = pytest.importorskip("transformers")
    for config in (ViltConfig(num_labels=5), transformers.ViltConfig(num_labels=5)):
        assert len(config.id2label) == len(config.label2id) == 5
        config.num_labels = 3
        assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
        assert config.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
        assert config.num_labels == 3
    named = ViltConfig(id2label={0: "no", 1: "yes"})
    named.num_labels = 2  # the same count keeps the names
    assert named.id2label == {0: "no", 1: "yes"}
    with pytest.raises(ValueError, match="num_labels must be >= 1"):
        named.num_labels = 0


@pytest.mark.reference
def test_heads_dividing_the_hidden_size_is_checked_when_a_model_is_built() -> None:
    """As in transformers, a config may pass through a state the model refuses (edited one field at a time)."""
    transformers = pytest.importorskip("transformers")
    assert transformers.ViltConfig(hidden_size=100, num_attention_heads=12).hidden_size == 100
    config = tiny_config(hidden_size=30, num_attention_heads=4)
    with pytest.raises(
        ValueError, match=r"hidden_size \(30\) must be divisible by num_attention_heads \(4\)"
    ):
        MODEL_CLASSES["ViltModel"](config)
    config.hidden_size = 32
    assert MODEL_CLASSES["ViltModel"](config).config.hidden_size == 32


@pytest.mark.reference
def test_transformers_common_settings_are_kept_as_transformers_keeps_them() -> None:
    """The settings every transformers config takes: the same values come back from both libraries."""
    transformers = pytest.importorskip("transformers")
    common = {
        "return_dict": False,
        "output_hidden_states": True,
        "output_attentions": True,
        "dtype": "float16",
        "chunk_size_feed_forward": 5,
        "architectures": ["BertModel"],
        "id2label": {0: "label"},
        "label2id": {"label": "0"},
        "problem_type": "regression",
    }
    ours, reference = ViltConfig(**common), transformers.ViltConfig(**common)
    for key in common:
        assert getattr(ours, key) == getattr(reference, key), key
    assert ours.dtype is torch.float16 and ours.torch_dtype is torch.float16
    assert ours.num_labels == reference.num_labels == 1
    assert ours.get_text_config() is ours and ours.sub_configs == {}
    assert ours.to_dict()["torch_dtype"] == "float16"  # the key both transformers v4 and v5 read
    with pytest.raises(ValueError, match="problem_type"):
        ViltConfig(problem_type="ranking")


@pytest.mark.reference
def test_to_diff_dict_leaves_out_what_transformers_leaves_out() -> None:
    transformers = pytest.importorskip("transformers")
    for kwargs in ({}, {"num_labels": 3, "output_attentions": True, "is_decoder": False}):
        ours = ViltConfig(**kwargs).to_diff_dict()
        reference = json.loads(
            json.dumps(transformers.ViltConfig(**kwargs).to_diff_dict())
        )  # id2label keys as text
        reference.pop("transformers_version")
        if "id2label" in reference:  # the reference writes label2id only when it was passed
            reference.setdefault("label2id", ours["label2id"])
        assert ours.pop("tie_word_embeddings") is False and reference.pop("tie_word_embeddings") is True
        assert ours == reference
    config = ViltConfig(is_decoder=False)
    assert ViltConfig(**config.to_diff_dict()) == config  # a diff dict builds the config back


def test_iterating_a_config_gives_its_setting_names() -> None:
    config = ViltConfig(use_cache=False)
    names = list(config)
    assert "initializer_range" in names and names[-1] == "use_cache" and "extra" not in names
    assert all(hasattr(config, name) for name in names)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "field_named"),
    [
        ({"image_size": "384"}, "image_size"),
        ({"image_size": [384, 384]}, "image_size"),
        ({"image_size": 384.0}, "image_size"),
        ({"image_size": 100, "patch_size": 32}, "image_size"),
        ({"max_image_length": None}, "max_image_length"),
        ({"max_image_length": 0}, "max_image_length"),
    ],
)
def test_invalid_fields_raise_a_value_error_naming_the_field(changes: dict, field_named: str) -> None:
    with pytest.raises(ValueError, match=field_named):
        ViltConfig(**changes)


def test_nlvr2_head_needs_num_images() -> None:
    with pytest.raises(ValueError, match="num_images"):
        ViltForImagesAndTextClassification(tiny_config(num_images=-1))
    with pytest.raises(ValueError, match="modality_type_vocab_size"):
        ViltForImagesAndTextClassification(tiny_config(num_images=2))


def test_a_config_of_another_model_type_is_refused() -> None:
    with pytest.raises(ValueError, match="model_type=.bert."):
        ViltConfig.from_dict({"model_type": "bert", "hidden_size": 768})


def test_a_config_file_that_is_not_json_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ViltConfig.from_json_file(path)


@pytest.mark.parametrize(
    ("changes", "field_named"),
    [
        ({"num_hidden_layers": True}, r"num_hidden_layers must be an integer, got True \(bool\)"),
        ({"num_hidden_layers": 12.0}, r"num_hidden_layers must be an integer, got 12\.0 \(float\)"),
        ({"vocab_size": "30522"}, r"vocab_size must be an integer"),
        ({"num_attention_heads": 0}, r"num_attention_heads must be >= 1"),
        ({"modality_type_vocab_size": 1}, r"modality_type_vocab_size must be >= 2"),
        ({"num_images": 0}, r"num_images must be -1 or > 0"),
        ({"layer_norm_eps": "1e-12"}, r"layer_norm_eps must be a number"),
        ({"layer_norm_eps": 0.0}, r"layer_norm_eps must be above 0"),
        ({"hidden_dropout_prob": 1.5}, r"hidden_dropout_prob must be a number in \[0\.0, 1\.0\]"),
        ({"attention_probs_dropout_prob": float("nan")}, r"attention_probs_dropout_prob"),
        ({"qkv_bias": 1}, r"qkv_bias must be true or false"),
        ({"return_dict": "yes"}, r"return_dict must be true or false"),
        ({"pad_token_id": 99, "vocab_size": 99}, r"pad_token_id \(99\) must be a token id below vocab_size"),
        ({"pad_token_id": 1.0}, r"pad_token_id must be an integer"),
        ({"id2label": ["no", "yes"]}, r"id2label must be a non-empty .* mapping, got list"),
        ({"id2label": {"0": "no", "2": "yes"}}, r"id2label must number its classes 0\.\.1"),
        ({"id2label": {"zero": "no"}}, r"id2label must map class indices to names"),
        ({"label2id": {"no": "zero"}}, r"label2id must map names to class indices"),
        ({"architectures": "ViltForMaskedLM"}, r"architectures must be a list of class names"),
        ({"hidden_act": "tanh"}, r"hidden_act 'tanh' is not supported"),
    ],
)
def test_types_and_ranges_are_checked_naming_the_field(changes: dict, field_named: str) -> None:
    """Values that JSON allows but a model cannot use: a bool is not a count, a string not a number."""
    from vilt.errors import ViltInputError

    with pytest.raises(ViltInputError, match=field_named):
        ViltConfig.from_dict({**ViltConfig().to_dict(), "id2label": None, "label2id": None, **changes})


@pytest.mark.parametrize(
    ("changes", "fields_named"),
    [
        ({"num_hidden_layers": 100000}, "num_hidden_layers"),
        ({"hidden_size": 1_000_000, "num_attention_heads": 1}, "hidden_size"),
        ({"vocab_size": 10**10}, "vocab_size"),
        ({"image_size": 10**7, "patch_size": 1}, "image_size and patch_size"),
        ({"num_labels": 10**12}, "num_labels"),
        ({"num_images": 10**6, "modality_type_vocab_size": 10**6 + 1}, "num_images"),
    ],
)
def test_a_model_larger_than_the_machine_is_refused_at_once(
    changes: dict, fields_named: str, monkeypatch
) -> None:

    from vilt import configuration
    from vilt.errors import ViltInputError

    monkeypatch.setattr(configuration, "machine_memory", lambda: 64 * 2**30)  # the same on every machine
    with pytest.raises(
        ViltInputError, match=rf"more than this machine's memory \(64 GiB\); check .*{fields_named}"
    ):
        ViltConfig(**changes)


def test_the_parameter_estimate_bounds_every_head() -> None:
    """An upper bound of every class's parameters, close to the largest one's (ViLT-B/32: within 2%).
    The models are built on the meta device: their parameters are counted, never allocated."""
    tiny = tiny_config(NLVR2, **MODEL_TESTS)
    for config, margin in ((tiny, 1.2), (ViltConfig(num_images=2, modality_type_vocab_size=3), 1.02)):
        estimate = sum(config.parameter_estimate().values())
        with torch.device("meta"):
            largest = max(sum(p.numel() for p in cls(config).parameters()) for cls in MODEL_CLASSES.values())
        assert largest <= estimate < margin * largest
