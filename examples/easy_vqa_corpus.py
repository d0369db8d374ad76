"""Write easy-VQA tables for `vilt batch`: questions (vqa) and a retrieval corpus (rank).

    python examples/easy_vqa_corpus.py questions OUT.jsonl [--rows 10000]
        one row per easy-VQA test question (image, question, id, answer), repeated in order up to --rows
    python examples/easy_vqa_corpus.py corpus IMAGES.jsonl TEXTS.jsonl [--images 1000] [--texts-per-image 5]
        the test images and, for each, texts describing it ("a red triangle") in several wordings; each
        text's ground truth (image_ids) is every image of the same colour and shape.

Each easy-VQA image is one shape of one flat colour on a plain background, so its colour and shape are
read off its pixels: the colour is the most common non-background pixel (one of 8 exact RGB values),
the shape follows from the share of its bounding box it fills (triangle about 0.5, circle about 0.8,
rectangle 1). That reading is checked against the captions the questions tell (as in pretraining,
vilt.train.data.easy_vqa_captions, known for 880 of the 1,000 test images) and must agree on all of them.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from vilt.train.data import easy_vqa_captions, read_easy_vqa

COLOURS = {(255, 0, 0): "red", (0, 255, 0): "green", (0, 0, 255): "blue", (255, 255, 0): "yellow",
           (0, 0, 0): "black", (128, 128, 128): "gray", (0, 128, 128): "teal", (165, 42, 42): "brown"}  # fmt: skip

# wordings of a caption "a {colour} {shape}"; the first is the pretraining captions' own
TEMPLATES = ("a {colour} {shape}", "the {colour} {shape}", "a {colour} {shape} .", "one {colour} {shape}",
             "there is a {colour} {shape}")  # fmt: skip


def questions(out: Path, rows: int) -> None:
    examples = read_easy_vqa("test")
    with out.open("w") as fh:
        for n, ex in zip(range(rows), itertools.cycle(examples)):
            answer = next(iter(ex.answer_scores))
            fh.write(
                json.dumps({"id": n, "image": ex.images[0], "question": ex.text, "answer": answer}) + "\n"
            )


def caption_of(path: str) -> str:
    """ "a {colour} {shape}" read off an easy-VQA image's pixels."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)  # (H, W, 3)
    shape_pixels = np.abs(pixels - pixels[0, 0]).sum(-1) > 60  # (H, W) off the background colour
    ys, xs = np.nonzero(shape_pixels)
    fill = shape_pixels.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    colour = COLOURS[Counter(map(tuple, pixels[shape_pixels].tolist())).most_common(1)[0][0]]
    return f"a {colour} {'triangle' if fill < 0.71 else 'circle' if fill < 0.915 else 'rectangle'}"


def corpus(images_out: Path, texts_out: Path, num_images: int, per_image: int) -> None:
    examples = read_easy_vqa("test")
    images = list(dict.fromkeys((ex.group, ex.images[0]) for ex in examples))[:num_images]
    captions = {group: caption_of(path) for group, path in images}
    group_of = {path: group for group, path in images}
    told = {group_of[ex.images[0]]: ex.text for ex in easy_vqa_captions(examples) if ex.images[0] in group_of}
    wrong = {group: (told[group], captions[group]) for group in told if told[group] != captions[group]}
    if wrong:
        raise SystemExit(f"pixels and questions disagree on {len(wrong)} images: {list(wrong.items())[:3]}")
    by_caption: dict[str, list[str]] = {}
    for group, _ in images:
        by_caption.setdefault(captions[group], []).append(group)
    with images_out.open("w") as fh:
        for group, path in images:
            fh.write(json.dumps({"id": group, "image": path, "caption": captions[group]}) + "\n")
    with texts_out.open("w") as fh:
        for group, _ in images:
            colour, shape = captions[group].split()[1:]
            for k in range(per_image):
                text = TEMPLATES[k % len(TEMPLATES)].format(colour=colour, shape=shape)
                fh.write(
                    json.dumps({"id": f"{group}/{k}", "text": text, "image_ids": by_caption[captions[group]]})
                    + "\n"
                )
    print(f"{len(images)} images ({len(told)} of them captioned by their questions, all agreeing with the "
          f"pixels), {len(images) * per_image} texts, {len(by_caption)} distinct captions")  # fmt: skip
    # How much a first stage of a two-stage ranking could be tested on this corpus: the chance that a
    # random tenth of the images already holds an image a text describes.
    shares = [len(by_caption[captions[group]]) / len(images) for group, _ in images]
    tenth = len(images) // 10
    chance = sum(1 - _none_drawn(len(images), round(share * len(images)), tenth) for share in shares) / len(
        shares
    )
    print(f"each text describes {100 * min(shares):.1f}% to {100 * max(shares):.1f}% of the images; a random "
          f"tenth of the images holds one of them for {100 * chance:.1f}% of the texts")  # fmt: skip


def _none_drawn(total: int, relevant: int, drawn: int) -> float:
    """The chance that ``drawn`` images drawn without replacement from ``total`` miss all ``relevant``."""
    chance = 1.0
    for k in range(drawn):
        chance *= (total - relevant - k) / (total - k)
    return chance


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    q = kinds.add_parser("questions")
    q.add_argument("out", type=Path)
    q.add_argument("--rows", type=int, default=10000)
    c = kinds.add_parser("corpus")
    c.add_argument("images_out", type=Path)
    c.add_argument("texts_out", type=Path)
    c.add_argument("--images", type=int, default=1000)
    c.add_argument("--texts-per-image", type=int, default=5)
    args = parser.parse_args()
    if args.kind == "questions":
        questions(args.out, args.rows)
    else:
        corpus(args.images_out, args.texts_out, args.images, args.texts_per_image)


if __name__ == "__main__":
    main()
