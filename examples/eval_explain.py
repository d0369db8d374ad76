"""Does ``vilt explain`` find the shape? An evaluation on easy-VQA test images with the bundled model.

For each of the first N easy-VQA test images (by id), the bundled model reads "what is the color of
the <shape>?" (an easy-VQA question template, naming the image's true shape), and ``vilt.explain``
draws the heatmap of the word naming the shape. The shape's pixels are found from the image itself:
those that differ from the background colour (the image's most common colour) by more than 48 levels in
some channel. An image counts as a hit when the mean heat inside the shape is greater than outside.

Run:  python examples/eval_explain.py [--n 100] [--methods ipot rollout] [--output results/explain_eval.json]
It prints one line per method and writes the report (JSON) and, for the first image, a picture.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from vilt.checkpoint import find_weight_files
from vilt.explain import draw, explain
from vilt.hub import BUNDLED_MODEL_DIR
from vilt.pipelines import load_model

SHAPES = ("circle", "rectangle", "triangle")
BACKGROUND_TOLERANCE = 48  # pixel levels; anti-aliased edges within it count as background


def shape_mask(image: Image.Image) -> np.ndarray:
    """(H, W) bool: the pixels whose colour differs from the most common colour (the background)."""
    pixels = np.asarray(image.convert("RGB")).astype(np.int16)  # (H, W, 3)
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]  # (3,)
    return np.abs(pixels - background).max(axis=-1) > BACKGROUND_TOLERANCE


def true_shapes() -> dict[int, str]:
    """Test image id -> the shape in it, read from the answers of the easy-VQA test questions."""
    import easy_vqa

    _, answers, image_ids = easy_vqa.get_test_questions()
    return {image_id: answer for answer, image_id in zip(answers, image_ids) if answer in SHAPES}


def weights_digest(model: str | None) -> str:
    """SHA-256 of the model's weight file(s)."""
    digest = hashlib.sha256()
    for file in find_weight_files(str(BUNDLED_MODEL_DIR) if model is None else model):
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()


def evaluate(
    num_images: int = 100,
    methods: tuple[str, ...] = ("ipot", "rollout"),
    model: str | None = None,
    picture: Path | None = None,
) -> dict[str, Any]:
    """Score the shape word's heat inside vs outside the shape on the first ``num_images`` test images.

    Args:
        num_images: how many test images (those with a shape question, by id).
        methods: the explain methods to score.
        model: a directory of a model trained on easy-VQA (any head); None = the bundled model.
        picture: where to draw the first image's explanation (one file per method), or None.

    Returns:
        per method: ``{"images", "hits", "hit_rate", "mean_heat_inside", "mean_heat_outside"}``.
    """
    import easy_vqa

    vilt_model, processor = load_model(model, dtype="float32")
    paths = easy_vqa.get_test_image_paths()
    shapes = true_shapes()
    chosen = sorted(shapes)[:num_images]
    report: dict[str, Any] = {
        "model": model or "bundled",
        "weights_sha256": weights_digest(model),  # which version of the model was measured
        "question": "what is the color of the <shape>?",
    }
    for method in methods:
        inside, outside = [], []
        for image_id in tqdm(chosen, desc=method, unit="image"):
            image = Image.open(paths[image_id]).convert("RGB")
            question = f"what is the color of the {shapes[image_id]}?"
            explanation = explain(vilt_model, processor, image, question, method=method)
            heat = explanation.heatmap(shapes[image_id])  # (H, W)
            mask = shape_mask(image)
            inside.append(float(heat[mask].mean()))
            outside.append(float(heat[~mask].mean()))
            if picture is not None and image_id == chosen[0]:
                draw(explanation, picture.with_name(f"{picture.stem}_{method}{picture.suffix}"))
        hits = int(sum(i > o for i, o in zip(inside, outside)))
        report[method] = {
            "images": len(chosen),
            "hits": hits,
            "hit_rate": hits / len(chosen),
            "mean_heat_inside": float(np.mean(inside)),
            "mean_heat_outside": float(np.mean(outside)),
            "shapes": dict(Counter(shapes[i] for i in chosen)),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="test images (default 100)")
    parser.add_argument("--methods", nargs="+", default=["ipot", "rollout"], choices=["ipot", "rollout"])
    parser.add_argument(
        "--model", default=None, help="model trained on easy-VQA (default: the bundled model)"
    )
    parser.add_argument("--output", type=Path, default=Path("results/explain_eval.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = evaluate(args.n, tuple(args.methods), args.model, picture=args.output.with_suffix(".png"))
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for method in args.methods:
        r = report[method]
        print(
            f"{method}: heat inside > outside the shape in {r['hits']}/{r['images']} images "
            f"({100 * r['hit_rate']:.0f}%); mean heat inside {r['mean_heat_inside']:.3f}, "
            f"outside {r['mean_heat_outside']:.3f}"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
