"""Errors the CLI reports as one clear line (exit 1), never as a traceback."""


class MirrorkitError(Exception):
    """A failure the user can act on; its message says what and how to fix it."""


class UsageError(MirrorkitError):
    """The command line asks for something impossible (an unknown mirror or
    host, options that exclude each other): exit 2, like argparse's errors."""
