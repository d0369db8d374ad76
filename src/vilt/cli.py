"""The ``vilt`` command.

Each sub-command lives in the module that owns it and registers itself through a
``register(subparsers)`` function. Those modules import only argparse and the standard library at the
top, and only the module of the command given is imported, so ``vilt COMMAND --help`` is fast and works
without the optional extras; heavy imports happen inside the handlers.

Before a command's handler runs, the checks it declared (``set_defaults(checks=[...])``, see
:mod:`vilt.arguments`) look at every argument (files, images, texts, the model, the device, outputs, the
extra it needs), so that what is wrong is said at once, not after the model loaded.

Every failure is one line on stderr, ``vilt COMMAND: error: ...`` (usage errors too: an unknown option
is named with its command), and exit code 2 (``vilt --verbose COMMAND ...`` shows the traceback
instead). Ctrl-C exits with 130, and a closed output pipe
(``vilt info MODEL | head -3``) with 141 (128 + SIGPIPE, as a shell reports other tools), both quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from .arguments import run_checks

# sub-command -> the module that registers it, in --help order
COMMANDS = {
    "vqa": "vilt.commands",
    "nlvr2": "vilt.commands",
    "rank": "vilt.commands",
    "fill-mask": "vilt.commands",
    "explain": "vilt.commands",
    "demo": "vilt.commands",
    "info": "vilt.commands",
    "convert": "vilt.convert",
    "train": "vilt.train.cli",
    "evaluate": "vilt.train.cli",
    "serve": "vilt.serve.cli",
    "batch": "vilt.scale.cli",
    "export": "vilt.export.cli",
}
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``vilt COMMAND: error: ...``, exit code 2."""

    # the parser that parsed last: a sub-command's parses after its parent's, so this is the command given
    last: _Parser | None = None

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        _Parser.last = self
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> _Parser:
    """The ``vilt`` parser with every sub-command, or only the modules that ``command`` needs.

    Args:
        command: the sub-command about to run; None (or a name no module registers) builds them all,
            for ``vilt --help`` and for argparse's message on an unknown command.
    """
    parser = _Parser(
        prog="vilt",
        description="ViLT (Vision-and-Language Transformer): answer questions about images, check "
        "statements, rank captions, fill masked words, train, serve and export.",
    )
    parser.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [COMMANDS[command]] if command in COMMANDS else COMMANDS.values()
    for name in dict.fromkeys(modules):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                continue  # that part of the library is not built yet
            raise
        module.register(subparsers)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named in ``argv``: its first argument that is not an option."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _one_line(err: BaseException) -> str:
    """The first line of an error's message; unexpected error types keep their name and point at --verbose."""
    lines = str(err).strip().splitlines()
    if isinstance(err, (ValueError, OSError, ImportError, RuntimeError)) and lines:
        return lines[0]
    detail = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return f"{detail} (an unexpected error: `vilt --verbose ...` shows where it happened)"


def _run(argv: list[str]) -> int:
    parser = build_parser(_command_of(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's parser (the innermost: `vilt batch vqa`), naming the command
        (_Parser.last or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    problems = run_checks(args)
    if problems:
        listed = problems if len(problems) == 1 else [f"({i}) {p}" for i, p in enumerate(problems, 1)]
        print(f"vilt {args.command}: error: {' '.join(listed)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("vilt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise
    except Exception as err:
        if args.verbose:
            raise
        print(f"vilt {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE


def _discard_stdout() -> None:
    """Point standard output at /dev/null, so that the interpreter's last flush cannot fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a stdout without a file descriptor (a test's capture)
        pass


def main(argv: list[str] | None = None) -> int:
    """Run ``vilt`` with ``argv`` (default: the process's arguments); returns the exit code."""
    try:
        try:
            return _run(sys.argv[1:] if argv is None else list(argv))
        finally:
            sys.stdout.flush()  # inside the try: a reader that left shows here, not at interpreter exit
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
