"""Toy data and the tiny model's ``vilt train`` flags for the training tests (imported by
tests/test_train_*.py; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tiny import HIDDEN_SIZE, IMAGE_SIZE, INTERMEDIATE_SIZE, NUM_HEADS, NUM_LAYERS, PATCH_SIZE

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}

# `vilt train` flags of the tiny model (tiny.py), on one thread
TINY_FLAGS = [
    "--image-size", str(IMAGE_SIZE), "--patch-size", str(PATCH_SIZE), "--shortest-edge", str(IMAGE_SIZE),
    "--hidden-size", str(HIDDEN_SIZE), "--num-layers", str(NUM_LAYERS), "--num-heads", str(NUM_HEADS),
    "--intermediate-size", str(INTERMEDIATE_SIZE), "--threads", "1",
]  # fmt: skip


def write_image(path: Path, colour: str, size: int = 32) -> str:
    """A solid-colour PNG with a little noise; returns its path."""
    rng = np.random.default_rng(zlib.crc32(f"{path.name}-{colour}".encode()))
    pixels = np.clip(np.array(COLOURS[colour])[None, None] + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return str(path)


def write_colour_vqa(root: Path, images: int = 24, questions: int = 2) -> Path:
    """A generic jsonl VQA set: "what color is it?" about solid-colour images; returns the jsonl path."""
    names = list(COLOURS)
    lines = []
    for i in range(images):
        colour = names[i % len(names)]
        write_image(root / "img" / f"{i}.png", colour)
        for q in range(questions):
            text = ["what color is it?", "which colour is shown?"][q % 2]
            lines.append({"image": f"img/{i}.png", "text": text, "answer": colour})
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def toy_train_flags(root: Path, output: Path, *extra: str) -> list[str]:
    """``vilt train`` arguments (no program name) for the colour-VQA toy set in ``root``."""
    data = write_colour_vqa(root)
    return ["train", "--dataset", "jsonl", "--train-data", str(data), "--val-fraction", "0.25",
            "--output-dir", str(output), *TINY_FLAGS, *extra]  # fmt: skip


def pretrain_command(root: Path, output: Path, epochs: int = 4) -> list[str]:
    """A full ``python -m vilt.cli train`` command pretraining a tiny model on toy captions in ``root``.

    Pretraining draws masks and ITM negatives from the RNG, so resuming it exactly needs the RNG
    restored exactly. Steps: 18 training captions / batch 4 = 4 per epoch."""
    captions = root / "captions.jsonl"
    if not captions.exists():
        lines = []
        for i, colour in enumerate(["red", "green", "blue"] * 8):
            write_image(root / "img" / f"{i}.png", colour)
            lines.append({"image": f"img/{i}.png", "text": f"a {colour} square"})
        captions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return [sys.executable, "-m", "vilt.cli", "train", "--task", "pretrain", "--dataset", "jsonl",
            "--train-data", str(captions), "--val-fraction", "0.25", "--output-dir", str(output), *TINY_FLAGS,
            "--batch-size", "4", "--epochs", str(epochs), "--save-every", "2", "--eval-every", "8",
            "--log-every", "1"]  # fmt: skip
