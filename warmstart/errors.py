"""User-facing errors: one clear paragraph (what, where, what would be right), never a traceback.

The CLI catches :class:`WarmstartError` and prints its message; everything else is a bug.
"""


class WarmstartError(Exception):
    """An error caused by the user's recipe, data, files or environment, with a readable message."""


class ConfigError(WarmstartError):
    """A recipe or override that does not validate."""


class DataError(WarmstartError):
    """A task file or dataset that cannot be read or has the wrong shape."""


def warn(message: str) -> None:
    """Print a one-paragraph warning for the user (on stderr: stdout stays the run's own output).

    User text in ``message`` is printed literally, never read as terminal markup."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)
