"""Benchmark: inference on Ray (vilt.scale) against the same work in one process, side by side.

Sections (``--only`` picks some; each reports ratios measured in this run, on this machine):

* ``batch``: ``vilt batch vqa`` on an embedded one-node Ray (2 replicas of 1 thread, CPU decoding tasks)
  against the in-process pipeline (``vilt.pipeline("vqa")`` on the same rows, all cores), easy-VQA rows
  and the bundled model, from files to answers. Each round runs a 64-row job and then the long one:
  "in all" is the long job's rate (model load and Ray's workers starting included; Ray's own start not,
  a session pays it once), "beyond the start" the extra rows over the extra time, i.e. the rate once
  running, without the fixed start. The rounds alternate between the contestants.
* ``nodes``: the same job on a local Ray cluster of one node (1 CPU, 1 replica) and of two nodes (1 CPU
  each, 2 replicas), started on this machine (tests/ray_cluster.py), each from a fresh driver process:
  the rate in all, scaling as measured on this machine's cores.
* ``rank``: image-text ranking in pairs per second: transformers' way (``ViltForImageAndTextRetrieval``
  called on each batch of 32 (image, text) pairs, float32, the processor run on each batch), ours in
  process (each image embedded once, 1024 pairs per forward, float32 and the CPU's default dtype), and
  ``vilt.scale.ranking.rank`` on an embedded Ray (tasks of blocks, image tokens cached, default dtype).
* ``serve``: requests per second of the single server (``vilt serve --threads 1``), and of ``vilt serve
  --replicas 1`` and ``--replicas 2`` (1 CPU each) on an embedded Ray Serve, under the same closed-loop
  load of image uploads.

Run: ``flock /tmp/vilt-bench.lock python benchmarks/bench_scale.py --out benchmarks/results/scale.txt``
(needs ``vilt[scale]``, ``easy-vqa``, ``transformers``; ``--model`` a retrieval model directory, e.g.
``runs/retrieval-easy-vqa/model`` from examples/pretrain_retrieval_easy_vqa.sh).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import machine_info

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the local multi-node cluster of the tests
sys.path.insert(0, str(ROOT / "examples"))


def rounds(contestants: dict[str, Callable[[], float]], repetitions: int) -> dict[str, list[float]]:
    """Each contestant's measured seconds per round, the order rotating every round."""
    names = list(contestants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repetitions):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(contestants[name]())
    return seconds


def vqa_table(folder: Path, rows: int) -> Path:
    from easy_vqa_corpus import questions

    path = folder / f"q{rows}.jsonl"
    if not path.exists():
        questions(path, rows)
    return path


SMALL_JOB = 64  # rows of the short job whose time, taken from the long one's, leaves the per-row cost


def in_process_vqa(table: Path) -> float:
    """Seconds to answer the table in this process: read it, load the model, answer every row."""
    import vilt
    from vilt.scale.batch import read_table

    start = time.perf_counter()
    rows = read_table(table).to_pylist()
    vqa = vilt.pipeline("vqa")
    vqa([row["image"] for row in rows], [row["question"] for row in rows], top_k=5)
    return time.perf_counter() - start


def ray_vqa(table: Path, **options: object) -> float:
    """Seconds of a whole ``vilt batch vqa`` job (a fresh output directory) on the embedded Ray."""
    from vilt.scale import batch

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        batch.run("vqa", table, out, progress=False, **options)
        return time.perf_counter() - start


def short_and_long(
    job: Callable[[Path], float], small: Path, large: Path
) -> Callable[[], tuple[float, float]]:
    """A round: the short job, then the long one; (the long one's seconds, the seconds it took more)."""

    def run() -> tuple[float, float]:
        short = job(small)
        long = job(large)
        return long, long - short

    return run


def describe(
    name: str, rows: int, values: list[tuple[float, float]], base: float | None
) -> tuple[str, float]:
    """A result line: rows per second in all (the long job) and per extra row (its time beyond the short one's)."""
    total = statistics.median(seconds for seconds, _ in values)
    rate = statistics.median((rows - SMALL_JOB) / extra for _, extra in values)
    versus = "" if base is None else f" ({rate / base - 1:+.1%} vs in-process)"
    return (f"{name:22s} {rate:7.1f} rows/s beyond the start{versus}   in all {total:6.2f} s = "
            f"{rows / total:6.1f} rows/s   (rounds: {', '.join(f'{t:.1f}/{e:.1f} s' for t, e in values)})"), rate  # fmt: skip


def bench_batch(rows: int, repetitions: int) -> list[str]:
    from vilt.scale.cluster import connect

    folder = Path(tempfile.mkdtemp())
    small, large = vqa_table(folder, SMALL_JOB), vqa_table(folder, rows)
    ray = connect(None)
    options = {"replicas": 2, "replica_cpus": 0.75, "decode_cpus": 0.25, "part_rows": max(1, rows // 20)}
    measured = rounds({
        "in-process pipeline": short_and_long(in_process_vqa, small, large),
        "embedded Ray, 1 node": short_and_long(lambda table: ray_vqa(table, **options), small, large),
    }, repetitions)  # fmt: skip
    ray.shutdown()
    lines = [f"## batch: {rows} easy-VQA rows, bundled model, median of {repetitions} alternating rounds",
             f"(in all: the {rows}-row job from the table to the answers, the model load and Ray's workers "
             f"starting included, Ray itself started before; beyond the start: the rows past {SMALL_JOB} over "
             f"the time the {rows}-row job took more than a {SMALL_JOB}-row one, i.e. without the fixed start; "
             "rounds: in all / more)", ""]  # fmt: skip
    line, base = describe("in-process pipeline", rows, measured["in-process pipeline"], None)
    lines.append(line)
    lines.append(describe("embedded Ray, 1 node", rows, measured["embedded Ray, 1 node"], base)[0])
    return lines


def job_in_subprocess(table: Path, address: str, env: dict[str, str], **options: object) -> float:
    """Seconds of a ``vilt batch vqa`` job driven from a fresh process that joins the cluster at ``address``."""
    import subprocess

    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    with tempfile.TemporaryDirectory() as out:
        command = [str(Path(sys.executable).with_name("vilt")), "batch", "vqa", "--input", str(table),
                   "--output", out, "--address", address, "--quiet", *flags]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        return time.perf_counter() - start


def bench_nodes(rows: int, repetitions: int) -> list[str]:
    """Whole jobs (a fresh driver each) on one 1-CPU node, then on two: their rate in all. (The start of a
    job joining a cluster varies by tens of seconds here, so a short job's time says little about it.)"""
    from ray_cluster import LocalCluster

    folder = Path(tempfile.mkdtemp())
    table = vqa_table(folder, rows)
    cluster = LocalCluster(folder, workers=0, cpus=1)
    options = {"replica_cpus": 0.75, "decode_cpus": 0.25, "part_rows": max(1, rows // 20)}
    try:
        one = [
            job_in_subprocess(table, cluster.address, cluster.env, replicas=1, **options)
            for _ in range(repetitions)
        ]
        cluster.add_worker(0)
        cluster.wait_for_nodes(2)
        two = [
            job_in_subprocess(table, cluster.address, cluster.env, replicas=2, **options)
            for _ in range(repetitions)
        ]
    finally:
        cluster.stop()
    a, b = statistics.median(one), statistics.median(two)
    return [
        f"## nodes: {rows} easy-VQA rows on a local cluster of 1-CPU Ray nodes on this machine ({os.cpu_count()} "
        f"cores, shared with whatever else runs), each job a fresh driver process joining the cluster, "
        f"median of {repetitions}", "",
        f"1 node,  1 replica    {a:6.1f} s = {rows / a:6.1f} rows/s in all   (rounds {', '.join(f'{t:.1f}' for t in one)} s)",
        f"2 nodes, 2 replicas   {b:6.1f} s = {rows / b:6.1f} rows/s in all   (rounds {', '.join(f'{t:.1f}' for t in two)} s)",
        f"2 nodes / 1 node: {a / b:.2f}x",
    ]  # fmt: skip


def bench_rank(model: str, num_images: int, num_texts: int, repetitions: int) -> list[str]:
    import numpy as np
    import torch
    import transformers
    from easy_vqa_corpus import corpus

    import vilt
    from vilt.scale import ranking
    from vilt.scale.cluster import connect

    folder = Path(tempfile.mkdtemp())
    corpus(folder / "images.jsonl", folder / "texts.jsonl", num_images, max(1, num_texts // num_images))
    data = ranking.read_corpus(folder / "images.jsonl", folder / "texts.jsonl")
    images, texts = data.images[:num_images], data.texts[:num_texts]
    pairs = len(images) * len(texts)

    reference = transformers.ViltForImageAndTextRetrieval.from_pretrained(model).eval()
    processor = transformers.ViltProcessor.from_pretrained(model)
    from PIL import Image

    def transformers_way() -> np.ndarray:
        scores = np.zeros((len(images), len(texts)), np.float32)
        with torch.inference_mode():
            for i, path in enumerate(images):
                image = Image.open(path).convert("RGB")
                for start in range(0, len(texts), 32):
                    chunk = texts[start : start + 32]
                    encoding = processor(
                        images=[image] * len(chunk), text=chunk, padding=True, return_tensors="pt"
                    )
                    scores[i, start : start + len(chunk)] = reference(**encoding).logits[:, 0].numpy()
        return scores

    ours32 = vilt.pipeline("retrieval", model, dtype="float32")
    ours = vilt.pipeline("retrieval", model)
    results: dict[str, np.ndarray] = {}

    def timed(name: str, work: Callable[[], np.ndarray | None]) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            out = work()
            if out is not None:
                results[name] = out
            return time.perf_counter() - start

        return run

    def on_ray() -> None:
        with tempfile.TemporaryDirectory() as out:
            ranking.rank(ranking.Corpus(images, texts, list(range(len(images))), list(range(len(texts))), None),
                         model, out, batch_size=1024, image_block=max(1, len(images) // 2),
                         text_block=len(texts), progress=False)  # fmt: skip

    ray = connect(None)
    seconds = rounds({
        "transformers, 32 pairs per call, float32": timed("reference", transformers_way),
        "vilt in-process, float32": timed("ours32", lambda: ours32(images=images, texts=texts, batch_size=1024)),
        f"vilt in-process, {ours.dtype}": timed("ours", lambda: ours(images=images, texts=texts, batch_size=1024)),
        f"vilt.scale rank, embedded Ray, {ours.dtype}": timed("ray", on_ray),
    }, repetitions)  # fmt: skip
    ray.shutdown()
    base = statistics.median(seconds["transformers, 32 pairs per call, float32"])
    lines = [f"## rank: {len(images)} images x {len(texts)} texts = {pairs} pairs, model {model}, "
             f"median of {repetitions} alternating rounds", ""]  # fmt: skip
    for name, values in seconds.items():
        median = statistics.median(values)
        lines.append(f"{name:44s} {pairs / median:9.1f} pairs/s  {base / median:6.2f}x transformers")
    difference = float(np.abs(results["ours32"] - results["reference"]).max())
    lines.append(f"largest score difference, vilt float32 vs transformers: {difference:.2e}")
    return lines


def closed_loop(url: str, seconds: float, clients: int) -> tuple[float, dict[str, int]]:
    """Requests per second answered 200 by ``clients`` clients each sending the next request as soon as the
    last is answered (an easy-VQA image upload to /v1/vqa), over ``seconds``; and the statuses seen."""
    import threading
    from collections import Counter

    import easy_vqa
    import httpx

    image = Path(easy_vqa.get_test_image_paths()[0]).read_bytes()
    statuses: Counter = Counter()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                response = http.post(f"{url}/v1/vqa", files={"image": ("x.png", image, "image/png")},
                                     data={"question": "what color is the shape?"})  # fmt: skip
                statuses[str(response.status_code)] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(2)  # warm up
    before, start = statuses["200"], time.perf_counter()
    time.sleep(seconds)
    answered, elapsed = statuses["200"] - before, time.perf_counter() - start
    stop.set()
    for thread in threads:
        thread.join()
    return answered / elapsed, dict(statuses)


def bench_serve(seconds: float, clients: int) -> list[str]:
    import subprocess

    from serve_process import free_port, wait_for

    def ready(url: str) -> bool:
        import httpx

        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    vilt_command = str(Path(sys.executable).with_name("vilt"))
    setups = {
        "single server (vilt serve --threads 1)": ["--threads", "1"],
        "Ray Serve, 1 replica of 1 CPU": ["--replicas", "1", "--replica-cpus", "1"],
        "Ray Serve, 2 replicas of 1 CPU": ["--replicas", "2", "--replica-cpus", "1"],
    }
    lines = [f"## serve: closed loop of {clients} clients for {seconds:.0f} s, easy-VQA image uploads to /v1/vqa, "
             "bundled model, embedded Ray on this machine", ""]  # fmt: skip
    rates = {}
    for name, flags in setups.items():
        port = free_port()
        with tempfile.TemporaryFile() as log:
            server = subprocess.Popen([vilt_command, "serve", "--port", str(port), *flags], stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            try:
                wait_for(lambda port=port: ready(f"http://127.0.0.1:{port}"), 300, name)
                rates[name], statuses = closed_loop(f"http://127.0.0.1:{port}", seconds, clients)
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
        lines.append(f"{name:40s} {rates[name]:7.1f} requests/s   (statuses {statuses})")
    one, two = rates["Ray Serve, 1 replica of 1 CPU"], rates["Ray Serve, 2 replicas of 1 CPU"]
    lines.append(f"2 replicas / 1 replica: {two / one:.2f}x; 1 replica / single server: "
                 f"{one / rates['single server (vilt serve --threads 1)']:.2f}x")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", default=["batch", "nodes", "rank", "serve"])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--model", default=str(ROOT / "runs" / "retrieval-easy-vqa" / "model"))
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--serve-seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated run still stops its clusters
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the local test cluster runs without tokens
    lines = ["# vilt.scale benchmarks (benchmarks/bench_scale.py)", ""]
    lines += [f"{key}: {value}" for key, value in machine_info().items()]
    lines.append(f"command: python benchmarks/bench_scale.py {' '.join(sys.argv[1:])}")
    for section in args.only:
        lines.append("")
        if section == "batch":
            lines += bench_batch(args.rows, args.repetitions)
        elif section == "nodes":
            lines += bench_nodes(args.rows, args.repetitions)
        elif section == "rank":
            lines += bench_rank(args.model, args.images, args.texts, args.repetitions)
        elif section == "serve":
            lines += bench_serve(args.serve_seconds, args.clients)
        print("\n".join(lines[-8:]), flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
