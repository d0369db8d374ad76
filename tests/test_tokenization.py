"""ViltTokenizer: identical outputs to transformers.BertTokenizerFast with the same vocabulary."""

from __future__ import annotations

import inspect
import json
import pickle
import shutil
from importlib import resources

import numpy as np
import pytest
import torch

from vilt import ViltTokenizer
from vilt.errors import ViltInputError

VOCAB_FILE = resources.files("vilt") / "data" / "vocab.txt"

SPECIAL_TEXTS = [
    "How many cats are there?",
    "",
    "   ",
    "Héllo Wörld! Ça va? naïve façade Ångström",
    "東京タワーは何色ですか? 你好世界 한국어",
    "what is 🐱 doing 👍🏽 here 🇫🇷?",
    "a bunch of [MASK] laying on a [MASK].",
    "[mask] [CLS] [SEP]x [PAD]",
    "tabs\tand\nnewlines\r\nand\u00a0non-breaking\u200bzero-width\x00control",
    "Punctuation!!! ...,;:'\"()[]{}<>@#$%^&*-_=+/\\|`~",
    "don't won't it's y'all",
    "supercalifragilisticexpialidocious" * 4,  # longer than 100 characters: one [UNK]
    "ALL CAPS and MiXeD cAsE",
    "numbers 3.14159 1,000,000 2nd 42",
]
LONG_TEXT = " ".join(["what color is the shape on the left of the big picture"] * 10)


@pytest.fixture(scope="module")
def reference():
    """``BertTokenizerFast`` on the bundled vocabulary with ViLT's 40-token limit.

    transformers 5 takes the vocabulary as ``vocab=`` and silently ignores ``vocab_file=``, building a
    5-token vocabulary; transformers 4 takes ``vocab_file=``. The size check guards against that.
    """
    transformers = pytest.importorskip("transformers")
    parameters = inspect.signature(transformers.BertTokenizerFast.__init__).parameters
    vocab_argument = "vocab" if "vocab" in parameters else "vocab_file"
    tokenizer = transformers.BertTokenizerFast(**{vocab_argument: str(VOCAB_FILE)}, model_max_length=40)
    assert tokenizer.vocab_size == 30522
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return ViltTokenizer()


def assert_same_encoding(ours, expected) -> None:
    """Same keys in the same order, and per key the same type, shape, dtype and values."""
    assert list(ours.keys()) == list(expected.keys())
    for key, expected_value in expected.items():
        value = ours[key]
        assert type(value) is type(expected_value), key
        if isinstance(expected_value, (np.ndarray, torch.Tensor)):
            assert value.dtype == expected_value.dtype, key
            assert value.shape == expected_value.shape, key
            assert (value == expected_value).all(), key
        else:
            assert value == expected_value, key


# -- parity --------------------------------------------------------------------------------------------


@pytest.mark.reference
def test_all_easy_vqa_questions(reference, tokenizer):
    easy_vqa = pytest.importorskip("easy_vqa")
    questions = easy_vqa.get_train_questions()[0] + easy_vqa.get_test_questions()[0]
    # Each text is tokenised on its own, so the distinct questions (about a hundred of the ~48,000)
    # cover them all; padding then makes one batch of them.
    distinct = sorted(set(questions))
    assert len(questions) > 40000 and len(distinct) > 50
    assert_same_encoding(tokenizer(distinct), reference(distinct))
    assert_same_encoding(
        tokenizer(distinct, padding=True, return_tensors="np"),
        reference(distinct, padding=True, return_tensors="np"),
    )


@pytest.mark.reference
@pytest.mark.parametrize("text", SPECIAL_TEXTS)
def test_special_texts(reference, tokenizer, text):
    for kwargs in ({}, {"return_offsets_mapping": True, "return_special_tokens_mask": True}):
        assert_same_encoding(tokenizer(text, **kwargs), reference(text, **kwargs))
    assert tokenizer.tokenize(text) == reference.tokenize(text)


@pytest.mark.reference
def test_special_texts_as_a_batch(reference, tokenizer):
    for kwargs in ({}, {"padding": True, "return_tensors": "pt"}):
        assert_same_encoding(tokenizer(SPECIAL_TEXTS, **kwargs), reference(SPECIAL_TEXTS, **kwargs))


@pytest.mark.reference
@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # no truncation: more than 40 tokens, like the reference
        {"truncation": True},
        {"truncation": "longest_first", "max_length": 12},
        {"max_length": 9},  # max_length alone truncates
        {"padding": "max_length", "truncation": True},
        {"padding": "max_length", "truncation": True, "max_length": 16, "pad_to_multiple_of": 8},
        {"padding": True, "truncation": True, "return_tensors": "np"},
    ],
)
def test_over_long_text(reference, tokenizer, kwargs):
    for text in (LONG_TEXT, [LONG_TEXT, "short", LONG_TEXT[:90]]):
        assert_same_encoding(tokenizer(text, **kwargs), reference(text, **kwargs))


@pytest.mark.reference
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"padding": True},
        {"truncation": "only_first", "max_length": 30},
        {"truncation": "only_second", "max_length": 30},
        {"truncation": True, "max_length": 20, "padding": "max_length"},
        {"return_offsets_mapping": True, "return_length": True},
    ],
)
def test_pairs(reference, tokenizer, kwargs):
    first = [LONG_TEXT, "what is the color?", "Ça va " + LONG_TEXT]
    second = ["a circle", LONG_TEXT, "très bien"]
    if kwargs.get("truncation") == "only_second":  # the second texts must be the long ones
        first, second = [text[:30] for text in second], first
    elif kwargs.get("truncation") == "only_first":
        first, second = first, [text[:30] for text in second]
    assert_same_encoding(tokenizer(first, second, **kwargs), reference(first, second, **kwargs))
    assert_same_encoding(tokenizer(first[0], second[0], **kwargs), reference(first[0], second[0], **kwargs))
    as_tuples = list(zip(first, second))
    assert_same_encoding(tokenizer(as_tuples, **kwargs), reference(as_tuples, **kwargs))


@pytest.mark.reference
def test_impossible_truncation_fails_like_the_reference(reference, tokenizer):
    kwargs = {"truncation": "only_first", "max_length": 20}
    with pytest.raises(Exception, match="too short") as expected:
        reference("short", LONG_TEXT, **kwargs)
    with pytest.raises(type(expected.value), match="too short"):
        tokenizer("short", LONG_TEXT, **kwargs)


@pytest.mark.reference
def test_an_empty_text_pair_is_ignored_like_the_reference(reference, tokenizer):
    assert_same_encoding(tokenizer("hello", ""), reference("hello", ""))
    assert tokenizer.tokenize("hello", "world", add_special_tokens=True) == reference.tokenize(
        "hello", "world", add_special_tokens=True
    )


PADDING_AND_RETURN_OPTIONS = [
    {"padding": False},
    {"padding": "do_not_pad"},
    {"padding": True},
    {"padding": "longest"},
    {"padding": "max_length"},
    {"padding": "max_length", "max_length": 25},
    {"padding": True, "pad_to_multiple_of": 8},
    {"padding": "max_length", "max_length": 19, "pad_to_multiple_of": 4},
    {"padding": True, "return_token_type_ids": False, "return_attention_mask": False},
    {"padding": True, "return_token_type_ids": True, "return_attention_mask": True},
    {
        "padding": True,
        "return_special_tokens_mask": True,
        "return_offsets_mapping": True,
        "return_length": True,
    },
    {"padding": True, "add_special_tokens": False},
    {"padding": True, "return_tensors": "np", "return_length": True, "return_offsets_mapping": True},
    {"padding": True, "return_tensors": "pt", "return_special_tokens_mask": True},
    {"padding": "max_length", "truncation": True, "max_length": 8, "return_tensors": "pt"},
]


@pytest.mark.reference
@pytest.mark.parametrize("kwargs", PADDING_AND_RETURN_OPTIONS, ids=str)
def test_padding_and_return_options(reference, tokenizer, kwargs):
    batch = ["Is the circle blue?", "what shape is in the image", "no"]
    assert_same_encoding(tokenizer(batch, **kwargs), reference(batch, **kwargs))
    assert_same_encoding(tokenizer(batch[0], **kwargs), reference(batch[0], **kwargs))


@pytest.mark.reference
def test_same_errors_as_the_reference(reference, tokenizer):
    kwargs = {"padding": True, "truncation": True, "max_length": 10, "pad_to_multiple_of": 4}
    with pytest.raises(ValueError, match="multiple of pad_to_multiple_of"):
        reference("hello", **kwargs)
    with pytest.raises(ValueError, match="multiple of pad_to_multiple_of"):
        tokenizer("hello", **kwargs)
    with pytest.raises(ValueError):
        reference(["a", "a b c"], return_tensors="pt")
    with pytest.raises(ValueError, match="padding=True"):
        tokenizer(["a", "a b c"], return_tensors="pt")


@pytest.mark.reference
def test_vocabulary_special_tokens_and_decoding(reference, tokenizer):
    for name in ("pad", "unk", "cls", "sep", "mask"):
        assert getattr(tokenizer, f"{name}_token") == getattr(reference, f"{name}_token")
        assert getattr(tokenizer, f"{name}_token_id") == getattr(reference, f"{name}_token_id")
    assert tokenizer.vocab_size == reference.vocab_size and len(tokenizer) == len(reference)
    assert tokenizer.get_vocab() == reference.get_vocab()
    assert sorted(tokenizer.all_special_ids) == sorted(reference.all_special_ids)
    encoded = reference(SPECIAL_TEXTS, padding=True)["input_ids"]
    for skip in (False, True):
        assert tokenizer.batch_decode(encoded, skip_special_tokens=skip) == reference.batch_decode(
            encoded, skip_special_tokens=skip
        )
        assert tokenizer.decode(torch.tensor(encoded[3]), skip_special_tokens=skip) == reference.decode(
            encoded[3], skip_special_tokens=skip
        )
        assert tokenizer.convert_ids_to_tokens(encoded[6], skip_special_tokens=skip) == (
            reference.convert_ids_to_tokens(encoded[6], skip_special_tokens=skip)
        )
    tokens = reference.tokenize(SPECIAL_TEXTS[3]) + ["not-a-token"]
    assert tokenizer.convert_tokens_to_ids(tokens) == reference.convert_tokens_to_ids(tokens)
    assert tokenizer.convert_tokens_to_ids("[MASK]") == reference.convert_tokens_to_ids("[MASK]")
    assert tokenizer.convert_ids_to_tokens(2000) == reference.convert_ids_to_tokens(2000)
    assert tokenizer.decode(2000) == reference.decode(2000)


# -- behaviour without the reference ---------------------------------------------------------------------


def test_special_token_ids_are_the_vocabulary_lines(tokenizer):
    lines = VOCAB_FILE.read_text(encoding="utf-8").split("\n")
    for name in ("pad", "unk", "cls", "sep", "mask"):
        assert lines[getattr(tokenizer, f"{name}_token_id")] == getattr(tokenizer, f"{name}_token")
    assert tokenizer.model_max_length == 40
    assert tokenizer.vocab_size == len(lines) - 1  # the file ends with a newline


def test_a_special_token_outside_the_vocabulary_has_the_unk_id_as_in_the_reference():
    tokenizer = ViltTokenizer()
    tokenizer.pad_token = "not-a-token"
    assert tokenizer.pad_token_id == tokenizer.unk_token_id
    assert tokenizer("hi", padding="max_length", max_length=6)["input_ids"][-1] == tokenizer.unk_token_id


def test_an_id_outside_the_vocabulary_raises(tokenizer):
    for bad in (len(tokenizer), -1):
        with pytest.raises(ViltInputError, match="outside the vocabulary"):
            tokenizer.convert_ids_to_tokens([5, bad])


def test_truncation_defaults_to_model_max_length(tokenizer):
    assert len(tokenizer(LONG_TEXT)["input_ids"]) > 40
    assert len(tokenizer(LONG_TEXT, truncation=True)["input_ids"]) == 40
    length = len(tokenizer("hi")["input_ids"])
    assert tokenizer("hi", padding="max_length")["attention_mask"].count(0) == 40 - length


def test_bad_arguments_raise():
    tokenizer = ViltTokenizer()
    for bad in ({"padding": "everything"}, {"truncation": "sometimes"}, {"return_tensors": "tf"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            tokenizer("hello", **bad)
    for text in (None, 3, [1, 2], []):
        with pytest.raises(ValueError):
            tokenizer(text)
    with pytest.raises(ValueError, match="same length"):
        tokenizer(["a", "b"], ["c"])


def test_save_and_load_round_trip(tmp_path, tokenizer):
    custom = ViltTokenizer(model_max_length=24)
    custom(LONG_TEXT, padding="max_length", truncation=True)  # leaves padding/truncation set on the backend
    written = custom.save_pretrained(tmp_path)
    assert sorted(p.split("/")[-1] for p in written) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["padding"] is None and saved["truncation"] is None
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8") == VOCAB_FILE.read_text(encoding="utf-8")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer" and config["model_max_length"] == 24
    only_vocab, only_json = tmp_path / "only-vocab", tmp_path / "only-json"
    only_vocab.mkdir()
    only_json.mkdir()
    shutil.copy(tmp_path / "vocab.txt", only_vocab)
    shutil.copy(tmp_path / "tokenizer.json", only_json)
    for directory, max_length in ((tmp_path, 24), (only_vocab, 40), (only_json, 40)):
        loaded = ViltTokenizer.from_pretrained(directory, revision="main")
        assert loaded.model_max_length == max_length
        for text in (SPECIAL_TEXTS, LONG_TEXT):
            assert_same_encoding(
                loaded(text, truncation=True), custom(text, truncation=True, max_length=max_length)
            )
    assert ViltTokenizer.from_pretrained(only_vocab, model_max_length=12).model_max_length == 12
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        ViltTokenizer.from_pretrained(tmp_path / "empty", local_files_only=True)
    restored = pickle.loads(pickle.dumps(custom))
    assert_same_encoding(restored(SPECIAL_TEXTS, padding=True), custom(SPECIAL_TEXTS, padding=True))


@pytest.mark.reference
def test_transformers_loads_what_we_save_and_we_load_what_it_saves(tmp_path, reference, tokenizer):
    transformers = pytest.importorskip("transformers")
    tokenizer.save_pretrained(tmp_path / "ours")
    for loaded in (
        transformers.AutoTokenizer.from_pretrained(tmp_path / "ours"),
        transformers.BertTokenizerFast.from_pretrained(tmp_path / "ours"),
    ):
        assert loaded.model_max_length == 40 and loaded.vocab_size == 30522
        for kwargs in ({}, {"padding": "max_length", "truncation": True}):
            assert_same_encoding(tokenizer(SPECIAL_TEXTS, **kwargs), loaded(SPECIAL_TEXTS, **kwargs))
    reference.save_pretrained(tmp_path / "reference")
    loaded = ViltTokenizer.from_pretrained(tmp_path / "reference")
    assert loaded.model_max_length == 40
    assert_same_encoding(loaded(SPECIAL_TEXTS, padding=True), reference(SPECIAL_TEXTS, padding=True))
