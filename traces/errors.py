"""User-facing errors.

Every mistake a user can make (a broken trace, an unknown model name, a config that cannot work)
raises a subclass of :class:`MoeLabError` with a one-line message. Command-line entry points catch
exactly this class, print the message and exit with status 2; anything else is a bug and keeps its
traceback.
"""


class MoeLabError(Exception):
    """Base class of errors caused by user input rather than by a bug."""


class ConfigError(MoeLabError):
    """A configuration value is missing, unknown or out of range."""


class TraceError(MoeLabError):
    """A trace file or trace array is unreadable or inconsistent with its ModelSpec."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
