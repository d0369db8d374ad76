"""The web page in a real browser: ``vilt serve`` in a subprocess, headless Chromium driven over the
Chrome DevTools Protocol (a websocket; no browser driver needed).

Each test opens the page afresh and drives it as a user would (choosing files through the file input,
typing, clicking, pressing keys), then reads what is on screen: no broken image before an upload, the
model card line, the answer of an easy-VQA question (the right one with the bundled model; five of the
model's labels with a random tiny one), no heatmap of a first image left on a second one (even when the
first one's heatmap arrives late), a clear message for a file that is not an image, and the page at
400 px wide driven by the keyboard.

Screenshots of each state go to ``artifacts/``; with ``VILT_DOCS_SCREENSHOTS=1`` they go to
``docs/img/`` (the ones docs/serving.md shows). Needs Debian's Chromium (``apt-get install -y
chromium``); skipped when it is absent.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
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
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-port=0",
)
ROOT = Path(__file__).parents[1]
SCREENSHOTS = ROOT / ("docs/img" if os.environ.get("VILT_DOCS_SCREENSHOTS") else "artifacts")
VISIBLE_JS = "const visible = (e) => !!e && e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden';"


def seen(expression: str) -> str:
    """``expression`` run in its own scope, where ``visible(element)`` says whether it is on screen."""
    return f"(() => {{ {VISIBLE_JS} return ({expression}); }})()"


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
        self.events: list[dict[str, Any]] = []  # events that arrived while waiting for a reply
        self.shown_before = ""  # the preview's src before the last file was chosen

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one CDP command and return its result (events that arrive meanwhile are kept)."""
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv(timeout=60))
            if reply.get("id") == message_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, timeout_s: float = 60) -> dict[str, Any]:
        """The parameters of the next ``method`` event."""
        while True:
            for index, event in enumerate(self.events):
                if event["method"] == method:
                    return self.events.pop(index)["params"]
            self.events.append(json.loads(self.socket.recv(timeout=timeout_s)))

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

    def press(self, key: str) -> None:
        """A real key press (``Tab`` or ``Enter``)."""
        code, text = {"Tab": (9, ""), "Enter": (13, "\r")}[key]
        keys = {"key": key, "code": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}
        self.send("Input.dispatchKeyEvent", type="keyDown", text=text, **keys)
        self.send("Input.dispatchKeyEvent", type="keyUp", **keys)

    def open(self, url: str, width: int = 1100, height: int = 820) -> None:
        """Load the page at this window size and wait until it has asked the server what it serves."""
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.send("Page.navigate", url=url + "/")
        wait_for(
            lambda: self.evaluate("document.getElementById('model')?.textContent.startsWith('Model:')"),
            30,
            "the page to connect",
        )

    def choose_file(self, path: Path | str) -> None:
        """Choose a file in the page's file input, as the file dialog would."""
        self.shown_before = self.evaluate("document.getElementById('preview').src")
        document = self.send("DOM.getDocument")["root"]["nodeId"]
        file_input = self.send("DOM.querySelector", nodeId=document, selector="#file")["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=file_input, files=[str(path)])

    def wait_for_preview(self, name: str) -> None:
        """Wait until the file chosen last is shown."""
        wait_for(
            lambda: self.evaluate(
                seen(
                    f"((p) => p.src !== {json.dumps(self.shown_before)} && p.complete && p.naturalWidth > 0"
                    " && visible(p))(document.getElementById('preview'))"
                )
            ),
            10,
            f"the preview of {name}",
        )

    def type_question(self, question: str) -> None:
        self.evaluate("document.getElementById('question').focus()")
        self.evaluate("document.getElementById('question').value = ''")
        self.send("Input.insertText", text=question)
        wait_for(lambda: self.evaluate("!document.getElementById('ask').disabled"), 10, "the Ask button")

    def answers(self) -> list[str]:
        return wait_for(
            lambda: self.evaluate(
                "[...document.querySelectorAll('#answers .answer')].map(e => e.textContent)"
            ),
            60,
            "the answers",
        )

    def wait_for_heatmap(self) -> list[str]:
        wait_for(lambda: self.heatmap_visible(), 60, "a heatmap over the image")
        return self.evaluate("[...document.querySelectorAll('#words .word')].map(e => e.textContent)")

    def heatmap_visible(self) -> bool:
        return self.evaluate(
            seen(
                "((o) => visible(o) && o.complete && o.naturalWidth > 0)(document.getElementById('overlay'))"
            )
        )

    def broken_images(self) -> list[str]:
        """The ids of images on screen that show nothing loaded (the browser's broken-image icon)."""
        return self.evaluate(
            seen(
                "[...document.images].filter(i => visible(i) && !(i.complete && i.naturalWidth > 0))"
                ".map(i => i.id || i.alt)"
            )
        )

    def screenshot(self, name: str) -> None:
        """Save the whole page, below the window's bottom edge too."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        height = self.send("Page.getLayoutMetrics")["cssContentSize"]["height"]
        width = self.evaluate("window.innerWidth")  # the page is laid out without a scroll bar for this
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        shot = self.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)[
            "data"
        ]
        (SCREENSHOTS / name).write_bytes(base64.b64decode(shot))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    process, page_url = launch_chromium(tmp_path_factory.mktemp("chromium") / "profile")
    try:
        with websockets_sync.connect(page_url, max_size=2**26) as socket:
            yield Browser(socket)
    finally:
        process.terminate()
        process.wait(timeout=30)


def easy_vqa_examples(model_dir: Path, count: int) -> list[tuple[str, str, str]]:
    """(image path, question, right answer) of easy-VQA test questions about different images that the
    served model answers right; with a random tiny model no answer is right, then the first ones."""
    easy_vqa = pytest.importorskip("easy_vqa")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    found: dict[int, tuple[str, str, str]] = {}
    vqa = None
    if model_dir == BUNDLED:
        import vilt

        vqa = vilt.pipeline("visual-question-answering", model=str(model_dir))
    for question, answer, image_id in zip(questions[:200], answers[:200], image_ids[:200]):
        if image_id in found or (
            vqa is not None and vqa(paths[image_id], question, top_k=1)[0]["answer"] != answer
        ):
            continue
        found[image_id] = (paths[image_id], question, answer)
        if len(found) == count:
            return list(found.values())
    raise AssertionError(f"the model answers fewer than {count} of the first 200 easy-VQA questions right")


def test_no_broken_image_before_an_upload(server: str, browser: Browser) -> None:
    browser.open(server)
    assert browser.broken_images() == []
    assert browser.evaluate(seen("visible(document.getElementById('drop-hint'))"))
    browser.screenshot("serve-page-start.png")


def test_the_model_card_line_is_shown(server: str, browser: Browser, model_dir: Path) -> None:
    browser.open(server)
    line = browser.evaluate("document.getElementById('model').textContent")
    if model_dir == BUNDLED:
        assert line.startswith("Model: vilt easy-VQA demo (bundled) (visual question answering, 13 answers).")
        assert "colour and shape questions about simple synthetic images" in line
    else:
        assert line.startswith("Model: ") and "(visual question answering, 5 answers)" in line


def test_page_answers_an_easy_vqa_question(server: str, browser: Browser, model_dir: Path) -> None:
    [(image, question, right_answer)] = easy_vqa_examples(model_dir, 1)
    browser.open(server)
    browser.choose_file(image)
    browser.wait_for_preview(Path(image).name)
    browser.type_question(question)
    browser.click("#ask")
    answers = browser.answers()
    words = browser.wait_for_heatmap()
    assert browser.evaluate("document.getElementById('heatmap-note').textContent").endswith(
        "(attention rollout)."
    )
    assert browser.broken_images() == []
    browser.screenshot("serve-page-answer.png")
    assert len(answers) == 5 and len(words) >= 3
    if model_dir == BUNDLED:
        assert answers[0] == right_answer
        assert (
            browser.evaluate("document.getElementById('status').textContent")
            == f"Best answer: {right_answer}"
        )
    else:
        assert set(answers) <= set(LABELS["ViltForQuestionAnswering"])


def test_one_click_answers_an_example(server: str, browser: Browser, model_dir: Path) -> None:
    """ "Try an example" chooses a sample image the server ships, types its question and asks it."""
    browser.open(server)
    wait_for(lambda: browser.evaluate("!document.getElementById('try-example').disabled"), 10, "the examples")
    browser.click("#try-example")
    answers = browser.answers()
    browser.wait_for_heatmap()
    assert browser.evaluate("document.getElementById('question').value") == "What color is the shape?"
    assert (
        browser.evaluate("document.getElementById('file-name').textContent") == "easy-vqa-yellow-circle.png"
    )
    assert browser.broken_images() == []
    browser.screenshot("serve-page-example.png")
    if model_dir == BUNDLED:
        assert answers[0] == "yellow"
    else:
        assert set(answers) <= set(LABELS["ViltForQuestionAnswering"])


def test_the_api_docs_show_every_operation_offline(server: str, browser: Browser) -> None:
    """/docs (Swagger UI) renders each operation with its summary, loading nothing but from the server."""
    with urllib.request.urlopen(server + "/openapi.json", timeout=10) as response:
        schema = json.load(response)
    summaries = {op["summary"] for path in schema["paths"].values() for op in path.values()}
    browser.send("Network.enable")
    browser.events.clear()
    browser.send("Page.navigate", url=server + "/docs")
    shown = wait_for(
        lambda: browser.evaluate(
            "(() => { const s = [...document.querySelectorAll('.opblock-summary-description')]"
            ".map(e => e.textContent); return s.length ? s : null; })()"
        ),
        60,
        "Swagger UI's operations",
    )
    browser.send("Network.disable")
    requested = [
        e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"
    ]
    browser.screenshot("serve-docs.png")
    assert set(shown) == summaries
    outside = [url for url in requested if not url.startswith((server, "data:"))]
    assert requested and not outside, outside


def test_choosing_a_second_image_clears_the_first_ones_answers_and_heatmap(
    server: str, browser: Browser, model_dir: Path
) -> None:
    (first, question, _), (second, _, _) = easy_vqa_examples(model_dir, 2)
    browser.open(server)
    browser.choose_file(first)
    browser.wait_for_preview(Path(first).name)
    browser.type_question(question)
    browser.click("#ask")
    browser.answers()
    browser.wait_for_heatmap()
    browser.choose_file(second)
    browser.wait_for_preview(Path(second).name)
    assert not browser.heatmap_visible()
    assert browser.evaluate("document.querySelectorAll('#answers li, #words button').length") == 0
    assert browser.broken_images() == []
    browser.screenshot("serve-page-second-image.png")


def test_a_late_heatmap_of_the_first_image_is_not_drawn_on_the_second(
    server: str, browser: Browser, model_dir: Path
) -> None:
    (first, question, _), (second, _, _) = easy_vqa_examples(model_dir, 2)
    browser.open(server)
    browser.choose_file(first)
    browser.wait_for_preview(Path(first).name)
    browser.type_question(question)
    browser.send("Fetch.enable", patterns=[{"urlPattern": "*/v1/explain", "requestStage": "Request"}])
    try:
        browser.click("#ask")
        held = browser.wait_event("Fetch.requestPaused")  # the first image's heatmaps, held back
        browser.choose_file(second)
        browser.wait_for_preview(Path(second).name)
        browser.send("Fetch.continueRequest", requestId=held["requestId"])
    finally:
        browser.send("Fetch.disable")
    wait_for(
        lambda: browser.evaluate(
            "performance.getEntriesByType('resource').some(e => e.name.endsWith('/v1/explain') && e.responseEnd > 0)"
        ),
        60,
        "the held heatmaps to arrive",
    )
    browser.evaluate("new Promise(resolve => setTimeout(resolve, 200))")  # let the page handle them
    assert not browser.heatmap_visible()
    assert browser.evaluate("document.querySelectorAll('#words button').length") == 0


def test_a_file_that_is_not_an_image_gets_a_clear_message(
    server: str, browser: Browser, tmp_path: Path
) -> None:
    browser.open(server)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    browser.choose_file(notes)
    status = wait_for(
        lambda: browser.evaluate("document.getElementById('status').textContent"), 10, "a message"
    )
    assert status.startswith("notes.txt is not an image") and "PNG" in status
    fake = tmp_path / "holiday.png"  # an image's name and type, but not an image's bytes
    fake.write_bytes(b"these bytes are no PNG")
    browser.choose_file(fake)
    status = wait_for(
        lambda: browser.evaluate(
            "document.getElementById('status').classList.contains('error')"
            " && document.getElementById('status').textContent.startsWith('holiday.png')"
            " && document.getElementById('status').textContent"
        ),
        10,
        "a message about holiday.png",
    )
    assert "could not be read as an image" in status
    assert browser.broken_images() == []
    assert browser.evaluate("document.getElementById('ask').disabled")
    browser.screenshot("serve-page-not-an-image.png")


def test_the_page_works_400_px_wide_with_the_keyboard_alone(
    server: str, browser: Browser, model_dir: Path
) -> None:
    [(image, question, right_answer)] = easy_vqa_examples(model_dir, 1)
    browser.open(server, width=400, height=900)
    browser.press("Tab")
    assert browser.evaluate("document.activeElement.id") == "file"  # Enter or Space opens the file dialog
    assert browser.evaluate("getComputedStyle(document.getElementById('drop')).outlineStyle") != "none"
    browser.choose_file(image)
    browser.wait_for_preview(Path(image).name)
    browser.press("Tab")
    assert browser.evaluate("document.activeElement.id") == "try-example"  # (Enter would ask a sample)
    browser.press("Tab")
    assert browser.evaluate("document.activeElement.id") == "question"
    browser.send("Input.insertText", text=question)
    browser.press("Enter")
    answers = browser.answers()
    browser.wait_for_heatmap()
    browser.screenshot("serve-page-400px.png")
    width = browser.evaluate("document.documentElement.clientWidth")  # 400 px less the scroll bar
    assert browser.evaluate("document.documentElement.scrollWidth") <= width, "the page scrolls sideways"
    for selector in ("main", ".panel", "#preview", "#ask", "#answers", "#words"):
        right = browser.evaluate(
            f"Math.max(...[...document.querySelectorAll('{selector}')].map(e => e.getBoundingClientRect().right))"
        )
        assert right <= width, f"{selector} ends at {right} px, past the {width} px the page has"
    if model_dir == BUNDLED:
        assert answers[0] == right_answer
