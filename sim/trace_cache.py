"""Synthetic traces generated once and shared by the runs that ask for the same one.

The runs of a comparison and the jobs of a sweep usually simulate the same synthetic trace
(the same preset, ``trace.tokens`` and ``trace.seed``) under different policies; generating it
costs about as much as simulating it. A :class:`TraceCache` hands out one trace per distinct
trace config:

- in memory, within one process (the runs of ``experiment=compare``; a joblib worker's
  successive sweep jobs; a tuning worker's trials, which alternate a prefix and the full
  trace), the ``keep`` most recent traces only;
- on disk, when given a folder (a sweep's ``<sweep dir>/.traces/``): ``<key>.parquet``, written
  atomically (:func:`traces.atomic.atomic_path` via :meth:`Trace.save`), so workers running at
  once (joblib processes, SLURM array tasks on a shared file system) either read a complete
  file or generate the trace themselves and rename an identical one over it. A file that cannot
  be read is generated again and replaced; a folder that cannot be written only costs the
  sharing.

The key is a SHA-256 digest of everything the generator reads: the preset's resolved parameters
(:meth:`SynthConfig.to_dict`, so editing ``conf/trace/<preset>.yaml`` changes it), the token
count, the seed and the package version. The generator is deterministic in those, so a shared
trace is the trace each job would have generated (the simulated results are identical).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import MoeLabError

FOLDER = ".traces"  # in a sweep folder


def trace_key(preset: str, tokens: int, seed: int) -> str:
    """The content key of the synthetic trace ``generate(preset, tokens=tokens, seed=seed)``."""
    from moe_offload_lab.traces.synth.config import SynthConfig

    from moe_offload_lab import __version__

    config = SynthConfig.preset(preset).to_dict()
    text = json.dumps({"preset": config, "tokens": tokens, "seed": seed,
                       "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class TraceCache:
    """Synthetic traces by content key: the ``keep`` latest in memory, every one in
    ``folder`` (None: memory only)."""

    def __init__(self, folder: str | Path | None = None, keep: int = 2) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.keep = keep
        self._memory: OrderedDict[str, Any] = OrderedDict()
        self.generated = 0  # traces this cache generated (the rest were shared)

    def synthetic(self, preset: str, tokens: int, seed: int) -> Any:
        """The trace of ``generate(preset, tokens=tokens, seed=seed)`` (a :class:`Trace`)."""
        key = trace_key(preset, tokens, seed)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        trace = self._read(key)
        if trace is None:
            from moe_offload_lab.traces.synthetic import generate

            trace = generate(preset, tokens=tokens, seed=seed)
            self.generated += 1
            self._write(key, trace)
        _read_only(trace)
        self._memory[key] = trace
        while len(self._memory) > self.keep:
            self._memory.popitem(last=False)
        return trace

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.parquet"

    def _read(self, key: str) -> Any:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        from moe_offload_lab.traces.format import Trace

        try:
            return Trace.load(path)
        except (MoeLabError, OSError, ValueError):  # damaged: generate again, replace it
            return None

    def _write(self, key: str, trace: Any) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            trace.save(path)
        except (MoeLabError, OSError):  # the folder cannot be written: share nothing
            pass


def _read_only(trace: Any) -> None:
    """Freeze a shared trace's arrays: a run that wrote into one would change the next run's
    input, so any such write raises instead."""
    arrays = [trace.request_id, trace.position, trace.phase, trace.expert_ids,
              trace.gate_weights, *trace.lookahead.values()]
    if trace.features is not None:
        arrays.append(trace.features)
    for array in arrays:
        array.flags.writeable = False


_process_cache: TraceCache | None = None


def shared(folder: str | Path | None = None) -> TraceCache:
    """This process's cache (one per process, so successive jobs of a worker share its memory),
    pointed at ``folder`` (None: memory only)."""
    global _process_cache
    if _process_cache is None:
        _process_cache = TraceCache(folder)
    _process_cache.folder = Path(folder) if folder is not None else None
    return _process_cache
