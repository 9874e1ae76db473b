"""Host-to-device copy time against copy size (pinned host memory on a GPU).

On the CPU twin the source is ordinary host memory and the copy a plain ``copy_`` into another
host buffer: the figures are host memcpy times, not PCIe figures.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from moe_offload_lab.hw.calibrate.devices import median_s, time_call
from moe_offload_lab.sim.measured import Measured

MB = 1_000_000


@dataclass(frozen=True)
class CopyTable:
    """Median seconds of one copy per size, and the link fit ``latency + bytes / bandwidth``."""

    sizes_bytes: list[int]
    seconds: list[float]

    def fit(self) -> tuple[float, float]:
        """``(latency_s, bytes_per_s)`` fitted exactly as the simulator fits it."""
        measured = Measured.parse({"h2d_copy": self.table()}, "calibration")
        assert measured is not None
        fit = measured.link_fit()
        assert fit is not None
        return fit

    @property
    def peak_bytes_per_s(self) -> float:
        """The best achieved bandwidth over the measured sizes."""
        return max(b / s for b, s in zip(self.sizes_bytes, self.seconds, strict=True) if s > 0)

    def table(self) -> dict[str, list]:
        """The ``measured.h2d_copy`` table."""
        return {"bytes": list(self.sizes_bytes), "seconds": list(self.seconds)}


def measure_copies(sizes_bytes: list[int], device: torch.device, repeats: int,
                   warmup: int = 1) -> CopyTable:
    """Median time of one host-to-device copy per size (``sizes_bytes`` increasing).

    The sizes are interleaved: each of the ``repeats`` rounds copies every size once, so a burst
    of contention on a shared machine spreads over all sizes instead of skewing one of them
    (which would tilt the latency + bandwidth fit).
    """
    sizes = sorted({int(s) for s in sizes_bytes})
    pin = device.type == "cuda"
    biggest = sizes[-1]
    src = torch.empty(biggest, dtype=torch.uint8, pin_memory=pin)  # [bytes]
    src.fill_(1)
    dst = torch.empty(biggest, dtype=torch.uint8, device=device)  # [bytes]
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for round_ in range(repeats):
        for size in sizes:
            s, d = src[:size], dst[:size]
            times[size] += time_call(lambda s=s, d=d: d.copy_(s, non_blocking=pin), device, 1,
                                     warmup if round_ == 0 else 0)
    seconds = [float(statistics.median(times[size])) for size in sizes]
    return CopyTable(sizes, seconds)


def small_copy_seconds(device: torch.device, repeats: int, num_bytes: int = 64) -> float:
    """Median time of one tiny copy: the per-copy latency, measured directly."""
    pin = device.type == "cuda"
    src = torch.ones(num_bytes, dtype=torch.uint8, pin_memory=pin)
    dst = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    return median_s(lambda: dst.copy_(src, non_blocking=pin), device, max(repeats, 5), 2)
