"""``vilt train`` and ``vilt evaluate``: every option of :class:`vilt.train.loop.TrainArgs` as a flag,
or from a YAML / TOML config file (``--config``); flags given on the command line win over the file.

Only argparse and the standard library are imported here; training code loads inside the handlers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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

    from .loop import TrainArgs

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
    train.set_defaults(handler=_train)
    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained model on a validation or test split",
        description="Evaluate a model (accuracy, VQA accuracy, recall@K). Options from flags or --config.",
    )
    evaluate.add_argument("--config", default=argparse.SUPPRESS, help="YAML or TOML file of options")
    evaluate.add_argument(
        "--model", dest="init", default=argparse.SUPPRESS, required=True, help="model directory or hub id"
    )
    _add_options(evaluate, EVALUATE_OPTIONS, EVALUATE_DEFAULTS)
    evaluate.set_defaults(handler=_evaluate)


def load_config_file(path: str) -> dict[str, Any]:
    """Options from a ``.yaml``/``.yml`` or ``.toml`` file (dashes in keys are accepted)."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    if file.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib

        data = tomllib.loads(file.read_text(encoding="utf-8"))
    elif file.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ImportError("YAML configs need pyyaml: pip install 'vilt[train]'") from err
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    else:
        raise ValueError(f"config file {path} must end in .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _collect(args: argparse.Namespace, defaults: dict[str, Any]) -> Any:
    """TrainArgs from defaults < config file < flags given."""
    from dataclasses import fields

    from .loop import TrainArgs, args_from_dict

    values = dict(defaults)
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    known = {f.name for f in fields(TrainArgs)}
    values.update({k: v for k, v in vars(args).items() if k in known})
    return args_from_dict(values)


def _train(args: argparse.Namespace) -> int:
    from .loop import train

    metrics = train(_collect(args, {}))
    print(json.dumps({"best_val": metrics}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .loop import evaluate

    metrics = evaluate(_collect(args, EVALUATE_DEFAULTS))
    print(json.dumps(metrics, indent=2))
    return 0
