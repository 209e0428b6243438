"""The `mirrorkit` command: argument parsing and dispatch.

Each subcommand lives in `mirrorkit/commands/<name>.py` and exposes
`register(subparsers)` (adds its parser and sets `func`) and is run as
`args.func(args) -> int`. Exit status: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from mirrorkit import __version__
from mirrorkit.errors import MirrorkitError, UsageError

COMMANDS = ("validate", "apply", "status", "events", "maintenance", "switchover", "promote",
            "restore", "migrate", "verify", "resync", "lab")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirrorkit",
        description="Declarative high-availability data mirroring, provisioned with Ansible.",
    )
    parser.add_argument("--version", action="version", version=f"mirrorkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"mirrorkit.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return dispatch(parser.parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed command; a MirrorkitError becomes one line and exit 1."""
    try:
        status: int = args.func(args)
    except UsageError as exc:
        print(f"mirrorkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MirrorkitError as exc:
        print(f"mirrorkit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mirrorkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `mirrorkit status --json | head`: the reader left; say nothing more.
        # Python would complain again while flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
