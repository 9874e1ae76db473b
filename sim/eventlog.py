"""The simulator's event log: one row per copy, compute interval, stall, policy call and step.

Rows are appended as plain tuples during the run (cheap) and turned into a columnar
:class:`pandas.DataFrame` once at the end. Columns:

- ``kind``: ``copy``, ``compute``, ``stall``, ``policy`` or ``step``;
- ``start_s``, ``end_s``: simulated seconds;
- ``step``, ``layer``, ``expert`` (``-1`` where not applicable);
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

from array import array
from pathlib import Path

import numpy as np
import pandas as pd

from traces.atomic import atomic_path

COLUMNS = ("kind", "start_s", "end_s", "step", "layer", "expert", "bytes", "resource", "detail",
           "count")
KINDS = ("copy", "compute", "stall", "policy", "step")
RESOURCES = ("none", "link", "gpu", "cpu")
DETAILS = ("", "demand", "stream", "prefetch", "prefetch_used", "cancelled", "other", "hit",
           "prefetch_hit", "inflight", "miss", "cpu", "decision", "step", "wait")
KIND = {name: i for i, name in enumerate(KINDS)}
RESOURCE = {name: i for i, name in enumerate(RESOURCES)}
DETAIL = {name: i for i, name in enumerate(DETAILS)}
_WIDTH = len(COLUMNS)


class EventLog:
    """Append-only event rows; see the module docstring for the columns.

    Rows live in one flat ``array('d')`` of numbers (strings as small integer codes, see
    ``KIND``, ``RESOURCE`` and ``DETAIL``): appending is cheap and the final frame is a zero-copy
    numpy view.
    """

    def __init__(self) -> None:
        self.flat = array("d")

    def add(self, kind: str, start_s: float, end_s: float, step: int = -1, layer: int = -1,
            expert: int = -1, num_bytes: int = 0, resource: str = "none", detail: str = "",
            count: int = 0) -> int:
        """Append one row by names; returns its index (so its detail can be changed later)."""
        return self.add_codes(KIND[kind], start_s, end_s, step, layer, expert, num_bytes,
                              RESOURCE[resource], DETAIL[detail], count)

    def add_codes(self, kind: int, start_s: float, end_s: float, step: int, layer: int,
                  expert: int, num_bytes: int, resource: int, detail: int, count: int) -> int:
        """Append one row with integer codes (the engine's fast path); returns its index."""
        flat = self.flat
        flat.extend((kind, start_s, end_s, step, layer, expert, num_bytes, resource, detail,
                     count))
        return len(flat) // _WIDTH - 1

    def set_detail(self, index: int, detail: str) -> None:
        """Change the ``detail`` of row ``index``."""
        self.flat[index * _WIDTH + 8] = DETAIL[detail]

    def __len__(self) -> int:
        return len(self.flat) // _WIDTH

    def to_frame(self) -> pd.DataFrame:
        """The rows as a DataFrame (string columns categorical), in append order."""
        table = np.frombuffer(self.flat, dtype=np.float64).reshape(-1, _WIDTH)  # [N, 10]

        def codes(i: int, names: tuple[str, ...]) -> pd.Categorical:
            return pd.Categorical.from_codes(table[:, i].astype(np.int8), categories=names)

        return pd.DataFrame({
            "kind": codes(0, KINDS),
            "start_s": table[:, 1].copy(),  # [N]
            "end_s": table[:, 2].copy(),  # [N]
            "step": table[:, 3].astype(np.int64),
            "layer": table[:, 4].astype(np.int32),
            "expert": table[:, 5].astype(np.int32),
            "bytes": table[:, 6].astype(np.int64),
            "resource": codes(7, RESOURCES),
            "detail": codes(8, DETAILS),
            "count": table[:, 9].astype(np.int64),
        })


def write_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write an event (or step) frame as Parquet; returns the path."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)
