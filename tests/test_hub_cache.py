"""The published checkpoints the way users reach them: a Hugging Face hub cache laid out like the
dandelin repos (tests/hub_cache.py), the transformers documentation's examples and the README's
snippet run from it offline, and every hub option and cache location resolved as transformers
resolves them (against a local stand-in of the Hub, tests/fake_hub.py).

Whatever reads the environment (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``)
runs in a fresh process, as a user's program would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHub, Repo
from hub_cache import REPOS, VQA_ANSWERS, commit_of, make_hub_cache
from tiny_models import BUNDLED, save_tiny

import vilt
from vilt.heads import MODEL_CLASSES
from vilt.hub import resolve_file

TESTS = Path(__file__).parent
ROOT = TESTS.parent
SOURCE = Path(vilt.__file__).parents[1]  # this checkout's src/, ahead of any installed copy
TOL = 1e-5  # float32 outputs of two implementations: equal up to summation order


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    return make_hub_cache(tmp_path_factory.mktemp("hub"))


def _environment(**variables: str) -> dict[str, str]:
    """This process's environment without any Hugging Face setting, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["PYTHONPATH"] = os.pathsep.join([str(SOURCE), str(TESTS)])
    return {**env, **variables}


def _python(code_or_file: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *code_or_file], env=env, capture_output=True, text=True, timeout=timeout, cwd=TESTS
    )


# ----------------------------------------------------------------------------- the published files


def test_the_fixture_has_the_published_layout(hub_cache):
    """What the tests below rely on: snapshot files are links into blobs/, refs/main names the commit,
    and the files are the old formats (feature extractor, BertTokenizer without tokenizer.json, v4 .bin)."""
    for name in REPOS:
        repo = hub_cache / f"models--dandelin--{name}"
        commit = (repo / "refs" / "main").read_text()
        assert commit == commit_of(name)
        snapshot = repo / "snapshots" / commit
        assert all(f.is_symlink() and f.resolve().parent == repo / "blobs" for f in snapshot.iterdir())
        assert not (snapshot / "tokenizer.json").exists() and not (snapshot / "model.safetensors").exists()
        preprocessor = json.loads((snapshot / "preprocessor_config.json").read_text())
        assert (
            preprocessor["feature_extractor_type"] == "ViltFeatureExtractor" and preprocessor["size"] == 384
        )
    weights = torch.load(
        hub_cache
        / "models--dandelin--vilt-b32-mlm"
        / "snapshots"
        / commit_of("vilt-b32-mlm")
        / "pytorch_model.bin",
        weights_only=True,
    )
    assert "mlm_score.bias" in weights and "vilt.embeddings.text_embeddings.position_ids" in weights


@pytest.mark.parametrize("name", list(REPOS))
def test_each_published_repo_loads_unchanged(hub_cache, name, monkeypatch):
    """Every file of the repo is read: config (with the VQA repo's historical architecture name),
    the feature extractor's settings, the BertTokenizer files and the v4 weights with their buffers."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    class_name, _, _ = REPOS[name]
    repo = f"dandelin/{name}"
    model, info = MODEL_CLASSES[class_name].from_pretrained(
        repo, cache_dir=hub_cache, output_loading_info=True
    )
    assert not any(info.values()), info
    processor = vilt.ViltProcessor.from_pretrained(repo, cache_dir=hub_cache)
    assert (
        processor.image_processor.size == {"shortest_edge": 384}
        and processor.image_processor.size_divisor == 32
    )
    assert processor.tokenizer.model_max_length == 40
    if name == "vilt-b32-finetuned-vqa":
        assert [model.config.id2label[i] for i in range(len(VQA_ANSWERS))] == VQA_ANSWERS


@pytest.mark.reference
def test_documented_examples_print_what_transformers_prints(hub_cache, tmp_path):
    """Each example of the transformers ViLT documentation, with only ``transformers`` replaced by
    ``vilt`` (and the images local), run offline from the cache next to transformers itself: the same
    printed answer, and every tensor it computes within 1e-5."""
    out = tmp_path / "results.pt"
    result = _python(
        ["doc_examples.py", str(out)], _environment(HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = torch.load(out, weights_only=True)
    expected_examples = {
        "ViltModel",
        "ViltForMaskedLM",
        "ViltForQuestionAnswering",
        "ViltForImageAndTextRetrieval",
        "ViltForImagesAndTextClassification",
    }
    assert set(results["transformers"]) == set(results["vilt"]) == expected_examples
    for example, theirs in results["transformers"].items():
        ours = results["vilt"][example]
        assert ours["stdout"] == theirs["stdout"], example
        assert theirs["values"] and ours["values"].keys() == theirs["values"].keys(), example
        for name, expected in theirs["values"].items():
            got = ours["values"][name]
            assert got.shape == expected.shape, (example, name)
            torch.testing.assert_close(
                got.double(),
                expected.double(),
                rtol=0,
                atol=TOL,
                msg=lambda m, e=example, n=name: f"{e} {n}: {m}",
            )
    assert re.fullmatch(r"Predicted answer: (\S+)\n", results["vilt"]["ViltForQuestionAnswering"]["stdout"])


def _readme_snippet() -> str:
    """The Python block of the README's "In Python" section, as written."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## In Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_runs_as_written_from_the_cache(hub_cache):
    pytest.importorskip("easy_vqa")
    snippet = _readme_snippet()
    assert 'from_pretrained("dandelin/vilt-b32-finetuned-vqa")' in snippet
    result = _python(["-c", snippet], _environment(HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] in VQA_ANSWERS  # the drop-in part's answer, from the cached model


# ----------------------------------------------------------------------------- offline and bundled


def test_an_uncached_model_offline_says_how_to_fill_the_cache(tmp_path, monkeypatch):
    """Every class, the processors included, fails with the same one-line fix (not "no such file")."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for load in (
        vilt.ViltProcessor.from_pretrained,
        vilt.ViltImageProcessor.from_pretrained,
        vilt.ViltTokenizer.from_pretrained,
        vilt.ViltConfig.from_pretrained,
        vilt.ViltForQuestionAnswering.from_pretrained,
    ):
        with pytest.raises(OSError, match=r"not in the cache.*hf download dandelin/vilt-b32-finetuned-vqa"):
            load("dandelin/vilt-b32-finetuned-vqa", cache_dir=tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OSError, match=r"at revision 'v2'.*hf download dandelin/x --revision v2"):
        vilt.ViltProcessor.from_pretrained("dandelin/x", revision="v2")


def test_a_cached_revision_without_an_optional_file_loads(hub_cache, monkeypatch):
    """A snapshot without tokenizer.json (the published repos have none) reads vocab.txt instead."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "dandelin/vilt-b32-finetuned-vqa"
    assert resolve_file(repo, "tokenizer.json", cache_dir=hub_cache, required=False) is None
    assert vilt.ViltTokenizer.from_pretrained(repo, cache_dir=hub_cache).vocab_size == 30522


def test_bundled_names_the_bundled_model_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert resolve_file("bundled", "config.json") == str(BUNDLED / "config.json")
    config = vilt.ViltConfig.from_pretrained("bundled")
    model = vilt.ViltForQuestionAnswering.from_pretrained("bundled")
    assert model.config == config == vilt.ViltConfig.from_pretrained(BUNDLED)
    processor = vilt.ViltProcessor.from_pretrained("bundled")
    assert processor.image_processor == vilt.ViltImageProcessor.from_pretrained("bundled")
    assert (
        vilt.ViltTokenizer.from_pretrained("bundled").model_max_length == processor.tokenizer.model_max_length
    )
    vqa = vilt.pipeline("visual-question-answering", model="bundled")
    assert vqa.model.config.id2label == config.id2label
    with pytest.raises(FileNotFoundError, match="bundled"):  # a path names a directory, not the bundled model
        vilt.ViltConfig.from_pretrained("./bundled")
    info = _python(["-m", "vilt.cli", "info", "bundled", "--json"], _environment(HF_HUB_OFFLINE="1"))
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["labels"] == [config.id2label[i] for i in range(config.num_labels)]


# ----------------------------------------------------------------------------- hub options, as transformers


def _tiny_repo_files(tmp_path: Path, name: str, seed: int, labels: list[str]) -> dict[str, bytes]:
    """The files of a tiny VQA model directory, its answers replaced by ``labels``."""
    directory = save_tiny(tmp_path / name, "ViltForQuestionAnswering", seed)
    config = json.loads((directory / "config.json").read_text())
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    (directory / "config.json").write_text(json.dumps(config))
    return {file.name: file.read_bytes() for file in directory.iterdir()}


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory):
    """org/vqa: main and tag v1 (other answers, and a copy of main in sub/); org/private needs a token."""
    root = tmp_path_factory.mktemp("fake-hub")
    main = _tiny_repo_files(root, "main", 0, ["circle", "red", "yes", "no", "blue"])
    tagged = _tiny_repo_files(root, "tagged", 1, ["a", "b", "c", "d", "e"])
    tagged |= {f"sub/{name}": data for name, data in main.items()}
    repos = {
        "org/vqa": Repo({"main": "1" * 40, "v1": "2" * 40}, {"1" * 40: main, "2" * 40: tagged}),
        "org/private": Repo({"main": "3" * 40}, {"3" * 40: main}, token="secret"),
    }
    with FakeHub(repos) as hub:
        yield hub, root


def _probe(library: str, calls: list[dict], **variables: str) -> list[dict]:
    result = _python(["hub_probe.py", library, json.dumps(calls)], _environment(**variables))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _same_outcomes(ours: list[dict], theirs: list[dict], calls: list[dict]) -> None:
    """Both loaded the same values, or both failed (vilt with its own message)."""
    for call, mine, reference in zip(calls, ours, theirs):
        if "error" in reference:
            assert "error" in mine, (call, mine, reference)
        else:
            assert mine == reference, call


@pytest.mark.slow
@pytest.mark.reference
def test_hub_options_resolve_as_in_transformers(fake_hub, tmp_path):
    """revision, subfolder, token, force_download and cache_dir on a hub id, and all of them on a local
    directory (where transformers ignores all but subfolder): the same files, the same values."""
    hub, root = fake_hub
    local = root / "main"
    (local / "sub").mkdir(exist_ok=True)
    for file in local.iterdir():
        if file.is_file():
            (local / "sub" / file.name).write_bytes(file.read_bytes())
    ignored_here = {"revision": "v9", "token": "wrong", "force_download": True, "local_files_only": True}
    calls = [
        {"what": "config", "repo": "org/vqa"},
        {"what": "model", "repo": "org/vqa"},
        {"what": "processor", "repo": "org/vqa"},
        {"what": "config", "repo": "org/vqa", "kwargs": {"revision": "v1"}},
        {"what": "model", "repo": "org/vqa", "kwargs": {"revision": "v1"}},
        {"what": "config", "repo": "org/vqa", "kwargs": {"revision": "v1", "subfolder": "sub"}},
        {"what": "config", "repo": "org/vqa", "kwargs": {"revision": "v9"}},
        {"what": "config", "repo": "org/private"},
        {"what": "config", "repo": "org/private", "kwargs": {"token": "secret"}},
        {"what": "config", "repo": "org/vqa", "kwargs": {"force_download": True}},
        {"what": "config", "repo": "org/vqa", "kwargs": {"cache_dir": "CACHE_DIR"}},
        {"what": "config", "repo": "org/missing"},
        {"what": "model", "repo": str(local), "kwargs": ignored_here},
        {"what": "processor", "repo": str(local), "kwargs": ignored_here},
        {"what": "config", "repo": str(local), "kwargs": {"subfolder": "sub", **ignored_here}},
    ]
    outcomes = {}
    for library in ("vilt", "transformers"):
        cache_dir = str(tmp_path / f"{library}-cache-dir")
        library_calls = json.loads(json.dumps(calls).replace("CACHE_DIR", cache_dir))
        before = len(hub.requests)
        outcomes[library] = _probe(
            library, library_calls, HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / f"{library}-home")
        )
        config_gets = sum(
            1
            for method, path, _ in hub.requests[before:]
            if method == "GET" and path == "/org/vqa/resolve/main/config.json"
        )
        assert config_gets == 3, library  # the first time, force_download, and into cache_dir
        assert (Path(cache_dir) / "models--org--vqa" / "snapshots" / ("1" * 40) / "config.json").is_file()
    _same_outcomes(outcomes["vilt"], outcomes["transformers"], calls)
    assert outcomes["vilt"][3]["labels"] == ["a", "b", "c", "d", "e"]  # the tag's files
    assert "has no revision 'v9'" in outcomes["vilt"][6]["message"]
    assert "error" in outcomes["vilt"][7] and "hf auth login" in outcomes["vilt"][7]["message"]
    assert "error" not in outcomes["vilt"][8]


@pytest.mark.slow
@pytest.mark.reference
def test_each_library_finds_what_the_other_downloaded(fake_hub, tmp_path):
    """vilt downloads into HF_HOME (its hub/ folder), transformers into HF_HUB_CACHE; each then reads the
    other's cache with local_files_only=True, while the Hub stays up: same values, no request made."""
    hub, _ = fake_hub
    calls = [
        {"what": what, "repo": "org/vqa", "kwargs": kwargs}
        for what in ("config", "model", "processor")
        for kwargs in ({}, {"revision": "v1"})
    ]
    home, cache = tmp_path / "home", tmp_path / "cache"
    downloaded = {
        "vilt": _probe("vilt", calls, HF_ENDPOINT=hub.endpoint, HF_HOME=str(home)),
        "transformers": _probe("transformers", calls, HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(cache)),
    }
    assert (home / "hub" / "models--org--vqa" / "refs" / "v1").is_file()
    assert (cache / "models--org--vqa" / "refs" / "main").is_file()
    local_calls = [{**call, "kwargs": {**call["kwargs"], "local_files_only": True}} for call in calls]
    before = len(hub.requests)
    read_back = {
        "vilt": _probe("vilt", local_calls, HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(cache)),
        "transformers": _probe("transformers", local_calls, HF_ENDPOINT=hub.endpoint, HF_HOME=str(home)),
    }
    assert [r for r in hub.requests[before:] if "/resolve/" in r[1]] == []
    for library in ("vilt", "transformers"):
        assert all("error" not in result for result in read_back[library]), read_back[library]
    other = {"vilt": "transformers", "transformers": "vilt"}
    for library in ("vilt", "transformers"):
        assert read_back[library] == downloaded[other[library]] == downloaded[library]
