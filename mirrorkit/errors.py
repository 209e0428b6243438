"""Errors the CLI reports as one clear line (exit 1), never as a traceback."""


class MirrorkitError(Exception):
    """A failure the user can act on; its message says what and how to fix it."""
