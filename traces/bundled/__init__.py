"""Small real traces that ship with the package.

``tiny-moe-stdlib``: a 4-layer, 16-expert, top-2 Mixtral-style byte-level model trained on the CPU
on docstrings of the Python standard library, recorded on held-out docstrings with lookahead
distances 1 and 2 and 16 features per layer. ``python -m moe_offload_lab.traces.bundled.build``
rebuilds it.

``flame-moe-290m``: 2,048 consecutive tokens of the real routing of FLAME-MoE-290M (8 MoE layers,
64 experts, top-6) from the public dataset CMU-FLAME/FLAME-MoE-Traces (Apache-2.0, licence in
``flame-moe-290m.LICENSE.txt``); ``flame-moe-290m-first10``: the first 10 positions of 64
sequences of the same capture. ``python -m moe_offload_lab.traces.bundled.flame SRC`` rebuilds
both. ``traces/bundled/README.md`` gives the provenance of every bundled trace.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from moe_offload_lab.traces.errors import ConfigError

BUNDLED = ("tiny-moe-stdlib", "flame-moe-290m", "flame-moe-290m-first10")


def path(name: str = "tiny-moe-stdlib") -> Path:
    """Filesystem path of the bundled trace ``name`` (load it with ``Trace.load(path())``)."""
    if name not in BUNDLED:
        raise ConfigError(f"no bundled trace {name!r}; bundled: {', '.join(BUNDLED)}")
    found = Path(str(resources.files(__name__) / f"{name}.parquet"))
    if not found.is_file():
        raise ConfigError(f"the bundled trace {found.name} is missing from the installation "
                          f"(rebuild it with python -m moe_offload_lab.traces.bundled.build)")
    return found


def load(name: str = "tiny-moe-stdlib", columns: str = "all"):
    """The bundled trace ``name`` as a :class:`~traces.format.Trace`."""
    from moe_offload_lab.traces.format import Trace

    return Trace.load(path(name), columns=columns)
