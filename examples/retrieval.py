"""Rank captions for images and images for captions (image-text retrieval).

Works with a fine-tuned retrieval model (dandelin/vilt-b32-finetuned-coco or -flickr30k) or, zero-shot,
with a model that has the pretraining image-text matching head.

    python examples/retrieval.py --images a.jpg b.jpg --texts "a dog on a sofa" "two cats sleeping"
"""

import argparse

import vilt

parser = argparse.ArgumentParser(description="Score every image against every text.")
parser.add_argument("--images", nargs="+", required=True)
parser.add_argument("--texts", nargs="+", required=True)
parser.add_argument("--model", default="dandelin/vilt-b32-finetuned-coco", help="hub id or directory")
args = parser.parse_args()

rank = vilt.pipeline("image-text-retrieval", model=args.model)
ranked = rank.rank(args.images, args.texts, top_k=3)  # scores (N, M) + sorted hits both ways
print("scores (images x texts):\n", ranked["scores"])
for image, hits in zip(args.images, ranked["image_to_texts"]):
    print(f"{image}: best caption {hits[0]['text']!r} ({hits[0]['score']:.2f})")
for text, hits in zip(args.texts, ranked["text_to_images"]):
    print(f"{text!r}: best image {args.images[hits[0]['index']]}")
