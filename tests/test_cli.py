"""The inference sub-commands of ``vilt``: output, --json, --help, and one-line errors with exit code 2."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from tiny_models import BUNDLED, random_image, save_tiny

from vilt.cli import main
from vilt.images import DEFAULT_TIMEOUT


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    paths = {
        "vqa": save_tiny(root / "vqa", "ViltForQuestionAnswering"),
        "nlvr2": save_tiny(root / "nlvr2", "ViltForImagesAndTextClassification"),
        "itm": save_tiny(root / "itm", "ViltForImageTextMatching"),
        "mlm": save_tiny(root / "mlm", "ViltForMaskedLM"),
        "a": root / "a.png",
        "b": root / "b.png",
        "broken": root / "broken.png",
    }
    Image.fromarray(random_image(40, 60, 1)).save(paths["a"])
    Image.fromarray(random_image(30, 30, 2)).save(paths["b"])
    paths["broken"].write_bytes(b"this is not a png")
    return {key: str(value) for key, value in paths.items()}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_vqa_prints_top_k_answers_per_image(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys,
        "vqa",
        files["a"],
        files["b"],
        "-q",
        "what color?",
        "--model",
        files["vqa"],
        "--top-k",
        "2",
        "--json",
    )
    assert code == 0
    results = json.loads(out)
    assert [r["image"] for r in results] == [files["a"], files["b"]]
    assert all(len(r["answers"]) == 2 for r in results)
    code, out, _ = run(
        capsys, "vqa", files["a"], "-q", "what color?", "--model", files["vqa"], "--top-k", "1"
    )
    assert code == 0 and out.splitlines()[0] == f"{files['a']}: what color?" and len(out.splitlines()) == 2


def test_nlvr2_rank_fill_mask_and_info(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "nlvr2", files["a"], files["b"], "-s", "two dogs", "--model", files["nlvr2"], "--json"
    )
    assert code == 0 and set(json.loads(out)) == {"label", "score"}
    code, out, _ = run(
        capsys,
        "rank",
        "--images",
        files["a"],
        files["b"],
        "--texts",
        "a",
        "b c",
        "d",
        "--model",
        files["itm"],
        "--json",
    )
    ranked = json.loads(out)
    assert code == 0 and len(ranked["scores"]) == 2 and len(ranked["scores"][0]) == 3
    code, out, _ = run(
        capsys, "fill-mask", files["a"], "-t", "a [MASK] circle", "--model", files["mlm"], "--json"
    )
    assert code == 0 and "[MASK]" not in json.loads(out)["sequence"]
    code, out, _ = run(capsys, "info", files["vqa"], "--json")
    info = json.loads(out)
    assert code == 0 and info["architecture"] == "ViltForQuestionAnswering" and info["num_labels"] == 5
    assert info["parameters"] > 0


@pytest.mark.parametrize("method", ["ipot", "rollout"])
def test_explain_writes_a_picture(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path, method: str
) -> None:
    pytest.importorskip("matplotlib")
    output = tmp_path / "heat.png"
    code, out, _ = run(
        capsys,
        "explain",
        files["a"],
        "-q",
        "a red circle",
        "-o",
        str(output),
        "--model",
        files["vqa"],
        "--method",
        method,
    )
    assert code == 0 and "3 words" in out
    with Image.open(output) as picture:
        assert picture.width > 300


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["vqa", "{missing}", "-q", "what?"], "no such file"),
        (["vqa", "{broken}", "-q", "what?"], "is not an image"),
        (["vqa", "{a}", "-q", "  "], "question .*is empty"),
        (["vqa", "{a}", "-q", "what?", "--model", "/no/such/model"], "neither a local directory nor"),
        (["vqa", "{a}", "-q", "what?", "--model", "nobody/no-such-vilt"], "not in the cache"),
        (["nlvr2", "{a}", "{b}", "-s", "x", "--model", "{vqa}"], "nlvr2 task needs"),
        (["fill-mask", "{a}", "-t", "no mask here", "--model", "{mlm}"], r"has no \[MASK\]"),
        (["rank", "--images", "{a}", "--texts", "x"], "needs a model"),
        (
            ["vqa", "{a}", "-q", "x", "--model", "{vqa}", "--dtype", "auto", "--device", "tpu"],
            "unknown device",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    values = {**files, "missing": "/no/such/image.png"}
    argv = [arg.format(**values) for arg in argv]
    if argv[0] == "vqa" and "--model" not in argv:
        argv += ["--model", files["vqa"]]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"vilt {argv[0]}: error: ")
    assert re.search(message, err)


def test_the_installed_command_prints_no_traceback(files: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vilt.cli", "vqa", files["broken"], "-q", "what?", "--model", files["vqa"]],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "is not an image" in result.stderr


def test_help_lists_the_commands_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for command in ("vqa", "nlvr2", "rank", "fill-mask", "explain", "demo", "info"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["vqa", "--help"])
    out = capsys.readouterr().out
    for option in (
        "--model",
        "--device",
        "--dtype",
        "--batch-size",
        "--top-k",
        "--json",
        "--timeout",
        "example:",
    ):
        assert option in out
    assert f"(default {DEFAULT_TIMEOUT:g})" in out  # the help states the loader's own default


@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="bundled model not built yet")
def test_demo_answers_with_the_bundled_model(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("easy_vqa")
    code, out, _ = run(capsys, "demo", "--json")  # the defaults: 20 seeded questions
    report = json.loads(out)
    assert code == 0 and report["total"] == 20 and len(report["results"]) == 20
    assert report["correct"] / report["total"] >= 0.98  # the bar the README promises
    code, out, _ = run(capsys, "demo", "--n", "5")
    assert out.splitlines()[-1].startswith("accuracy: ")


# ----------------------------------------------------------------------------- inputs people pass


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(files: dict[str, str]) -> Iterator[str]:
    """An http.server on 127.0.0.1 serving the folder of ``files``; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(Path(files["a"]).parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()


def answers(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    """The --json answers of ``vilt vqa`` (the tiny VQA model, float32 on the CPU)."""
    code, out, err = run(capsys, "vqa", *argv, "--device", "cpu", "--dtype", "float32", "--json")
    assert code == 0, err
    return json.loads(out)


def assert_same_answers(got: list[dict], want: list[dict]) -> None:
    """Equal answers; scores within 1e-6 (the same pixels, but batches of other sizes may round apart)."""
    assert [[a["answer"] for a in r["answers"]] for r in got] == [
        [a["answer"] for a in r["answers"]] for r in want
    ]
    for g, w in zip(got, want):
        assert [a["score"] for a in g["answers"]] == pytest.approx(
            [a["score"] for a in w["answers"]], abs=1e-6
        )


def test_url_input_gives_the_same_answers_as_the_file(
    files: dict[str, str], server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    question = ["-q", "what color?", "--model", files["vqa"], "--top-k", "3"]
    url = f"{server}/a.png"
    from_url = answers(capsys, url, *question)
    assert from_url[0]["image"] == url
    assert_same_answers(from_url, answers(capsys, files["a"], *question))
    code, out, _ = run(
        capsys, "explain", url, "-q", "a red circle", "-o", os.devnull, "--model", files["vqa"], "--json"
    )
    assert code == 0 and json.loads(out)["words"]


def test_unreachable_or_silent_url_is_one_line_and_exit_2(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code, _, err = run(
        capsys, "vqa", f"http://127.0.0.1:{port}/a.png", "-q", "what?", "--model", files["vqa"]
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("vilt vqa: error: image URL") and "could not be fetched" in err
    assert "does not exist" not in err
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/a.png"
        code, _, err = run(capsys, "vqa", url, "-q", "what?", "--model", files["vqa"], "--timeout", "0.5")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "within the timeout of 0.5 s" in err


def test_a_folder_runs_its_images_in_name_order(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, source in [("b.PNG", "a"), ("a.png", "b"), ("c.jpeg", "a")]:
        Image.open(files[source]).convert("RGB").save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "sub").mkdir()
    question = ["-q", "what color?", "--model", files["vqa"]]
    from_folder = answers(capsys, str(folder), *question)
    paths = [str(folder / name) for name in ("a.png", "b.PNG", "c.jpeg")]
    assert [r["image"] for r in from_folder] == paths
    assert_same_answers(from_folder, answers(capsys, *paths, *question))
    code, out, _ = run(
        capsys, "rank", "--images", str(folder), files["a"], "--texts", "x", "--model", files["itm"], "--json"
    )
    assert code == 0 and json.loads(out)["images"] == [*paths, files["a"]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["vqa", "{empty}", "-q", "what?", "--model", "{vqa}"], "folder '{empty}' holds no images"),
        (
            ["explain", "{folder}", "-q", "what?", "-o", "x.png"],
            "'{folder}' is a folder; explain takes one image",
        ),
        (
            ["nlvr2", "{a}", "{folder}", "-s", "x", "--model", "{nlvr2}"],
            "'{folder}' is a folder; nlvr2 takes one image",
        ),
    ],
)
def test_a_folder_is_never_said_not_to_exist(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    values = {**files, "empty": str(tmp_path / "empty"), "folder": str(Path(files["a"]).parent)}
    argv = [arg.format(**values) for arg in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert message.format(**values) in err and "does not exist" not in err


class _Stdin:
    def __init__(self, data: bytes, tty: bool = False) -> None:
        self.buffer = io.BytesIO(data)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_dash_reads_one_image_from_standard_input(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    question = ["-q", "what color?", "--model", files["vqa"]]
    monkeypatch.setattr(sys, "stdin", _Stdin(Path(files["a"]).read_bytes()))
    from_stdin = answers(capsys, files["b"], "-", *question)
    assert [r["image"] for r in from_stdin] == [files["b"], "-"]
    assert_same_answers(from_stdin, answers(capsys, files["b"], files["a"], *question))
    for stdin, message in [
        (_Stdin(b""), "standard input is empty"),
        (_Stdin(b"", tty=True), "standard input is a terminal"),
        (_Stdin(b"x"), "standard input can be read once"),
    ]:
        monkeypatch.setattr(sys, "stdin", stdin)
        extra = ["-"] if "once" in message else []
        code, _, err = run(capsys, "vqa", "-", *extra, *question)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="bundled model not built yet")
def test_bundled_names_the_bundled_model_wherever_a_model_is_named(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    question = [files["a"], "-q", "what color is the shape?"]
    assert_same_answers(answers(capsys, *question, "--model", "bundled"), answers(capsys, *question))
    outputs = []
    for model in (["--model", "bundled"], []):
        code, out, err = run(capsys, "explain", *question, "-o", str(tmp_path / "heat.png"), *model, "--json")
        assert code == 0, err
        outputs.append(json.loads(out)["answer"]["answer"])
    assert outputs[0] == outputs[1]
    described = []
    for model in (["bundled"], []):
        code, out, err = run(capsys, "info", *model, "--json")
        assert code == 0, err
        described.append(json.loads(out))
    assert described[0]["architecture"] == "ViltForQuestionAnswering"
    assert {**described[0], "model": None} == {**described[1], "model": None}


@pytest.mark.parametrize(
    ("argv", "flag", "python_name"),
    [
        (["rank", "--images", "{a}", "--texts", "x"], "--model", "model="),
        (["fill-mask", "{a}", "-t", "a [MASK]"], "--model", "model="),
        (["nlvr2", "{a}", "{b}", "-s", "x"], "--model", "model="),
        (["vqa", "{a}", "-q", "x", "--model", "{vqa}", "--top-k", "0"], "--top-k", "top_k"),
        (
            ["rank", "--images", "{a}", "--texts", "x", "--model", "{itm}", "--top-k", "-1"],
            "--top-k",
            "top_k",
        ),
        (["vqa", "{a}", "-q", "x", "--model", "{vqa}", "--batch-size", "0"], "--batch-size", "batch_size"),
        (["vqa", "{a}", "-q", "x", "--timeout", "0"], "--timeout", "timeout="),
        (["vqa", "{a}"], "-q/--question", "question="),
        (["demo", "--n", "0"], "--n", "n="),
    ],
)
def test_messages_name_the_command_line_flags(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], argv: list[str], flag: str, python_name: str
) -> None:
    argv = [arg.format(**files) for arg in argv]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse refuses the value itself
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(f"vilt {argv[0]}: error: ")
    assert flag in err and python_name not in err


# ----------------------------------------------------------------------------- convert on files that are no checkpoint


def _not_checkpoints(folder: Path, png: str) -> dict[str, tuple[Path, str]]:
    """Files that are no original ViLT checkpoint, and what the error must say of each."""
    import torch
    from safetensors.torch import save_file

    made = {
        "png": (folder / "notimage.png", "is not a PyTorch checkpoint"),
        "empty": (folder / "empty.ckpt", "is empty"),
        "text": (folder / "notes.ckpt", "is not a PyTorch checkpoint"),
        "safetensors": (folder / "model.safetensors", "is a safetensors file"),
        "zip": (folder / "archive.ckpt", "is a zip archive but not a PyTorch checkpoint"),
        "truncated": (folder / "cut.ckpt", "is truncated or corrupt"),
        "other model": (folder / "pytorch_model.bin", "is not an original ViLT checkpoint"),
        "folder": (folder / "sub", "is a folder"),
    }
    made["png"][0].write_bytes(Path(png).read_bytes())
    made["empty"][0].write_bytes(b"")
    made["text"][0].write_text("hello world\n")
    save_file({"vilt.embeddings.cls_token": torch.zeros(1, 1, 8)}, made["safetensors"][0])
    with zipfile.ZipFile(made["zip"][0], "w") as archive:
        archive.writestr("notes/readme.txt", "not a checkpoint")
    whole = folder / "whole.ckpt"
    torch.save({"state_dict": {"transformer.cls_token": torch.zeros(1, 1, 8)}}, whole)
    made["truncated"][0].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    torch.save({"vilt.embeddings.cls_token": torch.zeros(1, 1, 8)}, made["other model"][0])
    made["folder"][0].mkdir()
    return made


def test_convert_on_a_file_that_is_no_checkpoint_is_one_line_and_exit_2(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for kind, (path, message) in _not_checkpoints(tmp_path, files["a"]).items():
        code, _, err = run(capsys, "convert", str(path), str(tmp_path / "out"))
        assert code == 2, (kind, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("vilt convert: error: "), (kind, err)
        assert str(path) in err and message in err, (kind, err)
        assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the process: pipes, start-up


def _into_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``vilt ARGV`` writing into a pipe whose reader has gone before the first line is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader closes early (as `| head -1` does once it has its line)
    try:
        return subprocess.run(
            [sys.executable, "-m", "vilt.cli", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=120,
        )
    finally:
        os.close(write_end)


def test_a_closed_pipe_ends_the_command_quietly(files: dict[str, str]) -> None:
    result = _into_closed_pipe("info", files["vqa"])
    assert result.stderr == ""  # no "[Errno 32] Broken pipe", no traceback, no "Exception ignored"
    assert result.returncode == 141  # 128 + SIGPIPE, as a shell reports a tool the pipe ended


HEAVY_MODULES = ("torch", "numpy", "PIL", "tokenizers", "safetensors", "huggingface_hub", "httpx")


@pytest.mark.parametrize(
    "command", ["vqa", "nlvr2", "rank", "fill-mask", "explain", "demo", "info", "convert"]
)
def test_command_help_imports_no_heavy_module(command: str) -> None:
    probe = (
        "import sys\nfrom vilt.cli import main\ntry:\n    main([sys.argv[1], '--help'])\n"
        "except SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, command], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------- checked before the model loads

README = Path(__file__).resolve().parents[1] / "README.md"

# (argv, what the one line says); {name} is a path from the files fixture, {tmp} a fresh folder
BEFORE_LOADING = [
    (["vqa", "{missing}", "-q", "what?"], "no such file"),
    (["vqa", "{a}", "{broken}", "-q", "what?"], r"image file '.*broken.png' is not an image"),
    (
        ["explain", "{broken}", "-q", "what?", "-o", "{tmp}/heat.gif"],
        r"\(1\) image file .* is not an image .* \(2\) -o '.*heat.gif': write a .png, .jpg",
    ),
    (["explain", "{a}", "-q", "what?", "-o", "{broken}/under/heat.png"], "cannot be written: .* is a file"),
    (
        ["fill-mask", "{a}", "-t", "no mask here"],
        r"\(1\) the text \(-t\) 'no mask here' has no \[MASK\].*\(2\) fill-mask needs a model",
    ),
    (["vqa", "{a}", "-q", "x", "--model", "/no/such/model"], "neither a local directory nor"),
    (["vqa", "{a}", "-q", "x", "--model", "{tmp}"], r"config.json does not exist"),
    (["vqa", "{a}", "-q", "x", "--device", "tpu"], "unknown device 'tpu'"),
    (["info", "{tmp}/nothing"], "neither a local directory nor"),
    (
        ["export", "--model", "{vqa}", "--output", "{vqa}", "--force"],
        r"the output directory '.*vqa' is the input",
    ),
    (
        ["export", "--model", "{vqa}", "--output", "{vqa}/..", "--force"],
        r"the output directory '.*\.\.' holds the input",
    ),
    (["export", "--model", "{vqa}", "--output", "{tmp}/out", "--opset", "5"], "--opset 5 is not supported"),
    (["convert", "{tmp}/no.ckpt", "{tmp}/out"], r"SRC.ckpt: .*no.ckpt does not exist"),
]


def test_arguments_are_checked_before_torch_is_imported(files: dict[str, str], tmp_path: Path) -> None:
    """Every case fails with its one line before torch is imported (in a fresh process), so in well
    under a second, not after the seconds that loading takes."""
    values = {**files, "missing": "/no/such/image.png", "tmp": str(tmp_path)}
    argvs = [[arg.format(**values) for arg in argv] for argv, _ in BEFORE_LOADING]
    code = (
        "import contextlib, io, json, sys\n"
        "from vilt.cli import main\n"
        "results = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        results.append((main(argv), err.getvalue()))\n"
        "print(json.dumps({'results': results, 'torch': 'torch' in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, json.dumps(argvs)], capture_output=True, text=True)
    report = json.loads(result.stdout)
    for (argv, message), (exit_code, err) in zip(BEFORE_LOADING, report["results"]):
        assert exit_code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"vilt {argv[0]}: error: "), err
        assert re.search(message, err), (message, err)
    assert report["torch"] is False


def test_an_unknown_option_names_its_command(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["vqa", files["a"], "-q", "what?", "--frobnicate"])
    assert exit.value.code == 2
    assert (
        capsys.readouterr().err
        == "vilt vqa: error: unrecognized arguments: --frobnicate (see vilt vqa --help)\n"
    )


def test_a_missing_extra_is_named_with_its_install_command(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a)
    )
    code, _, err = run(capsys, "explain", files["a"], "-q", "what?", "-o", str(tmp_path / "heat.png"))
    assert code == 2
    assert err == "vilt explain: error: vilt explain needs matplotlib: pip install 'vilt[explain]'\n"
    explain_line = next(line for line in README.read_text().splitlines() if line.startswith("vilt explain "))
    assert "pip install 'vilt[explain]'" in explain_line


def test_cuda_without_a_gpu_names_the_cpu(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before loading, where this PyTorch is a CPU build; from the device choice, where it is a CUDA
    build on a machine without a GPU."""
    from importlib import metadata

    import torch

    argv = ["vqa", files["a"], "-q", "what?", "--model", files["vqa"], "--device", "cuda"]
    monkeypatch.setattr(metadata, "version", lambda name: "2.13.0+cpu")
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("vilt vqa: error: --device cuda: this PyTorch (2.13.0+cpu) is built")
    assert err.rstrip().endswith("pass --device cpu")
    monkeypatch.setattr(metadata, "version", lambda name: "2.13.0+cu128")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(capsys, *argv)
    assert code == 2 and "no CUDA GPU is available" in err and "--device cpu" in err


def test_a_slow_load_says_so_in_a_terminal(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import vilt.pipelines
    from vilt import arguments

    load_model = vilt.pipelines.load_model

    def slow_load(*args, **kwargs):
        time.sleep(0.5)
        return load_model(*args, **kwargs)

    monkeypatch.setattr(vilt.pipelines, "load_model", slow_load)
    monkeypatch.setattr(arguments, "SLOW_S", 0.05)
    code, _, err = run(capsys, "info", files["vqa"])  # not a terminal: nothing said
    assert code == 0 and err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run(capsys, "info", files["vqa"])
    assert code == 0 and err == f"vilt info: loading {files['vqa']} (torch, then the weights)...\n"
    monkeypatch.setattr(vilt.pipelines, "load_model", load_model)
    monkeypatch.setattr(arguments, "SLOW_S", 5.0)  # a fast load says nothing
    code, _, err = run(capsys, "info", files["vqa"])
    assert code == 0 and err == ""


def test_explain_makes_its_output_folder(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "new" / "folder" / "heat.png"
    code, _, err = run(
        capsys, "explain", files["a"], "-q", "what color?", "-o", str(output), "--model", files["vqa"]
    )
    assert code == 0, err
    assert output.is_file()


@pytest.mark.parametrize("output", [".", ".."])
def test_export_and_convert_refuse_the_current_directory_in_one_short_line(
    output: str,
    files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "vilt_vqa.ckpt").write_bytes(b"")
    monkeypatch.chdir(work)
    for argv in (
        ["export", "--model", files["vqa"], "--output", output, "--force"],
        ["convert", "vilt_vqa.ckpt", output, "--force"],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and len(err) < 300, err
        assert re.match(
            rf"vilt {argv[0]}: error: cannot write a model to '{re.escape(output)}' \(.*current directory\)",
            err,
        )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["vilt_vqa.ckpt", "work"]
