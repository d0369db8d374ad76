"""The inference sub-commands of ``vilt``: vqa, nlvr2, rank, fill-mask, explain, demo and info.

Each prints readable text, or JSON with ``--json``. The task commands share ``--model`` (hub id or
directory; the bundled easy-VQA model when left out, for vqa, explain and demo), ``--device``,
``--dtype``, ``--batch-size`` and ``--top-k``. Errors (a missing or unreadable image, an empty question,
an unknown model, a model without the task's head) reach :func:`vilt.cli.main` as exceptions and are
printed as one line with exit code 2. Only argparse and the standard library are imported at the top;
the model code is imported by the handlers.
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the inference sub-commands to the ``vilt`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("model and runtime")
    group.add_argument("--model", help="hub id (e.g. dandelin/vilt-b32-finetuned-vqa) or model directory")
    group.add_argument(
        "--device", default="auto", help="cpu, cuda or cuda:N (default: auto, CUDA when present)"
    )
    group.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="default auto: bfloat16 on CUDA and on CPUs with AVX512-BF16/AMX, else float32",
    )
    group.add_argument("--json", action="store_true", help="print JSON instead of text")
    batched = argparse.ArgumentParser(add_help=False, parents=[common])
    batched.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default 32)")

    vqa = subparsers.add_parser(
        "vqa",
        parents=[batched],
        help="answer a question about one or more images",
        description="Answer a question about each image. Without --model, the bundled easy-VQA model answers.",
        epilog='example: vilt vqa photo.jpg -q "what color is the shape?" --top-k 3',
    )
    vqa.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s)")
    vqa.add_argument("-q", "--question", required=True, help="the question")
    vqa.add_argument("--top-k", type=int, default=5, help="answers per image (default 5)")
    vqa.set_defaults(handler=run_vqa)

    nlvr2 = subparsers.add_parser(
        "nlvr2",
        parents=[batched],
        help="check a statement against a pair of images",
        description="Say whether a statement is true of a pair of images (needs an NLVR2 model).",
        epilog='example: vilt nlvr2 left.jpg right.jpg -s "there are two dogs" --model dandelin/vilt-b32-finetuned-nlvr2',
    )
    nlvr2.add_argument("image_a", metavar="IMG_A", help="the left image")
    nlvr2.add_argument("image_b", metavar="IMG_B", help="the right image")
    nlvr2.add_argument("-s", "--statement", required=True, help="the statement to check")
    nlvr2.set_defaults(handler=run_nlvr2)

    rank = subparsers.add_parser(
        "rank",
        parents=[batched],
        help="rank texts for images and images for texts",
        description="Score every image against every text with a retrieval or image-text-matching model.",
        epilog='example: vilt rank --images a.jpg b.jpg --texts "a dog" "a cat" --model dandelin/vilt-b32-finetuned-coco',
    )
    rank.add_argument("--images", nargs="+", required=True, metavar="IMAGE", help="image files")
    rank.add_argument("--texts", nargs="+", required=True, metavar="TEXT", help="texts")
    rank.add_argument(
        "--top-k", type=int, default=5, help="best matches listed per image and per text (default 5)"
    )
    rank.set_defaults(handler=run_rank)

    fill = subparsers.add_parser(
        "fill-mask",
        parents=[batched],
        help="fill the [MASK] words of a text about an image",
        description="Fill each [MASK] of the text, the most confident first (needs a masked-LM model).",
        epilog='example: vilt fill-mask photo.jpg -t "a [MASK] sitting on a [MASK]" --model dandelin/vilt-b32-mlm',
    )
    fill.add_argument("image", metavar="IMAGE", help="image file")
    fill.add_argument("-t", "--text", required=True, help="text with one or more [MASK]")
    fill.set_defaults(handler=run_fill_mask)

    explain = subparsers.add_parser(
        "explain",
        parents=[common],
        help="draw where the model looks for each word",
        description="Draw, for each word of the text, a heatmap of where in the image the model looks: "
        "attention rollout, or word-patch alignment by IPOT as in the original ViLT demo. Needs matplotlib.",
        epilog='example: vilt explain shape.png -q "what color is the circle?" -o heat.png',
    )
    explain.add_argument("image", metavar="IMAGE", help="image file")
    explain.add_argument("-q", "--text", "--question", dest="text", required=True, help="the text to explain")
    explain.add_argument("-o", "--output", required=True, help="where to save the picture (.png, .jpg, .pdf)")
    explain.add_argument(
        "--method",
        choices=["rollout", "ipot"],
        default="rollout",
        help="rollout (default) or ipot (word-patch alignment, as the original ViLT demo)",
    )
    explain.set_defaults(handler=run_explain)

    demo = subparsers.add_parser(
        "demo",
        parents=[batched],
        help="answer easy-VQA test questions with the bundled model",
        description="Answer randomly chosen easy-VQA test questions; print each answer with the truth, then "
        "the accuracy.",
    )
    demo.add_argument("--n", type=int, default=20, help="questions to answer (default 20)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the question choice (default 0)")
    demo.set_defaults(handler=run_demo)

    info = subparsers.add_parser(
        "info",
        help="describe a model: architecture, head, labels, sizes, parameters",
        description="Print a model's configuration, head, labels and parameter count.",
    )
    info.add_argument(
        "model", metavar="MODEL", help="hub id or model directory ('bundled' for the easy-VQA model)"
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=run_info)


# ----------------------------------------------------------------------------- helpers


def _pipeline(task: str, args: argparse.Namespace) -> Any:
    from .pipelines import pipeline

    return pipeline(task, model=args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size)


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    print(json.dumps(payload, indent=2) if args.json else text)


# ----------------------------------------------------------------------------- handlers


def run_vqa(args: argparse.Namespace) -> int:
    """``vilt vqa IMAGE... -q QUESTION``: top answers for each image."""
    vqa = _pipeline("visual-question-answering", args)
    results = vqa(list(args.images), args.question, top_k=args.top_k)
    payload = [
        {"image": image, "question": args.question, "answers": r} for image, r in zip(args.images, results)
    ]
    lines = []
    for item in payload:
        lines.append(f"{item['image']}: {args.question}")
        lines.extend(f"  {a['score']:.3f}  {a['answer']}" for a in item["answers"])
    _emit(args, payload, "\n".join(lines))
    return 0


def run_nlvr2(args: argparse.Namespace) -> int:
    """``vilt nlvr2 IMG_A IMG_B -s STATEMENT``: true or false, with its probability."""
    nlvr2 = _pipeline("nlvr2", args)
    result = nlvr2((args.image_a, args.image_b), args.statement)
    _emit(args, result, f"{result['label']}  ({result['score']:.3f})  {args.statement}")
    return 0


def run_rank(args: argparse.Namespace) -> int:
    """``vilt rank --images ... --texts ...``: the score matrix and the best matches each way."""
    rank = _pipeline("image-text-retrieval", args)
    ranked = rank.rank(list(args.images), list(args.texts), top_k=args.top_k)
    payload = {
        "images": args.images,
        "texts": args.texts,
        "scores": ranked["scores"].tolist(),
        "text_to_images": ranked["text_to_images"],
        "image_to_texts": ranked["image_to_texts"],
    }
    lines = ["best texts per image:"]
    for image, hits in zip(args.images, ranked["image_to_texts"]):
        lines.append(f"  {image}")
        lines.extend(f"    {hit['score']:8.3f}  {hit['text']}" for hit in hits)
    lines.append("best images per text:")
    for text, hits in zip(args.texts, ranked["text_to_images"]):
        lines.append(f"  {text}")
        lines.extend(f"    {hit['score']:8.3f}  {args.images[hit['index']]}" for hit in hits)
    _emit(args, payload, "\n".join(lines))
    return 0


def run_fill_mask(args: argparse.Namespace) -> int:
    """``vilt fill-mask IMAGE -t TEXT``: the filled text and each filled token's probability."""
    fill = _pipeline("fill-mask", args)
    result = fill(args.image, args.text)
    filled = ", ".join(f"{t} ({s:.3f})" for t, s in zip(result["tokens"], result["scores"]))
    _emit(args, result, f"{result['sequence']}\n  filled: {filled}")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    """``vilt explain IMAGE -q TEXT -o OUT``: draw one heatmap per word (any ViLT model)."""
    from .explain import draw, explain
    from .heads import ViltForQuestionAnswering
    from .pipelines import load_model, pipeline

    model, processor = load_model(args.model, args.device, args.dtype)
    explanation = explain(model, processor, args.image, args.text, method=args.method)
    title = f"{args.text} ({explanation.method})"
    payload: dict[str, Any] = {"output": args.output, "words": explanation.words, "method": args.method}
    if isinstance(model, ViltForQuestionAnswering):  # a VQA model also says what it answers
        vqa = pipeline("vqa", model=model, processor=processor)
        payload["answer"] = vqa(args.image, args.text, top_k=1)[0]
        title = f"{args.text} -> {payload['answer']['answer']} ({explanation.method})"
    draw(explanation, args.output, title=title)
    answer = f", answer {payload['answer']['answer']!r}" if "answer" in payload else ""
    _emit(args, payload, f"saved {args.output}: {len(explanation.words)} words{answer}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``vilt demo``: answer seeded easy-VQA test questions and report the accuracy on them."""
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
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
    from .pipelines import load_model

    model, processor = load_model(None if args.model == "bundled" else args.model, "cpu", "float32")
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
