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
