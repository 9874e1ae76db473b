"""Objectives: which summary values of :func:`sim.run.simulate` a study minimizes.

Latency objectives (one of them) may be paired with ``cache_bytes`` (GPU memory for experts) for
a multi-objective study whose answer is the Pareto front.
"""

from __future__ import annotations

from collections.abc import Sequence

from moe_offload_lab.traces.errors import ConfigError

LATENCY = ("tpot_ms_mean", "tpot_ms_p99", "step_latency_ms_mean")
MEMORY = ("cache_bytes", "gpu_memory_needed_gb")
OBJECTIVES = LATENCY + MEMORY


def check_objectives(objectives: Sequence[str], where: str = "objective") -> None:
    """Raise ConfigError unless ``objectives`` is one latency key, optionally plus one memory
    key (all minimized)."""
    if not objectives or len(objectives) > 2 or len(set(objectives)) != len(objectives):
        raise ConfigError(f"{where}: give one objective or a latency/memory pair, "
                          f"got {list(objectives)}")
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad:
        raise ConfigError(f"{where}: unknown objective(s) {', '.join(map(str, bad))}; valid: "
                          f"{', '.join(OBJECTIVES)}")
    if len(objectives) == 1 and objectives[0] not in LATENCY:
        raise ConfigError(f"{where}: a single objective must be a latency "
                          f"({', '.join(LATENCY)})")
    if len(objectives) == 2 and not (objectives[0] in LATENCY and objectives[1] in MEMORY):
        raise ConfigError(f"{where}: a multi-objective study is a latency then a memory key, "
                          f"e.g. tpot_ms_mean,cache_bytes")


def parse_objective(text: str) -> list[str]:
    """``"tpot_ms_mean"`` or ``"tpot_ms_mean,cache_bytes"`` as a list (checked)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    check_objectives(names, "--objective")
    return names
