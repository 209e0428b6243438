"""`python -m mirrorkit.lab ACTION ...`: the `mirrorkit lab` command on its own.

Same arguments as `mirrorkit lab`; useful for scripts (molecule, tests) that
need only the lab.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mirrorkit.cli import dispatch
from mirrorkit.commands import lab


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirrorkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    lab.register(sub)
    return dispatch(parser.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
