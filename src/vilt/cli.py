"""The ``vilt`` command.

Each sub-command lives in the module that owns it and registers itself through a
``register(subparsers)`` function. Those modules import only argparse at the top, so ``vilt --help``
is fast and works without the optional extras; heavy imports happen inside the handlers.
Errors surface as one clear line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# modules that contribute sub-commands, in --help order
_COMMAND_MODULES = (
    "vilt.commands",  # vqa, nlvr2, rank, fill-mask, explain, demo, info
    "vilt.convert",  # convert
    "vilt.train.cli",  # train, evaluate
    "vilt.serve.cli",  # serve
    "vilt.export.cli",  # export
)


class CLIError(Exception):
    """An error meant for the user: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vilt",
        description="ViLT (Vision-and-Language Transformer): answer questions about images, check "
        "statements, rank captions, fill masked words, train, serve and export.",
    )
    parser.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                continue  # that part of the library is not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        print("vilt: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, ImportError, OSError, RuntimeError) as err:
        if args.verbose:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"vilt {args.command}: error: {message}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
