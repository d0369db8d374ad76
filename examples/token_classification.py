"""Label each word piece of a text, given an image (token classification).

No public ViLT token-classification checkpoint exists; pass a directory holding a fine-tuned
ViltForTokenClassification (for instance one trained with ``vilt train``).

    python examples/token_classification.py --model my-tagger photo.jpg "a red circle on the left"
"""

import argparse

import vilt

parser = argparse.ArgumentParser(description="Label every token of the text.")
parser.add_argument("image")
parser.add_argument("text")
parser.add_argument("--model", required=True, help="directory or hub id of a ViltForTokenClassification")
args = parser.parse_args()

tag = vilt.pipeline("token-classification", model=args.model)
for token in tag(args.image, args.text):  # [{"token", "label", "score", "index"}, ...]
    print(f"{token['token']:>12}  {token['label']:<10} {token['score']:.3f}")
