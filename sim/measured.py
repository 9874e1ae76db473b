"""Measured tables in a hardware profile (``measured:``, written by ``moe-hw calibrate``).

They replace the roofline for what they measured. Layout (every table two equal-length lists,
``x`` increasing)::

    measured:
      model: mixtral-8x7b              # ModelSpec.name the compute tables were measured on
      h2d_copy: {bytes: [...], seconds: [...]}      # one pinned host-to-device copy
      gpu_expert: {tokens: [...], seconds: [...]}   # one routed expert's FFN on the GPU
      cpu_expert: {tokens: [...], seconds: [...]}   # the same on the host CPU
      layer_other: {tokens: [...], seconds: [...]}  # one MoE layer's non-expert work (batch)
      provenance: {device: ..., driver: ..., torch: ..., date: ...}   # free-form

``h2d_copy`` is fitted by least squares to ``latency + bytes / bandwidth`` (the link model's
form) and applies to every model. The compute tables are piecewise linear in tokens (linear
extrapolation past the ends) and apply only when ``model`` names the simulated model; otherwise
the roofline stands and the run's summary says so (``measured_used``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import ConfigError

TABLES = {"h2d_copy": "bytes", "gpu_expert": "tokens", "cpu_expert": "tokens",
          "layer_other": "tokens"}
_KEYS = {"model", "provenance", *TABLES}


@dataclass(frozen=True)
class Curve:
    """A piecewise-linear function through measured points, extended linearly past the ends."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if len(xs) == 1:
            return ys[0]
        if x <= xs[0]:
            i = 0
        elif x >= xs[-1]:
            i = len(xs) - 2
        else:
            return float(np.interp(x, xs, ys))
        slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        return max(0.0, ys[i] + slope * (x - xs[i]))


def _curve(name: str, table: Any, where: str) -> Curve:
    x_name = TABLES[name]
    if not isinstance(table, dict) or set(table) != {x_name, "seconds"}:
        raise ConfigError(f"{where}: measured.{name} must be {{{x_name}: [...], seconds: [...]}}")
    xs, ys = table[x_name], table["seconds"]
    ok = isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys) >= 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in xs + ys)
    if not ok:
        raise ConfigError(f"{where}: measured.{name} needs equal-length lists of finite numbers "
                          f">= 0")
    if any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
        raise ConfigError(f"{where}: measured.{name}.{x_name} must be strictly increasing")
    return Curve(tuple(float(v) for v in xs), tuple(float(v) for v in ys))


@dataclass(frozen=True)
class Measured:
    """The parsed ``measured`` block of one profile."""

    model: str | None
    curves: dict[str, Curve]

    @classmethod
    def parse(cls, measured: dict[str, Any] | None, where: str = "hardware") -> Measured | None:
        """Validate and parse a profile's ``measured`` mapping (``None``: no tables)."""
        if not measured:
            return None
        unknown = sorted(set(measured) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown measured table(s) {', '.join(unknown)}")
        curves = {name: _curve(name, measured[name], where) for name in TABLES if name in measured}
        model = measured.get("model")
        return cls(str(model) if model is not None else None, curves)

    def link_fit(self) -> tuple[float, float] | None:
        """``(latency_s, bytes_per_s)`` fitted to ``h2d_copy`` (``None`` without it)."""
        curve = self.curves.get("h2d_copy")
        if curve is None:
            return None
        xs, ys = np.asarray(curve.xs), np.asarray(curve.ys)  # [n], [n]
        if len(xs) == 1:
            return 0.0, xs[0] / ys[0] if ys[0] > 0 else math.inf
        slope, intercept = np.polyfit(xs, ys, 1)
        if slope <= 0:
            raise ConfigError("measured.h2d_copy: copy time must grow with size")
        return max(0.0, float(intercept)), float(1.0 / slope)

    def compute_curve(self, name: str, model: str) -> Curve | None:
        """The ``name`` table when it was measured on ``model``."""
        return self.curves.get(name) if self.model == model else None
