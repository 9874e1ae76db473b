"""Trace format v1: lossless round trips, atomic saves and every rejection of a bad file.

Bad files are written with pyarrow directly (as another tool would write them), from a valid trace
whose arrays or columns or metadata a test changes first; see :class:`Parts`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import moe_offload_lab.traces.format as trace_format
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moe_offload_lab.traces import (
    DECODE,
    NO_EXPERT,
    PREFILL,
    SCHEMA_VERSION,
    ModelSpec,
    Trace,
    TraceError,
)
from moe_offload_lab.traces.catalog import load_model

# 5 transformer blocks, the first dense: 4 MoE layers of 8 experts, top-2.
SPEC = ModelSpec(name="tiny-moe", num_layers=5, first_k_dense=1, num_experts=8, top_k=2,
                 hidden_size=16, expert_intermediate_size=32, extra={"note": "test"})
L, E, K = SPEC.num_moe_layers, SPEC.num_experts, SPEC.top_k


# ---- building traces ----------------------------------------------------------------------------
def routing(rng: np.random.Generator, tokens: int, layers: int, experts: int, k: int) -> np.ndarray:
    """[tokens, layers, k] distinct expert ids per token and layer."""
    return np.argsort(rng.random((tokens, layers, experts)), axis=2)[:, :, :k].astype(np.int16)


def make_trace(spec: ModelSpec = SPEC, lengths: tuple[int, ...] = (6, 4, 5), *,
               lookahead: tuple[int, ...] = (), features: Any = None, feature_width: int = 3,
               seed: int = 0) -> Trace:
    """A valid trace: requests of the given lengths, interleaved, the first 2 tokens prefill."""
    rng = np.random.default_rng(seed)
    request = np.concatenate([np.full(n, r, np.int32) for r, n in enumerate(lengths)])
    position = np.concatenate([np.arange(n, dtype=np.int32) + 3 * r for r, n in enumerate(lengths)])
    # Interleave the requests, keeping each request's own order.
    clock = np.concatenate([np.cumsum(rng.random(n) + 0.1) for n in lengths])
    order = np.argsort(clock, kind="stable")
    request, position = request[order], position[order]
    first = np.array([position[request == r].min() for r in request])
    phase = np.where(position - first < 2, PREFILL, DECODE).astype(np.int8)
    tokens, layers, experts, k = len(request), spec.num_moe_layers, spec.num_experts, spec.top_k
    gates = rng.random((tokens, layers, k)).astype(np.float32)
    ahead = {}
    for d in lookahead:
        ids = routing(rng, tokens, layers, experts, k)
        ids[:, max(layers - d, 0):] = NO_EXPERT
        ahead[d] = ids
    feats = None
    if features is not None:
        feats = rng.standard_normal((tokens, layers, feature_width)).astype(features)
    return Trace(spec=spec, request_id=request, position=position, phase=phase,
                 expert_ids=routing(rng, tokens, layers, experts, k),
                 gate_weights=gates / gates.sum(axis=2, keepdims=True), lookahead=ahead,
                 features=feats, provenance={"source": "test", "seed": seed})


def assert_same(loaded: Trace, original: Trace) -> None:
    """Every array equal, dtypes included; spec and provenance equal."""
    assert loaded.spec == original.spec
    assert loaded.provenance == original.provenance
    for name in ("request_id", "position", "phase", "expert_ids", "gate_weights"):
        got, want = getattr(loaded, name), getattr(original, name)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert sorted(loaded.lookahead) == sorted(original.lookahead)
    for d, want in original.lookahead.items():
        assert loaded.lookahead[d].dtype == want.dtype
        np.testing.assert_array_equal(loaded.lookahead[d], want)
    if original.features is None:
        assert loaded.features is None
    else:
        assert loaded.features.dtype == original.features.dtype
        np.testing.assert_array_equal(loaded.features, original.features)


# ---- writing files with pyarrow directly --------------------------------------------------------
def fixed_list(values: np.ndarray, value_type: pa.DataType | None = None) -> pa.Array:
    """[rows, width] -> fixed_size_list<value_type>[width]."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


@dataclass
class Parts:
    """The columns and key-value metadata of a trace file, to be changed and then written."""

    columns: dict[str, pa.Array]
    metadata: dict[bytes, bytes]

    @classmethod
    def of(cls, trace: Trace) -> Parts:
        columns: dict[str, pa.Array] = {
            "request_id": pa.array(trace.request_id),
            "position": pa.array(trace.position),
            "phase": pa.array(trace.phase),
        }
        layers = trace.expert_ids.shape[1]
        for l in range(layers):
            columns[f"experts_l{l:03d}"] = fixed_list(trace.expert_ids[:, l])
        for l in range(layers):
            columns[f"gates_l{l:03d}"] = fixed_list(trace.gate_weights[:, l])
        for d, ids in trace.lookahead.items():
            for l in range(layers):
                columns[f"lookahead_d{d}_l{l:03d}"] = fixed_list(ids[:, l])
        if trace.features is not None:
            for l in range(layers):
                columns[f"features_l{l:03d}"] = fixed_list(trace.features[:, l])
        metadata = {
            b"moe_trace.schema_version": b"1",
            b"moe_trace.model_spec": json.dumps(trace.spec.to_dict()).encode(),
            b"moe_trace.provenance": json.dumps(trace.provenance).encode(),
        }
        return cls(columns, metadata)

    def spec_dict(self) -> dict[str, Any]:
        return json.loads(self.metadata[b"moe_trace.model_spec"])

    def set_spec(self, **changes: Any) -> None:
        spec = {**self.spec_dict(), **changes}
        self.metadata[b"moe_trace.model_spec"] = json.dumps(spec).encode()

    def write(self, path: Path) -> Path:
        table = pa.Table.from_arrays(list(self.columns.values()), names=list(self.columns))
        pq.write_table(table.replace_schema_metadata(self.metadata), path)
        return path


def expect_error(path: Path, *fragments: str, columns: str = "all") -> str:
    """Load ``path``; it must raise a one-line TraceError naming the path and each fragment."""
    with pytest.raises(TraceError) as info:
        Trace.load(path, columns=columns)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ---- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("feature_dtype", [None, np.float16, np.float32])
@pytest.mark.parametrize("lookahead", [(), (1,), (1, 2, 3), (4,), (6,)])
def test_round_trip(tmp_path: Path, lookahead: tuple[int, ...], feature_dtype) -> None:
    trace = make_trace(lookahead=lookahead, features=feature_dtype)
    trace.provenance = {"source": "synthetic", "generator": {"name": "zipf", "alpha": 1.2},
                        "model": SPEC.name, "dataset": None, "created": "2025-01-01T00:00:00Z",
                        "seeds": [1, 2, 3]}
    path = trace.save(tmp_path / "t.parquet")
    assert path == tmp_path / "t.parquet"
    loaded = Trace.load(path)
    assert_same(loaded, trace)
    assert loaded.lookahead_distances == sorted(lookahead)
    loaded.validate()


@pytest.mark.parametrize("name", ["mixtral-8x7b", "deepseek-v3", "switch-base-128",
                                  "gpt-oss-120b"])
def test_round_trip_real_specs(tmp_path: Path, name: str) -> None:
    trace = make_trace(load_model(name), (3, 2), lookahead=(1, 2), features=np.float16)
    assert_same(Trace.load(trace.save(tmp_path / f"{name}.parquet")), trace)


def test_round_trip_empty_trace(tmp_path: Path) -> None:
    trace = make_trace(lengths=(0,), lookahead=(1,), features=np.float32)
    assert trace.num_tokens == 0
    loaded = Trace.load(trace.save(tmp_path / "empty.parquet"))
    assert_same(loaded, trace)
    assert loaded.expert_ids.shape == (0, L, K)


def test_file_written_by_pyarrow_loads(tmp_path: Path) -> None:
    trace = make_trace(lookahead=(2,), features=np.float32)
    assert_same(Trace.load(Parts.of(trace).write(tmp_path / "t.parquet")), trace)


def test_schema_of_saved_file(tmp_path: Path) -> None:
    trace = make_trace(lookahead=(1,), features=np.float16)
    schema = pq.read_schema(trace.save(tmp_path / "t.parquet"))
    names = ["request_id", "position", "phase"] + [f"experts_l{l:03d}" for l in range(L)] \
        + [f"gates_l{l:03d}" for l in range(L)] + [f"lookahead_d1_l{l:03d}" for l in range(L)] \
        + [f"features_l{l:03d}" for l in range(L)]
    assert schema.names == names
    assert schema.field("request_id").type == pa.int32()
    assert schema.field("position").type == pa.int32()
    assert schema.field("phase").type == pa.int8()
    assert schema.field("experts_l000").type == pa.list_(pa.int16(), K)
    assert schema.field("gates_l003").type == pa.list_(pa.float32(), K)
    assert schema.field("lookahead_d1_l000").type == pa.list_(pa.int16(), K)
    assert schema.field("features_l000").type == pa.list_(pa.float16(), 3)
    meta = schema.metadata
    assert meta[b"moe_trace.schema_version"] == str(SCHEMA_VERSION).encode() == b"1"
    assert ModelSpec.from_dict(json.loads(meta[b"moe_trace.model_spec"])) == SPEC
    assert json.loads(meta[b"moe_trace.provenance"]) == trace.provenance


def test_routing_only_skips_extras(tmp_path: Path) -> None:
    trace = make_trace(lookahead=(1, 2), features=np.float16)
    path = trace.save(tmp_path / "t.parquet")
    routing_only = Trace.load(path, columns="routing")
    assert routing_only.lookahead == {}
    assert routing_only.features is None
    assert_same(routing_only, replace(trace, lookahead={}, features=None))


def test_large_top_k(tmp_path: Path) -> None:
    # top_k > 16 takes the sorting path of the duplicate check.
    spec = ModelSpec(name="wide", num_layers=2, num_experts=64, top_k=20, hidden_size=8,
                     expert_intermediate_size=8)
    trace = make_trace(spec, (4,), lookahead=(1,))
    assert_same(Trace.load(trace.save(tmp_path / "w.parquet")), trace)
    trace.expert_ids[2, 1, 19] = trace.expert_ids[2, 1, 3]
    expect_error(Parts.of(trace).write(tmp_path / "dup.parquet"), "repeats an expert id",
                 "token 2, layer 1")


def test_select_and_request_ids() -> None:
    trace = make_trace(lookahead=(1,), features=np.float32)
    assert trace.request_ids().tolist() == list(dict.fromkeys(trace.request_id.tolist()))
    part = trace.select(trace.request_id == 1)
    assert part.num_tokens == 4
    part.validate()
    assert part.lookahead[1].shape == (4, L, K) and part.features.shape == (4, L, 3)


# ---- atomic save --------------------------------------------------------------------------------
def test_save_creates_folders_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = make_trace().save(tmp_path / "a" / "b" / "t.parquet")
    assert path.is_file()
    make_trace(seed=1).save(path)  # overwrite
    assert os.listdir(path.parent) == ["t.parquet"]
    assert Trace.load(path).provenance["seed"] == 1


def test_invalid_trace_is_not_saved(tmp_path: Path) -> None:
    trace = make_trace()
    trace.expert_ids[0, 0, 0] = E
    path = tmp_path / "t.parquet"
    with pytest.raises(TraceError, match="outside"):
        trace.save(path)
    assert os.listdir(tmp_path) == []


def test_invalid_trace_leaves_old_file_alone(tmp_path: Path) -> None:
    path = make_trace().save(tmp_path / "t.parquet")
    before = path.read_bytes()
    bad = make_trace(seed=2)
    bad.gate_weights[1, 1, 1] = np.nan
    with pytest.raises(TraceError, match="non-finite"):
        bad.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.parquet"]


def test_failed_write_removes_temp_file(tmp_path: Path, monkeypatch) -> None:
    path = make_trace().save(tmp_path / "t.parquet")
    before = path.read_bytes()

    def broken_write(table, where, **kwargs):
        Path(where).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(trace_format.pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        make_trace(seed=3).save(path)
    assert os.listdir(tmp_path) == ["t.parquet"]
    assert path.read_bytes() == before


# ---- validation of in-memory traces -------------------------------------------------------------
def test_validate_rejects_wrong_in_memory_arrays() -> None:
    trace = make_trace()
    with pytest.raises(TraceError, match="expert_ids must be a numpy array"):
        replace(trace, expert_ids=trace.expert_ids.tolist()).validate()
    with pytest.raises(TraceError, match="gate_weights has dtype float64"):
        replace(trace, gate_weights=trace.gate_weights.astype(np.float64)).validate()
    with pytest.raises(TraceError, match="expert_ids has shape"):
        replace(trace, expert_ids=trace.expert_ids[:, :2]).validate()
    with pytest.raises(TraceError, match="position has shape"):
        replace(trace, position=trace.position[:-1]).validate()
    with pytest.raises(TraceError, match="provenance must be a dict"):
        replace(trace, provenance=["x"]).validate()
    with pytest.raises(TraceError, match="features must be a numpy array"):
        replace(trace, features=[[[1.0]]]).validate()
    with pytest.raises(TraceError, match="features must be float16 or float32"):
        replace(trace, features=np.zeros((trace.num_tokens, L, 2))).validate()
    with pytest.raises(TraceError, match="features have shape"):
        replace(trace, features=np.zeros((trace.num_tokens, L, 0), np.float32)).validate()
    with pytest.raises(TraceError, match="lookahead distance must be a positive integer"):
        replace(trace, lookahead={0: trace.expert_ids}).validate()
    with pytest.raises(TraceError, match="^mine: "):
        replace(trace, phase=trace.phase + 2).validate("mine")


# ---- unreadable files ---------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "absent.parquet", "no such file")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").mkdir()
    expect_error(tmp_path / "d.parquet", "not a file")


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.99])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    path = make_trace(lookahead=(1,)).save(tmp_path / "t.parquet")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    expect_error(path, "not a readable Parquet file")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    path.write_bytes(b"")
    expect_error(path, "not a readable Parquet file")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    expect_error(path, "not a readable Parquet file")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    path.write_text("request_id,position,phase\n0,0,0\n", encoding="utf-8")
    expect_error(path, "not a readable Parquet file")


def test_text_file_with_parquet_magic(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1 this is not really parquet PAR1")
    expect_error(path, "not a readable Parquet file")


def test_parquet_that_is_not_a_trace(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), path)
    expect_error(path, "no schema version", "moe_trace.schema_version")


# ---- metadata -----------------------------------------------------------------------------------
@pytest.fixture
def parts() -> Parts:
    return Parts.of(make_trace(lookahead=(1, 2), features=np.float16))


def test_missing_schema_version(tmp_path: Path, parts: Parts) -> None:
    del parts.metadata[b"moe_trace.schema_version"]
    expect_error(parts.write(tmp_path / "t.parquet"), "no schema version")


@pytest.mark.parametrize("version", [b"7", b"0", b"1.0", b"", b"\xff"])
def test_unknown_schema_version(tmp_path: Path, parts: Parts, version: bytes) -> None:
    parts.metadata[b"moe_trace.schema_version"] = version
    expect_error(parts.write(tmp_path / "t.parquet"), "unknown trace schema version",
                 "reads version 1")


def test_version_7_names_it(tmp_path: Path, parts: Parts) -> None:
    parts.metadata[b"moe_trace.schema_version"] = b"7"
    expect_error(parts.write(tmp_path / "t.parquet"), "version '7'")


def test_missing_model_spec(tmp_path: Path, parts: Parts) -> None:
    del parts.metadata[b"moe_trace.model_spec"]
    expect_error(parts.write(tmp_path / "t.parquet"), "no ModelSpec", "moe_trace.model_spec")


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe", b"[" * 100_000])
def test_model_spec_not_json(tmp_path: Path, parts: Parts, raw: bytes) -> None:
    parts.metadata[b"moe_trace.model_spec"] = raw
    expect_error(parts.write(tmp_path / "t.parquet"), "ModelSpec metadata is not valid JSON")


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"[1, 2]", "must be a mapping"),
    (b"null", "must be a mapping"),
    (b'{"name": "x"}', "lacks required field"),
])
def test_model_spec_not_a_spec(tmp_path: Path, parts: Parts, raw: bytes, fragment: str) -> None:
    parts.metadata[b"moe_trace.model_spec"] = raw
    expect_error(parts.write(tmp_path / "t.parquet"), "invalid ModelSpec", fragment)


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"top_k": 0}, "top_k"),
    ({"num_experts": "8"}, "num_experts"),
    ({"first_k_dense": 1.5}, "first_k_dense"),
    ({"expert_bytes_per_param": None}, "expert_bytes_per_param"),
    ({"moe_layer_step": 9}, "no MoE layer"),
    ({"num_layers": 10**12}, "num_layers"),
    ({"bits": 4}, "unknown field"),
])
def test_model_spec_invalid(tmp_path: Path, parts: Parts, changes: dict, fragment: str) -> None:
    parts.set_spec(**changes)
    expect_error(parts.write(tmp_path / "t.parquet"), "invalid ModelSpec", fragment)


def test_model_spec_missing_field(tmp_path: Path, parts: Parts) -> None:
    spec = parts.spec_dict()
    del spec["num_experts"]
    parts.metadata[b"moe_trace.model_spec"] = json.dumps(spec).encode()
    expect_error(parts.write(tmp_path / "t.parquet"), "invalid ModelSpec", "num_experts")


def test_missing_provenance_is_empty(tmp_path: Path, parts: Parts) -> None:
    del parts.metadata[b"moe_trace.provenance"]
    assert Trace.load(parts.write(tmp_path / "t.parquet")).provenance == {}


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"{oops", "provenance metadata is not valid JSON"),
    (b"[" * 100_000, "provenance metadata is not valid JSON"),
    (b"[1, 2]", "provenance metadata must be a JSON object"),
    (b'"text"', "provenance metadata must be a JSON object"),
])
def test_bad_provenance(tmp_path: Path, parts: Parts, raw: bytes, fragment: str) -> None:
    parts.metadata[b"moe_trace.provenance"] = raw
    expect_error(parts.write(tmp_path / "t.parquet"), fragment)


# ---- columns that disagree with the ModelSpec ---------------------------------------------------
def test_fewer_layers_than_the_spec(tmp_path: Path, parts: Parts) -> None:
    del parts.columns["experts_l003"], parts.columns["gates_l003"]
    expect_error(parts.write(tmp_path / "t.parquet"), "missing column(s) experts_l003, gates_l003",
                 "4 MoE layers")


def test_spec_with_more_layers_than_the_file(tmp_path: Path, parts: Parts) -> None:
    parts.set_spec(num_layers=7)
    expect_error(parts.write(tmp_path / "t.parquet"), "missing column(s) experts_l004",
                 "6 MoE layers")


def test_more_layers_than_the_spec(tmp_path: Path, parts: Parts) -> None:
    parts.columns["experts_l004"] = parts.columns["experts_l000"]
    parts.columns["gates_l004"] = parts.columns["gates_l000"]
    expect_error(parts.write(tmp_path / "t.parquet"), "experts_l004 is beyond the 4 MoE layers")


def test_spec_with_fewer_layers_than_the_file(tmp_path: Path, parts: Parts) -> None:
    parts.set_spec(num_layers=4)
    expect_error(parts.write(tmp_path / "t.parquet"), "experts_l003 is beyond the 3 MoE layers")


@pytest.mark.parametrize("column", ["gates_l004", "features_l004", "experts_l1"])
def test_stray_layer_column(tmp_path: Path, parts: Parts, column: str) -> None:
    source = {"g": "gates_l000", "f": "features_l000", "e": "experts_l000"}[column[0]]
    parts.columns[column] = parts.columns[source]
    expect_error(parts.write(tmp_path / "t.parquet"), f"column {column} is beyond")


@pytest.mark.parametrize("column", ["request_id", "position", "phase", "gates_l000"])
def test_missing_column(tmp_path: Path, parts: Parts, column: str) -> None:
    del parts.columns[column]
    expect_error(parts.write(tmp_path / "t.parquet"), f"missing column(s) {column}")


@pytest.mark.parametrize("column", ["request_id", "experts_l002"])
def test_duplicate_column(tmp_path: Path, parts: Parts, column: str) -> None:
    path = tmp_path / "t.parquet"
    names = list(parts.columns) + [column]
    table = pa.Table.from_arrays(list(parts.columns.values()) + [parts.columns[column]], names)
    pq.write_table(table.replace_schema_metadata(parts.metadata), path)
    expect_error(path, f"column {column} appears more than once")


@pytest.mark.parametrize("column", ["experts_l000", "gates_l002", "lookahead_d1_l001"])
@pytest.mark.parametrize("width", [1, 3])
def test_width_is_not_top_k(tmp_path: Path, parts: Parts, column: str, width: int) -> None:
    dtype = parts.columns[column].type.value_type
    values = np.arange(width * 15).reshape(15, width) % E
    parts.columns[column] = fixed_list(values, dtype)
    expect_error(parts.write(tmp_path / "t.parquet"), f"column {column} holds {width} values "
                 "per token, expected 2")


@pytest.mark.parametrize(("column", "value_type", "expected"), [
    ("experts_l000", pa.int32(), "fixed_size_list<int16>[2]"),
    ("experts_l001", pa.int64(), "fixed_size_list<int16>[2]"),
    ("experts_l003", pa.uint16(), "fixed_size_list<int16>[2]"),
    ("experts_l002", pa.float32(), "fixed_size_list<int16>[2]"),
    ("gates_l000", pa.float64(), "fixed_size_list<float>[2]"),
    ("gates_l001", pa.float16(), "fixed_size_list<float>[2]"),
    ("lookahead_d2_l000", pa.int32(), "fixed_size_list<int16>[2]"),
    ("features_l001", pa.int16(), "fixed_size_list<halffloat>[3] or fixed_size_list<float>[3]"),
])
def test_wrong_list_dtype(tmp_path: Path, parts: Parts, column: str, value_type: pa.DataType,
                          expected: str) -> None:
    old = parts.columns[column]
    flat = old.flatten().cast(value_type, safe=False)
    parts.columns[column] = pa.FixedSizeListArray.from_arrays(flat, old.type.list_size)
    expect_error(parts.write(tmp_path / "t.parquet"), f"column {column} has type", expected)


def test_plain_list_columns_of_the_right_width_load(tmp_path: Path, parts: Parts) -> None:
    expected = parts.columns["experts_l000"].to_pylist()
    parts.columns["experts_l000"] = pa.array(expected, pa.list_(pa.int16()))
    trace = Trace.load(parts.write(tmp_path / "t.parquet"))
    assert trace.expert_ids[:, 0].tolist() == expected


def test_plain_list_row_of_the_wrong_width(tmp_path: Path, parts: Parts) -> None:
    rows = parts.columns["experts_l000"].to_pylist()
    rows[1] = rows[1][:1]
    parts.columns["experts_l000"] = pa.array(rows, pa.list_(pa.int16()))
    expect_error(parts.write(tmp_path / "t.parquet"), "column experts_l000 has a row of 1 values",
                 "expected 2")


@pytest.mark.parametrize(("column", "dtype", "expected"), [
    ("request_id", pa.int64(), "int32"),
    ("request_id", pa.string(), "int32"),
    ("position", pa.int16(), "int32"),
    ("position", pa.float32(), "int32"),
    ("phase", pa.int32(), "int8"),
    ("phase", pa.bool_(), "int8"),
])
def test_wrong_scalar_dtype(tmp_path: Path, parts: Parts, column: str, dtype: pa.DataType,
                            expected: str) -> None:
    parts.columns[column] = parts.columns[column].cast(dtype)
    expect_error(parts.write(tmp_path / "t.parquet"), f"column {column} has type {dtype}",
                 f"expected {expected}")


# ---- nulls --------------------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["request_id", "position", "phase"])
def test_null_scalar(tmp_path: Path, parts: Parts, column: str) -> None:
    values = parts.columns[column].to_pylist()
    values[3] = None
    parts.columns[column] = pa.array(values, parts.columns[column].type)
    expect_error(parts.write(tmp_path / "t.parquet"), f"column {column} has nulls")


@pytest.mark.parametrize("column", ["experts_l001", "gates_l000", "lookahead_d1_l000",
                                    "features_l002"])
def test_null_list_row(tmp_path: Path, parts: Parts, column: str) -> None:
    old = parts.columns[column]
    mask = np.zeros(len(old), bool)
    mask[4] = True
    parts.columns[column] = pa.FixedSizeListArray.from_arrays(
        old.flatten(), old.type.list_size, mask=pa.array(mask))
    expect_error(parts.write(tmp_path / "t.parquet"), f"column {column} has null rows")


@pytest.mark.parametrize("column", ["experts_l001", "gates_l003", "lookahead_d2_l000",
                                    "features_l000"])
def test_null_value(tmp_path: Path, parts: Parts, column: str) -> None:
    old = parts.columns[column]
    values = old.flatten().to_pylist()
    values[5] = None
    parts.columns[column] = pa.FixedSizeListArray.from_arrays(
        pa.array(values, old.type.value_type), old.type.list_size)
    expect_error(parts.write(tmp_path / "t.parquet"), f"column {column} has null values")


# ---- values -------------------------------------------------------------------------------------
def write_changed(tmp_path: Path, change, **make: Any) -> Path:
    """Write a trace whose arrays ``change(trace)`` edited in place, bypassing validation."""
    trace = make_trace(**make)
    change(trace)
    return Parts.of(trace).write(tmp_path / "t.parquet")


@pytest.mark.parametrize(("value", "fragment"), [
    (-1, "expert id -1"), (-32768, "expert id -32768"), (E, f"expert id {E}"),
    (32767, "expert id 32767")])
def test_expert_id_out_of_range(tmp_path: Path, value: int, fragment: str) -> None:
    def change(t: Trace) -> None:
        t.expert_ids[7, 2, 1] = value
    expect_error(write_changed(tmp_path, change), fragment, "token 7, layer 2",
                 f"outside [0, {E})")


def test_duplicate_expert_in_top_k(tmp_path: Path) -> None:
    def change(t: Trace) -> None:
        t.expert_ids[3, 1, 1] = t.expert_ids[3, 1, 0]
    expect_error(write_changed(tmp_path, change), "repeats an expert id within the top-k",
                 "token 3, layer 1")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_gate(tmp_path: Path, value: float) -> None:
    def change(t: Trace) -> None:
        t.gate_weights[5, 3, 0] = value
    expect_error(write_changed(tmp_path, change), "non-finite gate weight", "token 5, layer 3")


@pytest.mark.parametrize("value", [2, -1, 127])
def test_bad_phase(tmp_path: Path, value: int) -> None:
    def change(t: Trace) -> None:
        t.phase[4] = value
    expect_error(write_changed(tmp_path, change), "phase must be 0 (prefill) or 1 (decode)",
                 f"row 4 has {value}")


def test_negative_position(tmp_path: Path) -> None:
    def change(t: Trace) -> None:
        t.position[t.request_id == 0] -= 10
    expect_error(write_changed(tmp_path, change), "negative token position")


@pytest.mark.parametrize("kind", ["swapped", "repeated"])
def test_positions_not_increasing(tmp_path: Path, kind: str) -> None:
    def change(t: Trace) -> None:
        rows = np.flatnonzero(t.request_id == 1)
        if kind == "swapped":
            t.position[rows[[1, 2]]] = t.position[rows[[2, 1]]]
        else:
            t.position[rows[2]] = t.position[rows[1]]
    expect_error(write_changed(tmp_path, change), "request 1 has position",
                 "positions must increase within a request")


def test_interleaved_requests_are_fine(tmp_path: Path) -> None:
    trace = make_trace(lengths=(5, 5, 5))
    assert (np.diff(trace.request_id) != 0).sum() > 2  # really interleaved
    assert_same(Trace.load(trace.save(tmp_path / "t.parquet")), trace)


# ---- lookahead ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("d", "layer"), [(1, 3), (2, 2), (2, 3), (4, 0), (6, 1)])
def test_lookahead_beyond_last_layer_must_be_minus_one(tmp_path: Path, d: int,
                                                       layer: int) -> None:
    def change(t: Trace) -> None:
        t.lookahead[d][2, layer] = [0, 1]
    expect_error(write_changed(tmp_path, change, lookahead=(d,)),
                 f"lookahead distance {d} must hold -1 at layers >= {L - d}")


@pytest.mark.parametrize("value", [-1, E, 100])
def test_lookahead_id_out_of_range(tmp_path: Path, value: int) -> None:
    def change(t: Trace) -> None:
        t.lookahead[2][6, 1, 0] = value
    expect_error(write_changed(tmp_path, change, lookahead=(2,)),
                 "lookahead distance 2 has an expert id outside", "token 6, layer 1")


def test_lookahead_duplicate(tmp_path: Path) -> None:
    def change(t: Trace) -> None:
        t.lookahead[1][0, 2, 1] = t.lookahead[1][0, 2, 0]
    expect_error(write_changed(tmp_path, change, lookahead=(1,)),
                 "lookahead distance 1 repeats an expert id", "token 0, layer 2")


def test_lookahead_missing_layer(tmp_path: Path, parts: Parts) -> None:
    del parts.columns["lookahead_d2_l001"]
    expect_error(parts.write(tmp_path / "t.parquet"), "lookahead distance 2 lacks column "
                 "lookahead_d2_l001")


def test_lookahead_distance_zero(tmp_path: Path, parts: Parts) -> None:
    for l in range(L):
        parts.columns[f"lookahead_d0_l{l:03d}"] = parts.columns["experts_l000"]
    expect_error(parts.write(tmp_path / "t.parquet"), "lookahead distance must be a positive")


@pytest.mark.parametrize("column", ["lookahead_d1_l004", "lookahead_dx_l000", "lookahead_d",
                                    "lookahead_d\u00b2_l000", "lookahead_d1"])
def test_stray_lookahead_column(tmp_path: Path, parts: Parts, column: str) -> None:
    parts.columns[column] = parts.columns["lookahead_d1_l000"]
    message = expect_error(parts.write(tmp_path / "t.parquet"))
    assert "unexpected column" in message or "lacks column" in message


def test_lookahead_mixed_with_routing_only(tmp_path: Path) -> None:
    def change(t: Trace) -> None:
        t.lookahead[1][0, L - 1] = [0, 1]
    path = write_changed(tmp_path, change, lookahead=(1,))
    expect_error(path, "lookahead distance 1 must hold -1")
    # The routing-only view reads no lookahead column, so it cannot object to one.
    assert Trace.load(path, columns="routing").lookahead == {}


# ---- features -----------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [0, 2, 3])
def test_incomplete_features(tmp_path: Path, parts: Parts, layer: int) -> None:
    del parts.columns[f"features_l{layer:03d}"]
    expect_error(parts.write(tmp_path / "t.parquet"),
                 f"feature columns are incomplete (no features_l{layer:03d})")


def test_features_mixed_dtypes(tmp_path: Path, parts: Parts) -> None:
    parts.columns["features_l002"] = parts.columns["features_l002"].cast(pa.list_(pa.float32(), 3))
    expect_error(parts.write(tmp_path / "t.parquet"), "column features_l002 has dtype float32",
                 "features_l000 has float16")


def test_features_mixed_widths(tmp_path: Path, parts: Parts) -> None:
    parts.columns["features_l001"] = fixed_list(np.zeros((15, 4), np.float16))
    expect_error(parts.write(tmp_path / "t.parquet"),
                 "column features_l001 holds 4 values per token, expected 3")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_features(tmp_path: Path, value: float) -> None:
    def change(t: Trace) -> None:
        t.features[1, 1, 1] = value
    expect_error(write_changed(tmp_path, change, features=np.float32),
                 "non-finite hidden-state feature values")


def test_features_not_a_list(tmp_path: Path, parts: Parts) -> None:
    for l in range(L):
        parts.columns[f"features_l{l:03d}"] = pa.array(np.zeros(15, np.float32))
    expect_error(parts.write(tmp_path / "t.parquet"), "column features_l000 has type float")


def test_unrelated_columns_are_ignored(tmp_path: Path, parts: Parts) -> None:
    parts.columns["token_text"] = pa.array(["x"] * 15)
    trace = Trace.load(parts.write(tmp_path / "t.parquet"))
    assert trace.num_tokens == 15


# ---- the examples in traces/README.md -----------------------------------------------------------
README = Path(trace_format.__file__).with_name("README.md")


def readme_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_write_and_read_examples(tmp_path: Path, monkeypatch, capsys) -> None:
    write, read = readme_examples()
    monkeypatch.chdir(tmp_path)
    exec(compile(write, "README.md (writing)", "exec"), {})
    trace = Trace.load(tmp_path / "toy.parquet")
    assert trace.spec.name == "toy-moe" and trace.num_tokens == 3
    assert trace.lookahead_distances == [1]
    assert (trace.lookahead[1][:, 1] == NO_EXPERT).all()
    exec(compile(read, "README.md (reading)", "exec"), {})
    assert capsys.readouterr().out.split("\n")[:3] == ["toy-moe 3", "(3, 2, 2)", "[1]"]


def test_files_from_non_arrow_writers_load(tmp_path: Path) -> None:
    # A file as a non-Arrow writer leaves it: the metadata, but variable-length list columns.
    trace = make_trace(lookahead=(1,), features=np.float32)
    table = pq.read_table(trace.save(tmp_path / "t.parquet"))
    fields = [f.with_type(pa.list_(f.type.value_type)) if pa.types.is_fixed_size_list(f.type)
              else f for f in table.schema]
    plain = table.cast(pa.schema(fields)).replace_schema_metadata(None)
    path = tmp_path / "from_other_tool.parquet"
    writer = pq.ParquetWriter(path, plain.schema, store_schema=False)
    writer.write_table(plain)
    writer.add_key_value_metadata({k.decode(): v.decode()
                                   for k, v in table.schema.metadata.items()})
    writer.close()
    assert_same(Trace.load(path), trace)
