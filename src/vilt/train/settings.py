"""The settings of a run: :class:`TrainArgs` (every option of ``vilt train`` / ``vilt evaluate``), read
from a YAML/TOML config file and flags, and :class:`DataSource`, the data a model is trained on.

The data source travels with the model: ``output_dir/best/training_data.json`` records the task, the
dataset and its files, and how the validation split was held out (fraction and seed), so that
``vilt evaluate --split val`` evaluates on exactly the examples the model was selected on.

Standard library only at import time: ``vilt train --help`` does not load torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ViltInputError
from ..tasks import task_names

DATASETS = ("easy-vqa", "vqav2", "nlvr2", "karpathy", "jsonl")
TRAINING_DATA_FILE = "training_data.json"


def _opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line help (shown by ``vilt train --help``)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DataSource:
    """Where a run's examples come from, and how its validation split is held out.

    Attributes:
        task: the training task (``vilt train --task``).
        dataset: the reader (``vilt train --dataset``).
        train_data, val_data, test_data: the split files (comma-separated where a reader takes two).
        image_root: the folder of the images.
        val_fraction: share of the training images held out for validation when there is no val data.
        seed: the seed of that hold-out (and of the run).
    """

    task: str
    dataset: str
    train_data: str = ""
    val_data: str = ""
    test_data: str = ""
    image_root: str = ""
    val_fraction: float = 0.1
    seed: int = 0

    def absolute(self) -> DataSource:
        """The same source with absolute paths, valid from any working directory."""
        paths = {name: _absolute(getattr(self, name)) for name in PATH_OPTIONS}
        return DataSource(**{**asdict(self), **paths})


DATA_OPTIONS = tuple(f.name for f in fields(DataSource))
PATH_OPTIONS = ("train_data", "val_data", "test_data", "image_root")


def _absolute(spec: str) -> str:
    return ",".join(os.path.abspath(part.strip()) for part in spec.split(",") if part.strip())


@dataclass
class TrainArgs:
    """Every option of ``vilt train`` / ``vilt evaluate`` (flags or a YAML/TOML config file)."""

    # --- task and data ---
    task: str = _opt("vqa", "vqa | nlvr2 | retrieval | pretrain")
    dataset: str = _opt(
        "easy-vqa", "easy-vqa | vqav2 | nlvr2 | karpathy | jsonl (pretrain on easy-vqa uses captions)"
    )
    train_data: str = _opt("", "training file(s); vqav2: 'questions.json,annotations.json'")
    val_data: str = _opt("", "validation file(s); empty: hold out --val-fraction of the training images")
    test_data: str = _opt("", "test file(s), used only by `vilt evaluate --split test`")
    image_root: str = _opt(
        "", "folder of the images (vqav2, nlvr2, karpathy; jsonl: default the file's folder)"
    )
    answers: str = _opt(
        "", "answer vocabulary file (JSON list/id2label, or one per line); default: from the data"
    )
    val_fraction: float = _opt(
        0.1, "share of training images held out for validation when there is no val data"
    )
    train_fraction: float = _opt(1.0, "train on this random share of the training examples (e.g. 0.05)")
    strict: bool = _opt(
        False, "raise on bad data (missing images, unknown answers, empty texts) instead of skipping"
    )
    # --- model ---
    init: str = _opt("", "start from this model directory or hub id; empty: a new model of the size below")
    output_dir: str = _opt("runs/vilt", "checkpoints, logs and the best model (output_dir/best)")
    image_size: int = _opt(384, "new model: side of the position-embedding grid, in pixels")
    patch_size: int = _opt(32, "new model: patch side, in pixels")
    hidden_size: int = _opt(768, "new model: width")
    num_layers: int = _opt(12, "new model: transformer layers")
    num_heads: int = _opt(12, "new model: attention heads")
    intermediate_size: int = _opt(3072, "new model: MLP width")
    initializer_range: float = _opt(0.02, "new model: std of the normal weight init")
    shortest_edge: int = _opt(384, "new processor: resize images so their shorter side is this")
    max_text_length: int = _opt(40, "truncate texts to this many tokens")
    # --- optimisation ---
    epochs: float = _opt(10.0, "passes over the training data")
    max_steps: int = _opt(0, "stop after this many optimizer steps (0: use --epochs)")
    max_minutes: float = _opt(0.0, "stop early once training has run this many minutes (0: no limit)")
    batch_size: int = _opt(32, "examples per micro-batch per process")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    lr: float = _opt(1e-4, "peak learning rate")
    head_lr_mult: float = _opt(0.0, "learning-rate multiplier of the task head (0: 10 for vqa, 1 otherwise)")
    weight_decay: float = _opt(0.01, "AdamW weight decay (none on biases and norms)")
    beta2: float = _opt(0.98, "AdamW beta2 (beta1 is 0.9)")
    warmup: float = _opt(0.1, "warmup steps: a fraction of the total (< 1) or a count")
    max_grad_norm: float = _opt(1.0, "clip gradients to this norm (0: no clipping)")
    bf16: bool = _opt(True, "bfloat16 autocast")
    grad_checkpointing: bool = _opt(False, "recompute activations in backward to save memory")
    randaugment: bool = _opt(False, "RandAugment (N=2, M=9) on training images, as the paper's fine-tuning")
    randaugment_magnitude: int = _opt(9, "RandAugment magnitude M, 0 to 30")
    randaugment_ops: str = _opt("", "comma-separated RandAugment operations to draw from (default: all 14)")
    negatives: int = _opt(15, "retrieval: random negative captions per image")
    wpa: bool = _opt(True, "pretrain: add the word-patch alignment loss")
    attention: str = _opt(
        "auto",
        "auto | eager | sdpa (auto: sdpa, whose CPU backward takes the explicit softmax, faster there)",
    )
    # --- bookkeeping ---
    eval_every: int = _opt(0, "validate every this many steps (0: once per epoch)")
    save_every: int = _opt(0, "write the resumable checkpoint every this many steps (0: at each validation)")
    log_every: int = _opt(20, "log the training loss every this many steps")
    eval_batch_size: int = _opt(128, "examples per evaluation batch")
    num_workers: int = _opt(0, "data-loading worker processes")
    cache_images: bool = _opt(True, "preprocess each image once and keep it in memory (small datasets)")
    seed: int = _opt(0, "random seed")
    threads: int = _opt(0, "torch CPU threads per process (0: torch's default)")
    device: str = _opt("auto", "auto | cpu | cuda")
    tensorboard: bool = _opt(False, "also log to TensorBoard (needs the tensorboard package)")
    save_dtype: str = _opt("float32", "dtype of the weights in output_dir/best: float32 | float16 | bfloat16")
    split: str = _opt("test", "vilt evaluate: the split to evaluate, val or test")
    metrics_file: str = _opt("", "vilt evaluate: also write the metrics JSON here")

    def validate(self) -> None:
        """Raise :class:`~vilt.errors.ViltInputError` naming the first option that cannot work."""
        from ..devices import DTYPE_NAMES, DTYPES

        tasks = task_names("train")
        if self.task not in tasks:
            raise ViltInputError(f"--task must be one of {', '.join(tasks)}, got {self.task!r}")
        if self.dataset not in DATASETS:
            raise ViltInputError(f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.dataset != "easy-vqa" and not self.train_data and not self.init:
            raise ViltInputError(f"--dataset {self.dataset} needs --train-data")
        for name in ("batch_size", "grad_accum", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ViltInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.train_fraction <= 1:
            raise ViltInputError(f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        if self.attention not in ("auto", "eager", "sdpa"):
            raise ViltInputError(f"--attention must be auto, eager or sdpa, got {self.attention!r}")
        if self.save_dtype not in DTYPES:
            raise ViltInputError(
                f"--save-dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.save_dtype!r}"
            )
        if self.split not in ("val", "test"):
            raise ViltInputError(f"--split must be val or test, got {self.split!r}")

    def data_source(self) -> DataSource:
        """The data of this run and its validation hold-out."""
        return DataSource(**{name: getattr(self, name) for name in DATA_OPTIONS})

    def new_model_config(self) -> dict[str, Any]:
        """The :class:`~vilt.configuration.ViltConfig` options of a new model of the size asked for."""
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "initializer_range": self.initializer_range,
            "max_position_embeddings": self.max_text_length,
        }

    def head_lr_multiplier(self) -> float:
        """The head's learning-rate multiplier: the option, or the task's default (10 for vqa, else 1)."""
        from .tasks import training_task

        return self.head_lr_mult or training_task(self.task).head_lr_mult


def args_from_dict(values: dict[str, Any]) -> TrainArgs:
    """TrainArgs from a dict (a config file), rejecting unknown keys with the list of known ones."""
    known = {f.name for f in fields(TrainArgs)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ViltInputError(f"unknown training options {unknown}; known options: {', '.join(sorted(known))}")
    return TrainArgs(**values)


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
        raise ViltInputError(f"config file {path} must end in .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise ViltInputError(f"config file {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


# ----------------------------------------------------------------------------- the data saved with a model


def training_data_record(source: DataSource, val_examples: int) -> dict[str, Any]:
    """What ``training_data.json`` holds: the source (absolute paths) and the validation split's size."""
    return {**asdict(source.absolute()), "val_examples": val_examples}


def read_training_data(model: str) -> dict[str, Any] | None:
    """The ``training_data.json`` saved with ``model`` (a directory, ``bundled`` or a hub id), if any.

    Raises:
        ViltInputError: the file is there but is not a record of :class:`DataSource` options.
    """
    from ..hub import resolve_file

    path = resolve_file(model, TRAINING_DATA_FILE, required=False)
    if path is None:
        return None
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        DataSource(**{k: v for k, v in record.items() if k != "val_examples"})
    except (ValueError, TypeError) as err:
        raise ViltInputError(
            f"{path} is not a record of the training data ({err}); delete it or pass the data options"
        ) from None
    return record


def saved_data_options(saved: dict[str, Any] | None, given: dict[str, Any]) -> dict[str, Any]:
    """The data options of ``saved`` (a ``training_data.json`` record) that ``given`` leaves out.

    Nothing when ``given`` names other data (another dataset or other train/val files): the saved
    hold-out says nothing about those.
    """
    if not saved:
        return {}
    for name in ("dataset", "train_data", "val_data"):
        if name not in given:
            continue
        mine = _absolute(given[name]) if name in PATH_OPTIONS else given[name]
        if mine != saved.get(name):
            return {}
    return {name: saved[name] for name in DATA_OPTIONS if name in saved and name not in given}
