"""Fuzzing the trace loader: whatever the bytes, ``Trace.load`` returns a valid trace or raises
TraceError, never anything else.

(a) Valid files with bytes flipped, overwritten, zeroed or cut off.
(b) Random tables written with pyarrow: random layer counts, widths, dtypes, values (out-of-range
    and repeated ids, NaN, nulls, missing or stray columns, bad metadata). An oracle written here
    from the documented rules says whether each table is a valid trace; the loader must agree, and
    what it loads must equal what was written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moe_offload_lab.traces import ModelSpec, Trace, TraceError
from moe_offload_lab.traces.errors import ConfigError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_or_trace_error(path: Path, columns: str = "all") -> Trace | None:
    """The property: a trace that passes validate(), or a one-line TraceError naming the file."""
    try:
        trace = Trace.load(path, columns=columns)
    except TraceError as exc:
        assert str(path) in str(exc)
        assert "\n" not in str(exc)
        return None
    trace.validate()
    return trace


# ---- (a) damaged copies of valid files ----------------------------------------------------------
SPEC = ModelSpec(name="fuzz", num_layers=4, first_k_dense=1, num_experts=6, top_k=2,
                 hidden_size=8, expert_intermediate_size=8)


def _valid_trace(features: str | None, lookahead: tuple[int, ...]) -> Trace:
    rng = np.random.default_rng(7)
    tokens, layers, experts, k = 12, SPEC.num_moe_layers, SPEC.num_experts, SPEC.top_k

    def ids() -> np.ndarray:
        return np.argsort(rng.random((tokens, layers, experts)), axis=2)[:, :, :k].astype(np.int16)

    ahead = {}
    for d in lookahead:
        ahead[d] = ids()
        ahead[d][:, layers - d:] = -1
    return Trace(
        spec=SPEC,
        request_id=np.repeat(np.arange(3, dtype=np.int32), 4),
        position=np.tile(np.arange(4, dtype=np.int32), 3),
        phase=np.tile(np.array([0, 0, 1, 1], np.int8), 3),
        expert_ids=ids(),
        gate_weights=rng.random((tokens, layers, k)).astype(np.float32),
        lookahead=ahead,
        features=None if features is None
        else rng.standard_normal((tokens, layers, 2)).astype(features),
        provenance={"source": "fuzz", "generator": {"name": "test"}},
    )


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    """One folder per module; each example overwrites its file there (hypothesis reruns the test
    function many times, which a function-scoped tmp_path would not follow)."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> list[bytes]:
    """Bytes of valid trace files: zstd (as Trace.save writes them) and uncompressed (so damage
    reaches the values themselves rather than only the compressed stream)."""
    folder = tmp_path_factory.mktemp("valid")
    blobs = []
    for i, (features, lookahead) in enumerate([(None, ()), ("float16", (1, 2)),
                                               ("float32", (1,))]):
        path = _valid_trace(features, lookahead).save(folder / f"{i}.parquet")
        blobs.append(path.read_bytes())
        plain = folder / f"{i}-plain.parquet"
        pq.write_table(pq.read_table(path), plain, compression="none")
        blobs.append(plain.read_bytes())
    for blob in blobs:
        assert blob[:4] == b"PAR1"
    return blobs


damage = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "zero", "cut"]),
              st.integers(0, 2**31),      # offset (taken modulo the file size)
              st.booleans(),              # offset counted from the end (the footer lives there)
              st.integers(0, 255)),       # bit, byte value or run length
    min_size=1, max_size=6)


def apply_damage(blob: bytes, ops: list[tuple[str, int, bool, int]]) -> bytes:
    data = bytearray(blob)
    for op, offset, from_end, value in ops:
        if not data:
            break
        where = offset % min(len(data), 400) if from_end else offset % len(data)
        if from_end:
            where = len(data) - 1 - where
        if op == "flip":
            data[where] ^= 1 << (value % 8)
        elif op == "set":
            data[where] = value
        elif op == "zero":
            data[where:where + value % 32 + 1] = bytes(len(data[where:where + value % 32 + 1]))
        else:
            del data[where:]
    return bytes(data)


@FUZZ
@given(which=st.integers(0, 5), ops=damage, columns=st.sampled_from(["all", "routing"]))
def test_damaged_file(valid_files, fuzz_dir: Path, which: int, ops, columns: str) -> None:
    path = fuzz_dir / "damaged.parquet"
    path.write_bytes(apply_damage(valid_files[which], ops))
    load_or_trace_error(path, columns)


@FUZZ
@given(which=st.integers(0, 5), keep=st.integers(0, 2**31))
def test_truncated_file(valid_files, fuzz_dir: Path, which: int, keep: int) -> None:
    blob = valid_files[which]
    path = fuzz_dir / "truncated.parquet"
    path.write_bytes(blob[: keep % len(blob)])
    assert load_or_trace_error(path) is None  # without its footer, nothing can load


# ---- (b) random tables --------------------------------------------------------------------------
@dataclass
class Col:
    """One column as written: 1-D (scalar) or 2-D [rows, width] (fixed_size_list) values."""

    values: np.ndarray
    null_at: int | None = None    # flat index of a null value
    null_row: int | None = None   # list row that is null

    @property
    def is_list(self) -> bool:
        return self.values.ndim == 2

    @property
    def has_nulls(self) -> bool:
        return self.null_at is not None or self.null_row is not None

    def arrow(self) -> pa.Array:
        flat = self.values.reshape(-1)
        mask = None
        if self.null_at is not None:
            mask = np.zeros(flat.size, bool)
            mask[self.null_at] = True
        values = pa.array(flat, mask=mask)
        if not self.is_list:
            return values
        rows = None
        if self.null_row is not None:
            rows = np.zeros(len(self.values), bool)
            rows[self.null_row] = True
            rows = pa.array(rows)
        return pa.FixedSizeListArray.from_arrays(values, self.values.shape[1], mask=rows)


@dataclass
class Case:
    columns: dict[str, Col]
    metadata: dict[bytes, bytes]

    def write(self, path: Path) -> None:
        table = pa.table({name: col.arrow() for name, col in self.columns.items()})
        pq.write_table(table.replace_schema_metadata(self.metadata), path)


INT_DTYPES = ["int8", "int16", "int32", "int64", "float32"]
FLOAT_DTYPES = ["float16", "float32", "float64", "int16"]
NASTY_FLOATS = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, 7e4]  # 7e4 overflows float16
FAULTS = ["value", "value", "value", "dtype", "width", "null", "drop", "extra_layer", "version",
          "spec", "spec"]


@st.composite
def cases(draw) -> Case:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layers, experts = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    k, tokens = draw(st.integers(1, min(experts, 3))), draw(st.integers(0, 6))
    spec = {"name": "fuzz", "num_layers": layers, "num_experts": experts, "top_k": k,
            "hidden_size": 4, "expert_intermediate_size": 4}

    def ids() -> np.ndarray:
        return np.argsort(rng.random((tokens, experts)), axis=1)[:, :k].astype(np.int16)

    request = rng.integers(0, 3, tokens).astype(np.int32)
    position = np.zeros(tokens, np.int32)
    for r in range(3):
        rows = request == r
        position[rows] = np.cumsum(rng.integers(1, 3, rows.sum())) - 1
    columns = {"request_id": Col(request), "position": Col(position),
               "phase": Col(rng.integers(0, 2, tokens).astype(np.int8))}
    for l in range(layers):
        columns[f"experts_l{l:03d}"] = Col(ids())
    for l in range(layers):
        columns[f"gates_l{l:03d}"] = Col(rng.random((tokens, k)).astype(np.float32))
    for d in sorted(draw(st.sets(st.integers(1, 3), max_size=2))):
        for l in range(layers):
            columns[f"lookahead_d{d}_l{l:03d}"] = Col(ids() if l < layers - d
                                                      else np.full((tokens, k), -1, np.int16))
    feature_dtype = draw(st.sampled_from([None, "float16", "float32"]))
    if feature_dtype:
        width = draw(st.integers(1, 3))
        for l in range(layers):
            columns[f"features_l{l:03d}"] = Col(rng.standard_normal((tokens, width))
                                                .astype(feature_dtype))
    metadata = {b"moe_trace.schema_version": b"1",
                b"moe_trace.model_spec": json.dumps(spec).encode(),
                b"moe_trace.provenance": b'{"source": "fuzz"}'}

    for fault in draw(st.lists(st.sampled_from(FAULTS), max_size=3)):
        names = sorted(columns)
        name = draw(st.sampled_from(names)) if names else None
        col = columns.get(name)
        if fault == "value" and col is not None and col.values.size:
            index = draw(st.integers(0, col.values.size - 1))
            if col.values.dtype.kind == "f":
                value = draw(st.sampled_from(NASTY_FLOATS))
            else:
                value = draw(st.integers(-3, experts + 3))
            flat = col.values.reshape(-1).copy()
            with np.errstate(over="ignore", invalid="ignore"):
                flat[index] = value
            col.values = flat.reshape(col.values.shape)
        elif fault == "dtype" and col is not None:
            dtypes = FLOAT_DTYPES if col.values.dtype.kind == "f" else INT_DTYPES
            with np.errstate(over="ignore", invalid="ignore"):
                col.values = np.nan_to_num(col.values).astype(draw(st.sampled_from(dtypes)))
        elif fault == "width" and col is not None and col.is_list:
            width = draw(st.integers(1, 4))
            fresh = rng.integers(0, experts, (tokens, width))
            col.values = fresh.astype(col.values.dtype)
            col.null_at = col.null_row = None  # fresh values: earlier null markers are gone
        elif fault == "null" and col is not None and col.values.size:
            if col.is_list and draw(st.booleans()):
                col.null_row = draw(st.integers(0, len(col.values) - 1))
            else:
                col.null_at = draw(st.integers(0, col.values.size - 1))
        elif fault == "drop" and col is not None:
            del columns[name]
        elif fault == "extra_layer":
            kind = draw(st.sampled_from(["experts", "gates", "features", "lookahead_d1"]))
            columns[f"{kind}_l{layers:03d}"] = Col(np.zeros((tokens, k), np.int16))
        elif fault == "version":
            value = draw(st.sampled_from([None, b"", b"2", b"01"]))
            if value is None:
                metadata.pop(b"moe_trace.schema_version", None)
            else:
                metadata[b"moe_trace.schema_version"] = value
        elif fault == "spec":
            key = draw(st.sampled_from(["num_layers", "num_experts", "top_k", "first_k_dense"]))
            changed = {**json.loads(metadata.get(b"moe_trace.model_spec", b"{}") or b"{}"),
                       key: draw(st.integers(-1, 8))}
            metadata[b"moe_trace.model_spec"] = json.dumps(changed).encode()
    return Case(columns, metadata)


_LOOKAHEAD = re.compile(r"lookahead_d(\d+)_l(\d{3})")


def oracle(case: Case, with_extras: bool) -> bool:
    """Whether ``case`` is a valid v1 trace, from the rules in traces/README.md."""
    meta = case.metadata
    if meta.get(b"moe_trace.schema_version") != b"1":
        return False
    try:
        spec = ModelSpec.from_dict(json.loads(meta[b"moe_trace.model_spec"]))
    except (KeyError, ValueError, ConfigError):
        return False
    layers, experts, k = spec.num_moe_layers, spec.num_experts, spec.top_k
    cols = case.columns
    scalars = {"request_id": "int32", "position": "int32", "phase": "int8"}
    experts_names = [f"experts_l{l:03d}" for l in range(layers)]
    gates_names = [f"gates_l{l:03d}" for l in range(layers)]
    feature_names = [f"features_l{l:03d}" for l in range(layers)]
    required = [*scalars, *experts_names, *gates_names]
    if any(name not in cols for name in required):
        return False
    allowed = set(required) | set(feature_names)
    if any(name.startswith(("experts_l", "gates_l", "features_l")) and name not in allowed
           for name in cols):
        return False
    for name, dtype in scalars.items():
        col = cols[name]
        if col.is_list or col.values.dtype != dtype or col.has_nulls:
            return False

    def matrix_ok(name: str, dtypes: tuple[str, ...], width: int) -> bool:
        col = cols[name]
        return (col.is_list and col.values.dtype.name in dtypes and col.values.shape[1] == width
                and not col.has_nulls)

    def ids_ok(ids: np.ndarray) -> bool:  # [T, layers, k]
        if ids.size and (ids.min() < 0 or ids.max() >= experts):
            return False
        return all(len(set(row)) == len(row) for row in ids.reshape(-1, ids.shape[-1]).tolist())

    if not all(matrix_ok(n, ("int16",), k) for n in experts_names) \
            or not all(matrix_ok(n, ("float32",), k) for n in gates_names):
        return False
    ids = np.stack([cols[n].values for n in experts_names], axis=1)
    gates = np.stack([cols[n].values for n in gates_names], axis=1)
    phase, position, request = (cols[n].values for n in ("phase", "position", "request_id"))
    if not ids_ok(ids) or not np.isfinite(gates).all():
        return False
    if (position < 0).any() or not np.isin(phase, (0, 1)).all():
        return False
    for r in np.unique(request):
        if (np.diff(position[request == r]) <= 0).any():
            return False
    if not with_extras:
        return True
    ahead_names = [n for n in cols if n.startswith("lookahead_d")]
    distances = set()
    for name in ahead_names:
        match = _LOOKAHEAD.fullmatch(name)
        if match is None or int(match.group(2)) >= layers:
            return False
        distances.add(int(match.group(1)))
    for d in distances:
        names = [f"lookahead_d{d}_l{l:03d}" for l in range(layers)]
        if d < 1 or any(n not in cols for n in names) \
                or not all(matrix_ok(n, ("int16",), k) for n in names):
            return False
        ahead = np.stack([cols[n].values for n in names], axis=1)
        cut = max(layers - d, 0)
        if (ahead[:, cut:] != -1).any() or not ids_ok(ahead[:, :cut]):
            return False
    present = [n for n in feature_names if n in cols]
    if present:
        if len(present) != layers:
            return False
        first = cols[present[0]].values
        if first.dtype.name not in ("float16", "float32"):
            return False
        if not all(matrix_ok(n, (first.dtype.name,), first.shape[1]) for n in present):
            return False
        if not all(np.isfinite(cols[n].values).all() for n in present):
            return False
    return True


def assert_loaded_as_written(trace: Trace, case: Case, with_extras: bool) -> None:
    cols, layers = case.columns, trace.spec.num_moe_layers
    for name in ("request_id", "position", "phase"):
        got = getattr(trace, name)
        assert got.dtype == cols[name].values.dtype
        np.testing.assert_array_equal(got, cols[name].values)

    def stacked(prefix: str) -> np.ndarray:
        return np.stack([cols[f"{prefix}_l{l:03d}"].values for l in range(layers)], axis=1)

    for got, want in ((trace.expert_ids, stacked("experts")),
                      (trace.gate_weights, stacked("gates"))):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    if not with_extras:
        assert trace.lookahead == {} and trace.features is None
        return
    distances = {int(m.group(1)) for m in map(_LOOKAHEAD.fullmatch, cols) if m}
    assert sorted(trace.lookahead) == sorted(distances)
    for d in distances:
        want = stacked(f"lookahead_d{d}")
        assert trace.lookahead[d].dtype == want.dtype
        np.testing.assert_array_equal(trace.lookahead[d], want)
    if "features_l000" in cols:
        want = stacked("features")
        assert trace.features.dtype == want.dtype
        np.testing.assert_array_equal(trace.features, want)
    else:
        assert trace.features is None


@settings(FUZZ, max_examples=200)
@given(case=cases())
def test_random_table(fuzz_dir: Path, case: Case) -> None:
    path = fuzz_dir / "random.parquet"
    case.write(path)
    for columns, with_extras in (("all", True), ("routing", False)):
        trace = load_or_trace_error(path, columns)
        assert (trace is not None) == oracle(case, with_extras), columns
        if trace is not None:
            assert_loaded_as_written(trace, case, with_extras)


def test_oracle_sees_valid_and_invalid_tables() -> None:
    """The generator is not degenerate: it yields both valid and invalid tables."""
    seen = set()

    @settings(max_examples=300, deadline=None, database=None)
    @given(case=cases())
    def collect(case: Case) -> None:
        seen.add(oracle(case, True))

    collect()
    assert seen == {True, False}
