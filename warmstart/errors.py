"""User-facing errors: one clear paragraph (what, where, what would be right), never a traceback.

The CLI catches :class:`WarmstartError` and prints its message; everything else is a bug.
"""


class WarmstartError(Exception):
    """An error caused by the user's recipe, data, files or environment, with a readable message."""


class ConfigError(WarmstartError):
    """A recipe or override that does not validate."""


class DataError(WarmstartError):
    """A task file or dataset that cannot be read or has the wrong shape."""
