"""``vilt batch vqa|nlvr2|fill-mask|rank``: batch inference and corpus ranking on Ray (``vilt[scale]``).

Only argparse and the standard library at the top; Ray, torch and the model load in the handlers.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..commands import DTYPE_CHOICES, DTYPE_HELP, _positive
from ..errors import ViltInputError
from ..tasks import find_task

TABLE_TASKS = ("vqa", "nlvr2", "fill-mask")


def _common(parent: argparse.ArgumentParser) -> None:
    """The options every ``vilt batch`` command shares: where it runs, the model, the output."""
    ray = parent.add_argument_group("where it runs")
    ray.add_argument(
        "--address",
        help="join this Ray cluster (HOST:PORT, auto or ray://...); default: an embedded local Ray",
    )
    model = parent.add_argument_group("model")
    model.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    model.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help=DTYPE_HELP)
    model.add_argument(
        "--timeout", type=_positive(float), default=10.0, metavar="SECONDS", help="wait for an image URL"
    )
    out = parent.add_argument_group("output")
    out.add_argument("--output", required=True, metavar="DIR", help="output directory (a rerun resumes it)")
    out.add_argument("--overwrite", action="store_true", help="start afresh where another job's output is")
    out.add_argument(
        "--image-root", metavar="DIR", help="where relative image paths start (default: the table's folder)"
    )
    out.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``vilt batch`` to the ``vilt`` parser."""
    batch = subparsers.add_parser(
        "batch",
        help="answer a table, or rank a corpus, on Ray (embedded, or a cluster with --address)",
        description="Batch inference on Ray Data and corpus-scale ranking on Ray tasks (pip install "
        "'vilt[scale]'). Without --address a local Ray runs inside the command. Rerunning a command "
        "resumes it: finished parts are kept. See docs/scale.md.",
    )
    tasks = batch.add_subparsers(dest="batch_task", metavar="TASK", required=True)
    for name in TABLE_TASKS:
        spec = find_task(name)
        command = tasks.add_parser(
            name,
            help=f"{spec.pipeline} over every row of a table",
            description=f"Run {spec.pipeline} on every row of a jsonl, csv or parquet table and write one "
            "row per input row (row_id = its position; an error column for rows that could not be "
            "answered) as committed part files.",
            epilog=f"example: vilt batch {name} --input rows.jsonl --output out/"
            + ("" if name == "vqa" else " --model DIR"),
        )
        command.add_argument("--input", required=True, metavar="FILE", help="jsonl, csv or parquet table")
        command.add_argument(
            "--model",
            default=None,
            help="hub id or model directory"
            + (" (default: the bundled easy-VQA model)" if name == "vqa" else " (required)"),
        )
        _common(command)
        run = command.add_argument_group("the job")
        run.add_argument("--replicas", type=_positive(int), default=1, help="model replicas (default 1)")
        run.add_argument(
            "--replica-cpus", type=_positive(float), default=1.0, help="CPUs per replica (default 1)"
        )
        run.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica (default 0)")
        run.add_argument(
            "--decode-cpus", type=_positive(float), default=0.5, help="CPUs per decoding task (default 0.5)"
        )
        run.add_argument(
            "--batch-size", type=_positive(int), default=32, help="rows per forward pass (default 32)"
        )
        run.add_argument(
            "--part-rows", type=_positive(int), default=1000, help="rows per committed part (default 1000)"
        )
        run.add_argument("--format", choices=["parquet", "jsonl"], default="parquet", help="output format")
        if name == "vqa":
            run.add_argument(
                "--top-k", type=_positive(int), default=5, help="answers kept per question (default 5)"
            )
        command.set_defaults(handler=run_table)

    rank = tasks.add_parser(
        "rank",
        help="rank every text against every image of a corpus, exactly, with R@K",
        description="Score every (image, text) pair of a corpus with a retrieval model, sharded over Ray "
        "tasks (blocks of images x blocks of texts); image tokens are cached on disk. Writes the top "
        "matches per text and per image, and R@1/5/10 when the texts name their images.",
        epilog="example: vilt batch rank --images images.jsonl --texts texts.jsonl --output ranked/ --model DIR",
    )
    corpus = rank.add_argument_group("the corpus")
    corpus.add_argument("--images", metavar="FILE", help="table of images: image (and id)")
    corpus.add_argument(
        "--texts", metavar="FILE", help="table of texts: text (and id; ground truth image_ids or image_id)"
    )
    corpus.add_argument("--input", metavar="FILE", help="or one table of true (image, text) pairs")
    rank.add_argument("--model", required=True, help="hub id or directory of a retrieval or ITM model")
    _common(rank)
    job = rank.add_argument_group("the job")
    job.add_argument("--top-k", type=_positive(int), default=10, help="matches listed per query (default 10)")
    job.add_argument("--cache-dir", metavar="DIR", help="image token cache (default OUTPUT/image-tokens)")
    job.add_argument("--image-block", type=_positive(int), default=100, help="images per task (default 100)")
    job.add_argument("--text-block", type=_positive(int), default=1000, help="texts per task (default 1000)")
    job.add_argument(
        "--batch-size", type=_positive(int), default=256, help="pairs per forward pass (default 256)"
    )
    job.add_argument("--task-cpus", type=_positive(float), default=1.0, help="CPUs per task (default 1)")
    rank.set_defaults(handler=run_rank)


def _dtype(args: argparse.Namespace) -> str | None:
    return None if args.dtype in (None, "auto") else args.dtype


def run_table(args: argparse.Namespace) -> int:
    from . import batch

    options: dict[str, Any] = dict(
        device=args.device,
        dtype=_dtype(args),
        batch_size=args.batch_size,
        replicas=args.replicas,
        replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus,
        decode_cpus=args.decode_cpus,
        timeout=args.timeout,
    )
    if args.batch_task == "vqa":
        options["top_k"] = args.top_k
    batch.run(
        args.batch_task,
        args.input,
        args.output,
        args.model,
        address=args.address,
        image_root=args.image_root,
        output_format=args.format,
        part_rows=args.part_rows,
        overwrite=args.overwrite,
        progress=not args.quiet,
        **options,
    )
    from .parts import count_rows

    rows, errors = count_rows(args.output)
    print(json.dumps({"output": args.output, "rows": rows, "rows_with_errors": errors}))
    return 0


def run_rank(args: argparse.Namespace) -> int:
    from . import ranking

    if args.input is None and (args.images is None or args.texts is None):
        raise ViltInputError("pass --images and --texts, or --input (a table of true pairs)")
    corpus = ranking.read_corpus(args.images, args.texts, args.input, args.image_root)
    metrics = ranking.rank(
        corpus,
        args.model,
        args.output,
        address=args.address,
        cache_dir=args.cache_dir,
        top_k=args.top_k,
        image_block=args.image_block,
        text_block=args.text_block,
        batch_size=args.batch_size,
        task_cpus=args.task_cpus,
        device=args.device,
        dtype=_dtype(args),
        timeout=args.timeout,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(json.dumps(metrics, indent=1))
    return 0
