"""vilt.scale: batch inference and corpus ranking on Ray (docs/scale.md).

The fast tests run each stage's code without Ray (a row's preparation and a replica's batch, the
committed parts, the ranking's merge and R@K) against the in-process pipelines. The slow ones run the
real engine: an embedded Ray, and a two-node cluster on this machine (tests/ray_cluster.py) whose
worker node's raylet is killed mid-job; and a job killed and rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_models import BUNDLED, png_bytes, random_image, save_tiny

import vilt
from vilt.errors import ViltInputError
from vilt.scale import parts
from vilt.scale.batch import Predictor, prepare_rows, read_table, task_columns
from vilt.scale.ranking import (
    _best,
    read_corpus,
    recall_at_k,
    retrieval_model_from_itm,
    top_k_indices,
)

pytestmark = pytest.mark.usefixtures("one_thread")
VILT = str(Path(sys.executable).with_name("vilt"))


def write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` small PNGs of varied sizes (so batches pad); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        path.write_bytes(png_bytes(random_image(24 + 8 * (i % 3), 32 + 8 * (i % 2), seed + i)))
        paths.append(str(path))
    return paths


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def numpy_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows as the numpy batch Ray Data hands a map_batches function."""
    batch = {}
    for key in rows[0]:
        column = np.empty(len(rows), dtype=object)
        column[:] = [row[key] for row in rows]
        batch[key] = column
    return batch


# ----------------------------------------------------------------------------- stages without Ray


@pytest.mark.parametrize(
    ("task", "architecture"),
    [("visual-question-answering", None), ("nlvr2", "ViltForImagesAndTextClassification"),
     ("fill-mask", "ViltForMaskedLM")],
)  # fmt: skip
def test_prepared_rows_and_a_replica_answer_as_the_pipeline(
    tmp_path: Path, task: str, architecture: str | None
) -> None:
    model = str(BUNDLED) if architecture is None else str(save_tiny(tmp_path / "model", architecture))
    images = write_images(tmp_path / "images", 5)
    text = {"visual-question-answering": "what color is the shape?", "nlvr2": "there is a shape",
            "fill-mask": "a [MASK] shape"}[task]  # fmt: skip
    columns = task_columns(task, ["image", "image_a", "image_b", "question", "text"])[0]
    rows = [{"row_id": i, **{c: images[(i + k) % 5] for k, c in enumerate(columns)}, "text": f"{text} {'!' * i}"}
            for i in range(5)]  # fmt: skip
    rows.insert(2, {"row_id": 5, **{c: str(tmp_path / "missing.png") for c in columns}, "text": text})
    prepared = prepare_rows(numpy_batch(rows), task, model)
    assert [e is None for e in prepared["error"]] == [True, True, False, True, True, True]
    assert "missing.png" in prepared["error"][2]
    answered = Predictor(task, model, "cpu", "float32", {"top_k": 3} if "question" in task else {})(prepared)
    pipe = vilt.pipeline(task, model, device="cpu", dtype="float32")
    good = [row for row in rows if "missing" not in str(row[columns[0]])]
    images_arg = [[row[c] for c in columns] if len(columns) > 1 else row[columns[0]] for row in good]
    kwargs = {"top_k": 3} if "question" in task else {}
    expected = pipe(images_arg, [row["text"] for row in good], **kwargs)
    got = [json.loads(r) for r in answered["result"] if r is not None]
    assert answered["result"][2] is None and list(answered["row_id"]) == [row["row_id"] for row in rows]
    for one, other in zip(got, expected):
        assert_same_answer(one, other)


def assert_same_answer(got: object, expected: object) -> None:
    """Same labels and texts; scores within float32's tolerance (batches pad differently)."""
    if isinstance(expected, dict):
        assert set(got) == set(expected)  # type: ignore[arg-type]
        for key in expected:
            assert_same_answer(got[key], expected[key])  # type: ignore[index]
    elif isinstance(expected, list):
        assert len(got) == len(expected)  # type: ignore[arg-type]
        for a, b in zip(got, expected):  # type: ignore[call-overload]
            assert_same_answer(a, b)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-4)  # type: ignore[operator]
    else:
        assert got == expected


def test_task_columns_name_what_is_missing() -> None:
    assert task_columns("nlvr2", ["images", "statement"]) == (("images",), "statement")
    with pytest.raises(ViltInputError, match="question or text; the table has image, caption"):
        task_columns("visual-question-answering", ["image", "caption"])


def test_read_table_resolves_image_paths_against_its_folder(tmp_path: Path) -> None:
    images = write_images(tmp_path / "data" / "images", 2)
    table = write_jsonl(tmp_path / "data" / "q.jsonl",
                        [{"image": "images/img0.png", "question": "q"}, {"image": images[1], "question": "q"},
                         {"image": "https://example.com/a.png", "question": "q"}])  # fmt: skip
    got = read_table(table).column("image").to_pylist()
    assert got == [images[0], images[1], "https://example.com/a.png"]
    with pytest.raises(ViltInputError, match="suffix"):
        read_table(tmp_path / "q.txt")
    (tmp_path / "broken.jsonl").write_text('{"image": \n')
    with pytest.raises(ViltInputError, match="not a readable json table"):
        read_table(tmp_path / "broken.jsonl")


# ----------------------------------------------------------------------------- committed parts


def test_parts_are_whole_files_keyed_by_row_range(tmp_path: Path) -> None:
    job = {"task": "vqa", "rows": 5}
    parts.open_job(tmp_path, job)
    assert parts.part_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    parts.write_part(tmp_path, 0, 2, pa.table({"row_id": [0, 1]}), "parquet")
    parts.write_part(tmp_path, 4, 5, pa.table({"row_id": [4]}), "jsonl")
    (tmp_path / ".part-000000000002-000000000004.parquet.vilt-tmp-1-abc").write_bytes(b"torn")
    assert sorted(parts.committed_parts(tmp_path)) == [(0, 2), (4, 5)]
    assert parts.read_parts(tmp_path).column("row_id").to_pylist() == [0, 1, 4]
    with pytest.raises(RuntimeError, match="expected 2"):
        parts.write_part(tmp_path, 2, 4, pa.table({"row_id": [2]}), "parquet")
    parts.open_job(tmp_path, job)  # the same job resumes
    with pytest.raises(ViltInputError, match="differs in: rows"):
        parts.open_job(tmp_path, {**job, "rows": 6})
    parts.open_job(tmp_path, {**job, "rows": 6}, overwrite=True)
    assert parts.committed_parts(tmp_path) == {}


# ----------------------------------------------------------------------------- ranking


def test_merged_top_k_and_recall() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.5]], np.float32)  # 2 images x 3 texts
    top, values = top_k_indices(scores, 2)
    assert top.tolist() == [[1, 2], [0, 2]] and np.allclose(values, [[0.9, 0.5], [0.8, 0.5]])
    # two blocks of candidates per row, merged: the best two overall, ties to the lower index
    idx, sc = _best(np.array([[3, 1]]), np.array([[0.5, 0.4]], np.float32),
                    np.array([[0, 7]]), np.array([[0.5, 0.9]], np.float32), 3)  # fmt: skip
    assert idx.tolist() == [[7, 0, 3]] and np.allclose(sc, [[0.9, 0.5, 0.5]])
    text_top = np.array([[1, 0], [0, 1], [1, -1]])  # per text, images best first
    image_top = np.array([[1, 2], [0, 2]])  # per image, texts best first
    metrics = recall_at_k(text_top, image_top, [[0], [0], [1]], 2)
    assert metrics["text_to_image_R@1"] == pytest.approx(2 / 3, abs=1e-4)
    assert metrics["text_to_image_R@5"] == 1.0
    assert metrics["image_to_text_R@1"] == 0.5  # image 0's best text (1) describes it, image 1's (0) not
    assert metrics["image_to_text_R@5"] == 1.0


def test_itm_head_becomes_an_exact_retrieval_head(tmp_path: Path) -> None:
    import torch

    itm_dir = save_tiny(tmp_path / "itm", "ViltForImageTextMatching")
    retrieval_model_from_itm(itm_dir, tmp_path / "retrieval")
    itm = vilt.ViltForImageTextMatching.from_pretrained(itm_dir).eval()
    retrieval = vilt.ViltForImageAndTextRetrieval.from_pretrained(tmp_path / "retrieval").eval()
    processor = vilt.ViltProcessor.from_pretrained(tmp_path / "retrieval")
    images = [random_image(32, 32, seed) for seed in range(3)]
    batch = processor(
        images=images, text=["a red circle", "two", "a blue shape"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = itm(**batch).logits
        scores = retrieval(**batch).logits[:, 0]
    torch.testing.assert_close(scores, logits[:, 1] - logits[:, 0], atol=1e-5, rtol=1e-5)


def test_read_corpus_ground_truth(tmp_path: Path) -> None:
    images = write_jsonl(tmp_path / "i.jsonl", [{"id": "a", "image": "x.png"}, {"id": "b", "image": "y.png"}])
    texts = write_jsonl(
        tmp_path / "t.jsonl", [{"text": "one", "image_ids": ["b"]}, {"text": "two", "image_ids": ["a", "b"]}]
    )
    corpus = read_corpus(images, texts)
    assert corpus.relevant == [[1], [0, 1]] and corpus.image_ids == ["a", "b"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "one", "image_id": "z"}])
    with pytest.raises(ViltInputError, match="unknown image id"):
        read_corpus(images, bad)
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"image": "x.png", "text": "t0"}, {"image": "y.png", "text": "t1"},
                                                {"image": "x.png", "text": "t2"}])  # fmt: skip
    corpus = read_corpus(pairs=pairs)
    assert len(corpus.images) == 2 and corpus.relevant == [[0], [1], [0]]


def test_vilt_batch_refuses_bad_input_in_one_line_before_ray_starts(tmp_path: Path, capsys) -> None:
    from vilt.cli import main

    table = write_jsonl(tmp_path / "q.jsonl", [{"image": "x.png", "caption": "a red circle"}])
    assert main(["batch", "vqa", "--input", str(table), "--output", str(tmp_path / "out")]) == 2
    assert "needs the column(s) question or text; the table has image, caption" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["batch", "nlvr2", "--input", str(table), "--output", str(tmp_path / "out")]) == 2
    assert "needs a model" in capsys.readouterr().err
    assert main(["batch", "rank", "--model", "m", "--output", str(tmp_path / "out")]) == 2
    assert "pass --images and --texts, or --input" in capsys.readouterr().err


def test_vilt_batch_help_imports_neither_ray_nor_torch() -> None:
    code = "import sys; from vilt.cli import build_parser; build_parser('batch'); print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- the real engine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A head and a worker node, one CPU each, shared by this module's slow tests."""
    from ray_cluster import LocalCluster

    local = LocalCluster(tmp_path_factory.mktemp("ray-cluster"), workers=1, cpus=1)
    try:
        yield local
    finally:
        local.stop()


def easy_vqa_rows(count: int) -> list[dict]:
    """``count`` easy-VQA test questions, with two bad rows (a missing image, an empty question)."""
    easy_vqa = pytest.importorskip("easy_vqa")
    questions, _, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    rows = [{"id": f"q{i}", "image": paths[image_ids[i]], "question": questions[i]} for i in range(count - 2)]
    rows.insert(count // 3, {"id": "missing", "image": "/no/such/image.png", "question": "what shape?"})
    rows.insert(count // 2, {"id": "empty", "image": paths[0], "question": "  "})
    return rows


def batch_command(table: Path, out: Path, *extra: str) -> list[str]:
    return [VILT, "batch", "vqa", "--input", str(table), "--output", str(out), "--dtype", "float32",
            "--part-rows", "25", "--batch-size", "16", "--quiet", *extra]  # fmt: skip


def wait_for_parts(out: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(parts.committed_parts(out)) < count:
        assert process.poll() is None, f"the job ended before {count} parts were committed"
        assert time.monotonic() < deadline, f"fewer than {count} parts after {timeout} s"
        time.sleep(0.2)


def check_output(out: Path, rows: list[dict]) -> None:
    """Every input row exactly once, answered as the in-process pipeline answers it."""
    table = parts.read_parts(out).to_pylist()
    assert [row["row_id"] for row in table] == list(range(len(rows)))  # each row once, none lost
    assert [row["id"] for row in table] == [row["id"] for row in rows]
    vqa = vilt.pipeline("vqa", device="cpu", dtype="float32")
    good = [i for i, row in enumerate(rows) if row["id"] not in ("missing", "empty")]
    expected = vqa([rows[i]["image"] for i in good], [rows[i]["question"] for i in good], top_k=5)
    for i, answers in zip(good, expected):
        assert table[i]["error"] is None
        assert_same_answer(json.loads(table[i]["result"]), answers)
        assert table[i]["answer"] == answers[0]["answer"]
    by_id = {row["id"]: row for row in table}
    assert "FileNotFoundError" in by_id["missing"]["error"] and by_id["missing"]["result"] is None
    assert "empty" in by_id["empty"]["error"]


@pytest.mark.slow
def test_batch_job_killed_and_rerun_resumes_on_an_embedded_ray(tmp_path: Path) -> None:
    rows = easy_vqa_rows(300)
    table = write_jsonl(tmp_path / "q.jsonl", rows)
    out = tmp_path / "out"
    job = subprocess.Popen(batch_command(table, out), start_new_session=True, stderr=subprocess.PIPE)
    try:
        wait_for_parts(out, 2, job)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the driver and the Ray it embeds
        job.wait()
    before = {r: (p.stat().st_ino, p.stat().st_mtime_ns) for r, p in parts.committed_parts(out).items()}
    assert 2 <= len(before) < 12
    subprocess.run(batch_command(table, out), check=True, capture_output=True, timeout=600)
    after = parts.committed_parts(out)
    assert len(after) == 12
    assert {
        r: (after[r].stat().st_ino, after[r].stat().st_mtime_ns) for r in before
    } == before  # kept as they were
    check_output(out, rows)


@pytest.mark.slow
def test_batch_on_two_nodes_matches_the_pipeline_and_survives_a_node_kill(cluster, tmp_path: Path) -> None:
    rows = easy_vqa_rows(400)
    table = write_jsonl(tmp_path / "q.jsonl", rows)
    out = tmp_path / "out"
    command = batch_command(table, out, "--address", cluster.address, "--replicas", "2",
                            "--replica-cpus", "0.4", "--decode-cpus", "0.2")  # fmt: skip
    job = subprocess.Popen(command, env=cluster.env, stderr=subprocess.PIPE, text=True)
    worker = cluster.nodes[1]
    try:
        wait_for_parts(out, 1, job)
        cluster.kill_raylet(worker)
        killed_at = len(parts.committed_parts(out))
        _, stderr = job.communicate(timeout=600)
        assert job.returncode == 0, stderr[-3000:]
        assert killed_at < 16  # the node died mid-job
        check_output(out, rows)
    finally:
        job.kill()
        cluster.stop_node(worker)  # what is left of the dead node
        cluster.nodes.remove(worker)
        cluster.add_worker(1)
        cluster.wait_for_nodes(2)


@pytest.mark.slow
def test_rank_on_two_nodes_matches_the_pipeline_and_resumes(cluster, tmp_path: Path) -> None:
    model = save_tiny(tmp_path / "model", "ViltForImageAndTextRetrieval")
    images = write_images(tmp_path / "images", 12)
    image_rows = [{"id": f"i{n}", "image": p} for n, p in enumerate(images)]
    image_table = write_jsonl(tmp_path / "images.jsonl", [*image_rows, {"id": "bad", "image": "missing.png"}])
    texts = [f"a picture number {n} of {'red blue green'.split()[n % 3]} noise" for n in range(30)]
    text_rows = [{"text": t, "image_ids": [f"i{n % 12}"]} for n, t in enumerate(texts)]
    text_table = write_jsonl(tmp_path / "texts.jsonl", [*text_rows, {"text": "  ", "image_ids": []}])
    out = tmp_path / "ranked"
    command = [VILT, "batch", "rank", "--images", str(image_table), "--texts", str(text_table), "--model", str(model),
               "--output", str(out), "--dtype", "float32", "--image-block", "5", "--text-block", "12",
               "--batch-size", "64", "--task-cpus", "0.5", "--top-k", "4", "--quiet", "--address", cluster.address]  # fmt: skip
    first = json.loads(
        subprocess.run(command, env=cluster.env, check=True, capture_output=True, text=True).stdout
    )
    assert first["pairs"] == first["pairs_scored_this_run"] == 12 * 31
    assert first["bad_images"] == first["bad_texts"] == 1

    scores = vilt.pipeline("retrieval", str(model), device="cpu", dtype="float32")(images=images, texts=texts)
    text_top, text_scores = top_k_indices(scores.T, 4)
    table = pq.read_table(out / "text_to_images.parquet").to_pylist()
    assert [row["top"] for row in table[:30]] == [[f"i{i}" for i in top] for top in text_top]
    np.testing.assert_allclose([row["scores"] for row in table[:30]], text_scores, atol=1e-5)
    assert table[30]["top"] == [] and "empty" in table[30]["error"]  # the empty text, ranked nowhere
    image_top, _ = top_k_indices(scores, 4)
    table = pq.read_table(out / "image_to_texts.parquet").to_pylist()
    assert [row["top"] for row in table[:12]] == [[str(j) for j in top] for top in image_top]
    assert table[12]["top"] == [] and "missing.png" in table[12]["error"]
    relevant = [[n % 12] for n in range(30)]
    expected = recall_at_k(top_k_indices(scores.T, 10)[0], top_k_indices(scores, 10)[0], relevant, 12)
    assert {k: v for k, v in first.items() if "R@" in k} == expected

    cached = sorted((out / "image-tokens").rglob("*.safetensors"))
    assert len(cached) == 12
    again = json.loads(
        subprocess.run(command, env=cluster.env, check=True, capture_output=True, text=True).stdout
    )
    assert again["pairs_scored_this_run"] == 0 and {k: v for k, v in again.items() if "R@" in k} == expected
    assert sorted((out / "image-tokens").rglob("*.safetensors")) == cached


def replica_pids(cluster, node) -> list[int]:
    """The model replicas (ViltReplica actors) running on a node of the cluster: the processes so named
    whose parents lead to one of the node's processes (its raylet starts them)."""
    ours = set(cluster.group_pids(node))
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"ServeReplica:vilt:ViltReplica" in (entry / "cmdline").read_bytes():
                pid = int(entry.name)
                while pid > 1 and pid not in ours:
                    pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if pid in ours:
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_serve_replicas_across_nodes_answer_as_the_server_and_survive_a_replica_kill(
    cluster, tmp_path: Path
) -> None:
    import threading
    from collections import Counter

    import httpx
    from serve_process import free_port, wait_for

    easy_vqa = pytest.importorskip("easy_vqa")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([VILT, "serve", "--replicas", "2", "--replica-cpus", "0.5", "--port", str(port),
                               "--address", cluster.address], env=cluster.env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    image = Path(easy_vqa.get_test_image_paths()[0]).read_bytes()

    def ask(client: httpx.Client) -> httpx.Response:
        return client.post(f"{url}/v1/vqa", files={"image": ("x.png", image, "image/png")},
                           data={"question": "what color is the shape?"})  # fmt: skip

    try:
        wait_for(lambda: _status(f"{url}/readyz") == 200, 300, "the replicas to be ready")
        # one replica on each node
        assert [len(replica_pids(cluster, node)) for node in cluster.nodes] == [1, 1]
        with httpx.Client(timeout=30) as client:
            assert client.get(url + "/").headers["content-type"].startswith("text/html")
            expected = vilt.pipeline("vqa")(
                str(easy_vqa.get_test_image_paths()[0]), "what color is the shape?"
            )
            answers = ask(client).json()["answers"]
            assert [a["answer"] for a in answers] == [a["answer"] for a in expected]
            bad = client.post(f"{url}/v1/vqa", json={"image": "x", "question": ""})
            assert bad.status_code == 422 and "question" in bad.json()["error"]

        statuses: Counter = Counter()
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    try:
                        response = ask(client)
                        clear = response.status_code == 200 or "error" in response.json()
                        statuses[response.status_code if clear else "unclear"] += 1
                    except httpx.TimeoutException:
                        statuses["timeout"] += 1

        threads = [threading.Thread(target=load) for _ in range(6)]
        for thread in threads:
            thread.start()
        wait_for(lambda: statuses[200] >= 20, 60, "answers under load")
        victim = replica_pids(cluster, cluster.nodes[1])[0]
        os.kill(victim, signal.SIGKILL)
        served_before = statuses[200]
        # Serve starts a new replica; meanwhile the other one answers
        wait_for(lambda: sum(len(replica_pids(cluster, n)) for n in cluster.nodes) == 2 and victim not in
                 replica_pids(cluster, cluster.nodes[1]), 120, "the replica to come back")  # fmt: skip
        wait_for(lambda: statuses[200] >= served_before + 20, 60, "answers after the kill")
        stop.set()
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive()  # nothing hangs
        assert set(statuses) <= {200, 503} and statuses[200] > 0, statuses
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _status(url: str) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0
