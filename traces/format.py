"""Trace format v1: routing decisions per token and MoE layer, stored as Parquet.

One row per token, in the order the tokens were processed. Per MoE layer ``l`` (dense index
``0 .. L-1``) the file has a ``fixed_size_list`` column of the top-k expert ids and one of their
gate weights; optional lookahead and feature columns follow the same per-layer scheme. The
ModelSpec, the provenance and the schema version live in the file's key-value metadata.
``traces/README.md`` documents the schema for writers in other tools.

In memory a :class:`Trace` is a handful of numpy arrays; :meth:`Trace.load` validates everything
it reads and raises :class:`~traces.errors.TraceError` naming the file and the problem.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from moe_offload_lab.traces.atomic import atomic_path
from moe_offload_lab.traces.errors import ConfigError, TraceError, first_line
from moe_offload_lab.traces.spec import ModelSpec

SCHEMA_VERSION = 1
META_VERSION = b"moe_trace.schema_version"
META_SPEC = b"moe_trace.model_spec"
META_PROVENANCE = b"moe_trace.provenance"

PREFILL, DECODE = 0, 1
NO_EXPERT = -1  # lookahead slots whose target layer lies beyond the last MoE layer


def experts_column(layer: int) -> str:
    """Name of the top-k expert id column of MoE layer ``layer``."""
    return f"experts_l{layer:03d}"


def gates_column(layer: int) -> str:
    """Name of the gate weight column of MoE layer ``layer``."""
    return f"gates_l{layer:03d}"


def lookahead_column(distance: int, layer: int) -> str:
    """Name of the column predicting layer ``layer + distance`` from layer ``layer``'s state."""
    return f"lookahead_d{distance}_l{layer:03d}"


def features_column(layer: int) -> str:
    """Name of the hidden-state feature column of MoE layer ``layer``."""
    return f"features_l{layer:03d}"


@dataclass
class Trace:
    """Routing of a sequence of tokens through every MoE layer of one model.

    Arrays (``T`` tokens, ``L`` MoE layers, ``k`` = top_k, ``F`` feature width):

    - ``request_id`` [T] int32, ``position`` [T] int32 (index of the token in its request),
      ``phase`` [T] int8 (0 prefill, 1 decode);
    - ``expert_ids`` [T, L, k] int16, distinct ids in ``[0, num_experts)`` per token and layer;
    - ``gate_weights`` [T, L, k] float32, finite;
    - ``lookahead`` {d: [T, L, k] int16}: the experts that layer ``l + d``'s router would pick
      from layer ``l``'s hidden state; rows ``l >= L - d`` hold ``-1``;
    - ``features`` [T, L, F] float16 or float32, optional compressed hidden states.
    """

    spec: ModelSpec
    request_id: np.ndarray
    position: np.ndarray
    phase: np.ndarray
    expert_ids: np.ndarray
    gate_weights: np.ndarray
    lookahead: dict[int, np.ndarray] = field(default_factory=dict)
    features: np.ndarray | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    # ---- convenience --------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """Number of tokens (rows)."""
        return int(self.expert_ids.shape[0])

    @property
    def lookahead_distances(self) -> list[int]:
        """The distances ``d`` with lookahead columns, ascending."""
        return sorted(self.lookahead)

    def request_ids(self) -> np.ndarray:
        """Distinct request ids in order of first appearance."""
        ids, first = np.unique(self.request_id, return_index=True)
        return ids[np.argsort(first)]

    def select(self, rows: np.ndarray) -> Trace:
        """A new trace holding the given rows (a boolean mask or an index array), in that order."""
        return Trace(
            spec=self.spec,
            request_id=self.request_id[rows],
            position=self.position[rows],
            phase=self.phase[rows],
            expert_ids=self.expert_ids[rows],
            gate_weights=self.gate_weights[rows],
            lookahead={d: a[rows] for d, a in self.lookahead.items()},
            features=None if self.features is None else self.features[rows],
            provenance=dict(self.provenance),
        )

    # ---- validation ---------------------------------------------------------------------------
    def validate(self, where: str = "trace") -> None:
        """Check shapes, dtypes and values against the ModelSpec; raise TraceError on the first
        fault."""
        _validate(self, where)

    # ---- I/O ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Validate, then write atomically (a temporary file renamed over ``path``)."""
        path = Path(path)
        self.validate(str(path))
        table = _to_table(self)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], columns: str = "all") -> Trace:
        """Read and validate a trace file.

        ``columns="routing"`` skips the lookahead and feature columns, which is faster when only
        the routing is needed.
        """
        return _read(Path(path), with_extras=(columns == "all"))


# ---- writing ------------------------------------------------------------------------------------
def _fixed_list(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    # values: [T, width] -> fixed_size_list<width>
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _to_table(trace: Trace) -> pa.Table:
    spec = trace.spec
    k, n_layers = spec.top_k, spec.num_moe_layers
    columns: dict[str, pa.Array] = {
        "request_id": pa.array(trace.request_id.astype(np.int32, copy=False)),
        "position": pa.array(trace.position.astype(np.int32, copy=False)),
        "phase": pa.array(trace.phase.astype(np.int8, copy=False)),
    }
    for layer in range(n_layers):
        columns[experts_column(layer)] = _fixed_list(trace.expert_ids[:, layer], k)
    for layer in range(n_layers):
        columns[gates_column(layer)] = _fixed_list(trace.gate_weights[:, layer], k)
    for d in trace.lookahead_distances:
        for layer in range(n_layers):
            columns[lookahead_column(d, layer)] = _fixed_list(trace.lookahead[d][:, layer], k)
    if trace.features is not None:
        width = trace.features.shape[2]
        for layer in range(n_layers):
            columns[features_column(layer)] = _fixed_list(trace.features[:, layer], width)
    metadata = {
        META_VERSION: str(SCHEMA_VERSION).encode(),
        META_SPEC: json.dumps(spec.to_dict(), sort_keys=True).encode(),
        META_PROVENANCE: json.dumps(trace.provenance, sort_keys=True, default=str).encode(),
    }
    return pa.table(columns).replace_schema_metadata(metadata)


# ---- reading ------------------------------------------------------------------------------------
def read_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The ModelSpec recorded in a trace file's metadata, without reading its rows."""
    _, schema = _open(Path(path))
    return _read_metadata(schema.metadata or {}, str(path))[0]


def _open(path: Path) -> tuple[pq.ParquetFile, pa.Schema]:
    where = str(path)
    if not path.exists():
        raise TraceError(f"{where}: no such file")
    if not path.is_file():
        raise TraceError(f"{where}: not a file")
    try:
        parquet = pq.ParquetFile(path)
        return parquet, parquet.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TraceError(f"{where}: not a readable Parquet file (truncated or not Parquet): "
                         f"{first_line(exc)}") from None


def _read(path: Path, with_extras: bool) -> Trace:
    where = str(path)
    parquet, schema = _open(path)
    spec, provenance = _read_metadata(schema.metadata or {}, where)
    names = set(schema.names)
    if len(names) != len(schema.names):
        twice = next(n for i, n in enumerate(schema.names) if n in schema.names[:i])
        raise TraceError(f"{where}: column {twice} appears more than once")
    wanted = _wanted_columns(spec, names, with_extras, where)
    trace = _from_table(_ColumnSource(parquet, wanted, where), spec, provenance, with_extras,
                        where)
    trace.validate(where)
    return trace


class _ColumnSource:
    """Reads a Parquet file group by group (scalars, ids, gates, each lookahead distance...).

    Converting one group to numpy before reading the next lets Arrow reuse the memory of the
    previous group, which on a large trace saves more time than one big read gains.
    """

    def __init__(self, parquet: pq.ParquetFile, wanted: list[str], where: str) -> None:
        self._parquet, self._where = parquet, where
        self.column_names = wanted

    def read(self, columns: list[str]) -> pa.Table:
        """The named columns as a table; damaged data becomes a TraceError."""
        try:
            return self._parquet.read(columns=columns, use_threads=True)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise TraceError(f"{self._where}: cannot read the table (damaged file?): "
                             f"{first_line(exc)}") from None


def _read_metadata(meta: dict[bytes, bytes], where: str) -> tuple[ModelSpec, dict[str, Any]]:
    if META_VERSION not in meta:
        raise TraceError(f"{where}: no schema version in the file metadata "
                         f"(key {META_VERSION.decode()!r}); not a moe-offload-lab trace")
    version = meta[META_VERSION].decode(errors="replace")
    if version != str(SCHEMA_VERSION):
        raise TraceError(f"{where}: unknown trace schema version {version!r} "
                         f"(this tool reads version {SCHEMA_VERSION})")
    try:
        spec_dict = json.loads(meta[META_SPEC])
    except KeyError:
        raise TraceError(f"{where}: no ModelSpec in the file metadata "
                         f"(key {META_SPEC.decode()!r})") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TraceError(f"{where}: the ModelSpec metadata is not valid JSON") from None
    try:
        spec = ModelSpec.from_dict(spec_dict)
    except ConfigError as exc:
        raise TraceError(f"{where}: invalid ModelSpec in metadata: {exc}") from None
    try:
        provenance = json.loads(meta.get(META_PROVENANCE, b"{}"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TraceError(f"{where}: the provenance metadata is not valid JSON") from None
    if not isinstance(provenance, dict):
        raise TraceError(f"{where}: the provenance metadata must be a JSON object")
    return spec, provenance


def _wanted_columns(spec: ModelSpec, names: set[str], with_extras: bool, where: str) -> list[str]:
    n_layers = spec.num_moe_layers
    required = ["request_id", "position", "phase"]
    required += [experts_column(layer) for layer in range(n_layers)]
    required += [gates_column(layer) for layer in range(n_layers)]
    missing = [c for c in required if c not in names]
    if missing:
        raise TraceError(f"{where}: missing column(s) {', '.join(missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''} (the ModelSpec "
                         f"{spec.name!r} has {n_layers} MoE layers)")
    per_layer = set(required) | {features_column(layer) for layer in range(n_layers)}
    extra_layers = [c for c in names if c.startswith(("experts_l", "gates_l", "features_l"))
                    and c not in per_layer]
    if extra_layers:
        raise TraceError(f"{where}: column {sorted(extra_layers)[0]} is beyond the "
                         f"{n_layers} MoE layers of the ModelSpec {spec.name!r}")
    if not with_extras:
        return required
    optional = sorted(c for c in names if c.startswith(("lookahead_d", "features_l")))
    return required + optional


def _column_matrix(table: pa.Table, name: str, width: int, dtypes: tuple[str, ...],
                   where: str) -> np.ndarray:
    """A per-layer list column as a [rows, width] numpy array, with type, width and null checks.

    ``fixed_size_list`` is what Arrow-based writers produce; plain ``list`` / ``large_list``
    columns (DuckDB, Spark, parquet-java) are accepted when every row holds exactly ``width``
    values.
    """
    column = table.column(name)
    kind = column.type
    variable = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if not (pa.types.is_fixed_size_list(kind) or variable) or str(kind.value_type) not in dtypes:
        wanted = " or ".join(f"fixed_size_list<{d}>[{width}]" for d in dtypes)
        raise TraceError(f"{where}: column {name} has type {kind}, expected {wanted}")
    if not variable and kind.list_size != width:
        raise TraceError(f"{where}: column {name} holds {kind.list_size} values per token, "
                         f"expected {width}")
    if column.null_count:
        raise TraceError(f"{where}: column {name} has null rows")
    if width < 1:
        raise TraceError(f"{where}: column {name} holds no values per token")
    if variable:
        for chunk in column.chunks:
            lengths = chunk.value_lengths().to_numpy(zero_copy_only=False)
            if lengths.size and (lengths != width).any():
                bad = int(np.argmax(lengths != width))
                raise TraceError(f"{where}: column {name} has a row of {int(lengths[bad])} "
                                 f"values, expected {width}")
    values = pa.chunked_array([chunk.flatten() for chunk in column.chunks], kind.value_type) \
        if column.num_chunks else pa.chunked_array([], kind.value_type)
    if values.null_count:
        raise TraceError(f"{where}: column {name} has null values")
    array = values.to_numpy() if values.num_chunks \
        else np.empty(0, kind.value_type.to_pandas_dtype())
    return array.reshape(-1, width)


def _scalar_column(table: pa.Table, name: str, dtype: str, where: str) -> np.ndarray:
    column = table.column(name)
    if str(column.type) != dtype:
        raise TraceError(f"{where}: column {name} has type {column.type}, expected {dtype}")
    if column.null_count:
        raise TraceError(f"{where}: column {name} has nulls")
    return column.to_numpy()


def _stack_layers(table: pa.Table, names: list[str], width: int, dtypes: tuple[str, ...],
                  where: str) -> np.ndarray:
    """Per-layer columns -> [T, len(names), width].

    The columns are first copied into a layer-major block [layers, T, width] (each copy
    contiguous), then transposed once; writing each layer straight into a token-major array would
    sweep the whole output once per layer.
    """
    first = _column_matrix(table, names[0], width, dtypes, where)
    block = np.empty((len(names), table.num_rows, width), dtype=first.dtype)  # [layers, T, width]
    block[0] = first
    for i, name in enumerate(names[1:], start=1):
        values = _column_matrix(table, name, width, dtypes, where)
        if values.dtype != block.dtype:
            raise TraceError(f"{where}: column {name} has dtype {values.dtype}, "
                             f"but {names[0]} has {block.dtype}")
        block[i] = values
    return _token_major(block)


def _token_major(block: np.ndarray) -> np.ndarray:
    """[layers, T, width] -> contiguous [T, layers, width].

    Each row of ``width`` values is viewed as one wide unsigned integer (or a few) while
    transposing, which is several times faster than moving the values one by one.
    """
    n_layers, n_tokens, width = block.shape
    row_bytes = width * block.itemsize
    wide = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(row_bytes)
    if wide is None and row_bytes % 8 == 0:
        wide = np.uint64
    if wide is None or n_tokens == 0:
        return np.ascontiguousarray(block.transpose(1, 0, 2))
    rows = block.view(wide)  # [layers, T, row_bytes / itemsize(wide)]
    moved = np.ascontiguousarray(rows.transpose(1, 0, 2))  # [T, layers, ...]
    return moved.view(block.dtype).reshape(n_tokens, n_layers, width)


def _feature_width(table: pa.Table, name: str) -> int:
    """F of a feature column: the fixed list size, or the first row's length for plain lists."""
    kind = table.column(name).type
    if pa.types.is_fixed_size_list(kind):
        return kind.list_size
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and table.num_rows:
        first = table.column(name).chunk(0) if table.column(name).num_chunks else None
        if first is not None and len(first) and first[0].is_valid:
            return len(first[0])
    return 0


def _from_table(source: _ColumnSource, spec: ModelSpec, provenance: dict[str, Any],
                with_extras: bool, where: str) -> Trace:
    n_layers, k = spec.num_moe_layers, spec.top_k
    layers = range(n_layers)

    def stack(names: list[str], width: int | None, dtypes: tuple[str, ...]) -> np.ndarray:
        group = source.read(names)
        if group.num_rows != scalars.num_rows:
            raise TraceError(f"{where}: column {names[0]} has {group.num_rows} rows, "
                             f"request_id has {scalars.num_rows}")
        if width is None:
            width = _feature_width(group, names[0])
        return _stack_layers(group, names, width, dtypes, where)

    scalars = source.read(["request_id", "position", "phase"])
    trace = Trace(
        spec=spec,
        request_id=_scalar_column(scalars, "request_id", "int32", where),
        position=_scalar_column(scalars, "position", "int32", where),
        phase=_scalar_column(scalars, "phase", "int8", where),
        expert_ids=stack([experts_column(l) for l in layers], k, ("int16",)),
        gate_weights=stack([gates_column(l) for l in layers], k, ("float",)),
        provenance=provenance,
    )
    if not with_extras:
        return trace
    names = set(source.column_names)
    distances = sorted({int(c.split("_")[1][1:]) for c in names if c.startswith("lookahead_d")
                        and c.split("_")[1][1:].isascii() and c.split("_")[1][1:].isdigit()})
    for d in distances:
        wanted = [lookahead_column(d, l) for l in layers]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise TraceError(f"{where}: lookahead distance {d} lacks column {missing[0]}")
        trace.lookahead[d] = stack(wanted, k, ("int16",))
    stray = sorted(c for c in names if c.startswith("lookahead_d")
                   and c not in {lookahead_column(d, l) for d in distances for l in layers})
    if stray:
        raise TraceError(f"{where}: unexpected column {stray[0]}")
    feature_names = [features_column(l) for l in layers]
    present = [c for c in feature_names if c in names]
    if present:
        if len(present) != n_layers:
            missing = next(c for c in feature_names if c not in names)
            raise TraceError(f"{where}: feature columns are incomplete (no {missing})")
        trace.features = stack(feature_names, None, ("halffloat", "float"))
    return trace


# ---- validation ---------------------------------------------------------------------------------
def _validate(trace: Trace, where: str) -> None:
    spec = trace.spec
    ids = trace.expert_ids
    n_tokens = ids.shape[0] if isinstance(ids, np.ndarray) and ids.ndim else 0
    shape = (n_tokens, spec.num_moe_layers, spec.top_k)
    _check_array(trace.expert_ids, "expert_ids", shape, (np.int16,), where)
    _check_array(trace.gate_weights, "gate_weights", shape, (np.float32,), where)
    for name, dtype in (("request_id", np.int32), ("position", np.int32), ("phase", np.int8)):
        _check_array(getattr(trace, name), name, (n_tokens,), (dtype,), where)
    _check_ids(trace.expert_ids, spec, "expert_ids", where)
    if not np.isfinite(trace.gate_weights).all():
        token, layer, _ = np.argwhere(~np.isfinite(trace.gate_weights))[0]
        raise TraceError(f"{where}: non-finite gate weight at token {token}, layer {layer}")
    if n_tokens and trace.position.min() < 0:
        raise TraceError(f"{where}: negative token position at row "
                         f"{int(np.argmin(trace.position))}")
    bad_phase = (trace.phase != PREFILL) & (trace.phase != DECODE)
    if bad_phase.any():
        raise TraceError(f"{where}: phase must be 0 (prefill) or 1 (decode); row "
                         f"{int(np.argmax(bad_phase))} has {int(trace.phase[bad_phase][0])}")
    _check_request_order(trace, where)
    for d, ahead in trace.lookahead.items():
        _check_lookahead(ahead, d, spec, shape, where)
    if not isinstance(trace.provenance, dict):
        raise TraceError(f"{where}: provenance must be a dict (a JSON object)")
    if trace.features is not None:
        feats = trace.features
        if not isinstance(feats, np.ndarray):
            raise TraceError(f"{where}: features must be a numpy array")
        if feats.ndim != 3 or feats.shape[:2] != shape[:2] or feats.shape[2] < 1:
            raise TraceError(f"{where}: features have shape {feats.shape}, expected "
                             f"({shape[0]}, {shape[1]}, F) with F >= 1")
        if feats.dtype not in (np.float16, np.float32):
            raise TraceError(f"{where}: features must be float16 or float32, got {feats.dtype}")
        if not np.isfinite(feats).all():
            raise TraceError(f"{where}: non-finite hidden-state feature values")


def _check_array(array: Any, name: str, shape: tuple[int, ...], dtypes: tuple[type, ...],
                 where: str) -> None:
    if not isinstance(array, np.ndarray):
        raise TraceError(f"{where}: {name} must be a numpy array")
    if array.shape != shape:
        raise TraceError(f"{where}: {name} has shape {array.shape}, the ModelSpec "
                         f"implies {shape} (tokens, MoE layers, top_k)"[: 200])
    if array.dtype not in dtypes:
        raise TraceError(f"{where}: {name} has dtype {array.dtype}, expected "
                         f"{' or '.join(np.dtype(d).name for d in dtypes)}")


def _check_ids(ids: np.ndarray, spec: ModelSpec, name: str, where: str) -> None:
    if ids.size == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= spec.num_experts:
        outside = (ids < 0) | (ids >= spec.num_experts)
        token, layer, slot = np.argwhere(outside)[0]
        raise TraceError(f"{where}: {name} has expert id {int(ids[token, layer, slot])} at token "
                         f"{token}, layer {layer}, outside [0, {spec.num_experts})")
    _check_distinct(ids, name, where)


def _check_distinct(ids: np.ndarray, name: str, where: str, ignore: int | None = None) -> None:
    # ids: [T, L, k]; pairwise comparison is cheaper than sorting for the small k of real models.
    k = ids.shape[2]
    if k > 16:
        ordered = np.sort(ids, axis=2)
        dup = (ordered[:, :, 1:] == ordered[:, :, :-1])
        if ignore is not None:
            dup &= ordered[:, :, 1:] != ignore
        dup = dup.any(axis=2)
    else:
        dup = np.zeros(ids.shape[:2], dtype=bool)
        for i in range(k):
            for j in range(i + 1, k):
                same = ids[:, :, i] == ids[:, :, j]
                if ignore is not None:
                    same &= ids[:, :, i] != ignore
                dup |= same
    if dup.any():
        token, layer = np.argwhere(dup)[0]
        raise TraceError(f"{where}: {name} repeats an expert id within the top-k at token "
                         f"{token}, layer {layer}: {ids[token, layer].tolist()}")


def _check_request_order(trace: Trace, where: str) -> None:
    """Within each request, positions must strictly increase in row order."""
    if trace.num_tokens < 2:
        return
    order = np.argsort(trace.request_id, kind="stable")
    req, pos = trace.request_id[order], trace.position[order]
    same = req[1:] == req[:-1]
    bad = same & (pos[1:] <= pos[:-1])
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceError(f"{where}: request {int(req[i])} has position {int(pos[i + 1])} after "
                         f"{int(pos[i])}; positions must increase within a request")


def _check_lookahead(ahead: np.ndarray, d: int, spec: ModelSpec, shape: tuple[int, ...],
                     where: str) -> None:
    name = f"lookahead distance {d}"
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise TraceError(f"{where}: lookahead distance must be a positive integer, got {d!r}")
    _check_array(ahead, name, shape, (np.int16,), where)
    n_layers = spec.num_moe_layers
    valid, tail = ahead[:, : max(n_layers - d, 0)], ahead[:, max(n_layers - d, 0):]
    if tail.size and (tail != NO_EXPERT).any():
        raise TraceError(f"{where}: {name} must hold {NO_EXPERT} at layers >= {n_layers - d}, "
                         f"whose target lies beyond the last MoE layer")
    if valid.size:
        if valid.min() < 0 or valid.max() >= spec.num_experts:
            token, layer, _ = np.argwhere((valid < 0) | (valid >= spec.num_experts))[0]
            raise TraceError(f"{where}: {name} has an expert id outside [0, {spec.num_experts}) "
                             f"at token {token}, layer {layer}")
        _check_distinct(valid, name, where)
