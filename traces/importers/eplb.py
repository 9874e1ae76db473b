"""EPLB load matrices ``[layers, logical experts]`` to and from traces.

DeepSeek's Expert Parallelism Load Balancer (deepseek-ai/EPLB, ``eplb.py``) plans replicas from
``rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)`` where ``weight`` is
``[layers, num_logical_experts]``: the load of every logical expert of every MoE layer (tokens
routed to it over a window). EPLB defines no file; this module reads and writes the matrix as

- ``.npy`` (``np.save``), ``.pt`` / ``.pth`` (``torch.save`` of a tensor, as the EPLB README's
  example builds it; needs torch), or ``.csv`` / ``.txt`` (one layer per line, loads separated by
  commas or whitespace, ``#`` comments).

**Export** (``--to eplb``) writes the token-expert counts of the whole trace, int64 ``[L, E]``;
``all_layers`` sizes the layer axis by every transformer block with zero rows for dense blocks, as
SGLang's ``logical_count`` lays it out. ``eplb.rebalance_experts(torch.from_numpy(np.load(f)),
...)`` takes it as is.

**Import** (``--from eplb``) reconstructs tokens from the counts (one request;
:mod:`traces.importers.counts`): per-layer popularity and load are exact, token-level structure is
synthetic. The loads must be whole counts, equal in total for every layer (each token picks
``top_k`` experts at every MoE layer); averaged or normalised loads cannot be made into tokens
and are refused with the reason.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from moe_offload_lab.traces.errors import ConfigError, TraceError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.importers.counts import count_matrix, counts_trace, per_group_counts
from moe_offload_lab.traces.spec import ModelSpec

SUFFIXES = (".npy", ".pt", ".pth", ".csv", ".txt")


def read_load_matrix(path: str | Path) -> np.ndarray:
    """The matrix of an EPLB load file as a 2-D numpy array (dtype as stored)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"{path}: an EPLB load matrix is {', '.join(SUFFIXES)}")
    if suffix == ".npy":
        matrix = c.load_npy(path)
    elif suffix in (".pt", ".pth"):
        matrix = c.to_numpy(c.load_torch_file(path, "an EPLB load matrix"), "the load matrix",
                            str(path))
    else:
        matrix = _read_text(path)
    if matrix.ndim != 2:
        raise TraceError(f"{path}: expected a [layers, logical experts] matrix, got shape "
                         f"{matrix.shape}")
    return matrix


def _read_text(path: Path) -> np.ndarray:
    c.require_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read ({c.first_line(exc)})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            raise TraceError(f"{path}:{number}: expected numbers, got {line[:60]!r}") from None
        if len(rows[-1]) != len(rows[0]):
            raise TraceError(f"{path}:{number}: {len(rows[-1])} loads, the first line has "
                             f"{len(rows[0])}")
    if not rows:
        raise TraceError(f"{path}: no load row")
    return np.array(rows)


def import_eplb(path: str | Path, model: str | ModelSpec) -> Trace:
    """Read an EPLB load matrix as a trace of ``model`` (tokens reconstructed from the counts)."""
    path = Path(path)
    spec = c.load_spec(model)
    matrix = read_load_matrix(path)
    if matrix.dtype.kind == "f" and (~np.isfinite(matrix) | (matrix != np.round(matrix))).any():
        raise TraceError(f"{path}: the loads are not whole token counts (averaged or normalised "
                         f"loads cannot be made into tokens; give the counts of one window)")
    counts = count_matrix(matrix[None], spec, "the load matrix", str(path))  # [1, L, E]
    return counts_trace(spec, counts, np.zeros(1, np.int64), path, "eplb-import", __name__,
                        "load matrix")


def export_eplb(trace: Trace, path: str | Path, *, all_layers: bool = False) -> Path:
    """Write the trace's token-expert counts per layer as an EPLB load matrix (see the module
    docstring for the formats)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"{path}: an EPLB load matrix is {', '.join(SUFFIXES)}; name it so")
    spec = trace.spec
    load = per_group_counts(trace)[0].sum(axis=0)  # [L, E]
    if all_layers:
        full = np.zeros((spec.num_layers, spec.num_experts), np.int64)  # [blocks, E]
        full[list(spec.moe_layer_indices)] = load
        load = full
    if suffix == ".npy":
        return c.save_npy(path, load.astype(np.int64))
    if suffix in (".pt", ".pth"):
        try:
            import torch
        except ImportError:
            raise ConfigError(f"{path}: writing a .pt file needs torch; write .npy or .csv "
                              f"instead") from None
        buffer = io.BytesIO()
        torch.save(torch.from_numpy(load.astype(np.int64)), buffer)
        return c.atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    text = "".join(",".join(str(int(v)) for v in row) + "\n" for row in load)
    return c.atomic_write(path, lambda handle: handle.write(text.encode()))
