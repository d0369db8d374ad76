"""The web page in a real browser: ``vilt serve`` in a subprocess, headless Chromium driven over the
Chrome DevTools Protocol (a websocket; no browser driver needed).

The test picks an easy-VQA test image, types its question, clicks Ask, and reads the answer and the
heatmap words from the page, then saves a screenshot to ``artifacts/serve-page.png``. With the bundled
easy-VQA model the answer must be the right one; without it (a random tiny model) the page must show
five answers from the model's labels.

Needs Debian's Chromium (``apt-get install -y chromium``); skipped when it is absent.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
websockets_sync = pytest.importorskip("websockets.sync.client")

from serve_process import serving, wait_for  # noqa: E402
from tiny_models import BUNDLED, LABELS, save_tiny  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-port=0",
)
ARTIFACTS = Path(__file__).parents[1] / "artifacts"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled easy-VQA model when it is installed, else a random tiny VQA model."""
    if (BUNDLED / "config.json").is_file():
        return BUNDLED
    return save_tiny(tmp_path_factory.mktemp("qa"), "ViltForQuestionAnswering")


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    with serving(model_dir) as url:
        yield url


def launch_chromium(profile: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start headless Chromium on a fresh profile; returns the process and its page's CDP websocket URL."""
    assert CHROMIUM is not None
    process = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"  # Chromium writes its debugging port here
    port = wait_for(lambda: port_file.is_file() and port_file.read_text().split("\n")[0], 60, "Chromium")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
        page = next(target for target in json.load(response) if target["type"] == "page")
    return process, page["webSocketDebuggerUrl"]


class Browser:
    """One page of the browser, driven with Chrome DevTools Protocol commands over its websocket."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one CDP command and return its result (events that arrive meanwhile are skipped)."""
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv(timeout=60))
            if reply.get("id") == message_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    process, page_url = launch_chromium(tmp_path / "profile")
    try:
        with websockets_sync.connect(page_url, max_size=2**26) as socket:
            yield Browser(socket)
    finally:
        process.terminate()
        process.wait(timeout=30)


def easy_vqa_example(model_dir: Path) -> tuple[str, str, str]:
    """(image path, question, right answer): a test question the served model answers right.

    With a random tiny model no answer is right; then the first test question is returned.
    """
    easy_vqa = pytest.importorskip("easy_vqa")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    if model_dir != BUNDLED:
        return paths[image_ids[0]], questions[0], answers[0]
    import vilt

    vqa = vilt.pipeline("visual-question-answering", model=str(model_dir))
    for question, answer, image_id in zip(questions[:50], answers[:50], image_ids[:50]):
        if vqa(paths[image_id], question, top_k=1)[0]["answer"] == answer:
            return paths[image_id], question, answer
    raise AssertionError("the bundled model answers none of the first 50 easy-VQA test questions right")


def test_page_answers_an_easy_vqa_question(server: str, browser: Browser, model_dir: Path) -> None:
    image, question, right_answer = easy_vqa_example(model_dir)
    browser.send(
        "Emulation.setDeviceMetricsOverride", width=1100, height=820, deviceScaleFactor=1, mobile=False
    )
    browser.send("Page.navigate", url=server + "/")
    wait_for(
        lambda: browser.evaluate("document.getElementById('model')?.textContent.startsWith('Model:')"),
        30,
        "the page to connect",
    )

    document = browser.send("DOM.getDocument")["root"]["nodeId"]
    file_input = browser.send("DOM.querySelector", nodeId=document, selector="#file")["nodeId"]
    browser.send("DOM.setFileInputFiles", nodeId=file_input, files=[str(image)])
    wait_for(
        lambda: browser.evaluate(
            "document.getElementById('preview').complete && !document.querySelector('.stage').hidden"
        ),
        10,
        "the preview",
    )
    browser.evaluate("document.getElementById('question').focus()")
    browser.send("Input.insertText", text=question)
    wait_for(lambda: browser.evaluate("!document.getElementById('ask').disabled"), 10, "the Ask button")
    browser.click("#ask")

    answers = wait_for(
        lambda: browser.evaluate(
            "[...document.querySelectorAll('#answers .answer')].map(e => e.textContent)"
        ),
        60,
        "the answers",
    )
    words = wait_for(
        lambda: browser.evaluate("[...document.querySelectorAll('#words .word')].map(e => e.textContent)"),
        60,
        "the heatmap words",
    )
    assert browser.evaluate("!document.getElementById('overlay').hidden")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = browser.send("Page.captureScreenshot", format="png")["data"]
    (ARTIFACTS / "serve-page.png").write_bytes(base64.b64decode(shot))

    assert len(answers) == 5 and len(words) >= 3
    if model_dir == BUNDLED:
        assert answers[0] == right_answer
        assert (
            browser.evaluate("document.getElementById('status').textContent")
            == f"Best answer: {right_answer}"
        )
    else:
        assert set(answers) <= set(LABELS["ViltForQuestionAnswering"])
