"""Do two checkouts train alike? Short runs of every trainable task, compared step by step.

Each checkout's ``src/`` trains, in a fresh process, the tiny model of the tests (one thread) for 6
steps of each task (vqa, nlvr2, retrieval, pretrain) on toy data (solid-colour images: questions, pairs,
captions), with RandAugment and validation every 3 steps, from seed 0. The fingerprint of a run is its
``log.csv`` (every training loss, learning rate and validation metric, 6 significant digits) and a
sha256 of its final weights. A change that should not change training (a refactor) must give the same
fingerprints as the code before it:

    python benchmarks/train_fingerprint.py --baseline /path/to/other/checkout/src

prints, per task, whether the logs and the weights are equal (exit code 1 if any differs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import csv, hashlib, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])  # tests/, for the toy data and the tiny model's flags
import torch
from train_toy import TINY_FLAGS, write_colour_vqa, write_image
from vilt.cli import main

def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\\n" for r in rows))
    return path

tmp = Path(sys.argv[1])
colours = ["red", "green", "blue"] * 4
images = [write_image(tmp / "img" / f"{i}.png", c) for i, c in enumerate(colours)]
pairs = [{"images": [images[i], images[(i + 1) % 12]], "text": f"both are {colours[i]}",
          "label": int(colours[i] == colours[(i + 1) % 12])} for i in range(12)] * 2
captions = [{"image": p, "text": f"a {c} square"} for p, c in zip(images, colours)] * 2
data = {"vqa": write_colour_vqa(tmp / "vqa"), "nlvr2": jsonl(tmp / "pairs.jsonl", pairs),
        "retrieval": jsonl(tmp / "captions.jsonl", captions), "pretrain": jsonl(tmp / "captions.jsonl", captions)}
fingerprints = {}
for task, path in data.items():
    out = tmp / f"run-{task}"
    argv = ["train", "--task", task, "--dataset", "jsonl", "--train-data", str(path), "--val-fraction", "0.25",
            "--output-dir", str(out), *TINY_FLAGS, "--max-steps", "6", "--batch-size", "4", "--log-every", "1",
            "--eval-every", "3", "--negatives", "2", "--randaugment"]
    assert main(argv) == 0
    with open(out / "log.csv") as fh:
        log = [row[1:] for row in list(csv.reader(fh))[1:]]  # without the elapsed seconds
    state = torch.load(out / "last.pt", weights_only=True)["model"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].float().numpy().tobytes())
    fingerprints[task] = {"log": log, "weights": digest.hexdigest()}
print(json.dumps(fingerprints))
"""


def fingerprints(src: Path) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [sys.executable, "-c", RUN, tmp, str(ROOT / "tests")], env=env, capture_output=True, text=True
        )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout's src/")
    args = parser.parse_args()
    now, before = fingerprints(ROOT / "src"), fingerprints(args.baseline)
    same = True
    for task in before:
        logs = now[task]["log"] == before[task]["log"]
        weights = now[task]["weights"] == before[task]["weights"]
        same &= logs and weights
        print(
            f"{task:<10} {len(now[task]['log']):>3} log rows equal: {logs}; final weights equal: {weights} "
            f"(sha256 {now[task]['weights'][:16]})"
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
