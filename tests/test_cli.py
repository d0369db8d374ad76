"""The inference sub-commands of ``vilt``: output, --json, --help, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tiny_models import BUNDLED, random_image, save_tiny

from vilt.cli import main


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
        (["demo", "--n", "0"], "--n must be at least 1"),
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
    for option in ("--model", "--device", "--dtype", "--batch-size", "--top-k", "--json", "example:"):
        assert option in out


@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="bundled model not built yet")
def test_demo_answers_with_the_bundled_model(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("easy_vqa")
    code, out, _ = run(capsys, "demo", "--json")  # the defaults: 20 seeded questions
    report = json.loads(out)
    assert code == 0 and report["total"] == 20 and len(report["results"]) == 20
    assert report["correct"] / report["total"] >= 0.98  # the bar the README promises
    code, out, _ = run(capsys, "demo", "--n", "5")
    assert out.splitlines()[-1].startswith("accuracy: ")
