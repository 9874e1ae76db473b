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

Levels (``log=full|steps|summary``, :data:`LEVELS`): ``full`` keeps every row. ``steps`` and
``summary`` *fold* the rows at step ends once the buffer holds :attr:`EventLog.fold_rows` rows:
each step keeps its step row and its time breakdown (:func:`sim.metrics.step_parts`), the run
keeps the counts the summary needs (:func:`sim.metrics.event_totals`), and the rows themselves
are dropped, except (``steps``) the rows of whole steps at an even stride, at most
``sample_rows`` of them (the stride doubles when they would exceed it), which is what a timeline
shows anyway. The step table and the summary are then those of ``full``, with one exception:
``stall_s`` is summed fold by fold, so its last bits may differ. Memory: about 80 bytes per step
instead of 43 bytes per row.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pandas as pd
from moe_offload_lab.traces.atomic import atomic_path
from moe_offload_lab.traces.errors import ConfigError

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
LEVELS = ("full", "steps", "summary")


def check_level(level: object) -> str:
    """``level`` if it is one of :data:`LEVELS`, else a ConfigError."""
    if level not in LEVELS:
        raise ConfigError(f"log must be one of {', '.join(LEVELS)}, got {level!r}")
    return str(level)


class EventLog:
    """Append-only event rows; see the module docstring for the columns and the levels.

    Rows are packed records (:data:`ROW`, strings as small integer codes, see ``KIND``,
    ``RESOURCE`` and ``DETAIL``) in one ``bytearray``: packing a row is one C call, and the
    final frame reads the buffer as a numpy record array without a Python loop. The engine's hot
    loop appends with ``buf += pack(...)`` directly (``buf`` and ``pack`` below); a row's index
    is ``base + len(buf) // ROW.size - 1`` (``base``: rows folded away before the buffer).
    """

    #: folding levels: fold once the buffer holds this many rows (at a step's end)
    fold_rows = 1 << 16

    def __init__(self, level: str = "full", sample_rows: int = 50_000) -> None:
        self.buf = bytearray()
        self.pack = ROW.pack  # pack(kind, start_s, end_s, step, layer, expert, bytes, ...)
        self.level = check_level(level)
        self.folds = level != "full"
        self.base = 0  # rows folded away (their indices stay valid for mark_prefetch_used)
        self.sample_rows = int(sample_rows) if level == "steps" else 0
        self.stride = 1  # steps kept in full: step % stride == 0
        self._step_rows: list[np.ndarray] = []  # folded step rows, [S_i] records each
        self._parts: list[dict[str, np.ndarray]] = []  # their breakdowns, [S_i] each
        self._sample: list[np.ndarray] = []  # kept rows, [K_i] records each
        self._sample_at: list[np.ndarray] = []  # their row indices, [K_i] each
        self.totals: dict[str, int | float] | None = None  # counts of the folded rows

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
        return self.base + len(buf) // ROW.size - 1

    def set_detail(self, index: int, detail: str) -> None:
        """Change the ``detail`` of row ``index`` (not yet folded)."""
        if index < self.base:
            raise ValueError(f"row {index} was folded away (log={self.level})")
        self.buf[(index - self.base) * ROW.size + _DETAIL_OFFSET] = DETAIL[detail]

    def mark_prefetch_used(self, index: int, num_bytes: int) -> None:
        """The completed prefetch copy logged at row ``index`` (``num_bytes`` moved) got its
        first access: its detail becomes ``prefetch_used``, folded or not."""
        if index >= self.base:
            self.set_detail(index, "prefetch_used")
            return
        totals = self.totals
        totals["used"] += 1
        totals["prefetch_bytes"] -= num_bytes
        for at, rows in zip(self._sample_at, self._sample, strict=True):  # a kept row?
            i = int(np.searchsorted(at, index))
            if i < len(at) and at[i] == index:
                rows["detail"][i] = DETAIL["prefetch_used"]
                return

    def __len__(self) -> int:
        """Rows logged (folded ones included)."""
        return self.base + len(self.buf) // ROW.size

    def fold(self) -> None:
        """Fold the buffer's rows (call at a step's end: every compute, stall and policy row of
        the steps logged so far is in)."""
        from moe_offload_lab.sim.metrics import event_totals, step_parts

        table = np.frombuffer(self.buf, dtype=ROW_DTYPE).copy()  # [N] records
        if not len(table):
            return
        kind, detail = table["kind"], table["detail"]
        step_of = table["step"].astype(np.int64)  # [N]
        steps = table[kind == KIND["step"]]  # [S_i]
        if len(steps):
            first = int(steps["step"].min())
            size = int(steps["step"].max()) - first + 1
            parts = step_parts(kind, detail, table["resource"], step_of,
                               table["end_s"] - table["start_s"], size, first)
            at = steps["step"].astype(np.int64) - first  # [S_i]
            self._step_rows.append(steps)
            self._parts.append({name: p[at] for name, p in parts.items()})
        totals = event_totals(kind, detail, table["bytes"], table["start_s"], table["end_s"])
        if self.totals is None:
            self.totals = totals
        else:
            for name, value in totals.items():
                self.totals[name] += value
        if self.sample_rows:
            keep = np.flatnonzero((step_of >= 0) & (step_of % self.stride == 0))  # [K]
            self._sample.append(table[keep])
            self._sample_at.append(self.base + keep)
            self._thin_sample()
        self.base += len(table)
        self.buf.clear()

    def _thin_sample(self) -> None:
        """Double the stride until the kept rows fit in ``sample_rows``."""
        while sum(len(rows) for rows in self._sample) > self.sample_rows:
            self.stride *= 2
            for i, rows in enumerate(self._sample):
                keep = (rows["step"] >= 0) & (rows["step"] % self.stride == 0)
                self._sample[i], self._sample_at[i] = rows[keep], self._sample_at[i][keep]

    def step_table(self) -> pd.DataFrame | None:
        """The step frame of a folding log (:func:`sim.metrics.step_frame` of every row, folded
        step by step); None for ``full``. Folds what is left."""
        from moe_offload_lab.sim.metrics import BREAKDOWN, steps_table

        if not self.folds:
            return None
        self.fold()
        steps = np.concatenate(self._step_rows) if self._step_rows else \
            np.zeros(0, dtype=ROW_DTYPE)  # [S]
        parts = {name: (np.concatenate([p[name] for p in self._parts]) if self._parts
                        else np.zeros(0)) for name in BREAKDOWN}
        return steps_table(steps["step"], steps["start_s"], steps["end_s"], steps["count"],
                           parts)

    def to_frame(self) -> pd.DataFrame:
        """The rows as a DataFrame (string columns categorical), in append order: every row
        (``full``), the kept steps' rows (``steps``), none (``summary``)."""
        if self.folds:
            self.fold()
            table = np.concatenate(self._sample) if self._sample else \
                np.zeros(0, dtype=ROW_DTYPE)
        else:
            table = np.frombuffer(self.buf, dtype=ROW_DTYPE)  # [N] records, a view (no copy)
        return _frame(table)


def _frame(table: np.ndarray) -> pd.DataFrame:
    """Event records [N] as a DataFrame."""

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
