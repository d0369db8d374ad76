"""ViltImageProcessor: parity with the reference PIL path, input types, PIL modes, bad input, configs."""

from __future__ import annotations

import base64
import glob
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vilt import ViltFeatureExtractor, ViltImageProcessor
from vilt.errors import ViltInputError
from vilt.image_processing import BatchFeature, get_resize_output_image_size
from vilt.images import ImageTooLargeError


def sample_photographs() -> list[str]:
    """scikit-image's sample images and matplotlib's grace_hopper.jpg (none if either is missing)."""
    try:
        import matplotlib
        import skimage
    except ImportError:
        return []
    files = [os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")]
    for pattern in ("*.png", "*.jpg", "*.jpeg"):
        files += sorted(glob.glob(os.path.join(skimage.data_dir, pattern)))
    return files


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def reference():
    """The reference's PIL path: ViltImageProcessorPil in transformers 5, ViltImageProcessor in 4."""
    transformers = pytest.importorskip("transformers")
    reference_class = getattr(transformers, "ViltImageProcessorPil", None) or transformers.ViltImageProcessor
    return reference_class()


def assert_identical(ours: dict, expected: dict, what: str = "") -> None:
    """0 difference: PIL's integer resize, then elementwise float32 steps with no reductions, so no
    thread count, alignment or kernel choice can change a bit."""
    assert np.array_equal(np.asarray(ours["pixel_values"]), np.asarray(expected["pixel_values"])), what
    assert np.array_equal(np.asarray(ours["pixel_mask"]), np.asarray(expected["pixel_mask"])), what


def assert_same_pixels(ours: dict, expected: dict) -> None:
    values, expected_values = np.asarray(ours["pixel_values"]), np.asarray(expected["pixel_values"])
    assert values.shape == expected_values.shape
    assert values.dtype == expected_values.dtype == np.float32
    assert np.abs(values - expected_values).max() <= 1e-6
    assert np.array_equal(np.asarray(ours["pixel_mask"]), np.asarray(expected["pixel_mask"]))
    assert np.asarray(ours["pixel_mask"]).dtype == np.int64


# -- parity with the reference ---------------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("path", sample_photographs(), ids=os.path.basename)
def test_sample_photograph_matches_reference(reference, path):
    assert_identical(ViltImageProcessor()(path, return_tensors="np"), reference(path, return_tensors="np"))


@pytest.mark.reference
def test_random_sizes_match_reference(reference):
    rng = np.random.default_rng(1234)
    sizes = [(1, 1), (2, 3), (4000, 250), (3000, 4000)]
    while len(sizes) < 10:  # log-uniform sides from 1 to 4000 px, aspect ratios the reference survives
        height, width = (int(side) for side in np.exp(rng.uniform(0, np.log(4000), 2)))
        if max(height, width) <= 15 * min(height, width):
            sizes.append((height, width))
    for index, (height, width) in enumerate(sizes):
        image = random_image(height, width, seed=index)
        if index % 2:  # grayscale: ours resizes one channel, the reference three equal ones
            image = image.convert("L")
        expected = reference(image.convert("RGB"), return_tensors="np")
        assert_same_pixels(ViltImageProcessor()(image, return_tensors="np"), expected)


@pytest.mark.reference
@pytest.mark.parametrize("ratio", range(1, 16))
def test_aspect_ratios_up_to_1_to_15_match_reference(reference, ratio):
    for height, width in ((40, 40 * ratio + 3), (40 * ratio + 3, 40)):
        image = random_image(height, width, seed=ratio)
        assert_same_pixels(
            ViltImageProcessor()(image, return_tensors="np"), reference(image, return_tensors="np")
        )


@pytest.mark.reference
def test_padded_batch_of_mixed_sizes_matches_reference(reference):
    images = [
        random_image(h, w, seed=h) for h, w in ((480, 640), (640, 480), (300, 301), (1000, 200), (37, 90))
    ]
    images += [Image.open(path) for path in sample_photographs()[:1]]
    expected = reference(images, return_tensors="pt")
    ours = ViltImageProcessor()(images, return_tensors="pt")
    assert isinstance(ours["pixel_values"], torch.Tensor)
    assert_same_pixels({k: v.numpy() for k, v in ours.items()}, {k: v.numpy() for k, v in expected.items()})
    # Without return_tensors both return one padded array per image.
    expected_lists, our_lists = reference(images), ViltImageProcessor()(images)
    assert len(our_lists["pixel_values"]) == len(expected_lists["pixel_values"]) == len(images)
    for key in ("pixel_values", "pixel_mask"):
        for ours_item, expected_item in zip(our_lists[key], expected_lists[key]):
            assert isinstance(ours_item, np.ndarray)
            assert np.abs(ours_item - expected_item).max() <= 1e-6


@pytest.mark.reference
def test_settings_per_call_and_without_padding_match_reference(reference):
    images = [random_image(300, 500, seed=1), random_image(640, 200, seed=2)]
    settings = {
        "size": {"shortest_edge": 224},
        "size_divisor": 16,
        "image_mean": [0.4, 0.5, 0.6],
        "image_std": [0.2, 0.3, 0.25],
    }
    expected = reference(images, return_tensors="np", **settings)
    assert_same_pixels(ViltImageProcessor()(images, return_tensors="np", **settings), expected)
    expected = reference(images, do_pad=False)
    ours = ViltImageProcessor(do_pad=False)(images)
    assert "pixel_mask" not in ours and "pixel_mask" not in expected
    for ours_item, expected_item in zip(ours["pixel_values"], expected["pixel_values"]):
        assert ours_item.shape == expected_item.shape
        assert np.abs(ours_item - expected_item).max() <= 1e-6


@pytest.mark.reference
def test_float_array_and_tensor_without_rescaling_match_reference(reference):
    pixels = np.random.default_rng(5).random((90, 120, 3))
    inputs = {
        "float64 array": pixels,
        "float32 array": pixels.astype(np.float32),
        "float32 CHW tensor": torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32)),
    }
    for kind, image in inputs.items():
        expected = reference(image, do_rescale=False, return_tensors="np")
        ours = ViltImageProcessor()(image, do_rescale=False, return_tensors="np")
        assert_identical(ours, expected, kind)
        assert ours["pixel_values"].min() >= -1 and ours["pixel_values"].max() <= 1, kind


@pytest.mark.reference
@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.bool_])
def test_integer_and_boolean_arrays_match_reference(reference, dtype):
    pixels = np.random.default_rng(4).integers(0, 256, (50, 70, 3)).astype(dtype)  # booleans: levels 0 and 1
    for do_rescale in (True, False):
        expected = reference(pixels, do_rescale=do_rescale, return_tensors="np")
        assert_identical(ViltImageProcessor()(pixels, do_rescale=do_rescale, return_tensors="np"), expected)


@pytest.mark.reference
def test_float_images_are_not_rescaled_twice(reference):
    # The reference rescales a float image in [0, 1] twice when do_rescale is on (values near -1); here
    # do_rescale does not apply to it again, which is the reference's output without do_rescale.
    pixels = np.random.default_rng(6).random((90, 120, 3)).astype(np.float32)
    expected = reference(pixels, do_rescale=False, return_tensors="np")
    assert_identical(ViltImageProcessor()(pixels, return_tensors="np"), expected)


@pytest.mark.reference
def test_extreme_aspect_ratio_keeps_one_patch_where_the_reference_crashes(reference):
    image = random_image(37, 1200)
    with pytest.raises(ValueError):
        reference(image)
    ours = ViltImageProcessor()(image, return_tensors="np")
    assert ours["pixel_values"].shape == (1, 3, 32, 608)
    assert ours["pixel_mask"].all()
    assert get_resize_output_image_size(1200, 37) == (608, 32)


def most_frequent_index(palette: Image.Image) -> int:
    """The palette index most pixels use: made transparent, it changes the picture the most."""
    return int(np.bincount(np.asarray(palette).ravel()).argmax())


def rotated_jpeg(path: Path) -> Path:
    """A JPEG stored 90 wide and 60 high, with EXIF orientation 6 (shown upright: 60 wide, 90 high)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    random_image(60, 90, seed=8).save(path, exif=exif)
    return path


def picture_files(folder: Path) -> dict[str, Path]:
    """One file per kind the reference loads with convert("RGB"), each as Pillow writes it."""
    rgba = np.random.default_rng(9).integers(0, 256, (60, 90, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rgba[..., 3] > 128, rgba[..., 3], 0)  # partly or fully transparent
    rgb = Image.fromarray(rgba[..., :3])
    palette = rgb.convert("P")
    palette.info["transparency"] = most_frequent_index(palette)
    images = {
        "RGBA.png": Image.fromarray(rgba),
        "I;16.png": Image.fromarray(np.random.default_rng(10).integers(0, 65536, (60, 90), dtype=np.uint16)),
        "P.png": palette,
        "CMYK.jpg": rgb.convert("CMYK"),
        "L.png": rgb.convert("L"),
        "LA.png": Image.fromarray(rgba).convert("LA"),
    }
    for name, image in images.items():
        image.save(folder / name)
    return {name: folder / name for name in images}


@pytest.mark.reference
def test_exif_rotated_jpeg_path_is_turned_upright_as_in_the_reference(reference, tmp_path):
    path = rotated_jpeg(tmp_path / "rotated.jpg")
    ours, expected = (
        ViltImageProcessor()(path, return_tensors="np"),
        reference(str(path), return_tensors="np"),
    )
    assert ours["pixel_values"].shape == (1, 3, 576, 384)  # upright: taller than wide
    assert_identical(ours, expected)


@pytest.mark.reference
def test_exif_rotated_pil_object_is_not_turned_as_in_the_reference(reference, tmp_path):
    path = rotated_jpeg(tmp_path / "rotated.jpg")
    ours = ViltImageProcessor()(Image.open(path), return_tensors="np")
    assert ours["pixel_values"].shape == (1, 3, 384, 576)  # as stored: wider than tall
    assert_identical(ours, reference(Image.open(path), return_tensors="np"))


@pytest.mark.reference
@pytest.mark.parametrize("name", ["RGBA.png", "I;16.png", "P.png", "CMYK.jpg", "L.png", "LA.png"])
def test_file_of_every_mode_matches_reference(reference, tmp_path, name):
    path = picture_files(tmp_path)[name]
    assert Image.open(path).mode == Path(name).stem
    ours, expected = (
        ViltImageProcessor()(str(path), return_tensors="np"),
        reference(str(path), return_tensors="np"),
    )
    assert_identical(ours, expected)
    # The reference fails on these modes as PIL objects; ours converts them as load_image converts the file.
    assert_identical(ViltImageProcessor()(Image.open(path), return_tensors="np"), expected)


# -- inputs ------------------------------------------------------------------------------------------------


def test_every_input_type_gives_identical_output(tmp_path):
    image = random_image(200, 150, seed=3)
    pixels = np.asarray(image)
    path = tmp_path / "image.png"
    image.save(path)
    processor = ViltImageProcessor()
    expected = processor(image, return_tensors="np")
    inputs = {
        "numpy HWC": pixels,
        "numpy CHW": pixels.transpose(2, 0, 1).copy(),
        "torch CHW": torch.from_numpy(pixels.transpose(2, 0, 1).copy()),
        "torch HWC": torch.from_numpy(pixels.copy()),
        "float64 in [0, 1]": pixels / 255.0,
        "float32 whole numbers": pixels.astype(np.float32),
        "path str": str(path),
        "pathlib.Path": path,
        "bytes": path.read_bytes(),
        "bytearray": bytearray(path.read_bytes()),
        "base64": base64.b64encode(path.read_bytes()).decode("ascii"),
        "data URL": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii"),
    }
    for name, item in inputs.items():
        ours = processor(item, return_tensors="np")
        assert np.array_equal(ours["pixel_values"], expected["pixel_values"]), name
        assert np.array_equal(ours["pixel_mask"], expected["pixel_mask"]), name
    explicit = processor(
        pixels.transpose(2, 0, 1).copy(), input_data_format="channels_first", return_tensors="np"
    )
    assert np.array_equal(explicit["pixel_values"], expected["pixel_values"])
    batch = processor(np.stack([pixels, pixels]), return_tensors="np")  # a 4-d array is a batch
    assert batch["pixel_values"].shape == (2, *expected["pixel_values"].shape[1:])


def test_same_lazy_image_twice_in_a_batch(tmp_path):
    random_image(120, 160).save(tmp_path / "a.jpg")
    lazy = Image.open(tmp_path / "a.jpg")
    ours = ViltImageProcessor()([lazy, lazy], return_tensors="np")
    single = ViltImageProcessor()(Image.open(tmp_path / "a.jpg"), return_tensors="np")
    assert np.array_equal(ours["pixel_values"][0], single["pixel_values"][0])
    assert np.array_equal(ours["pixel_values"][1], single["pixel_values"][0])


def test_channels_last_output_is_the_transposed_channels_first_output():
    images = [random_image(100, 180, seed=1), random_image(90, 90, seed=2)]
    first = ViltImageProcessor()(images, return_tensors="np")
    last = ViltImageProcessor()(images, return_tensors="np", data_format="channels_last")
    assert np.array_equal(last["pixel_values"], first["pixel_values"].transpose(0, 2, 3, 1))
    assert np.array_equal(last["pixel_mask"], first["pixel_mask"])


def pil_images_by_mode() -> dict[str, Image.Image]:
    """A PIL image in every mode the reference fails on."""
    rgba = Image.fromarray(np.random.default_rng(11).integers(0, 256, (30, 40, 4), dtype=np.uint8))
    rgb = rgba.convert("RGB")
    sixteen = np.random.default_rng(7).integers(0, 65536, (30, 40), dtype=np.uint16)
    transparent_palette = rgb.convert("P")
    transparent_palette.info["transparency"] = most_frequent_index(transparent_palette)
    return {
        **{mode: rgba.convert(mode) for mode in ("RGBA", "LA", "PA", "L", "1")},
        **{mode: rgb.convert(mode) for mode in ("P", "CMYK", "YCbCr")},
        "P with transparency": transparent_palette,
        "I;16": Image.fromarray(sixteen),
        "I": Image.fromarray(sixteen.astype(np.int32) - 1000),
        "F": Image.fromarray(np.random.default_rng(12).random((30, 40)).astype(np.float32) * 300 - 10),
    }


@pytest.mark.parametrize("mode", list(pil_images_by_mode()))
def test_pil_image_of_any_mode_is_converted_as_convert_rgb_converts_it(mode):
    image = pil_images_by_mode()[mode]
    assert image.mode == mode.split(" ")[0]
    processor = ViltImageProcessor()
    assert_identical(
        processor(image, return_tensors="np"), processor(image.convert("RGB"), return_tensors="np")
    )


def test_alpha_is_dropped_gray_arrays_repeat_and_16_bit_arrays_scale():
    rgba = np.random.default_rng(1).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    processor = ViltImageProcessor()
    assert_identical(processor(rgba, return_tensors="np"), processor(rgba[..., :3], return_tensors="np"))
    gray = np.random.default_rng(2).integers(0, 256, (50, 70), dtype=np.uint8)
    for array in (gray, gray[:, :, None], gray[None]):
        assert_identical(
            processor(array, return_tensors="np"),
            processor(np.repeat(gray[:, :, None], 3, 2), return_tensors="np"),
        )
    sixteen = np.random.default_rng(3).integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    rounded = np.floor(sixteen / 257 + 0.5).astype(np.uint8)  # round(v / 257), halves up
    assert_identical(processor(sixteen, return_tensors="np"), processor(rounded, return_tensors="np"))


# -- bad input -------------------------------------------------------------------------------------------


def write(directory: Path, name: str, data: bytes) -> Path:
    (directory / name).write_bytes(data)
    return directory / name


def with_value(shape: tuple[int, ...], index: tuple[int, ...], value: float) -> np.ndarray:
    array = np.random.default_rng(0).random(shape)
    array[index] = value
    return array


PHOTO = random_image(64, 64)
# Each bad input (built in a temporary directory) and a pattern its error message must match.
BAD_INPUTS = {
    "truncated JPEG file": (
        lambda tmp: str(write(tmp, "cut.jpg", encode(PHOTO, "JPEG")[:-800])),
        r"cut\.jpg.*truncated or corrupt",
    ),
    "truncated PNG file": (
        lambda tmp: write(tmp, "cut.png", encode(PHOTO, "PNG")[:2000]),
        r"cut\.png.*truncated or corrupt",
    ),
    "zero-byte file": (lambda tmp: str(write(tmp, "empty.jpg", b"")), r"empty\.jpg.*empty \(0 bytes\)"),
    "file that is no image": (
        lambda tmp: str(write(tmp, "notes.jpg", b"not an image")),
        r"notes\.jpg.*not an image",
    ),
    "bytes that are no image": (lambda tmp: b"GIF89a but not really", r"not an image"),
    "empty bytes": (lambda tmp: b"", r"empty \(0 bytes\)"),
    "0-width array": (lambda tmp: np.zeros((10, 0, 3), dtype=np.uint8), r"empty"),
    "0-height CHW array": (lambda tmp: np.zeros((3, 0, 10), dtype=np.uint8), r"empty"),
    "NaN": (lambda tmp: with_value((20, 20, 3), (3, 4, 1), np.nan), r"NaN or infinite"),
    "inf": (lambda tmp: with_value((20, 20, 3), (0, 0, 0), np.inf), r"NaN or infinite"),
    "floats outside [0, 1]": (lambda tmp: np.full((8, 8, 3), 2.5), r"\[0, 1\]"),
    "negative integers": (lambda tmp: np.full((8, 8, 3), -1, dtype=np.int32), r"8-bit.*16-bit"),
    "2 channels": (lambda tmp: np.zeros((20, 20, 2), dtype=np.uint8), r"1, 3 or 4 channels"),
    "5 channels": (lambda tmp: np.zeros((20, 20, 5), dtype=np.uint8), r"1, 3 or 4 channels"),
    "5 channels first": (lambda tmp: np.zeros((5, 20, 20), dtype=np.uint8), r"1, 3 or 4 channels"),
    "1-d array": (lambda tmp: np.zeros(30, dtype=np.uint8), r"shape"),
    "5-d array": (lambda tmp: np.zeros((1, 1, 3, 8, 8), dtype=np.uint8), r"shape"),
    "complex array": (lambda tmp: np.zeros((8, 8, 3), dtype=np.complex64), r"dtype"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_a_helpful_value_error(tmp_path, case):
    build, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        ViltImageProcessor()(build(tmp_path))


def test_wrong_channel_count_with_declared_layout():
    with pytest.raises(ValueError, match="2 channels"):
        ViltImageProcessor()(np.zeros((3, 20, 2), dtype=np.uint8), input_data_format="channels_last")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns, vilt refuses
@pytest.mark.parametrize(
    "pixels", [40 * 40, 100 * 100], ids=["over the warning limit", "over the error limit"]
)
def test_decompression_bomb_raises_a_value_error(tmp_path, monkeypatch, pixels):
    side = int(pixels**0.5)
    path = tmp_path / "big.png"
    random_image(side, side).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for source in (str(path), path.read_bytes()):
        with pytest.raises(ImageTooLargeError, match=r"decompression-bomb limit.*MAX_IMAGE_PIXELS"):
            ViltImageProcessor()(source)


def test_other_wrong_inputs():
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        ViltImageProcessor()("missing.jpg")
    with pytest.raises(TypeError, match="int"):
        ViltImageProcessor()(42)
    with pytest.raises(TypeError, match=r"batch item 1\) is a dict"):
        ViltImageProcessor()([random_image(20, 20), {}])
    with pytest.raises(ValueError, match="empty list"):
        ViltImageProcessor()([])
    image = random_image(20, 20)
    with pytest.raises(ValueError, match="same number"):
        ViltImageProcessor()([[image, image], [image]])
    with pytest.raises(ValueError, match="return_tensors"):
        ViltImageProcessor()(image, return_tensors="tf")
    with pytest.raises(ValueError, match="do_pad=True"):
        ViltImageProcessor(do_pad=False)([random_image(20, 20), random_image(20, 40)], return_tensors="np")


# -- configuration -----------------------------------------------------------------------------------------


def test_defaults_are_those_of_the_reference():
    processor = ViltImageProcessor()
    assert processor.size == {"shortest_edge": 384}
    assert processor.size_divisor == 32
    assert processor.resample == Image.Resampling.BICUBIC
    assert processor.rescale_factor == 1 / 255
    assert processor.image_mean == processor.image_std == (0.5, 0.5, 0.5)
    assert processor.do_resize and processor.do_rescale and processor.do_normalize and processor.do_pad
    assert ViltImageProcessor(size=42).size == {"shortest_edge": 42}


def test_feature_extractor_is_a_deprecated_alias():
    with pytest.warns(FutureWarning, match="ViltImageProcessor"):
        extractor = ViltFeatureExtractor(size_divisor=16)
    assert isinstance(extractor, ViltImageProcessor)
    assert extractor == ViltImageProcessor(size_divisor=16)


def test_save_and_load_round_trip(tmp_path):
    processor = ViltImageProcessor(size=224, size_divisor=16, image_mean=[0.1, 0.2, 0.3], do_pad=False)
    (path,) = processor.save_pretrained(tmp_path)
    saved = json.loads(open(path).read())
    assert saved["image_processor_type"] == "ViltImageProcessor"
    assert saved["size"] == {"shortest_edge": 224}
    assert ViltImageProcessor.from_pretrained(tmp_path) == processor
    assert ViltImageProcessor.from_dict(processor.to_dict()) == processor
    assert ViltImageProcessor.from_pretrained(tmp_path, size_divisor=8).size_divisor == 8
    assert pickle.loads(pickle.dumps(processor)) == processor


def test_legacy_configs_load(tmp_path):
    legacy = {
        "feature_extractor_type": "ViltFeatureExtractor",
        "size": 384,
        "size_divisor": 32,
        "resample": 3,
        "pad_and_return_pixel_mask": False,
        "an_unknown_key": 1,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    loaded = ViltImageProcessor.from_pretrained(tmp_path, revision="main", local_files_only=True)
    assert loaded == ViltImageProcessor(do_pad=False)
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a Hugging Face hub id"):
        ViltImageProcessor.from_pretrained(tmp_path / "nothing-here")
    (tmp_path / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ViltImageProcessor.from_pretrained(tmp_path)


@pytest.mark.reference
def test_reference_reads_our_saved_config(reference, tmp_path):
    processor = ViltImageProcessor(size=300, size_divisor=16, image_std=[0.2, 0.3, 0.4], do_normalize=False)
    processor.save_pretrained(tmp_path)
    loaded = type(reference).from_pretrained(tmp_path)

    def as_json(config: dict) -> dict:  # the reference keeps image_mean and image_std as tuples
        return json.loads(json.dumps(config))

    assert as_json(loaded.to_dict()) == as_json(processor.to_dict())
    assert as_json(ViltImageProcessor().to_dict()) == as_json(reference.to_dict())


@pytest.mark.reference
def test_to_dict_has_the_reference_types_and_json_files_round_trip(reference, tmp_path):
    """Tuples for the channel statistics, a ``Resampling`` member for the filter, as the reference gives them."""
    assert ViltImageProcessor().to_dict() == reference.to_dict()
    assert type(ViltImageProcessor().to_dict()["resample"]) is type(reference.to_dict()["resample"])
    custom = {"size": 42, "resample": 2, "image_mean": [0.1, 0.2, 0.3], "do_convert_rgb": True}
    assert ViltImageProcessor(**custom).to_dict() == type(reference)(**custom).to_dict()
    processor = ViltImageProcessor(**custom)
    processor.to_json_file(tmp_path / "image_processor.json")
    assert ViltImageProcessor.from_json_file(tmp_path / "image_processor.json") == processor
    assert ViltImageProcessor.from_dict(processor.to_dict(), do_convert_rgb=False).do_convert_rgb is False
    assert (
        "do_convert_rgb" not in ViltImageProcessor().to_dict()
    )  # unset: left out, as the reference leaves it
    with pytest.raises(ViltInputError, match="resample"):
        ViltImageProcessor(resample=42)


def test_a_switch_set_to_none_is_off_and_saved_as_none(tmp_path):
    """As transformers keeps an explicit None: in to_dict, through a save and a load, and it means off."""
    assert ViltImageProcessor.do_resize is True and ViltImageProcessor.size_divisor == 32  # class defaults
    processor = ViltImageProcessor(do_resize=None)
    assert processor.to_dict()["do_resize"] is None
    processor.save_pretrained(tmp_path)
    assert ViltImageProcessor.from_pretrained(tmp_path).do_resize is None
    image = random_image(40, 50)
    assert processor(image, return_tensors="np")["pixel_values"].shape == (1, 3, 40, 50)  # not resized
    assert processor(image, do_resize=True, return_tensors="np")["pixel_values"].shape[2] == 384


@pytest.mark.reference
@pytest.mark.parametrize("channels", [3, 4])
def test_do_convert_rgb_false_keeps_the_channels_as_the_reference(reference, channels):
    rng = np.random.default_rng(channels)
    images = [rng.integers(0, 256, (h, w, channels), dtype=np.uint8) for h, w in ((40, 50), (70, 33))]
    options = {
        "do_convert_rgb": False,
        "input_data_format": "channels_last",
        "image_mean": [0.1 * c for c in range(channels)],
        "image_std": [0.5 + 0.1 * c for c in range(channels)],
        "return_tensors": "np",
    }
    ours = ViltImageProcessor()(images, **options)
    assert ours["pixel_values"].shape[:2] == (2, channels)
    assert_identical(ours, reference(images, **options), f"{channels} channels")
    # converted (the default), the same images become RGB
    assert (
        ViltImageProcessor()(images, return_tensors="np", input_data_format="channels_last")[
            "pixel_values"
        ].shape[1]
        == 3
    )


def test_do_convert_rgb_false_needs_one_statistic_per_channel_and_one_channel_count():
    rgba = np.zeros((40, 50, 4), dtype=np.uint8)
    with pytest.raises(ViltInputError, match="4 channel\\(s\\) but image_mean has 3 value"):
        ViltImageProcessor(do_convert_rgb=False)(rgba, input_data_format="channels_last")
    with pytest.raises(ViltInputError, match="same number of channels, got \\[3, 4\\]"):
        ViltImageProcessor(do_convert_rgb=False, do_normalize=False)(
            [rgba, np.zeros((40, 50, 3), dtype=np.uint8)], input_data_format="channels_last"
        )
    with pytest.raises(ViltInputError, match="5 channels"):
        ViltImageProcessor(do_convert_rgb=False)(
            np.zeros((40, 50, 5), dtype=np.uint8), input_data_format="channels_last"
        )


def test_batch_feature_attribute_access_and_to():
    batch = ViltImageProcessor()(random_image(40, 50), return_tensors="pt")
    assert isinstance(batch, BatchFeature)
    assert batch.pixel_values is batch["pixel_values"]
    with pytest.raises(AttributeError):
        getattr(batch, "no_such_key")  # noqa: B009
    batch.to(torch.float16)
    assert batch.pixel_values.dtype == torch.float16 and batch.pixel_mask.dtype == torch.int64
    batch.to("cpu", dtype=torch.float32)
    assert batch.pixel_values.dtype == torch.float32 and batch.pixel_mask.dtype == torch.int64
