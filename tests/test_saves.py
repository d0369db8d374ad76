"""Saves that are all or nothing: a process killed with SIGKILL at a random moment while it saves leaves
the directory holding one complete save, never a mix, and the next save removes what it left behind.

Covers ``save_pretrained`` (one file and sharded, with a config that changes between saves), ``vilt
convert`` and ``export``. The writers are forked from the test process, so a kill costs no interpreter
start; each kill waits for a first complete save, then lands at a random moment of the save loop.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_convert import original_state, save_lightning

from vilt import ViltConfig, ViltProcessor
from vilt.convert import convert_original_checkpoint
from vilt.heads import MODEL_CLASSES

KILLS = 12  # kills per writer
SHARD = "2MB"  # a 17 MB model in 9 shards
QA = "ViltForQuestionAnswering"
FORK = multiprocessing.get_context("fork")
STALE_MARKERS = (".vilt-staging", ".vilt-tmp")

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(num_labels: int, seed: int) -> torch.nn.Module:
    """A 17 MB model; the two saved ones differ in their config (labels, so also a weight shape)."""
    torch.manual_seed(seed)
    config = ViltConfig(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        image_size=64,
        patch_size=16,
        id2label={i: f"answer {seed}.{i}" for i in range(num_labels)},
    )
    return MODEL_CLASSES[QA](config).eval()


def _leftovers(directory: Path) -> list[str]:
    """Temporary files and staging directories next to (or inside) ``directory``."""
    names = [p.name for p in directory.parent.iterdir()]
    if directory.is_dir():
        names += [p.name for p in directory.rglob("*")]
    return [name for name in names if any(marker in name for marker in STALE_MARKERS)]


def _fingerprint(directory: Path) -> dict[str, str]:
    """{file name: sha256} of a directory."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _kill_during(loop: Callable[[object], None], delay: float) -> None:
    """Fork ``loop(ready)``, wait until it set ``ready`` (a first complete write), SIGKILL it after ``delay``."""
    ready = FORK.Event()
    writer = FORK.Process(target=loop, args=(ready,), daemon=True)
    writer.start()
    assert ready.wait(60), "the writer never finished a first save"
    time.sleep(delay)
    writer.kill()  # SIGKILL
    writer.join()
    assert writer.exitcode == -9


def _kill_repeatedly(
    directory: Path,
    write: Callable[[int], None],
    check: Callable[[], int],
    max_delay: float,
    seed: int,
) -> dict[str, int]:
    """``KILLS`` times: a writer calls ``write(0)``, ``write(1)``, ``write(0)``... until killed at a random
    moment; then ``check()`` says which complete write the directory holds, and the next write must
    remove what the killed one left. Returns counts for the report."""
    rng = random.Random(seed)
    counts = {"kills": 0, "killed mid-write (leftovers found)": 0, "held write 0": 0, "held write 1": 0}

    def loop(ready) -> None:
        torch.set_num_threads(1)
        i = 0
        while True:
            write(i % 2)
            ready.set()
            i += 1

    for _ in range(KILLS):
        _kill_during(loop, rng.uniform(0, max_delay))
        counts["kills"] += 1
        counts["killed mid-write (leftovers found)"] += bool(_leftovers(directory))
        counts[f"held write {check()}"] += 1
        write(0)  # the next write cleans up after the killed one
        assert not _leftovers(directory)
    print(f"\n{directory.name}: {counts}")
    return counts


# ----------------------------------------------------------------------------- save_pretrained


@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
def test_killed_save_pretrained_leaves_one_complete_model(sharded, tmp_path):
    models = [_model(3, seed=0), _model(5, seed=1)]
    shard_size = SHARD if sharded else "5GB"
    references = []
    for i, model in enumerate(models):  # what each complete save looks like
        model.save_pretrained(tmp_path / f"reference-{i}", max_shard_size=shard_size)
        references.append(_fingerprint(tmp_path / f"reference-{i}"))
    assert sharded == (len(references[0]) > 2)
    target = tmp_path / "model"

    def check() -> int:
        fingerprint = _fingerprint(target)
        held = [i for i, reference in enumerate(references) if fingerprint == reference]
        assert held, f"the directory holds no complete save: {sorted(fingerprint)}"
        loaded = MODEL_CLASSES[QA].from_pretrained(target)
        expected = models[held[0]]
        assert loaded.config.to_dict() == expected.config.to_dict()
        for key, tensor in expected.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], tensor), key
        return held[0]

    counts = _kill_repeatedly(
        target,
        lambda i: models[i].save_pretrained(target, max_shard_size=shard_size),
        check,
        max_delay=0.4,
        seed=int(sharded),
    )
    assert counts["kills"] == KILLS


def test_a_processor_saved_into_a_model_directory_keeps_the_model(tmp_path):
    """Writers compose: the processor's save (itself a tokenizer and an image processor save) leaves the
    model's files in place and nothing behind."""
    model = _model(3, seed=0)
    model.save_pretrained(tmp_path / "model")
    ViltProcessor().save_pretrained(tmp_path / "model")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.txt"} <= {
        p.name for p in (tmp_path / "model").iterdir()
    }
    assert not _leftovers(tmp_path / "model")
    MODEL_CLASSES[QA].from_pretrained(tmp_path / "model")


# ----------------------------------------------------------------------------- convert


def _originals(tmp_path: Path) -> list[Path]:
    """Two original VQA checkpoints whose conversions differ in everything: weights, config, and the
    processor (a 5x5 position grid makes 40-pixel images instead of 32)."""
    small = original_state("vqa", seed=0)
    large = original_state("vqa", seed=1)
    large["transformer.pos_embed"] = torch.randn(1, 5 * 5 + 1, 32)
    return [save_lightning(small, tmp_path / "a_vqa.ckpt"), save_lightning(large, tmp_path / "b_vqa.ckpt")]


def test_killed_convert_leaves_one_complete_conversion(tmp_path):
    originals = _originals(tmp_path)
    references = []
    for i, original in enumerate(originals):
        convert_original_checkpoint(original, tmp_path / f"reference-{i}")
        references.append(_fingerprint(tmp_path / f"reference-{i}"))
    assert references[0]["preprocessor_config.json"] != references[1]["preprocessor_config.json"]
    target = tmp_path / "converted"

    def check() -> int:
        fingerprint = _fingerprint(target)
        held = [i for i, reference in enumerate(references) if fingerprint == reference]
        assert held, f"the directory holds no complete conversion: {sorted(fingerprint)}"
        return held[0]

    _kill_repeatedly(
        target,
        lambda i: convert_original_checkpoint(originals[i], target, overwrite=True),
        check,
        max_delay=0.3,
        seed=2,
    )


def test_failed_convert_leaves_the_directory_as_it_was(tmp_path, monkeypatch):
    originals = _originals(tmp_path)
    target = tmp_path / "converted"
    convert_original_checkpoint(originals[0], target)
    before = _fingerprint(target)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ViltProcessor, "save_pretrained", fail)  # after the weights are written
    with pytest.raises(OSError, match="disk full"):
        convert_original_checkpoint(originals[1], target, overwrite=True)
    assert _fingerprint(target) == before
    assert not _leftovers(target)


# ----------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny VQA model directory and its ONNX export."""
    pytest.importorskip("onnxruntime")
    from tiny_models import save_tiny

    from vilt.export import export_onnx

    root = tmp_path_factory.mktemp("export")
    source = save_tiny(root / "model", QA)
    export_onnx(source, root / "onnx")
    return source, root / "onnx"


@pytest.mark.slow
@pytest.mark.parametrize("step", ["config", "processor files"])
def test_failed_export_leaves_the_earlier_export(exported, step, tmp_path, monkeypatch):
    """A failure after the graph is written (while its config or processor files are) leaves the earlier
    export whole; a kill at that moment leaves the same, since nothing has been swapped in yet."""
    from vilt.export import exporter

    source, onnx_dir = exported
    target = tmp_path / "onnx"
    target.mkdir()
    for file in onnx_dir.iterdir():  # an earlier export of another model: every file differs
        (target / file.name).write_bytes(b"earlier " + file.read_bytes())
    before = _fingerprint(target)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    if step == "config":
        monkeypatch.setattr(ViltConfig, "save_pretrained", fail)
    else:
        monkeypatch.setattr(exporter, "_copy_processor_files", fail)
    with pytest.raises(OSError, match="disk full"):
        exporter.export_onnx(source, target, force=True)
    assert _fingerprint(target) == before
    assert not _leftovers(target)


@pytest.mark.slow
def test_forced_export_replaces_an_earlier_export_and_keeps_other_files(exported, tmp_path):
    from vilt.export import export_onnx

    model_dir, _ = exported
    source = tmp_path / "model"  # the model with a vocab.txt but no tokenizer.json
    source.mkdir()
    for file in model_dir.iterdir():
        if file.name != "tokenizer.json":
            (source / file.name).write_bytes(file.read_bytes())
    target = tmp_path / "onnx"
    target.mkdir()
    (target / "model.onnx").write_bytes(b"an earlier export")
    (target / "tokenizer.json").write_text("{}")  # an earlier export's file the new one does not write
    (target / "NOTES.md").write_text("mine")
    export_onnx(source, target, force=True)
    assert (target / "NOTES.md").read_text() == "mine"
    assert not (target / "tokenizer.json").exists()  # would shadow the new vocab.txt
    assert (target / "vocab.txt").read_bytes() == (source / "vocab.txt").read_bytes()
    assert (target / "model.onnx").read_bytes() != b"an earlier export"
    assert not _leftovers(target)


# ----------------------------------------------------------------------------- saves that meet each other


def _same_weights(loaded: torch.nn.Module, expected: torch.nn.Module) -> bool:
    state = loaded.state_dict()
    return loaded.config.id2label == expected.config.id2label and all(
        torch.equal(state[key], tensor) for key, tensor in expected.state_dict().items()
    )


def test_a_save_that_finds_its_new_directory_taken_still_wins_whole(tmp_path, monkeypatch):
    """Two saves to a directory that did not exist: the second to swap finds the first's directory in
    place just as it renames its own there (the race that ended in 'OSError: [Errno 39] Directory not
    empty'), and takes its place whole."""
    import os

    target = tmp_path / "new" / "model"
    first, second = _model(3, seed=0), _model(5, seed=1)
    rename = os.rename

    def other_save_first(source, destination):
        if Path(destination) == target and not target.exists():
            monkeypatch.setattr(os, "rename", rename)
            first.save_pretrained(target)  # the other writer got there a moment before
        rename(source, destination)

    monkeypatch.setattr(os, "rename", other_save_first)
    second.save_pretrained(target)
    assert _same_weights(MODEL_CLASSES[QA].from_pretrained(target), second)
    assert _fingerprint(target).keys() == {"config.json", "model.safetensors"}
    assert not _leftovers(target)


def _save_at_once(args) -> None:
    """Wait for the other writer, then save (one of two forked processes)."""
    barrier, seed, target = args
    torch.set_num_threads(1)
    model = _model(3 + 2 * seed, seed=seed)
    barrier.wait()
    model.save_pretrained(target, max_shard_size=SHARD if seed else "5GB")


@pytest.mark.slow
def test_two_processes_saving_to_a_new_directory_both_succeed(tmp_path):
    """20 rounds of two processes saving at the same moment to a directory that does not exist: both
    succeed, and the directory holds one of the two saves whole."""
    models = [_model(3, seed=0), _model(5, seed=1)]
    for round_ in range(20):
        target = tmp_path / f"round-{round_}" / "model"
        barrier = FORK.Barrier(2)
        writers = [FORK.Process(target=_save_at_once, args=((barrier, seed, target),)) for seed in (0, 1)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
        assert [writer.exitcode for writer in writers] == [0, 0], f"round {round_}"
        loaded = MODEL_CLASSES[QA].from_pretrained(target)
        assert any(_same_weights(loaded, model) for model in models), f"round {round_}"
        assert not _leftovers(target)


@pytest.mark.parametrize("new_size", [SHARD, "5GB"], ids=["the same shard names", "one file"])
def test_a_load_during_a_save_reads_one_save_whole(new_size, tmp_path, monkeypatch):
    """A save replaces the directory between the moment a load lists the weight files and the moment it
    opens them: the load reads the new save whole (neither a vanished shard nor shards of both)."""
    import vilt.checkpoint as checkpoint

    target = tmp_path / "model"
    old, new = _model(3, seed=0), _model(3, seed=1)  # the same config, other weights
    old.save_pretrained(target, max_shard_size=SHARD)
    opened = checkpoint.load_weights
    calls = []

    def save_first(files):
        calls.append(files)
        if len(calls) == 1:  # the shards' names were read from the old save
            new.save_pretrained(target, max_shard_size=new_size)
        return opened(files)

    monkeypatch.setattr(checkpoint, "load_weights", save_first)
    loaded = MODEL_CLASSES[QA].from_pretrained(target)
    assert len(calls) == 2  # read again
    assert _same_weights(loaded, new)


def _save_repeatedly(args) -> None:
    target, done = args
    torch.set_num_threads(1)
    models = [_model(3, seed=0), _model(5, seed=1)]
    for i in range(100):
        models[i % 2].save_pretrained(target, max_shard_size=SHARD if i % 2 else "5GB")
    done.set()


@pytest.mark.slow
def test_loads_during_100_saves_each_see_one_save(tmp_path):
    """A process saves two models in turn 100 times (one file, then 9 shards of another config) while
    this one loads: every load gives one of the two models, whole."""
    models = [_model(3, seed=0), _model(5, seed=1)]
    target = tmp_path / "model"
    models[0].save_pretrained(target)
    done = FORK.Event()
    writer = FORK.Process(target=_save_repeatedly, args=((target, done),), daemon=True)
    writer.start()
    loads = 0
    while not done.is_set():
        loaded = MODEL_CLASSES[QA].from_pretrained(target)
        assert any(_same_weights(loaded, model) for model in models)
        loads += 1
    writer.join(60)
    assert writer.exitcode == 0
    print(f"\n{loads} loads during 100 saves")
    assert loads > 1


# ----------------------------------------------------------------------------- where a save may go


def test_a_link_to_a_directory_is_written_through(tmp_path):
    real, link = tmp_path / "disk" / "model", tmp_path / "model"
    _model(3, seed=0).save_pretrained(real)
    link.symlink_to(real, target_is_directory=True)
    model = _model(5, seed=1)
    model.save_pretrained(link)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert _same_weights(MODEL_CLASSES[QA].from_pretrained(real), model)
    assert not _leftovers(link) and not _leftovers(real)


@pytest.mark.parametrize("where", [".", ".."])
def test_the_current_directory_and_its_parents_are_refused(where, tmp_path, monkeypatch):
    from vilt.errors import ViltInputError

    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ViltInputError, match=r"the current directory\)?.*Name a new directory"):
        _model(3, seed=0).save_pretrained(where)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
