"""Answer questions about images (visual question answering).

Without arguments it uses the bundled easy-VQA model on two easy-VQA test images; pass
--model dandelin/vilt-b32-finetuned-vqa and your own --images for photos.

    python examples/vqa.py
    python examples/vqa.py --model dandelin/vilt-b32-finetuned-vqa --images cats.jpg --question "how many cats?"
"""

import argparse

import vilt

parser = argparse.ArgumentParser(description="Answer a question about images.")
parser.add_argument("--model", default=None, help="hub id or directory (default: the bundled easy-VQA model)")
parser.add_argument("--images", nargs="+", help="image files (default: two easy-VQA test images)")
parser.add_argument("--question", default="what shape is in the image?")
args = parser.parse_args()

if args.images is None:
    import easy_vqa  # pip install 'vilt[train]'

    paths = easy_vqa.get_test_image_paths()
    args.images = [paths[0], paths[1]]

vqa = vilt.pipeline("visual-question-answering", model=args.model)
print(vqa(args.images[0], args.question, top_k=3))  # one image: [{"answer", "score"}, ...], best first
for image, answers in zip(args.images, vqa(args.images, args.question, top_k=1)):  # a batch: one list each
    print(f"{image}: {answers[0]['answer']} ({answers[0]['score']:.3f})")
