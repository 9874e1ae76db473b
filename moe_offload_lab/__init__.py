"""moe-offload-lab: a simulator and a real executor for MoE expert-offloading policies.

The distribution installs the repository's top-level folders under this one namespace, so nothing
collides with other packages: ``traces/`` is :mod:`moe_offload_lab.traces`, ``policies/`` is
:mod:`moe_offload_lab.policies`, ``sim/`` is :mod:`moe_offload_lab.sim` and ``hw/`` is
:mod:`moe_offload_lab.hw` (``pyproject.toml`` maps them with ``package-dir``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moe-offload-lab")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"


def version_line(prog: str) -> str:
    """What every command's ``--version`` prints: ``<prog> <version> (moe-offload-lab)``."""
    return f"{prog} {__version__} (moe-offload-lab)"


_COMMANDS = {f"moe_offload_lab.{module}": name for module, name in (
    ("traces.cli", "moe-trace"), ("sim.cli", "moe-sim"), ("sim.tune.cli", "moe-tune"),
    ("sim.report.cli", "moe-report"), ("hw.cli", "moe-hw"), ("policies.cli", "moe-policy"),
    ("policies.learned.cli", "moe-train"))}


def _command_name() -> str | None:
    """The command this process runs (``moe-sim``, or the module of ``python -m``), or None
    when it runs something else (a notebook, a user's script)."""
    import os
    import sys

    argv = getattr(sys, "orig_argv", [])
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        return _COMMANDS.get(module, module) if module.startswith("moe_offload_lab.") else None
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name if name.startswith("moe-") else None


def _quiet_interrupts(name: str) -> None:
    """Ctrl-C before a command's own handler is in place (while it imports numpy, torch...)
    prints one line, ``<command>: interrupted``, instead of a traceback; the exit status stays
    that of SIGINT. Everything else goes to the previous hook."""
    import sys

    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: object) -> None:
        if issubclass(kind, KeyboardInterrupt):
            print(f"{name}: interrupted", file=sys.stderr)
            return
        previous(kind, value, tb)

    sys.excepthook = hook


if _command_name() is not None:
    _quiet_interrupts(_command_name())
