"""The ``sparge-diffusers`` console command: one sub-command per module, each registering its own parser.

Bad inputs (a `UsageError` from a command, or an argument argparse rejects) end the command with ONE line on stderr
and exit status 2; ``-v`` adds the traceback of a `UsageError` to the log.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn, Optional, Sequence

from . import calibrate, demo, evaluate, generate, sweep
from .errors import UsageError

COMMANDS = (demo, generate, evaluate, sweep, calibrate)
logger = logging.getLogger(__name__)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an argument error is one line (``prog: error: message (see --help)``), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sparge-diffusers", description="Training-free sparse + quantized attention for "
                                                                "diffusers video and image pipelines.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except UsageError as error:
        if args.verbose:
            logger.exception("usage error")
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"sparge-diffusers {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparge-diffusers {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
