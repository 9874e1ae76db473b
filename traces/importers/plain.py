"""Plain layouts for any tool: a long CSV and a NumPy ``.npz``, both defined by this project.

CSV (long format, one row per token, MoE layer and top-k slot, header required)::

    request_id,position,phase,layer,rank,expert,gate
    0,0,0,0,0,5,0.71
    0,0,0,0,1,2,0.29
    ...

``layer`` is the dense MoE-layer index ``0 .. L-1`` (as in trace files), ``rank`` the slot
``0 .. k-1`` in the router's order; ``phase`` (0 prefill, 1 decode) and ``gate`` are optional
(default 0 and ``1/k``). A token is identified by ``(request_id, position)``; tokens appear in the
trace in the order of their first row. Every token must have exactly one row per (layer, rank).

NPZ: ``experts`` int [T, L, k] (required; the layer axis may also span every transformer block),
``gates`` float [T, L, k], ``request_id``, ``position``, ``phase`` int [T] (optional; defaults: one
request 0, positions ``0 ..`` within each request in row order, all prefill). Both layouts hold a
trace exactly except lookahead and features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from moe_offload_lab.traces.errors import ConfigError, TraceError
from moe_offload_lab.traces.format import PREFILL, Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.spec import ModelSpec

CSV_COLUMNS = ("request_id", "position", "phase", "layer", "rank", "expert", "gate")
_CSV_REQUIRED = ("request_id", "position", "layer", "rank", "expert")
NPZ_ARRAYS = ("experts", "gates", "request_id", "position", "phase")
_LOST = ["lookahead", "features"]


# ---- CSV ----------------------------------------------------------------------------------------
def import_csv(path: str | Path, model: str | ModelSpec) -> Trace:
    """Read the long CSV layout as a trace of ``model``."""
    path = Path(path)
    spec = c.load_spec(model)
    where = str(path)
    c.require_file(path)
    try:
        frame = pd.read_csv(path, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise TraceError(f"{where}: empty file (a header line is required)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise TraceError(f"{where}: not a readable CSV file ({c.first_line(exc)})") from None
    names = [str(n).strip() for n in frame.columns]
    frame.columns = names
    missing = [n for n in _CSV_REQUIRED if n not in names]
    if missing:
        raise TraceError(f"{where}: missing column {missing[0]!r} (columns: "
                         f"{', '.join(CSV_COLUMNS)})")
    unknown = [n for n in names if n not in CSV_COLUMNS]
    if unknown:
        raise TraceError(f"{where}: unknown column {unknown[0]!r} (columns: "
                         f"{', '.join(CSV_COLUMNS)})")
    if len(set(names)) != len(names):
        raise TraceError(f"{where}: a column name appears twice")
    n_layers, k = spec.num_moe_layers, spec.top_k
    col = {n: _csv_ints(frame[n], n, where) for n in names if n != "gate"}
    for name, high in (("layer", n_layers), ("rank", k)):
        bad = (col[name] < 0) | (col[name] >= high)
        if bad.any():
            row = int(np.argmax(bad))
            raise TraceError(f"{where}: data row {row + 1}: {name} {int(col[name][row])} is "
                             f"outside [0, {high}) for model {spec.name!r}")
    for name in ("request_id", "position"):
        info = np.iinfo(np.int32)
        bad = (col[name] < (0 if name == "position" else info.min)) | (col[name] > info.max)
        if bad.any():
            raise TraceError(f"{where}: data row {int(np.argmax(bad)) + 1}: {name} "
                             f"{int(col[name][np.argmax(bad)])} is out of range")
    key = (col["request_id"] << 32) + col["position"]
    token, _ = pd.factorize(key, sort=False)  # first-appearance token index per row
    n_tokens = int(token.max()) + 1 if token.size else 0
    cell = (token * n_layers + col["layer"]) * k + col["rank"]
    hits = np.bincount(cell, minlength=n_tokens * n_layers * k)
    if (hits != 1).any():
        bad = int(np.argmax(hits != 1))
        t, rest = divmod(bad, n_layers * k)
        row = int(np.argmax(token == t))
        what = "two rows" if hits[bad] > 1 else "no row"
        raise TraceError(f"{where}: token (request_id {int(col['request_id'][row])}, position "
                         f"{int(col['position'][row])}) has {what} for layer {rest // k}, "
                         f"rank {rest % k}")
    ids = np.empty(n_tokens * n_layers * k, np.int64)
    ids[cell] = col["expert"]
    ids = ids.reshape(n_tokens, n_layers, k)  # [T, L, k]
    first = np.zeros(n_tokens, np.int64)
    first[token[::-1]] = np.arange(len(token))[::-1]  # first row of each token
    phase = col.get("phase", np.full(len(token), PREFILL, np.int64))
    if (phase != phase[first][token]).any():
        row = int(np.argmax(phase != phase[first][token]))
        raise TraceError(f"{where}: data row {row + 1}: phase differs from the token's other rows")
    if "gate" in names:
        values = pd.to_numeric(frame["gate"], errors="coerce").to_numpy(np.float64)
        if np.isnan(values).any():
            raise TraceError(f"{where}: data row {int(np.argmax(np.isnan(values))) + 1}: gate is "
                             f"not a number")
        gates = np.empty(n_tokens * n_layers * k, np.float32)
        gates[cell] = values
        gates = gates.reshape(ids.shape)
    else:
        gates = c.uniform_gates(ids.shape)
    prov = c.provenance("csv-import", __name__, path, spec,
                        gates="from the gate column" if "gate" in names
                        else "filled in: uniform 1/k (no gate column)",
                        lost=_LOST + ([] if "gate" in names else ["gate weights"]))
    return c.build_trace(spec, col["request_id"][first], col["position"][first], phase[first],
                         c.check_expert_ids(ids, spec, where), gates, prov, where)


def _csv_ints(series: pd.Series, name: str, where: str) -> np.ndarray:
    if series.dtype.kind in "iu":
        return series.to_numpy(np.int64)
    values = pd.to_numeric(series, errors="coerce").to_numpy(np.float64)
    bad = np.isnan(values) | (values != np.round(values))
    if bad.any():
        row = int(np.argmax(bad))
        raise TraceError(f"{where}: data row {row + 1}: {name} {series.iloc[row]!r} is not an "
                         f"integer")
    return values.astype(np.int64)


def export_csv(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` in the long CSV layout (rows in trace order, then layer, then rank)."""
    n_tokens, n_layers, k = trace.expert_ids.shape
    per_token = n_layers * k
    frame = pd.DataFrame({
        "request_id": np.repeat(trace.request_id, per_token),
        "position": np.repeat(trace.position, per_token),
        "phase": np.repeat(trace.phase, per_token),
        "layer": np.tile(np.repeat(np.arange(n_layers), k), n_tokens),
        "rank": np.tile(np.arange(k), n_tokens * n_layers),
        "expert": trace.expert_ids.reshape(-1),
        "gate": trace.gate_weights.reshape(-1),
    })
    return c.atomic_write(Path(path), lambda handle: frame.to_csv(handle, index=False))


# ---- NPZ ----------------------------------------------------------------------------------------
def import_npz(path: str | Path, model: str | ModelSpec) -> Trace:
    """Read the plain ``.npz`` layout as a trace of ``model``."""
    path = Path(path)
    spec = c.load_spec(model)
    where = str(path)
    arrays = c.load_npz(path)
    unknown = [n for n in arrays if n not in NPZ_ARRAYS]
    if unknown:
        raise TraceError(f"{where}: unknown array {unknown[0]!r} (arrays: "
                         f"{', '.join(NPZ_ARRAYS)})")
    if "experts" not in arrays:
        raise TraceError(f"{where}: missing array 'experts'")
    experts = arrays["experts"]
    if experts.ndim != 3 or experts.shape[2] != spec.top_k:
        raise TraceError(f"{where}: experts has shape {experts.shape}, expected [tokens, "
                         f"{spec.num_moe_layers}, {spec.top_k}] for model {spec.name!r}")
    if experts.dtype.kind not in "iu":
        raise TraceError(f"{where}: experts has dtype {experts.dtype}, expected integers")
    ids = c.to_moe_layers(experts.astype(np.int64), spec, where)
    n_tokens = ids.shape[0]
    if "gates" in arrays:
        gates = arrays["gates"]
        if gates.shape != experts.shape or gates.dtype.kind != "f":
            raise TraceError(f"{where}: gates must be floats of the shape of experts "
                             f"{experts.shape}, got {gates.dtype} {gates.shape}")
        gates = c.to_moe_layers(gates.astype(np.float32), spec, where)
    else:
        gates = c.uniform_gates(ids.shape)
    rows = {}
    for name in ("request_id", "position", "phase"):
        if name in arrays:
            value = arrays[name]
            if value.shape != (n_tokens,):
                raise TraceError(f"{where}: {name} has shape {value.shape}, expected "
                                 f"({n_tokens},)")
            rows[name] = c.integer_array(value, name, where)
    request_id = rows.get("request_id", np.zeros(n_tokens, np.int64))
    if "position" in rows:
        position = rows["position"]
    else:  # 0, 1, ... within each request, in row order
        order = np.argsort(request_id, kind="stable")
        sorted_ids = request_id[order]
        starts = np.r_[0, np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1]
        run = np.zeros(n_tokens, np.int64)
        run[starts[1:]] = starts[1:]
        rank = np.arange(n_tokens) - np.maximum.accumulate(run)
        position = np.empty(n_tokens, np.int64)
        position[order] = rank
    phase = rows.get("phase", np.full(n_tokens, PREFILL, np.int64))
    for name, value in (("request_id", request_id), ("position", position), ("phase", phase)):
        info = np.iinfo(np.int32)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise TraceError(f"{where}: {name} does not fit in int32")
    defaults = [n for n in ("gates", "request_id", "position", "phase") if n not in arrays]
    prov = c.provenance("npz-import", __name__, path, spec, defaults_filled_in=defaults,
                        lost=_LOST + (["gate weights"] if "gates" not in arrays else []))
    return c.build_trace(spec, request_id, position, phase, c.check_expert_ids(ids, spec, where),
                         gates, prov, where)


def export_npz(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` in the plain ``.npz`` layout (all five arrays)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ConfigError(f"{path}: the NumPy export is an .npz archive; name it *.npz")
    return c.save_npz(path, {"experts": trace.expert_ids, "gates": trace.gate_weights,
                             "request_id": trace.request_id, "position": trace.position,
                             "phase": trace.phase})
