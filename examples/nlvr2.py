"""Check a statement against a pair of images (NLVR2).

python examples/nlvr2.py left.jpg right.jpg "The left image contains twice the number of dogs as the right."
"""

import argparse

import vilt

parser = argparse.ArgumentParser(description="Is the statement true of the two images?")
parser.add_argument("image_a")
parser.add_argument("image_b")
parser.add_argument("statement")
parser.add_argument("--model", default="dandelin/vilt-b32-finetuned-nlvr2", help="hub id or directory")
args = parser.parse_args()

nlvr2 = vilt.pipeline("nlvr2", model=args.model)
result = nlvr2((args.image_a, args.image_b), args.statement)  # {"label": True/False, "score": probability}
print(f"{result['label']} ({result['score']:.3f}): {args.statement}")
