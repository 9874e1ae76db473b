"""User-facing errors.

Every mistake a user can make (a broken trace, an unknown model name, a config that cannot work)
raises a subclass of :class:`MoeLabError` with a one-line message. Command-line entry points catch
exactly this class, print the message and exit with status 2; anything else is a bug and keeps its
traceback (:func:`run_command` does this for every tool).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any


class MoeLabError(Exception):
    """Base class of errors caused by user input rather than by a bug."""


class ConfigError(MoeLabError):
    """A configuration value is missing, unknown or out of range."""


class TraceError(MoeLabError):
    """A trace file or trace array is unreadable or inconsistent with its ModelSpec."""


def check_keys(value: Any, known: Collection[str], what: str) -> None:
    """Raise ConfigError unless ``value`` is a mapping whose keys are all in ``known``
    (``what`` names it in the message: ``"trace"``, ``"compare.grid"``...)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}")
    unknown = sorted(str(key) for key in set(value) - set(known))
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(known)}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run one command-line action and return its exit status, reporting the way every tool of
    the project does: a user error (:class:`MoeLabError`) prints ``prog: error: <one line>`` on
    stderr and returns 2 (so does running out of memory); Ctrl-C prints ``prog: interrupted``
    and returns 130; output piped into a closed reader (``| head``) returns 0 quietly."""
    try:
        return command()
    except MoeLabError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:  # what the size checks made up front did not foresee
        print(f"{prog}: error: out of memory; use a smaller trace or batch", file=sys.stderr)
        return 2
    except BrokenPipeError:
        sys.stderr.close()
        return 0


def run_cli(prog: str, doc: str, argv: Sequence[str] | None,
            run: Callable[[list[str]], int]) -> int:
    """A whole entry point: ``-h``/``--help`` prints ``doc``; otherwise ``run(args)`` (``argv``,
    or the process's arguments) through :func:`run_command`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(doc)
        return 0
    return run_command(prog, lambda: run(args))
