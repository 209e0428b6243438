"""The ``mirrorkit-agent`` console script: ``probe`` takes a fast path
(:mod:`mirrorkit.agent.cli.probe`, standard library only); everything else is
the full agent command line (:mod:`mirrorkit.agent.cli.main`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["probe"]:
        from mirrorkit.agent.cli import probe

        return probe.main(args[1:])
    from mirrorkit.agent.cli.main import main as agent_main

    return agent_main(args)


if __name__ == "__main__":
    sys.exit(main())
