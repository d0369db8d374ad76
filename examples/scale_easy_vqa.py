"""`vilt batch vqa` on a 10,000-row easy-VQA table: embedded, then on a two-node cluster that loses a node.

1. Write the table: the easy-VQA test questions in order, repeated up to --rows (image, question, answer).
2. `vilt batch vqa --input q.jsonl --output embedded/`: no cluster configured, a Ray embedded in the command.
3. Start a local Ray cluster of two 1-CPU nodes on this machine (tests/ray_cluster.py), run the same
   command with `--address` and 2 replicas, and kill the worker node's raylet once 3 parts are committed.
4. Check: both outputs hold every row exactly once; the answers agree row by row, scores within the
   dtype's tolerance; accuracy against easy-VQA's answers.

Usage: python examples/scale_easy_vqa.py [--rows 10000] [--work runs/scale-easy-vqa]
Writes results/scale-easy-vqa/batch.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the local multi-node cluster of the tests

from easy_vqa_corpus import questions  # noqa: E402
from ray_cluster import LocalCluster  # noqa: E402

from vilt.scale.parts import committed_parts, read_parts  # noqa: E402

VILT = str(Path(sys.executable).with_name("vilt"))


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, out.stdout.strip().splitlines()[
        -1
    ]  # the summary (Ray may print above)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "scale-easy-vqa")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = ROOT / "results" / "scale-easy-vqa"
    results.mkdir(parents=True, exist_ok=True)
    table = args.work / "q.jsonl"
    questions(table, args.rows)
    common = ["--input", str(table), "--part-rows", "500", "--quiet"]
    lines = [f"`vilt batch vqa` on {args.rows} easy-VQA test questions, bundled model (examples/scale_easy_vqa.py)",
             f"CPU: {cpu()}, {os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.1f}", ""]  # fmt: skip

    embedded = args.work / "embedded"
    seconds, summary = run([VILT, "batch", "vqa", *common, "--output", str(embedded), "--overwrite"])
    lines.append(f"embedded Ray (no cluster configured): {seconds:.0f} s, {summary}")

    cluster = LocalCluster(args.work, workers=1, cpus=1)
    try:
        out = args.work / "cluster"
        command = [VILT, "batch", "vqa", *common, "--output", str(out), "--overwrite", "--address", cluster.address,
                   "--replicas", "2", "--replica-cpus", "0.4", "--decode-cpus", "0.2"]  # fmt: skip
        start = time.perf_counter()
        job = subprocess.Popen(
            command, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        while len(committed_parts(out)) < 3 and job.poll() is None:
            time.sleep(0.2)
        cluster.kill_raylet(cluster.nodes[1])
        killed_at = len(committed_parts(out))
        stdout, stderr = job.communicate()
        if job.returncode:
            raise SystemExit(f"the cluster job failed: {stderr[-2000:]}")
        lines.append(f"two-node cluster, 2 replicas, worker node's raylet killed after {killed_at} of "
                     f"{-(-args.rows // 500)} parts: {time.perf_counter() - start:.0f} s, {stdout.strip().splitlines()[-1]}")  # fmt: skip
    finally:
        cluster.stop()

    a, b = read_parts(embedded).to_pylist(), read_parts(out).to_pylist()
    truth = [json.loads(line)["answer"] for line in table.open()]
    once = [row["row_id"] for row in a] == [row["row_id"] for row in b] == list(range(args.rows))
    same = sum(x["answer"] == y["answer"] for x, y in zip(a, b))
    diff = max(abs(x["score"] - y["score"]) for x, y in zip(a, b))
    lines += [
        f"every row exactly once in both outputs: {once}",
        f"same answer in both: {same} of {args.rows} rows; largest score difference {diff:.2e}",
        f"accuracy against easy-VQA's answers: {sum(r['answer'] == t for r, t in zip(a, truth)) / args.rows:.4f}",
    ]
    text = "\n".join(lines) + "\n"
    (results / "batch.txt").write_text(text)
    print(text)


def cpu() -> str:
    with open("/proc/cpuinfo") as fh:
        return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))


if __name__ == "__main__":
    main()
