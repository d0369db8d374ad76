"""Draw where the model looks for each word of a question (attention rollout, or IPOT alignment).

python examples/explain.py                      # an easy-VQA test image and the bundled model
python examples/explain.py photo.jpg "what is the man holding?" --model dandelin/vilt-b32-finetuned-vqa
"""

import argparse

import vilt
from vilt.explain import draw, explain

parser = argparse.ArgumentParser(description="Per-word heatmaps over the image.")
parser.add_argument("image", nargs="?", help="image file (default: an easy-VQA test image)")
parser.add_argument("text", nargs="?", default="what is the color of the shape?")
parser.add_argument("--model", default=None, help="hub id or directory (default: the bundled easy-VQA model)")
parser.add_argument("--method", default="rollout", choices=["rollout", "ipot"])
parser.add_argument("--output", default="explain.png")
args = parser.parse_args()

if args.image is None:
    import easy_vqa  # pip install 'vilt[train]'

    args.image = easy_vqa.get_test_image_paths()[0]

vqa = vilt.pipeline("visual-question-answering", model=args.model)
explanation = explain(vqa.model, vqa.processor, args.image, args.text, method=args.method)
print("words:", explanation.words, "heatmaps:", explanation.heatmaps.shape)  # (words, H, W) in [0, 1]
draw(explanation, args.output)
print("saved", args.output)
