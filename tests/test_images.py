"""vilt.images: the one loader (paths, URLs, base64, bytes, PIL), header sizes, the guarded decoder."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_images import garbage_exif_jpeg, png_header, progressive_jpeg_bomb
from PIL import Image

from vilt import ViltImageProcessor
from vilt.errors import ViltInputError
from vilt.images import (
    ImageTooLargeError,
    image_size,
    load_image,
    load_pipeline_image,
    load_pixels,
    open_image,
    open_untrusted_image,
    to_rgb,
)

HEIGHT, WIDTH = 60, 90  # the stored size of the test pictures; EXIF orientation 6 shows them 90 x 60


def picture(mode: str = "RGB", seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    """A JPEG stored 60 x 90 with EXIF orientation 6: shown upright, it is 90 high and 60 wide."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(picture(), "JPEG", exif=exif)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of test images: a rotated JPEG, an RGBA PNG, and a truncated PNG."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "rotated.jpg").write_bytes(rotated_jpeg())
    (folder / "rgba.png").write_bytes(encode(picture("RGBA"), "PNG"))
    (folder / "cut.png").write_bytes(encode(picture(), "PNG")[:3000])
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(files: Path) -> Iterator[str]:
    """An http.server on 127.0.0.1 serving ``files``; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(files))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()


def pixels_of(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# -- load_image: every input kind ---------------------------------------------------------------------


def test_every_input_kind_loads_the_same_upright_rgb_pixels(files: Path, server: str) -> None:
    path = files / "rotated.jpg"
    expected = pixels_of(Image.open(path).transpose(Image.Transpose.ROTATE_270).convert("RGB"))
    assert expected.shape == (WIDTH, HEIGHT, 3)
    text = base64.b64encode(path.read_bytes()).decode("ascii")
    inputs = {
        "str path": str(path),
        "pathlib.Path": path,
        "URL": f"{server}/rotated.jpg",
        "base64": text,
        "base64 with line breaks": "\n".join(text[i : i + 76] for i in range(0, len(text), 76)),
        "data URL": f"data:image/jpeg;base64,{text}",
        "bytes": path.read_bytes(),
        "bytearray": bytearray(path.read_bytes()),
        "PIL object": Image.open(path),
    }
    for kind, image in inputs.items():
        assert np.array_equal(pixels_of(load_image(image)), expected), kind


@pytest.mark.reference
def test_load_image_equals_transformers_load_image(files: Path, server: str) -> None:
    reference = pytest.importorskip("transformers.image_utils").load_image
    for name in ("rotated.jpg", "rgba.png"):
        path = files / name
        text = base64.b64encode(path.read_bytes()).decode("ascii")
        for image in (str(path), f"{server}/{name}", text, f"data:image/png;base64,{text}", Image.open(path)):
            theirs = reference(image)
            ours = load_image(image)
            assert ours.mode == theirs.mode == "RGB"
            assert np.array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.reference
def test_processor_loads_urls_and_base64_as_the_reference_processor(files: Path, server: str) -> None:
    transformers = pytest.importorskip("transformers")
    reference, ours = transformers.ViltImageProcessorPil(), ViltImageProcessor()
    text = base64.b64encode((files / "rgba.png").read_bytes()).decode("ascii")
    for image in (f"{server}/rotated.jpg", f"{server}/rgba.png", text, f"data:image/png;base64,{text}"):
        expected, found = reference(image, return_tensors="np"), ours(image, return_tensors="np")
        for key in ("pixel_values", "pixel_mask"):  # 0 difference (see test_image_processing)
            assert np.array_equal(found[key], expected[key]), key


def test_alpha_is_dropped_not_composited(files: Path) -> None:
    rgba = Image.open(files / "rgba.png")
    assert rgba.mode == "RGBA" and np.asarray(rgba)[..., 3].min() < 255
    assert np.array_equal(pixels_of(load_image(files / "rgba.png")), np.asarray(rgba)[..., :3])


def test_a_given_image_is_not_modified_and_an_upright_rgb_one_is_returned_itself(files: Path) -> None:
    rotated = Image.open(files / "rotated.jpg")
    loaded = load_image(rotated)
    assert rotated.size == (WIDTH, HEIGHT) and loaded.size == (HEIGHT, WIDTH)
    assert rotated.getexif()[0x0112] == 6
    upright = picture()
    assert load_image(upright) is upright
    gray = picture("L")
    assert load_image(gray).mode == "RGB" and gray.mode == "L"


def test_load_pipeline_image_passes_arrays_and_turns_pil_objects_upright(files: Path) -> None:
    array, tensor = np.zeros((4, 5, 3), np.uint8), torch.zeros(3, 4, 5)
    assert load_pipeline_image(array) is array and load_pipeline_image(tensor) is tensor
    assert load_pipeline_image(Image.open(files / "rotated.jpg")).size == (HEIGHT, WIDTH)


# -- load_image: errors -------------------------------------------------------------------------------


def test_unreachable_url_fails_fast_naming_the_url_and_the_timeout() -> None:
    """A refused connection is reported as such at once (not as a timeout after waiting for one)."""
    with pytest.raises(
        ViltInputError,
        match=r"'http://127\.0\.0\.1:9/x\.png' could not be fetched \(ConnectError.*timeout 300",
    ):
        load_image("http://127.0.0.1:9/x.png", timeout=300)


def test_silent_server_times_out() -> None:
    with socket.socket() as listener:  # accepts connections into its backlog, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.png"
        with pytest.raises(ViltInputError, match=r"did not answer within the timeout of 0\.3 s"):
            load_image(url, timeout=0.3)


def test_http_error_and_non_image_url(server: str) -> None:
    with pytest.raises(ViltInputError, match=r"missing\.png' answered HTTP 404"):
        load_image(f"{server}/missing.png")
    with pytest.raises(ViltInputError, match=r"is not an image Pillow can read"):
        load_image(f"{server}/")  # the directory listing, an HTML page


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        ("no/such/file.jpg", FileNotFoundError, r"'no/such/file\.jpg': no such file"),
        (Path("no/such/file.jpg"), FileNotFoundError, r"no such file"),
        (
            "c2VjcmV0",
            ViltInputError,
            r"'c2VjcmV0' is no file, no http\(s\) URL, and, read as base64, no image",
        ),
        ("data:image/png,abc", ViltInputError, r"without ';base64,'"),
        ("data:image/png;base64,@@@", ViltInputError, r"not base64"),
        (b"", ViltInputError, r"empty \(0 bytes\)"),
        (b"GIF89a but not really", ViltInputError, r"not an image Pillow can read"),
        (np.zeros((4, 4, 3), np.uint8), TypeError, r"ndarray"),
        (42, TypeError, r"int"),
    ],
    ids=lambda value: repr(value)[:30],
)
def test_bad_inputs_raise_clear_errors(image: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        load_image(image)


def test_bad_files_raise_clear_errors(files: Path, tmp_path: Path) -> None:
    with pytest.raises(ViltInputError, match=r"cut\.png' could not be decoded.*truncated or corrupt"):
        load_image(files / "cut.png")
    with pytest.raises(ViltInputError, match="not a file"):
        load_image(str(tmp_path))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ViltInputError, match=r"empty\.png' is empty"):
        load_image(tmp_path / "empty.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns, vilt refuses
def test_more_pixels_than_pillow_allows_is_too_large(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the pictures hold 5400: above Pillow's error limit
    with pytest.raises(
        ImageTooLargeError, match=r"decompression-bomb limit of 1000 pixels.*MAX_IMAGE_PIXELS"
    ):
        load_image(files / "rgba.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # ... and here above its warning limit only
    with pytest.raises(ImageTooLargeError, match=r"90x60 = 5400 pixels"):
        load_image(files / "rgba.png")


# -- image_size ---------------------------------------------------------------------------------------


def test_image_size_of_every_input_kind_is_the_loaded_size(files: Path) -> None:
    path = files / "rotated.jpg"
    text = base64.b64encode(path.read_bytes()).decode("ascii")
    upright = (WIDTH, HEIGHT)  # (height, width) once turned by the EXIF orientation
    data_url = f"data:image/jpeg;base64,{text}"
    for image in (str(path), path, path.read_bytes(), text, data_url, Image.open(path)):
        assert image_size(image) == upright == load_image(image).size[::-1]
    assert image_size(files / "rgba.png") == (HEIGHT, WIDTH)
    exif = Image.Exif()
    exif[0x0112] = 8
    for image_format in ("PNG", "WEBP", "TIFF"):  # Pillow turns a TIFF upright itself, size included
        data = encode(picture(), image_format, exif=exif)
        assert image_size(data) == upright == load_image(data).size[::-1], image_format
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    arrays = {
        "HWC": pixels,
        "CHW": pixels.transpose(2, 0, 1),
        "HW": pixels[..., 0],
        "torch CHW": torch.zeros(3, HEIGHT, WIDTH),
        "torch HWC": torch.zeros(HEIGHT, WIDTH, 4),
    }
    for kind, array in arrays.items():
        assert image_size(array) == (HEIGHT, WIDTH), kind
    assert image_size(np.zeros((3, 50, 3)), input_data_format="channels_last") == (3, 50)


def test_image_size_reads_only_the_header(files: Path) -> None:
    assert image_size(files / "cut.png") == (HEIGHT, WIDTH)  # load_image would find it truncated
    assert image_size(png_header(5000, 4000)) == (4000, 5000)  # no pixel data at all


def test_image_size_refuses_urls_and_bad_arrays() -> None:
    with pytest.raises(ViltInputError, match="fetch it with load_image"):
        image_size("https://example.com/cat.png")
    with pytest.raises(ViltInputError, match=r"1, 3 or 4 channels"):
        image_size(np.zeros((5, 6, 7)))
    with pytest.raises(ViltInputError, match=r"empty"):
        image_size(np.zeros((3, 0, 6)))
    with pytest.raises(ViltInputError, match=r"shape"):
        image_size(np.zeros(6))


# -- open_untrusted_image ------------------------------------------------------------------------------


def load_untrusted_image(data: object, max_pixels: int, name: str = "image") -> Image.Image:
    """What the server does with an upload: the header checks, then the decode as load_image does it."""
    return to_rgb(load_pixels(open_untrusted_image(data, max_pixels, name=name)))  # type: ignore[arg-type]


def test_untrusted_image_loads_like_load_image(files: Path) -> None:
    data = (files / "rotated.jpg").read_bytes()
    expected = pixels_of(load_image(data))
    assert np.array_equal(pixels_of(load_untrusted_image(data, max_pixels=HEIGHT * WIDTH)), expected)
    text = base64.b64encode(data).decode("ascii")
    for encoded in (text, f"data:image/jpeg;base64,{text}"):
        assert np.array_equal(pixels_of(load_untrusted_image(encoded, max_pixels=10**6)), expected)


@pytest.mark.parametrize("image_format", ["EPS", "PPM", "ICO"])
def test_untrusted_image_refuses_formats_outside_the_allow_list(image_format: str) -> None:
    data = encode(picture(), image_format)
    assert open_image(data).format == image_format  # Pillow opens it; the allow-list refuses it
    with pytest.raises(
        ViltInputError, match=r"not an image this reader accepts.*PNG, JPEG, GIF, BMP, WEBP, TIFF"
    ):
        load_untrusted_image(data, max_pixels=10**6, name="'image'")


def test_untrusted_image_refuses_too_many_pixels_from_the_header() -> None:
    with pytest.raises(ImageTooLargeError, match=r"'images\[1\]' is 90x60 = 5400 pixels; the limit is 5399"):
        load_untrusted_image(encode(picture(), "PNG"), max_pixels=5399, name="'images[1]'")
    with pytest.raises(ImageTooLargeError, match="pixels"):  # no pixel data at all: refused from the header
        load_untrusted_image(png_header(100_000, 100_000), max_pixels=4096 * 4096)


def test_untrusted_image_refuses_empty_truncated_and_paths(files: Path) -> None:
    with pytest.raises(ViltInputError, match=r"empty \(0 bytes\)"):
        load_untrusted_image(b"", max_pixels=10**6)
    with pytest.raises(ViltInputError, match="truncated or corrupt") as caught:
        load_untrusted_image((files / "cut.png").read_bytes(), max_pixels=10**6)
    assert not isinstance(caught.value, ImageTooLargeError)
    with pytest.raises(ViltInputError, match="not base64"):  # a path is text, never a file to open
        load_untrusted_image(str(files / "rgba.png"), max_pixels=10**6)
    with pytest.raises(TypeError):
        load_untrusted_image(Image.open(files / "rgba.png"), max_pixels=10**6)


def test_open_image_reads_the_header_only(files: Path) -> None:
    opened = open_image(files / "cut.png")  # truncated: decoding would fail
    assert opened.size == (WIDTH, HEIGHT)
    opened.close()


def test_import_is_light() -> None:
    code = "import sys, vilt.images; print(sorted({'torch', 'httpx'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------
# Untrusted images decoded in steps


@pytest.mark.parametrize(
    "kind", ["baseline JPEG", "progressive JPEG", "PNG", "RGBA PNG", "GIF", "BMP", "TIFF", "WEBP"]
)
def test_decoding_in_steps_gives_the_same_pixels(kind: str) -> None:
    """Reading an upload a piece at a time (a scan at a time for a JPEG), with a step before each read,
    decodes exactly what Pillow decodes from the whole file."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    pixels[::7] = 255  # some structure, so that every format compresses something
    image = Image.fromarray(pixels)
    options = {"progressive": True} if kind == "progressive JPEG" else {}
    if kind == "RGBA PNG":
        image = image.convert("RGBA")
    data = encode(image, kind.split()[-1], **options)
    steps = []
    stepped = open_untrusted_image(data, 10**8, step=lambda: steps.append(1))
    stepped.load()
    reference = Image.open(io.BytesIO(data))
    reference.load()
    np.testing.assert_array_equal(np.asarray(stepped), np.asarray(reference))
    assert steps


def test_a_progressive_jpeg_is_read_a_scan_at_a_time_and_a_step_can_stop_it() -> None:
    bomb = progressive_jpeg_bomb(256, 200)
    steps = []
    image = open_untrusted_image(bomb, 10**8, step=lambda: steps.append(1))
    image.load()
    assert len(steps) > 200  # at least one read per scan
    steps.clear()
    stopped = open_untrusted_image(bomb, 10**8, step=lambda: _stop_after(steps, 50))
    with pytest.raises(_Stop):  # whatever a step raises reaches the caller as it is
        stopped.load()
    assert len(steps) == 51


class _Stop(Exception):
    pass


def _stop_after(steps: list, count: int) -> None:
    steps.append(1)
    if len(steps) > count:
        raise _Stop


@pytest.mark.reference
def test_a_jpeg_with_noise_for_exif_loads_as_in_transformers() -> None:
    """transformers' load_image ignores an EXIF block that is not even a TIFF header; so does ours."""
    image_utils = pytest.importorskip("transformers.image_utils")
    data = garbage_exif_jpeg()
    expected = image_utils.load_image(base64.b64encode(data).decode())
    loaded = load_image(data)
    assert loaded.size == expected.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(expected))
