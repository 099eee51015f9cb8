"""The `glm4voice` command line: a thin layer over the library, one module per kind of command.

`inference` (tokenize, decode, convert-lm, chat, serve), `data` (the corpus
pipeline), `training` (the trainers), `evaluate` (eval), `recipe`; `common` holds the
options they share.
Errors on bad input print one line (`glm4voice CMD: error: ...`) and exit 2;
they never show a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import Glm4VoiceError
from . import data, evaluate, inference, recipe, training


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (`glm4voice CMD: error: ...`, exit 2) like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help shows the usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="glm4voice", description="GLM-4-Voice end to end: speech in, speech out.")
    parser.add_argument("--version", action="version", version=f"glm4voice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (inference, data, training, evaluate, recipe):
        module.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:
            from .common import check_device

            check_device(args.device)
        return int(args.run(args) or 0)
    except Glm4VoiceError as exc:
        print(f"glm4voice {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `glm4voice tokenize ... | head`: the reader left; stop quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


__all__ = ["build_parser", "main"]
