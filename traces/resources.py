"""Size checks made before big work starts: will a trace of this many tokens fit in memory?

A trace of 10^9 tokens, or a simulation of 2 x 10^8, would otherwise run until numpy raises
``MemoryError`` (or the kernel kills the process) minutes later. :func:`check_trace_memory`
estimates the bytes first and raises one :class:`~traces.errors.ConfigError` when they exceed
what this process can still allocate (:func:`available_memory_bytes`: the smallest of the
machine's available memory, the cgroup's remaining limit and the process's address-space and
data limits, ``ulimit -v`` / ``-d``).
"""

from __future__ import annotations

import resource
from pathlib import Path

from moe_offload_lab.traces.errors import ConfigError

# bytes per token of a trace besides its routing: request_id, position (int32) and phase (int8)
_TOKEN_SCALARS_BYTES = 4 + 4 + 1
_ID_BYTES, _GATE_BYTES = 2, 4  # expert ids int16, gate weights float32 (traces.format)


def _read_int(path: str, key: str | None = None) -> int | None:
    """A number from a /proc or /sys file (``key:`` line, value in kB for /proc), else None."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except OSError:
        return None
    if key is None:
        value = text.strip()
        return int(value) if value.isdigit() else None
    for line in text.splitlines():
        if line.startswith(f"{key}:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else None
    return None


def available_memory_bytes() -> int | None:
    """Bytes this process can still allocate, as far as the OS says (None: unknown)."""
    limits = []
    available = _read_int("/proc/meminfo", "MemAvailable")
    if available is not None:
        limits.append(available)
    cap = _read_int("/sys/fs/cgroup/memory.max")  # "max" (no limit) reads as None
    used = _read_int("/sys/fs/cgroup/memory.current")
    if cap is not None and used is not None:
        limits.append(max(0, cap - used))
    for rlimit, key in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(rlimit)
        if soft != resource.RLIM_INFINITY:
            current = _read_int("/proc/self/status", key) or 0
            limits.append(max(0, soft - current))
    return min(limits) if limits else None


def trace_bytes(tokens: int, moe_layers: int, top_k: int, lookahead_distances: int = 0) -> int:
    """Bytes of a trace's arrays: token scalars, routing (ids and gates), lookahead ids."""
    per_token = (_TOKEN_SCALARS_BYTES + moe_layers * top_k * (_ID_BYTES + _GATE_BYTES)
                 + lookahead_distances * moe_layers * top_k * _ID_BYTES)
    return int(tokens) * per_token


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_trace_memory(tokens: int, moe_layers: int, top_k: int, lookahead_distances: int,
                       what: str, factor: float = 3.0) -> None:
    """Raise ConfigError when ``factor`` times the trace's bytes (its arrays plus the copies the
    work makes: the Parquet table when saving, the engine's per-step tables when simulating)
    exceed :func:`available_memory_bytes`."""
    need = factor * trace_bytes(tokens, moe_layers, top_k, lookahead_distances)
    free = available_memory_bytes()
    if free is not None and need > free:
        raise ConfigError(f"{what}: {tokens:,} tokens need about {_gib(need)} of memory, but "
                          f"only {_gib(free)} can be allocated here; use fewer tokens")
