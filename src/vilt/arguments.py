"""What a ``vilt`` command's arguments must be, checked before the model loads.

Each command declares its inputs when it registers (``parser.set_defaults(checks=[...])``), with the
checks made here: image files and folders, texts, the model, the device, output files and directories,
and the pip extra the command needs. :func:`vilt.cli.main` runs every check of the command given before
its handler and reports every problem found, in one line, in well under a second: before torch is
imported and the model read, which take seconds. Standard library only at import; the image check opens
image headers with Pillow when it runs.

:func:`announce_slow` prints a line on standard error (a terminal) when loading a model takes more than
a second, so that a command shows it is working.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .errors import ViltInputError

# a check: the problems it finds in the parsed arguments, each a clause naming the argument and the fix
Check = Callable[[argparse.Namespace], list[str]]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")  # what a folder offers
STDIN = "-"
SLOW_S = 1.0  # a model load that takes longer is announced


def run_checks(args: argparse.Namespace) -> list[str]:
    """Every problem the checks that the command declared find in ``args``."""
    return [problem for check in getattr(args, "checks", ()) for problem in check(args)]


# ----------------------------------------------------------------------------- images


def folder_images(folder: str) -> list[str]:
    """The image files directly in ``folder`` (names ending in :data:`IMAGE_EXTENSIONS`, any case; hidden
    files and sub-folders skipped), sorted by name.

    Raises:
        ViltInputError: the folder holds none.
    """
    names = sorted(
        name
        for name in os.listdir(folder)
        if not name.startswith(".")
        and name.lower().endswith(IMAGE_EXTENSIONS)
        and os.path.isfile(os.path.join(folder, name))
    )
    if not names:
        raise ViltInputError(
            f"folder {folder!r} holds no images (files ending {', '.join(IMAGE_EXTENSIONS)}); pass image files"
        )
    return [os.path.join(folder, name) for name in names]


def images(dest: str, *, single: str = "") -> Check:
    """The image arguments in ``args.<dest>`` (one, or a list): each file exists and is an image Pillow
    reads (its header), each folder holds images, ``-`` comes once and has an image piped in. URLs are
    fetched by the command, before the model loads.

    Args:
        dest: the argument.
        single: the command's name when each argument is one image (a folder is then refused).
    """

    def check(args: argparse.Namespace) -> list[str]:
        value = getattr(args, dest)
        arguments = [value] if isinstance(value, str) else list(value)
        problems = []
        if arguments.count(STDIN) > 1:
            problems.append("standard input can be read once: pass '-' for one image only")
        for argument in dict.fromkeys(arguments):
            if argument == STDIN:
                if sys.stdin is None or sys.stdin.isatty():
                    problems.append(
                        "'-' reads an image from standard input, but standard input is a terminal: pipe an "
                        "image into it (< photo.jpg)"
                    )
            elif os.path.isdir(argument):
                if single:
                    problems.append(
                        f"{argument!r} is a folder; {single} takes one image: pass one of its files"
                    )
                    continue
                try:
                    problems += [p for path in folder_images(argument) if (p := _image_problem(path))]
                except ViltInputError as err:
                    problems.append(str(err))
            elif not argument.startswith(("http://", "https://")):
                problems += [p for p in [_image_problem(argument)] if p]
        return problems

    return check


def _image_problem(path: str) -> str | None:
    """Why ``path`` is not an image file Pillow reads (from its header), or None."""
    from .images import describe, open_image  # Pillow, not torch

    try:
        open_image(Path(path), name=describe(Path(path))).close()
    except (OSError, ValueError) as err:
        return str(err).rstrip(".")
    return None


# ----------------------------------------------------------------------------- texts, model, device, extras


def text(dest: str, flag: str, what: str, *, must_hold: str = "") -> Check:
    """A text argument (or each of a list) is not blank, and holds ``must_hold`` when given.

    Args:
        dest: the argument.
        flag: its flag, e.g. "-q".
        what: what the text is, e.g. "question".
        must_hold: what each text must hold, e.g. "[MASK]".
    """

    def check(args: argparse.Namespace) -> list[str]:
        value = getattr(args, dest)
        values = [value] if isinstance(value, str) else list(value)
        if any(not v.strip() for v in values):
            return [f"the {what} ({flag}) is empty: give one"]
        bad = [v for v in values if must_hold not in v]
        if must_hold and bad:
            return [f"the {what} ({flag}) {bad[0]!r} has no {must_hold}: put {must_hold} where a word goes"]
        return []

    return check


def model(dest: str = "model", *, needed: str = "") -> Check:
    """The model argument names a model directory (with its ``config.json``), ``bundled`` or a hub id.

    Args:
        dest: the argument.
        needed: what the model must be when the argument is required (the bundled model cannot do
            the command's task), e.g. "a ViltForMaskedLM".
    """

    def check(args: argparse.Namespace) -> list[str]:
        from .hub import is_hub_id, model_source, resolve_file

        name = getattr(args, dest, None)
        if name is None:
            if needed:
                return [
                    f"{args.command} needs a model: pass --model with a hub id or a directory holding {needed} "
                    "(the bundled model only answers easy-VQA questions)"
                ]
            return []
        try:
            if not is_hub_id(model_source(name)):  # a local directory: read at once; a hub id: when loaded
                resolve_file(name, "config.json")
        except (OSError, ValueError) as err:
            return [str(err)]
        return []

    return check


def device(dest: str = "device") -> Check:
    """The device is auto, cpu, cuda or cuda:N, and CUDA is one this PyTorch can have."""

    def check(args: argparse.Namespace) -> list[str]:
        from importlib import metadata

        value = getattr(args, dest, None)
        if value is None or value in ("auto", "cpu"):
            return []
        kind, _, index = value.partition(":")
        if kind != "cuda" or (index and not index.isdigit()):
            return [f"unknown device {value!r} (--device): use auto, cpu, cuda or cuda:N"]
        try:
            version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            return []  # torch's own message comes when it is imported
        if version.endswith("+cpu"):
            return [f"--device {value}: this PyTorch ({version}) is built without CUDA; pass --device cpu"]
        return []

    return check


def extra(name: str, *modules: str) -> Check:
    """The modules of the pip extra ``name`` are installed (found, not imported)."""

    def check(args: argparse.Namespace) -> list[str]:
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            return [f"vilt {args.command} needs {', '.join(missing)}: pip install 'vilt[{name}]'"]
        return []

    return check


def input_file(dest: str, flag: str) -> Check:
    """A file the command reads (when given) exists and is a file."""

    def check(args: argparse.Namespace) -> list[str]:
        path = getattr(args, dest, None)
        if path is None or os.path.isfile(path):
            return []
        return [f"{flag}: {path} {'is a folder' if os.path.isdir(path) else 'does not exist'}; name a file"]

    return check


# ----------------------------------------------------------------------------- outputs


def output_file(dest: str, flag: str, suffixes: Sequence[str]) -> Check:
    """An output file: of a kind the command writes (a name without a suffix is allowed: the first
    kind), not a folder, writable, in a folder that exists or can be made."""

    def check(args: argparse.Namespace) -> list[str]:
        path = Path(getattr(args, dest))
        if path.suffix and path.suffix.lower() not in suffixes:
            return [f"{flag} {str(path)!r}: write a {', '.join(suffixes)} file"]
        if path.is_dir():
            return [f"{flag} {str(path)!r} is a folder: name a file in it"]
        if path.exists():
            writable = os.access(path, os.W_OK)
            return [] if writable else [f"{flag} {str(path)!r} cannot be written: it is not writable"]
        existing = next(folder for folder in path.absolute().parents if folder.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            problem = "is a file" if not existing.is_dir() else "is not writable"
            return [f"{flag} {str(path)!r} cannot be written: {existing} {problem}"]
        return []

    return check


def output_directory(
    dest: str, *, force: str = "force", inputs: Callable[[argparse.Namespace], list[str]] = lambda args: []
) -> Check:
    """An output directory that a save can write (:func:`vilt.files.check_output_directory`).

    Args:
        dest: the argument.
        force: the flag that allows writing into a non-empty directory.
        inputs: the paths the command reads, which the output must not be or hold.
    """

    def check(args: argparse.Namespace) -> list[str]:
        from .files import check_output_directory

        try:
            check_output_directory(getattr(args, dest), force=getattr(args, force), inputs=inputs(args))
        except (OSError, ValueError) as err:
            return [str(err)]
        return []

    return check


# ----------------------------------------------------------------------------- working


@contextlib.contextmanager
def announce_slow(message: str, after: float | None = None) -> Iterator[None]:
    """Print ``message`` on standard error if the block is still running ``after`` seconds (default
    :data:`SLOW_S`) in, when standard error is a terminal (what scripts and logs read stays as it was)."""
    if not (sys.stderr is not None and sys.stderr.isatty()):
        yield
        return
    timer = threading.Timer(
        SLOW_S if after is None else after, lambda: print(message, file=sys.stderr, flush=True)
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
