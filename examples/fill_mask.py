"""Fill the [MASK] words of a caption from the image (masked language modelling).

python examples/fill_mask.py cats.jpg "a bunch of [MASK] laying on a [MASK]."
"""

import argparse

import vilt

parser = argparse.ArgumentParser(description="Fill [MASK] tokens, the most confident first.")
parser.add_argument("image")
parser.add_argument("text", help="text with one or more [MASK]")
parser.add_argument("--model", default="dandelin/vilt-b32-mlm", help="hub id or directory")
args = parser.parse_args()

fill = vilt.pipeline("fill-mask", model=args.model)
result = fill(args.image, args.text)  # {"sequence", "tokens", "scores"}
print(result["sequence"])
for token, score in zip(result["tokens"], result["scores"]):
    print(f"  {token}: {score:.3f}")
