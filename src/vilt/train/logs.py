"""What a run reports: log lines (stderr and ``output_dir/train.log``), printed through the progress
bars, and the CSV log of every metric (``output_dir/log.csv``, optionally TensorBoard)."""

from __future__ import annotations

import contextlib
import csv
import logging
from collections.abc import Iterator
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

LOGGER = "vilt.train"  # every module of vilt.train logs through this logger's handlers
log = logging.getLogger(LOGGER)


def setup_logging(output_dir: Path | None, main: bool) -> None:
    """Log INFO lines to stderr (main process only; warnings from every process) and to
    ``output_dir/train.log``."""
    log.setLevel(logging.INFO if main else logging.WARNING)
    log.handlers.clear()
    log.propagate = False
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if output_dir is not None and main:
        handlers.append(logging.FileHandler(output_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)


@contextlib.contextmanager
def through_progress_bars() -> Iterator[None]:
    """While open, console log lines are written above the tqdm bars instead of into them."""
    with logging_redirect_tqdm(loggers=[log]):
        yield


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


class RunLog:
    """The CSV log (``log.csv``: elapsed_s, step, epoch, split, metric, value), optionally TensorBoard.

    Args:
        output_dir: where ``log.csv`` (and ``tensorboard/``) go.
        enabled: False on every process but the main one.
        resume_step: the step training resumes from: rows logged after it (by a run killed after
            its last checkpoint) are dropped, as that run's later steps are done again.
        tensorboard: also write TensorBoard scalars.
    """

    columns = ["elapsed_s", "step", "epoch", "split", "metric", "value"]

    def __init__(self, output_dir: Path, enabled: bool, resume_step: int, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = output_dir / "log.csv"
        self.writer = None
        if not enabled:
            return
        rows = []
        if resume_step and self.path.exists():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as fh:
            out = csv.DictWriter(fh, self.columns)
            out.writeheader()
            out.writerows(rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError(
                    "--tensorboard needs the tensorboard package: pip install tensorboard"
                ) from err

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, elapsed: float, step: int, epoch: float, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as fh:
            out = csv.writer(fh)
            for name, value in metrics.items():
                out.writerow([f"{elapsed:.1f}", step, f"{epoch:.3f}", split, name, f"{value:.6g}"])
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"{split}/{name}", value, step)
