"""MoE-Infinity expert activation matrices (EAMs) to and from traces.

MoE-Infinity's ``ExpertTracer`` (``moe_infinity/memory/expert_tracer.py`` in
EfficientMoE/MoE-Infinity) keeps a collection ``[n, layers, experts]`` (float32, saved and
loaded with ``np.save``/``np.load``): row ``i`` is one sequence's expert activation matrix, entry
``[l, e]`` the number of times expert ``e`` of MoE layer ``l`` was picked over all the sequence's
tokens. Rows that are all zero are unused slots of the collection and are skipped.

Only per-sequence counts exist, so the tokens are reconstructed (:mod:`traces.importers.counts`:
per-request, per-layer counts exact; token-level structure synthetic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.importers.counts import count_matrix, counts_trace, per_group_counts
from moe_offload_lab.traces.spec import ModelSpec


def import_moe_infinity(path: str | Path, model: str | ModelSpec) -> Trace:
    """Read an EAM collection ``.npy`` [n, layers, experts] as a trace of ``model``.

    Request ``i`` of the trace is row ``i`` of the file (empty rows are skipped, so ids may have
    gaps); its tokens are prefill at positions ``0 ..``.
    """
    path = Path(path)
    spec = c.load_spec(model)
    counts = count_matrix(c.load_npy(path), spec, "the activation counts", str(path))
    return counts_trace(spec, counts, np.arange(counts.shape[0]), path, "moe-infinity-import",
                        __name__, "row")


def export_moe_infinity(trace: Trace, path: str | Path) -> Path:
    """Write the per-request expert activation matrices of ``trace`` as a float32 ``.npy``
    [requests, L, E] (MoE-Infinity's layout); row ``i`` is the ``i``-th request by first
    appearance. Everything but the counts is lost."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise ConfigError(f"{path}: the MoE-Infinity export is a .npy file; name it *.npy")
    return c.save_npy(path, per_group_counts(trace)[0].astype(np.float32))
