"""Benchmark 4: image-text retrieval scoring, 32 images x 256 texts, in pairs per second.

ViLT scores every (image, text) pair with the full transformer, so a 32 x 256 ranking is 8192
forward examples (about 270 TFLOP at 384x384). The rate is measured on the same block of the matrix
for every contestant (``--images`` x ``--texts``, default 4 x 32 = 128 pairs per call) and the full
ranking's time is extrapolated from it; ``--images 32 --texts 256`` runs the whole matrix.

* ``ours``: ``vilt.pipeline("image-text-retrieval", model=DIR)`` with its defaults; each image is
  embedded once (``visual_embed``) and its tokens reused for every text through ``image_embeds``;
* ``reference float32`` / ``reference bfloat16``: transformers ``ViltForImageAndTextRetrieval``
  (default float32, and its weights in bfloat16), each image preprocessed once and its
  ``pixel_values`` repeated for the texts, 32 pairs per forward.

Run: ``python benchmarks/bench_retrieval.py``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable

import numpy as np
import torch
from bench_preprocess import make_paths
from common import Section, alternate, machine_info, model_dir, set_threads, table
from PIL import Image

ARCHITECTURE = "ViltForImageAndTextRetrieval"
FULL_IMAGES, FULL_TEXTS = 32, 256
PAIRS_PER_FORWARD = 32
SUBJECTS = (
    "a dog",
    "two people",
    "a red car",
    "an astronaut",
    "a cup of coffee",
    "a cat",
    "a rocket",
    "coins",
)
PLACES = (
    "on a table",
    "in a park",
    "on the street",
    "in space",
    "at night",
    "in the snow",
    "indoors",
    "by a river",
)
ACTIONS = ("", "looking at the camera", "next to a window", "in black and white")


def captions(count: int) -> list[str]:
    """``count`` distinct short captions."""
    every = [f"{s} {p} {a}".strip() for a in ACTIONS for s in SUBJECTS for p in PLACES]
    return every[:count]


def ours_scorer(directory: str) -> Callable[[list[str], list[str]], np.ndarray]:
    import vilt

    rank = vilt.pipeline("image-text-retrieval", model=directory)
    return lambda images, texts: rank(images=images, texts=texts)


def reference_scorer(directory: str, dtype: torch.dtype) -> Callable[[list[str], list[str]], np.ndarray]:
    import transformers

    processor = transformers.ViltProcessor.from_pretrained(directory)
    model = transformers.ViltForImageAndTextRetrieval.from_pretrained(directory, dtype=dtype).eval()

    def score(images: list[str], texts: list[str]) -> np.ndarray:
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        scores = np.zeros((len(images), len(texts)), dtype=np.float32)
        for row, path in enumerate(images):
            pixels = processor.image_processor(Image.open(path).convert("RGB"), return_tensors="pt")
            for start in range(0, len(texts), PAIRS_PER_FORWARD):
                chunk = slice(start, start + PAIRS_PER_FORWARD)
                n = len(texts[chunk])
                with torch.no_grad():
                    logits = model(
                        input_ids=tokens["input_ids"][chunk],
                        attention_mask=tokens["attention_mask"][chunk],
                        token_type_ids=tokens["token_type_ids"][chunk],
                        pixel_values=pixels["pixel_values"].to(dtype).expand(n, -1, -1, -1),
                        pixel_mask=pixels["pixel_mask"].expand(n, -1, -1),
                    ).logits  # (n, 1)
                scores[row, chunk] = logits[:, 0].float().numpy()
        return scores

    return score


def run(num_images: int = 4, num_texts: int = 32, repetitions: int = 3) -> Section:
    set_threads()
    directory = str(model_dir(ARCHITECTURE))
    texts = captions(num_texts)
    with tempfile.TemporaryDirectory() as folder:
        images = make_paths(folder)[:num_images]
        scorers = {
            "ours": ours_scorer(directory),
            "reference float32": reference_scorer(directory, torch.float32),
            "reference bfloat16": reference_scorer(directory, torch.bfloat16),
        }
        expected = scorers["reference float32"](images, texts)
        diff = np.abs(scorers["ours"](images, texts) - expected).max()
        timings = alternate({name: lambda s=s: s(images, texts) for name, s in scorers.items()}, repetitions)
    pairs = num_images * num_texts
    reference_s = timings.median("reference float32")
    rows = [
        [
            name,
            f"{pairs / timings.median(name):.1f}",
            f"{timings.median(name) * FULL_IMAGES * FULL_TEXTS / pairs / 60:.1f}",
            f"{reference_s / timings.median(name):.2f}x",
        ]
        for name in scorers
    ]
    lines = [
        f"## 4. Retrieval scoring ({FULL_IMAGES} images x {FULL_TEXTS} texts)",
        "",
        table(
            [
                "contestant",
                "pairs/s",
                f"minutes for {FULL_IMAGES}x{FULL_TEXTS}",
                "speed vs reference float32",
            ],
            rows,
        ),
        "",
        f"Measured on a {num_images} x {num_texts} block ({pairs} pairs per call, photographs of mixed sizes, "
        f"captions of up to {max(len(t.split()) for t in texts)} words); medians of {repetitions} alternating "
        f"repetitions after one warm-up; the full time is extrapolated. Ours (bfloat16) vs reference float32 "
        f"scores: max abs difference {diff:.3f}.",
    ]
    figures = {
        "ours / reference float32": reference_s / timings.median("ours"),
        "ours / reference bfloat16": timings.median("reference bfloat16") / timings.median("ours"),
    }
    return Section("\n".join(lines) + "\n", figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--images", type=int, default=4, help=f"images in the timed block (full: {FULL_IMAGES})"
    )
    parser.add_argument(
        "--texts", type=int, default=32, help=f"texts in the timed block (full: {FULL_TEXTS})"
    )
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    if not (1 <= args.images <= FULL_IMAGES and 1 <= args.texts <= FULL_TEXTS):
        parser.error(f"--images must be 1..{FULL_IMAGES} and --texts 1..{FULL_TEXTS}")
    print(machine_info())
    print(run(args.images, args.texts, args.repetitions).markdown)


if __name__ == "__main__":
    main()
