"""What people pass to the pipelines: URLs, base64, EXIF-rotated photographs, long texts, bad input."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from tiny_models import BUNDLED, png_bytes, random_image, save_tiny

import vilt
from vilt.errors import ViltInputError

ARCHITECTURES = {
    "vqa": "ViltForQuestionAnswering",
    "retrieval": "ViltForImageAndTextRetrieval",
    "mlm": "ViltForMaskedLM",
}
LONG_QUESTION = "is the red circle " * 15 + "on the left?"  # 66 word pieces with [CLS] and [SEP]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    return {key: str(save_tiny(root / key, arch)) for key, arch in ARCHITECTURES.items()}


@functools.cache
def make(task: str, directory: str) -> vilt.pipelines.Pipeline:
    """A float32 CPU pipeline (cached: these tests use no per-pipeline state)."""
    return vilt.pipeline(task, model=directory, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24x40 PNG in a folder of its own (served over HTTP by :func:`served`)."""
    path = tmp_path_factory.mktemp("served") / "picture.png"
    Image.fromarray(random_image(24, 40, seed=7)).save(path)
    return path


@pytest.fixture
def served(picture: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving the picture's folder: (its base URL, the paths requested)."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(picture.parent), **kwargs)

        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args: Any) -> None:  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requested
    server.shutdown()
    server.server_close()


def assert_same_answers(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    # float32 on one thread pool either way; only the order of identical work could differ
    assert [a["answer"] for a in got] == [a["answer"] for a in want]
    np.testing.assert_allclose([a["score"] for a in got], [a["score"] for a in want], atol=1e-6)


# ----------------------------------------------------------------------------- URLs


def test_url_images_answer_like_the_file_and_are_fetched_once(
    dirs: dict[str, str], picture: Path, served: tuple[str, list[str]]
) -> None:
    base, requested = served
    url = f"{base}/{picture.name}"
    vqa = make("vqa", dirs["vqa"])
    want = vqa(str(picture), "what color is it?", top_k=3)
    assert_same_answers(vqa(url, "what color is it?", top_k=3), want)
    mixed = vqa([url, random_image(32, 32, seed=1), url], "what color is it?", top_k=3, batch_size=2)
    assert_same_answers(mixed[0], want)
    assert_same_answers(mixed[2], want)
    assert requested == [f"/{picture.name}"] * 3  # one download per URL input: sized and loaded from it

    rank = make("retrieval", dirs["retrieval"])
    texts = ["a red circle", "two squares"]
    np.testing.assert_allclose(
        rank(images=[url], texts=texts), rank(images=[str(picture)], texts=texts), atol=1e-6
    )


def test_a_missing_url_names_the_url_and_the_status(
    dirs: dict[str, str], served: tuple[str, list[str]]
) -> None:
    base, _ = served
    with pytest.raises(ViltInputError, match=rf"{base}/nothing.png.*\(item 1\).*HTTP 404"):
        make("vqa", dirs["vqa"])([random_image(32, 32, seed=1), f"{base}/nothing.png"], "what?")


def test_an_unreachable_url_fails_at_once_naming_it(dirs: dict[str, str], connections) -> None:
    with socket.socket() as probe:  # a port nothing listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/photo.jpg"
    with pytest.raises(ViltInputError, match=rf"image URL '{url}' could not be fetched .*refused"):
        make("vqa", dirs["vqa"])(url, "what?", timeout=30)
    assert connections == [("127.0.0.1", port)]  # refused once, not retried until the 30 s timeout


def test_a_silent_server_fails_after_the_timeout_of_the_call_or_the_pipeline(dirs: dict[str, str]) -> None:
    with socket.socket() as silent:  # accepts connections (in the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/photo.jpg"
        patient = vilt.pipeline("vqa", model=dirs["vqa"], device="cpu", dtype="float32", timeout=60)
        with pytest.raises(ViltInputError, match=r"did not answer within the timeout of 0.5 s"):
            patient(url, "what?", timeout=0.5)
        hasty = vilt.pipeline("vqa", model=dirs["vqa"], device="cpu", dtype="float32", timeout=0.5)
        with pytest.raises(ViltInputError, match=r"did not answer within the timeout of 0.5 s"):
            hasty(url, "what?")


# ----------------------------------------------------------------------------- other image forms


def test_base64_and_data_urls_answer_like_the_file(dirs: dict[str, str], picture: Path) -> None:
    vqa = make("vqa", dirs["vqa"])
    want = vqa(str(picture), "what shape?", top_k=2)
    encoded = base64.b64encode(picture.read_bytes()).decode("ascii")
    assert_same_answers(vqa(encoded, "what shape?", top_k=2), want)
    assert_same_answers(vqa(f"data:image/png;base64,{encoded}", "what shape?", top_k=2), want)


def test_pil_images_are_turned_upright_by_their_exif_unlike_the_processor(dirs: dict[str, str]) -> None:
    sideways = Image.fromarray(random_image(24, 40, seed=3))
    exif = sideways.getexif()
    exif[0x0112] = 6  # EXIF orientation: the camera was turned; show it rotated by 90 degrees
    buffer = io.BytesIO()
    sideways.save(buffer, format="PNG", exif=exif)
    photograph = Image.open(io.BytesIO(buffer.getvalue()))
    upright = ImageOps.exif_transpose(photograph)
    assert upright.size == (24, 40) and photograph.size == (40, 24)

    vqa = make("vqa", dirs["vqa"])
    assert_same_answers(vqa(photograph, "what?", top_k=5), vqa(upright, "what?", top_k=5))
    # the processor, as transformers' processor, takes a PIL image as it is: sideways
    as_is = vqa.processor.image_processor(photograph, return_tensors="pt")["pixel_values"]
    assert as_is.shape[-2:] == (32, 48) and vqa.processor.image_processor(upright)["pixel_values"][0].shape[
        -2:
    ] == (48, 32)


# ----------------------------------------------------------------------------- long texts


def test_a_long_text_is_cut_with_one_warning_per_pipeline(
    dirs: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    vqa = vilt.pipeline("vqa", model=dirs["vqa"], device="cpu", dtype="float32")
    length = len(vqa.processor.tokenizer(LONG_QUESTION)["input_ids"])
    assert length > 40
    image = random_image(32, 32, seed=0)
    with caplog.at_level(logging.WARNING, logger="vilt.pipelines"):
        answers = vqa([image, image], ["what?", LONG_QUESTION])
        vqa(image, LONG_QUESTION)
    warnings = [record for record in caplog.records if record.name.startswith("vilt.pipelines")]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"the question (item 1) is {length} tokens long" in message
    assert f"its last {length - 40} tokens were dropped" in message
    # the answer is the one to the question cut to 40 tokens
    cut = vqa.processor.tokenizer.decode(
        vqa.processor.tokenizer(LONG_QUESTION, truncation=True, max_length=40)["input_ids"],
        skip_special_tokens=True,
    )
    assert_same_answers(answers[1], vqa(image, cut))

    caplog.clear()
    rank = vilt.pipeline("retrieval", model=dirs["retrieval"], device="cpu", dtype="float32")
    with caplog.at_level(logging.WARNING, logger="vilt.pipelines"):
        rank(images=[image], texts=["a dog", LONG_QUESTION, LONG_QUESTION])
    [warning] = [record for record in caplog.records if record.name.startswith("vilt.pipelines")]
    assert (
        "text 1 is" in warning.getMessage()
        and "1 more text(s) of this call were cut too" in warning.getMessage()
    )


# ----------------------------------------------------------------------------- bad input

IMAGE = random_image(24, 40, seed=0)
NAN_IMAGE = np.full((24, 40, 3), np.nan, dtype=np.float32)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda vqa: vqa([], "what?"), "list of images is empty"),
        (lambda vqa: vqa([{"image": IMAGE, "question": "a?"}, IMAGE]), r"item 1 is a ndarray"),
        (lambda vqa: vqa([{"image": IMAGE}]), r"item 0 lacks the key\(s\) \['question'\]"),
        (lambda vqa: vqa(IMAGE), "pass both"),
        (lambda vqa: vqa(IMAGE, ["a?", "b?"]), "one image was given with a list of questions"),
        (lambda vqa: vqa([IMAGE, IMAGE], ["a?", "b?", "c?"]), "2 images but 3 questions"),
        (lambda vqa: vqa(IMAGE, 42), "the question must be a string, got int"),
        (lambda vqa: vqa([IMAGE, IMAGE], ["a?", None]), r"the question \(item 1\) must be a string"),
        (lambda vqa: vqa(IMAGE, "   "), "the question is empty"),
        (lambda vqa: vqa([IMAGE, IMAGE], ["a?", ""]), r"the question \(item 1\) is empty"),
        (lambda vqa: vqa([IMAGE, b"garbage"], "what?"), r"image bytes \(item 1\) is not an image"),
        (lambda vqa: vqa([IMAGE, 3.5], "what?"), r"image \(item 1\) is a float"),
        (lambda vqa: vqa([IMAGE, None], "what?"), r"image \(item 1\) is a NoneType"),
        (lambda vqa: vqa([IMAGE, NAN_IMAGE], "what?"), r"image \(item 1\) holds NaN"),
        (lambda vqa: vqa([IMAGE, torch.from_numpy(NAN_IMAGE)], "what?"), r"image \(item 1\) holds NaN"),
        (lambda vqa: vqa([IMAGE, np.zeros((2, 2, 2, 2))], "what?"), r"image \(item 1\) has shape"),
        (lambda vqa: vqa(IMAGE, "what?", top_k=0), "top_k must be a positive integer"),
        (lambda vqa: vqa(IMAGE, "what?", top_k=True), "top_k must be a positive integer"),
        (lambda vqa: vqa(IMAGE, "what?", top_k="3"), "top_k must be a positive integer"),
        (lambda vqa: vqa([IMAGE, IMAGE], "what?", batch_size=0), "batch_size must be a positive integer"),
        (lambda vqa: vqa(IMAGE, "what?", batch_size=2.0), "batch_size must be a positive integer"),
    ],
)
def test_bad_input_is_a_vilt_input_error_naming_the_item(dirs: dict[str, str], call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ViltInputError, match=match):
        call(make("vqa", dirs["vqa"]))


def test_a_missing_file_is_file_not_found_naming_it(dirs: dict[str, str]) -> None:
    with pytest.raises(FileNotFoundError, match=r"'/no/such/file.png' \(item 1\): no such file"):
        make("vqa", dirs["vqa"])([IMAGE, "/no/such/file.png"], "what?")


def test_bad_input_of_the_other_tasks(dirs: dict[str, str]) -> None:
    fill = make("fill-mask", dirs["mlm"])
    with pytest.raises(ViltInputError, match=r"the text \(item 1\) has no \[MASK\]"):
        fill([IMAGE, IMAGE], ["a [MASK] circle", "nothing to fill"])
    with pytest.raises(ViltInputError, match=r"the text has its \[MASK\] beyond the 40 tokens"):
        fill(IMAGE, LONG_QUESTION + " [MASK]")
    rank = make("retrieval", dirs["retrieval"])
    with pytest.raises(ViltInputError, match="non-empty list of images= and a non-empty list of texts="):
        rank(images=[IMAGE], texts=[])
    with pytest.raises(ViltInputError, match="text 1 must be a string"):
        rank(images=[IMAGE], texts=["a dog", 3])
    with pytest.raises(ViltInputError, match=r"image \(item 1\) holds NaN"):
        rank(images=[IMAGE, NAN_IMAGE], texts=["a dog"])
    with pytest.raises(ViltInputError, match="top_k must be a positive integer"):
        rank.rank([IMAGE], ["a dog"], top_k=-1)
    with pytest.raises(ViltInputError, match="batch_size must be a positive integer"):
        vilt.pipeline("vqa", model=dirs["vqa"], batch_size=0)


# ----------------------------------------------------------------------------- the bundled model

needs_bundled = pytest.mark.skipif(
    not (BUNDLED / "config.json").is_file(), reason="bundled model not built yet"
)


@needs_bundled
def test_bundled_names_the_bundled_model() -> None:
    named = vilt.pipeline("vqa", model="bundled", device="cpu", dtype="float32")
    default = vilt.pipeline("vqa", device="cpu", dtype="float32")
    assert named.config.to_dict() == default.config.to_dict()
    image = png_bytes(random_image(64, 64, seed=5))
    assert_same_answers(named(image, "what shape is it?"), default(image, "what shape is it?"))
    with pytest.raises(ViltInputError, match="but the bundled easy-VQA model is a ViltForQuestionAnswering"):
        vilt.pipeline("nlvr2", model="bundled")
