"""``vilt train`` and ``vilt evaluate``: every option of :class:`vilt.train.settings.TrainArgs` as a
flag, or from a YAML / TOML config file (``--config``); flags given on the command line win over the file.

``vilt evaluate`` evaluates the bundled model unless ``--model`` names another, on the data it was
trained on (its ``training_data.json``) unless options name other data.

Only argparse and the standard library are imported here; training code loads inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

from .. import arguments as check
from ..hub import BUNDLED

# the options `vilt evaluate` takes (the others only matter for training)
EVALUATE_OPTIONS = (
    "task", "dataset", "train_data", "val_data", "test_data", "image_root", "val_fraction", "split",
    "strict", "max_text_length", "eval_batch_size", "bf16", "attention", "num_workers", "cache_images",
    "seed", "threads", "device", "metrics_file",
)  # fmt: skip


# `vilt evaluate` defaults that differ from training: evaluate in float32
EVALUATE_DEFAULTS: dict[str, Any] = {"bf16": False}


def _add_options(
    parser: argparse.ArgumentParser, names: tuple[str, ...] | None, defaults: dict[str, Any]
) -> None:
    """One flag per TrainArgs field (``--batch-size``...), default shown, value SUPPRESSed if not given."""
    from dataclasses import MISSING, fields

    from .settings import TrainArgs

    for f in fields(TrainArgs):
        if names is not None and f.name not in names or f.name == "init":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        help_text = f"{f.metadata['help']} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(
                flag, type=type(default), default=argparse.SUPPRESS, help=help_text, metavar=f.name.upper()
            )


def register(subparsers: Any) -> None:
    """Add the ``train`` and ``evaluate`` sub-commands."""
    train = subparsers.add_parser(
        "train",
        help="train or fine-tune ViLT (vqa, nlvr2, retrieval, pretrain); works under torchrun",
        description="Train ViLT. Options come from flags or --config (YAML/TOML); flags win.",
    )
    train.add_argument(
        "--config", default=argparse.SUPPRESS, help="YAML or TOML file of options (keys as the flags, with _)"
    )
    train.add_argument(
        "--init",
        default=argparse.SUPPRESS,
        help="start from this model directory or hub id (default: a new model)",
    )
    _add_options(train, None, {})
    train.set_defaults(
        handler=_train, checks=[check.device(), check.model("init"), check.input_file("config", "--config")]
    )
    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained model on a validation or test split",
        description="Evaluate a model (accuracy, VQA accuracy, recall@K). Options from flags or --config; "
        "the data options default to those saved with the model (its training_data.json), so --split val "
        "is the validation split it was selected on.",
    )
    evaluate.add_argument("--config", default=argparse.SUPPRESS, help="YAML or TOML file of options")
    evaluate.add_argument(
        "--model",
        dest="init",
        default=argparse.SUPPRESS,
        metavar="MODEL",
        help=f"model directory or hub id (default: {BUNDLED}, the easy-VQA model that ships with vilt)",
    )
    _add_options(evaluate, EVALUATE_OPTIONS, EVALUATE_DEFAULTS)
    evaluate.set_defaults(
        handler=_evaluate,
        checks=[check.device(), check.model("init"), check.input_file("config", "--config")],
    )


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user set: those of the config file, then the flags given (which win)."""
    from dataclasses import fields

    from .settings import TrainArgs, load_config_file

    values = load_config_file(args.config) if getattr(args, "config", None) else {}
    known = {f.name for f in fields(TrainArgs)}
    values.update({k: v for k, v in vars(args).items() if k in known})
    return values


def _collect(args: argparse.Namespace, defaults: dict[str, Any]) -> Any:
    """TrainArgs from defaults < config file < flags given."""
    from .settings import args_from_dict

    return args_from_dict({**defaults, **_given(args)})


def resume_command(args: argparse.Namespace, output_dir: str) -> str:
    """The command that resumes this ``vilt train`` run: the config and flags given, and the output dir."""
    from dataclasses import fields

    from .settings import TrainArgs

    words = ["train"] + (["--config", args.config] if getattr(args, "config", None) else [])
    for f in fields(TrainArgs):
        if f.name == "output_dir" or f.name not in vars(args):
            continue
        value, flag = getattr(args, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        else:
            words += [flag, str(value)]
    words += ["--output-dir", output_dir]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return shlex.join(["vilt", *words])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    command = shlex.join(["torchrun", "--nproc_per_node", str(per_node), "-m", "vilt.cli", *words])
    return (
        command
        if per_node == world
        else f"{command} (on each node, with the --nnodes and rendezvous options used)"
    )


def _train(args: argparse.Namespace) -> int:
    from .interrupts import TrainingInterrupted
    from .loop import train

    settings = _collect(args, {})
    try:
        metrics = train(settings)
    except TrainingInterrupted as stop:
        if os.environ.get("RANK", "0") == "0":
            print(
                f"vilt train: {stop}; resume with: {resume_command(args, settings.output_dir)}",
                file=sys.stderr,
            )
        return 128 + stop.signal_number
    print(json.dumps({"best_val": metrics}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate
    from .settings import args_from_dict, read_training_data, saved_data_options

    given = _given(args)
    model = given.get("init") or BUNDLED
    saved = saved_data_options(read_training_data(model), given)
    metrics = evaluate(args_from_dict({**EVALUATE_DEFAULTS, **saved, **given, "init": model}))
    print(json.dumps(metrics, indent=2))
    return 0
