"""The inference sub-commands of ``vilt``: vqa, nlvr2, rank, fill-mask, explain, demo and info.

Each prints readable text, or JSON with ``--json``. The task commands share ``--model`` (a hub id, a
model directory, or ``bundled``: the bundled easy-VQA model, which vqa, explain, demo and info use when
no model is named), ``--device``, ``--dtype``, ``--batch-size``, ``--top-k`` and ``--timeout``.

An image argument is

* an image file;
* a folder: its image files (names ending in one of :data:`IMAGE_EXTENSIONS`, any case; hidden files
  and sub-folders are skipped), in the order of their names, where a command takes several images
  (``vqa``, ``rank --images``);
* an ``http://`` or ``https://`` URL, fetched before the model loads, waiting at most ``--timeout``
  seconds (default: :data:`vilt.images.DEFAULT_TIMEOUT`);
* ``-``: one image file's bytes read from standard input (``vilt vqa - -q ... < photo.jpg``); a list of
  paths goes on the command line instead (``find ... -print0 | xargs -0 vilt vqa -q ...``).

Each command declares what its arguments must be (:mod:`vilt.arguments`): images that exist and are
images, texts that are not empty, a model directory with its config, a device this PyTorch has, an
output file that can be written, the extra the command needs. :func:`vilt.cli.main` checks them all
before the handler runs, so a wrong argument is reported in well under a second, not after seconds of
loading, and messages name the flags (``--top-k``), not Python arguments. Errors found later (an
unreachable URL, a model without the task's head) reach :func:`vilt.cli.main` as exceptions; both are
printed as one line with exit code 2. Loading a model that takes over a second says so on standard
error. Only argparse and the standard library are imported at the top; the model code is imported by
the handlers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import arguments as check
from .arguments import IMAGE_EXTENSIONS, STDIN, announce_slow, folder_images
from .errors import ViltInputError
from .tasks import find_task

# what `vilt explain -o` writes: matplotlib's savefig formats
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".eps", ".ps", ".tif", ".tiff", ".webp")
IMAGE_HELP = "image file, folder of images, http(s) URL, or - (an image on standard input)"
ONE_IMAGE_HELP = "image file, http(s) URL, or - (an image on standard input)"
# --dtype of the commands and of `vilt serve`: vilt.devices.PRECISION_NAMES (named here: help imports no torch)
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "int8")
DTYPE_HELP = (
    "default auto: bfloat16 on CUDA and on CPUs with bfloat16 hardware (AVX512-BF16, AMX, ARM bf16), else "
    "float32; int8: int8 weights on the CPU, the fast choice where bfloat16 hardware is missing"
)
BUNDLED_MODEL_HELP = (
    "hub id (e.g. dandelin/vilt-b32-finetuned-vqa), model directory, or 'bundled' (the default)"
)


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    """An argparse type: a positive (finite) int or float; other values are refused naming the flag."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not (value > 0 and math.isfinite(value)):
            what = "integer" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}")
        return value

    return parse


def _options(model_help: str, *, batched: bool = True, images: bool = True) -> argparse.ArgumentParser:
    """The options the task commands share: model and runtime, and --timeout where images are read."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("model and runtime")
    group.add_argument("--model", help=model_help)
    group.add_argument(
        "--device", default="auto", help="cpu, cuda or cuda:N (default: auto, CUDA when present)"
    )
    group.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    group.add_argument("--json", action="store_true", help="print JSON instead of text")
    if batched:
        group.add_argument(
            "--batch-size", type=_positive(int), default=32, help="examples per forward pass (default 32)"
        )
    if images:
        group.add_argument(
            "--timeout",
            type=_positive(float),
            metavar="SECONDS",
            help="seconds to wait for an image URL (default 10)",
        )
    return parent


def _needs(task: str) -> str:
    """The --model help of a command whose task the bundled model cannot do."""
    return f"hub id or model directory of {_architectures(task)} (required)"


def _architectures(task: str) -> str:
    return "a " + " or ".join(find_task(task).architectures)


def _checks(*checks: check.Check, needs: str = "") -> list[check.Check]:
    """The checks of a task command: its own, then those of the options every task command shares."""
    return [*checks, check.model(needed=needs), check.device()]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the inference sub-commands to the ``vilt`` parser."""
    vqa = subparsers.add_parser(
        "vqa",
        parents=[_options(BUNDLED_MODEL_HELP)],
        help="answer a question about one or more images",
        description="Answer a question about each image. Without --model, the bundled easy-VQA model "
        f"answers. A folder stands for its images ({', '.join(IMAGE_EXTENSIONS)}) in name order.",
        epilog='example: vilt vqa photo.jpg photos/ https://example.com/cat.png -q "what color is the shape?"',
    )
    vqa.add_argument("images", nargs="+", metavar="IMAGE", help=IMAGE_HELP)
    vqa.add_argument("-q", "--question", required=True, help="the question")
    vqa.add_argument("--top-k", type=_positive(int), default=5, help="answers per image (default 5)")
    vqa.set_defaults(
        handler=run_vqa, checks=_checks(check.images("images"), check.text("question", "-q", "question"))
    )

    nlvr2 = subparsers.add_parser(
        "nlvr2",
        parents=[_options(_needs("nlvr2"))],
        help="check a statement against a pair of images",
        description="Say whether a statement is true of a pair of images (needs an NLVR2 model).",
        epilog='example: vilt nlvr2 left.jpg right.jpg -s "there are two dogs" --model dandelin/vilt-b32-finetuned-nlvr2',
    )
    nlvr2.add_argument("image_a", metavar="IMG_A", help=f"the left image: {ONE_IMAGE_HELP}")
    nlvr2.add_argument("image_b", metavar="IMG_B", help=f"the right image: {ONE_IMAGE_HELP}")
    nlvr2.add_argument("-s", "--statement", required=True, help="the statement to check")
    nlvr2.set_defaults(
        handler=run_nlvr2,
        checks=_checks(
            check.images("image_a", single="nlvr2"),
            check.images("image_b", single="nlvr2"),
            check.text("statement", "-s", "statement"),
            needs=_architectures("nlvr2"),
        ),
    )

    rank = subparsers.add_parser(
        "rank",
        parents=[_options(_needs("retrieval"))],
        help="rank texts for images and images for texts",
        description="Score every image against every text with a retrieval or image-text-matching model.",
        epilog='example: vilt rank --images a.jpg b.jpg --texts "a dog" "a cat" --model dandelin/vilt-b32-finetuned-coco',
    )
    rank.add_argument("--images", nargs="+", required=True, metavar="IMAGE", help=IMAGE_HELP)
    rank.add_argument("--texts", nargs="+", required=True, metavar="TEXT", help="texts")
    rank.add_argument(
        "--top-k",
        type=_positive(int),
        default=5,
        help="best matches listed per image and per text (default 5)",
    )
    rank.set_defaults(
        handler=run_rank,
        checks=_checks(
            check.images("images"), check.text("texts", "--texts", "text"), needs=_architectures("retrieval")
        ),
    )

    fill = subparsers.add_parser(
        "fill-mask",
        parents=[_options(_needs("fill-mask"))],
        help="fill the [MASK] words of a text about an image",
        description="Fill each [MASK] of the text, the most confident first (needs a masked-LM model).",
        epilog='example: vilt fill-mask photo.jpg -t "a [MASK] sitting on a [MASK]" --model dandelin/vilt-b32-mlm',
    )
    fill.add_argument("image", metavar="IMAGE", help=ONE_IMAGE_HELP)
    fill.add_argument("-t", "--text", required=True, help="text with one or more [MASK]")
    fill.set_defaults(
        handler=run_fill_mask,
        checks=_checks(
            check.images("image", single="fill-mask"),
            check.text("text", "-t", "text", must_hold="[MASK]"),
            needs=_architectures("fill-mask"),
        ),
    )

    explain = subparsers.add_parser(
        "explain",
        parents=[_options(BUNDLED_MODEL_HELP, batched=False)],
        help="draw where the model looks for each word",
        description="Draw, for each word of the text, a heatmap of where in the image the model looks: "
        "attention rollout, or word-patch alignment by IPOT as in the original ViLT demo. Any ViLT model; "
        "the bundled easy-VQA model without --model. Needs matplotlib.",
        epilog='example: vilt explain shape.png -q "what color is the circle?" -o heat.png',
    )
    explain.add_argument("image", metavar="IMAGE", help=ONE_IMAGE_HELP)
    explain.add_argument("-q", "--text", "--question", dest="text", required=True, help="the text to explain")
    explain.add_argument(
        "-o", "--output", required=True, help="where to save the picture (.png, .jpg, .pdf, .svg...)"
    )
    explain.add_argument(
        "--method",
        choices=["rollout", "ipot"],
        default="rollout",
        help="rollout (default) or ipot (word-patch alignment, as the original ViLT demo)",
    )
    explain.set_defaults(
        handler=run_explain,
        checks=_checks(
            check.extra("explain", "matplotlib"),
            check.images("image", single="explain"),
            check.text("text", "-q", "text"),
            check.output_file("output", "-o", PICTURE_SUFFIXES),
        ),
    )

    demo = subparsers.add_parser(
        "demo",
        parents=[_options(BUNDLED_MODEL_HELP, images=False)],
        help="answer easy-VQA test questions with the bundled model",
        description="Answer randomly chosen easy-VQA test questions; print each answer with the truth, then "
        "the accuracy.",
    )
    demo.add_argument("--n", type=_positive(int), default=20, help="questions to answer (default 20)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the question choice (default 0)")
    demo.set_defaults(handler=run_demo, checks=_checks(check.extra("train", "easy_vqa")))

    info = subparsers.add_parser(
        "info",
        help="describe a model: architecture, head, labels, sizes, parameters",
        description="Print a model's configuration, head, labels and parameter count.",
    )
    info.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        default="bundled",
        help="hub id, model directory, or 'bundled' (the default: the bundled easy-VQA model)",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=run_info, checks=[check.model()])


# ----------------------------------------------------------------------------- inputs


def _read_images(arguments: Sequence[str], timeout: float | None) -> list[tuple[str, Any]]:
    """The images that command-line arguments name (checked by :func:`vilt.arguments.images`), each as
    (its name in the output, what the pipeline takes).

    Files stay paths (the pipeline loads them); folders become their image files in name order; URLs are
    fetched now (so that a bad one fails before the model loads); ``-`` becomes standard input's bytes.

    Args:
        arguments: the image arguments, as given.
        timeout: seconds to wait for each URL; None for :data:`vilt.images.DEFAULT_TIMEOUT`.

    Raises:
        ViltInputError: an unreachable URL, or nothing on standard input.
    """
    from .images import is_url, load_image

    images: list[tuple[str, Any]] = []
    for argument in arguments:
        if argument == STDIN:
            images.append((argument, _read_stdin()))
        elif is_url(argument):
            images.append((argument, load_image(argument, timeout)))
        elif os.path.isdir(argument):
            images.extend((path, path) for path in folder_images(argument))
        else:
            images.append((argument, argument))
    return images


def _read_stdin() -> bytes:
    """The image file piped into standard input."""
    data = sys.stdin.buffer.read()
    if not data:
        raise ViltInputError(
            "standard input is empty: pipe an image file into it (vilt vqa - -q QUESTION < photo.jpg)"
        )
    return data


# ----------------------------------------------------------------------------- helpers


def _loading(args: argparse.Namespace, model: str | None) -> Any:
    """Say on standard error that the model is loading, when that takes over a second."""
    return announce_slow(
        f"vilt {args.command}: loading {model or 'the bundled model'} (torch, then the weights)..."
    )


def _pipeline(task: str, args: argparse.Namespace) -> Any:
    with _loading(args, args.model):
        from .pipelines import pipeline

        return pipeline(
            task, model=args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size
        )


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    print(json.dumps(payload, indent=2) if args.json else text)


# ----------------------------------------------------------------------------- handlers


def run_vqa(args: argparse.Namespace) -> int:
    """``vilt vqa IMAGE... -q QUESTION``: top answers for each image."""
    images = _read_images(args.images, args.timeout)
    vqa = _pipeline("visual-question-answering", args)
    results = vqa([image for _, image in images], args.question, top_k=args.top_k)
    payload = [
        {"image": name, "question": args.question, "answers": r} for (name, _), r in zip(images, results)
    ]
    lines = []
    for item in payload:
        lines.append(f"{item['image']}: {args.question}")
        lines.extend(f"  {a['score']:.3f}  {a['answer']}" for a in item["answers"])
    _emit(args, payload, "\n".join(lines))
    return 0


def run_nlvr2(args: argparse.Namespace) -> int:
    """``vilt nlvr2 IMG_A IMG_B -s STATEMENT``: true or false, with its probability."""
    (_, image_a), (_, image_b) = _read_images([args.image_a, args.image_b], args.timeout)
    nlvr2 = _pipeline("nlvr2", args)
    result = nlvr2((image_a, image_b), args.statement)
    _emit(args, result, f"{result['label']}  ({result['score']:.3f})  {args.statement}")
    return 0


def run_rank(args: argparse.Namespace) -> int:
    """``vilt rank --images ... --texts ...``: the score matrix and the best matches each way."""
    images = _read_images(args.images, args.timeout)
    names = [name for name, _ in images]
    rank = _pipeline("image-text-retrieval", args)
    ranked = rank.rank([image for _, image in images], list(args.texts), top_k=args.top_k)
    payload = {
        "images": names,
        "texts": args.texts,
        "scores": ranked["scores"].tolist(),
        "text_to_images": ranked["text_to_images"],
        "image_to_texts": ranked["image_to_texts"],
    }
    lines = ["best texts per image:"]
    for name, hits in zip(names, ranked["image_to_texts"]):
        lines.append(f"  {name}")
        lines.extend(f"    {hit['score']:8.3f}  {hit['text']}" for hit in hits)
    lines.append("best images per text:")
    for text, hits in zip(args.texts, ranked["text_to_images"]):
        lines.append(f"  {text}")
        lines.extend(f"    {hit['score']:8.3f}  {names[hit['index']]}" for hit in hits)
    _emit(args, payload, "\n".join(lines))
    return 0


def run_fill_mask(args: argparse.Namespace) -> int:
    """``vilt fill-mask IMAGE -t TEXT``: the filled text and each filled token's probability."""
    [(_, image)] = _read_images([args.image], args.timeout)
    fill = _pipeline("fill-mask", args)
    result = fill(image, args.text)
    filled = ", ".join(f"{t} ({s:.3f})" for t, s in zip(result["tokens"], result["scores"]))
    _emit(args, result, f"{result['sequence']}\n  filled: {filled}")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    """``vilt explain IMAGE -q TEXT -o OUT``: draw one heatmap per word (any ViLT model; bundled by default)."""
    [(_, image)] = _read_images([args.image], args.timeout)
    with _loading(args, args.model):
        from .explain import draw, explain
        from .heads import ViltForQuestionAnswering
        from .pipelines import load_model, pipeline

        model, processor = load_model(args.model, args.device, args.dtype)
    explanation = explain(model, processor, image, args.text, method=args.method)
    title = f"{args.text} ({explanation.method})"
    payload: dict[str, Any] = {"output": args.output, "words": explanation.words, "method": args.method}
    if isinstance(model, ViltForQuestionAnswering):  # a VQA model also says what it answers
        vqa = pipeline("vqa", model=model, processor=processor)
        payload["answer"] = vqa(image, args.text, top_k=1)[0]
        title = f"{args.text} -> {payload['answer']['answer']} ({explanation.method})"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    draw(explanation, args.output, title=title)
    answer = f", answer {payload['answer']['answer']!r}" if "answer" in payload else ""
    _emit(args, payload, f"saved {args.output}: {len(explanation.words)} words{answer}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``vilt demo``: answer seeded easy-VQA test questions and report the accuracy on them."""
    try:
        import easy_vqa
    except ImportError as err:
        raise ImportError("vilt demo reads the easy-VQA test set: pip install 'vilt[train]'") from err
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    chosen = random.Random(args.seed).sample(range(len(questions)), min(args.n, len(questions)))
    vqa = _pipeline("visual-question-answering", args)
    results = vqa([{"image": paths[image_ids[i]], "question": questions[i]} for i in chosen], top_k=1)
    rows = [
        {
            "image": image_ids[i],
            "question": questions[i],
            "answer": r[0]["answer"],
            "score": r[0]["score"],
            "truth": answers[i],
        }
        for i, r in zip(chosen, results)
    ]
    correct = sum(row["answer"] == row["truth"] for row in rows)
    width = max(len(row["question"]) for row in rows)
    lines = [f"{'question':<{width}}  {'answer':<10} {'score':>6}  truth"]
    for row in rows:
        mark = "ok" if row["answer"] == row["truth"] else "WRONG"
        lines.append(
            f"{row['question']:<{width}}  {row['answer']:<10} {row['score']:6.3f}  {row['truth']:<10} {mark}"
        )
    lines.append(f"accuracy: {correct}/{len(rows)} = {100 * correct / len(rows):.1f}%")
    _emit(args, {"results": rows, "correct": correct, "total": len(rows)}, "\n".join(lines))
    return 0


def run_info(args: argparse.Namespace) -> int:
    """``vilt info MODEL``: architecture, head, labels, sizes, parameter count and image preprocessing."""
    with _loading(args, args.model):
        from .pipelines import load_model

        model, processor = load_model(args.model, "cpu", "float32")
    config = model.config
    id2label = config.id2label or {}
    labels = [id2label[i] for i in sorted(id2label)]
    images = processor.image_processor
    payload = {
        "model": args.model,
        "architecture": type(model).__name__,
        "parameters": model.num_parameters(),
        "hidden_size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "shortest_edge": images.size["shortest_edge"],
        "max_text_tokens": config.max_position_embeddings,
        "vocab_size": config.vocab_size,
        "num_labels": config.num_labels,
        "labels": labels,
    }
    shown = ", ".join(labels[:20]) + (f", ... ({len(labels)} in all)" if len(labels) > 20 else "")
    text = "\n".join(
        [
            f"{args.model}",
            f"  architecture  {payload['architecture']}",
            f"  parameters    {payload['parameters']:,}",
            f"  transformer   {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
            f"{config.num_attention_heads} heads, MLP {config.intermediate_size}",
            f"  image         shorter side resized to {images.size['shortest_edge']} px (multiples of "
            f"{images.size_divisor}), patches of {config.patch_size} px",
            f"  text          up to {config.max_position_embeddings} tokens, vocabulary {config.vocab_size}",
            f"  labels        {config.num_labels}: {shown}",
        ]
    )
    _emit(args, payload, text)
    return 0
