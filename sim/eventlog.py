"""The simulator's event log: one row per copy, compute interval, stall, policy call and step.

Rows are appended as plain tuples during the run (cheap) and turned into a columnar
:class:`pandas.DataFrame` once at the end. Columns:

- ``kind``: ``copy``, ``compute``, ``stall``, ``policy`` or ``step``;
- ``start_s``, ``end_s``: simulated seconds;
- ``step``, ``layer``, ``expert`` (``-1`` where not applicable); a copy row names the expert
  copied (its layer and expert, so a prefetch row names its target layer) and the step that
  issued it;
- ``bytes``: bytes moved (copies; a cancelled copy counts what crossed the link);
- ``resource``: ``link``, ``gpu``, ``cpu`` or ``none``;
- ``detail``: copies ``demand``, ``stream``, ``prefetch`` (never used), ``prefetch_used`` or
  ``cancelled``; compute rows ``other`` (non-expert work) or the access outcome of an expert:
  ``hit`` (resident when its layer started), ``prefetch_hit`` (resident thanks to an unused
  prefetch), ``inflight`` (a copy was already running), ``miss`` (fetched on demand), ``cpu``
  (computed on the host); policy rows ``decision``; step rows ``step``;
- ``count``: tokens (expert rows: tokens routed to it; step rows: batch size).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pandas as pd
from moe_offload_lab.traces.atomic import atomic_path

COLUMNS = ("kind", "start_s", "end_s", "step", "layer", "expert", "bytes", "resource", "detail",
           "count")
KINDS = ("copy", "compute", "stall", "policy", "step")
RESOURCES = ("none", "link", "gpu", "cpu")
DETAILS = ("", "demand", "stream", "prefetch", "prefetch_used", "cancelled", "other", "hit",
           "prefetch_hit", "inflight", "miss", "cpu", "decision", "step", "wait")
KIND = {name: i for i, name in enumerate(KINDS)}
RESOURCE = {name: i for i, name in enumerate(RESOURCES)}
DETAIL = {name: i for i, name in enumerate(DETAILS)}
# one packed little-endian record per row, in COLUMNS order (43 bytes, no padding)
ROW = struct.Struct("<bddiiiqbbi")
ROW_DTYPE = np.dtype([("kind", "i1"), ("start_s", "<f8"), ("end_s", "<f8"), ("step", "<i4"),
                      ("layer", "<i4"), ("expert", "<i4"), ("bytes", "<i8"),
                      ("resource", "i1"), ("detail", "i1"), ("count", "<i4")])
assert ROW_DTYPE.itemsize == ROW.size
_DETAIL_OFFSET = ROW_DTYPE.fields["detail"][1]


class EventLog:
    """Append-only event rows; see the module docstring for the columns.

    Rows are packed records (:data:`ROW`, strings as small integer codes, see ``KIND``,
    ``RESOURCE`` and ``DETAIL``) in one ``bytearray``: packing a row is one C call, and the
    final frame reads the buffer as a numpy record array without a Python loop. The engine's hot
    loop appends with ``buf += pack(...)`` directly (``buf`` and ``pack`` below).
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pack = ROW.pack  # pack(kind, start_s, end_s, step, layer, expert, bytes, ...)

    def add(self, kind: str, start_s: float, end_s: float, step: int = -1, layer: int = -1,
            expert: int = -1, num_bytes: int = 0, resource: str = "none", detail: str = "",
            count: int = 0) -> int:
        """Append one row by names; returns its index (so its detail can be changed later)."""
        return self.add_codes(KIND[kind], start_s, end_s, step, layer, expert, num_bytes,
                              RESOURCE[resource], DETAIL[detail], count)

    def add_codes(self, kind: int, start_s: float, end_s: float, step: int, layer: int,
                  expert: int, num_bytes: int, resource: int, detail: int, count: int) -> int:
        """Append one row with integer codes (the engine's fast path); returns its index."""
        buf = self.buf
        buf += ROW.pack(kind, start_s, end_s, step, layer, expert, num_bytes, resource, detail,
                        count)
        return len(buf) // ROW.size - 1

    def set_detail(self, index: int, detail: str) -> None:
        """Change the ``detail`` of row ``index``."""
        self.buf[index * ROW.size + _DETAIL_OFFSET] = DETAIL[detail]

    def __len__(self) -> int:
        return len(self.buf) // ROW.size

    def to_frame(self) -> pd.DataFrame:
        """The rows as a DataFrame (string columns categorical), in append order."""
        table = np.frombuffer(self.buf, dtype=ROW_DTYPE)  # [N] records, a view (no copy)

        def codes(name: str, names: tuple[str, ...]) -> pd.Categorical:
            return pd.Categorical.from_codes(table[name].astype(np.int8), categories=names,
                                             validate=False)  # codes valid by construction

        # every column is a fresh array (astype copies), so the buffer is released on return
        return pd.DataFrame({  # no second copy, and no consolidation into 2-D blocks
            "kind": codes("kind", KINDS),
            "start_s": table["start_s"].astype(np.float64),  # [N]
            "end_s": table["end_s"].astype(np.float64),  # [N]
            "step": table["step"].astype(np.int64),
            "layer": table["layer"].astype(np.int32),
            "expert": table["expert"].astype(np.int32),
            "bytes": table["bytes"].astype(np.int64),
            "resource": codes("resource", RESOURCES),
            "detail": codes("detail", DETAILS),
            "count": table["count"].astype(np.int64),
        }, copy=False)


def write_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write an event (or step) frame as Parquet; returns the path."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)
