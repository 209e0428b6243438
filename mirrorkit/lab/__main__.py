"""`python -m mirrorkit.lab ACTION ...`: the `mirrorkit lab` command on its own.

Same arguments as `mirrorkit lab`; useful for scripts (molecule, tests) that
need only the lab.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mirrorkit.commands import lab
from mirrorkit.errors import MirrorkitError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirrorkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    lab.register(sub)
    args = parser.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    try:
        status: int = args.func(args)
    except MirrorkitError as exc:
        print(f"mirrorkit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mirrorkit: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
