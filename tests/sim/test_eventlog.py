"""The event log's packed rows: what goes in comes out, in order, with the documented types."""

from __future__ import annotations

import pandas as pd
import pytest
from moe_offload_lab.sim.eventlog import COLUMNS, DETAILS, KINDS, RESOURCES, EventLog


def test_rows_round_trip_with_their_types() -> None:
    log = EventLog()
    big = 352_321_536 * 7  # bytes beyond 32 bits
    i = log.add("copy", 0.125, 0.5, step=3, layer=31, expert=7, num_bytes=big,
                resource="link", detail="prefetch")
    j = log.add("compute", 0.5, 0.75, step=3, layer=-1, expert=-1, resource="gpu",
                detail="other", count=4096)
    log.add("step", 0.0, 0.75, step=3, resource="none", detail="step", count=1)
    assert (i, j, len(log)) == (0, 1, 3)
    log.set_detail(i, "prefetch_used")
    frame = log.to_frame()
    assert tuple(frame.columns) == COLUMNS
    assert frame["kind"].astype(str).tolist() == ["copy", "compute", "step"]
    assert frame["detail"].astype(str).tolist() == ["prefetch_used", "other", "step"]
    assert frame["resource"].astype(str).tolist() == ["link", "gpu", "none"]
    assert frame["bytes"].tolist() == [big, 0, 0]
    assert frame["layer"].tolist() == [31, -1, -1] and frame["expert"].tolist() == [7, -1, -1]
    assert frame["count"].tolist() == [0, 4096, 1]
    assert frame["start_s"].tolist() == [0.125, 0.5, 0.0]
    for col, dtype in (("start_s", "float64"), ("step", "int64"), ("bytes", "int64"),
                       ("layer", "int32"), ("count", "int64")):
        assert str(frame[col].dtype) == dtype
    for col, names in (("kind", KINDS), ("resource", RESOURCES), ("detail", DETAILS)):
        assert isinstance(frame[col].dtype, pd.CategoricalDtype)
        assert tuple(frame[col].cat.categories) == names


def test_the_log_keeps_growing_after_a_frame_is_taken() -> None:
    log = EventLog()
    log.add("stall", 0.0, 1.0, resource="gpu", detail="wait")
    first = log.to_frame()
    log.add("stall", 1.0, 2.0, resource="gpu", detail="wait")
    assert len(first) == 1 and len(log.to_frame()) == 2
    assert first["end_s"].tolist() == [1.0]  # the first frame owns its data


def test_an_empty_log_gives_an_empty_frame() -> None:
    frame = EventLog().to_frame()
    assert len(frame) == 0 and tuple(frame.columns) == COLUMNS


def test_unknown_names_are_refused() -> None:
    with pytest.raises(KeyError):
        EventLog().add("teleport", 0.0, 1.0)
