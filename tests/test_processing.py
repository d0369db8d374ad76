"""ViltProcessor: parity with transformers.ViltProcessor, saving and loading, NLVR2 pairs, long text."""

from __future__ import annotations

import inspect
import json
import shutil
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

from vilt import ViltImageProcessor, ViltProcessor, ViltTokenizer

VOCAB_FILE = resources.files("vilt") / "data" / "vocab.txt"
LONG_TEXT = " ".join(["is there a red triangle next to the blue circle"] * 6)


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


IMAGES = [random_image(480, 640, 1), random_image(300, 200, 2), random_image(384, 384, 3)]
TEXTS = ["How many cats are there?", "what shape is this", "Is the circle blue?"]


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def reference(transformers):
    """The reference processor: its PIL image processor and BertTokenizerFast on the same vocabulary."""
    image_processor_class = (
        getattr(transformers, "ViltImageProcessorPil", None) or transformers.ViltImageProcessor
    )
    parameters = inspect.signature(transformers.BertTokenizerFast.__init__).parameters
    vocab_argument = "vocab" if "vocab" in parameters else "vocab_file"  # v5 ignores vocab_file=
    tokenizer = transformers.BertTokenizerFast(**{vocab_argument: str(VOCAB_FILE)}, model_max_length=40)
    assert tokenizer.vocab_size == 30522
    return transformers.ViltProcessor(image_processor=image_processor_class(), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def processor():
    return ViltProcessor()


def assert_same_outputs(ours, expected) -> None:
    """Same keys in the same order; ids and masks identical, pixel_values within 1e-6."""
    assert list(ours.keys()) == list(expected.keys())
    for key, expected_value in expected.items():
        value = ours[key]
        assert type(value) is type(expected_value), key
        if isinstance(expected_value, list) and expected_value and isinstance(expected_value[0], np.ndarray):
            value, expected_value = np.stack(value), np.stack(expected_value)
        if isinstance(expected_value, (np.ndarray, torch.Tensor)):
            assert value.dtype == expected_value.dtype and value.shape == expected_value.shape, key
            tolerance = 1e-6 if key == "pixel_values" else 0
            assert float(abs(value - expected_value).max()) <= tolerance, key
        else:
            assert value == expected_value, key


@pytest.mark.reference
@pytest.mark.parametrize("return_tensors", [None, "np", "pt"])
def test_single_image_and_text_match_the_reference(reference, processor, return_tensors):
    expected = reference(images=IMAGES[0], text=TEXTS[0], return_tensors=return_tensors)
    assert list(expected.keys()) == [
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "pixel_values",
        "pixel_mask",
    ]
    assert_same_outputs(processor(IMAGES[0], TEXTS[0], return_tensors=return_tensors), expected)


@pytest.mark.reference
@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": True},
        {"padding": "max_length", "truncation": True, "max_length": 40},
        {"padding": "max_length", "max_length": 76},  # padding past 40 is the caller's choice
        {"padding": "longest", "return_special_tokens_mask": True, "return_length": True},
    ],
    ids=str,
)
def test_batches_match_the_reference(reference, processor, kwargs):
    for return_tensors in ("pt", "np"):
        expected = reference(images=IMAGES, text=TEXTS, return_tensors=return_tensors, **kwargs)
        assert_same_outputs(
            processor(images=IMAGES, text=TEXTS, return_tensors=return_tensors, **kwargs), expected
        )


@pytest.mark.reference
def test_text_only_and_images_only_match_the_reference(reference, processor):
    assert_same_outputs(processor(text=TEXTS, padding=True), reference(text=TEXTS, padding=True))
    assert_same_outputs(processor(images=IMAGES), reference(images=IMAGES))


@pytest.mark.reference
def test_image_settings_are_routed_to_the_image_processor(reference, processor):
    kwargs = {"size": {"shortest_edge": 224}, "size_divisor": 16}
    expected = reference(images=IMAGES, text=TEXTS, padding=True, return_tensors="np", **kwargs)
    ours = processor(images=IMAGES, text=TEXTS, padding=True, return_tensors="np", **kwargs)
    assert_same_outputs(ours, expected)
    assert (
        ours["pixel_values"].shape[-1]
        == ViltImageProcessor(**kwargs)(IMAGES, return_tensors="np")["pixel_values"].shape[-1]
    )


def test_nlvr2_pairs_keep_their_layout(processor):
    pairs = [[IMAGES[0], IMAGES[1]], [IMAGES[2], IMAGES[0]]]
    texts = ["The left image has more red.", "Both images are noisy."]
    outputs = processor(images=pairs, text=texts, padding=True, return_tensors="pt")
    flat = processor.image_processor([image for pair in pairs for image in pair], return_tensors="pt")
    height, width = flat["pixel_values"].shape[-2:]
    assert outputs["pixel_values"].shape == (2, 2, 3, height, width)
    assert outputs["pixel_mask"].shape == (2, 2, height, width)
    assert torch.equal(outputs["pixel_values"].flatten(0, 1), flat["pixel_values"])
    assert torch.equal(outputs["pixel_mask"].flatten(0, 1), flat["pixel_mask"])
    assert outputs["input_ids"].shape[0] == 2
    assert len(processor(images=pairs)["pixel_values"]) == 2  # lists: one (2, 3, H, W) array per text


@pytest.mark.reference
def test_nlvr2_pairs_hold_the_reference_values(reference, processor):
    pairs = [[IMAGES[0], IMAGES[1]], [IMAGES[2], IMAGES[0]]]
    expected = reference(images=[image for pair in pairs for image in pair], return_tensors="np")
    ours = processor(images=pairs, return_tensors="np")
    for key in ("pixel_values", "pixel_mask"):
        assert np.abs(ours[key].reshape(expected[key].shape) - expected[key]).max() <= 1e-6


def test_over_long_text_without_truncation_raises(processor):
    with pytest.raises(ValueError, match=r"The text is \d+ tokens long.*at most 40.*truncation=True"):
        processor(IMAGES[0], LONG_TEXT)
    with pytest.raises(ValueError, match=r"Text 1 of the batch is \d+ tokens long"):
        processor(IMAGES[:2], ["short", LONG_TEXT], padding=True, truncation=False)
    truncated = processor(IMAGES[0], LONG_TEXT, truncation=True)
    assert len(truncated["input_ids"]) == 40
    assert (
        len(processor(IMAGES[0], LONG_TEXT, max_length=20)["input_ids"]) == 20
    )  # max_length alone truncates
    assert len(processor.tokenizer(LONG_TEXT)["input_ids"]) > 40  # the tokenizer itself stays reference-exact


@pytest.mark.reference
def test_over_long_text_with_truncation_matches_the_reference(reference, processor):
    kwargs = {"padding": "max_length", "truncation": True, "max_length": 40, "return_tensors": "pt"}
    expected = reference(images=IMAGES[:2], text=[LONG_TEXT, TEXTS[0]], **kwargs)
    assert_same_outputs(processor(images=IMAGES[:2], text=[LONG_TEXT, TEXTS[0]], **kwargs), expected)


def test_arguments_and_delegation(processor):
    with pytest.raises(ValueError, match="images, text"):
        processor()
    with pytest.raises(TypeError, match="not_an_argument"):
        processor(IMAGES[0], TEXTS[0], not_an_argument=1)
    ids = processor(text=TEXTS, padding=True, return_tensors="pt")["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == processor.tokenizer.batch_decode(
        ids, skip_special_tokens=True
    )
    assert processor.decode(ids[0]) == processor.tokenizer.decode(ids[0])
    assert processor.model_input_names == list(processor(IMAGES[0], TEXTS[0]).keys())
    assert isinstance(processor.tokenizer, ViltTokenizer) and isinstance(
        processor.image_processor, ViltImageProcessor
    )
    batch = processor(IMAGES[0], TEXTS[0], return_tensors="pt").to(torch.float64)
    assert batch.pixel_values.dtype == torch.float64 and batch.input_ids.dtype == torch.int64


def test_save_and_load_round_trip(tmp_path):
    processor = ViltProcessor(ViltImageProcessor(size=256), ViltTokenizer(model_max_length=30))
    written = processor.save_pretrained(tmp_path)
    assert sorted(path.split("/")[-1] for path in written) == [
        "preprocessor_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    loaded = ViltProcessor.from_pretrained(tmp_path, revision="main", cache_dir=None, local_files_only=True)
    assert loaded.image_processor == processor.image_processor
    assert loaded.tokenizer.model_max_length == 30
    assert_same_outputs(loaded(IMAGES, TEXTS, padding=True), processor(IMAGES, TEXTS, padding=True))
    assert (
        ViltProcessor.from_pretrained(tmp_path, size=128, model_max_length=12).tokenizer.model_max_length
        == 12
    )
    for kept in ("vocab.txt", "tokenizer.json"):  # one tokenizer file is enough
        directory = tmp_path / f"only-{kept}"
        directory.mkdir()
        shutil.copy(tmp_path / kept, directory)
        shutil.copy(tmp_path / "preprocessor_config.json", directory)
        assert_same_outputs(ViltProcessor.from_pretrained(directory)(IMAGES, TEXTS), processor(IMAGES, TEXTS))


@pytest.mark.reference
def test_transformers_loads_what_we_save(transformers, tmp_path, processor):
    processor.save_pretrained(tmp_path)
    loaded = transformers.ViltProcessor.from_pretrained(tmp_path)
    assert loaded.tokenizer.model_max_length == 40
    for kwargs in ({"return_tensors": "pt", "padding": True}, {}):
        assert_same_outputs(processor(IMAGES, TEXTS, **kwargs), loaded(images=IMAGES, text=TEXTS, **kwargs))


@pytest.mark.reference
def test_we_load_what_transformers_saves(reference, tmp_path):
    reference.save_pretrained(
        tmp_path
    )  # transformers 5 writes processor_config.json, not preprocessor_config.json
    loaded = ViltProcessor.from_pretrained(tmp_path)
    kwargs = {"padding": True, "return_tensors": "np"}
    assert_same_outputs(loaded(IMAGES, TEXTS, **kwargs), reference(images=IMAGES, text=TEXTS, **kwargs))
    saved = {path.name for path in tmp_path.iterdir()}
    if "preprocessor_config.json" not in saved:
        assert "image_processor" in json.loads((tmp_path / "processor_config.json").read_text())


def test_saved_configs_name_the_processor_class(tmp_path, processor):
    """As transformers writes them: what its AutoProcessor reads to open the folder as a ViltProcessor."""
    processor.save_pretrained(tmp_path)
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        assert json.loads((tmp_path / name).read_text())["processor_class"] == "ViltProcessor"
    assert ViltProcessor.from_pretrained(tmp_path).image_processor == processor.image_processor


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("preprocessor_config.json", "{not json", r"preprocessor_config\.json is not valid JSON"),
        ("preprocessor_config.json", '{"size": "big"}', r"preprocessor_config\.json: size must be"),
        ("preprocessor_config.json", '{"image_std": [0, 1, 1]}', r"preprocessor_config\.json: image_std"),
        ("tokenizer_config.json", "[1, 2]", r"tokenizer_config\.json must hold a JSON object"),
        ("special_tokens_map.json", "\xff\xfe", r"special_tokens_map\.json is not valid JSON"),
        ("tokenizer.json", '{"version": "1.0"}', r"tokenizer\.json is not a readable tokenizer\.json"),
    ],
)
def test_a_broken_saved_file_is_named(file, content, message, tmp_path, processor):
    from vilt.errors import ViltInputError

    processor.save_pretrained(tmp_path)
    (tmp_path / file).write_bytes(content.encode("latin-1"))
    with pytest.raises(ViltInputError, match=message):
        ViltProcessor.from_pretrained(tmp_path)
