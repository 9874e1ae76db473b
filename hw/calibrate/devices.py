"""The device a calibration runs on, its timers and the provenance written with a profile."""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch
from moe_offload_lab.traces.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` (cuda when available, else cpu), ``cpu`` or ``cuda[:i]``; one-line errors."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here (use device=cpu, "
                              f"the CPU twin)")
        try:
            device = torch.device(text)
        except RuntimeError:
            raise ConfigError(f"unknown device {name!r}") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise ConfigError(f"unknown device {name!r}; use one of {', '.join(DEVICES)} or cuda:N")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (what the executor runs), float32 on the CPU twin."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def parse_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``auto``/None -> :func:`default_dtype`; else ``float32``, ``bfloat16`` or ``float16``."""
    if name in (None, "auto"):
        return default_dtype(device)
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ConfigError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return table[name]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int,
              warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones: CUDA events
    on a GPU (the device's time, launch included), ``perf_counter`` on the CPU."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    out: list[float] = []
    if device.type == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        return out
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median_s(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of :func:`time_call`."""
    return float(statistics.median(time_call(fn, device, repeats, warmup)))


def _nvidia_driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip().splitlines()
    return text[0].strip() if done.returncode == 0 and text else None


def host_memory_gib() -> float:
    """Physical host memory in GiB (64 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return 64.0


def device_properties(device: torch.device) -> dict[str, Any]:
    """Name, memory (GiB) and SM count of a CUDA device; the host's for the CPU twin."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"name": props.name, "memory_gib": props.total_memory / 1024**3,
                "sm_count": props.multi_processor_count,
                "capability": f"{props.major}.{props.minor}"}
    return {"name": f"cpu twin ({platform.processor() or platform.machine()})",
            "memory_gib": host_memory_gib(), "sm_count": None, "cores": os.cpu_count() or 1}


def provenance(device: torch.device) -> dict[str, Any]:
    """Where and when a calibration ran: device, driver, library versions, date, host."""
    props = device_properties(device)
    return {
        "device": props["name"],
        "device_type": device.type,
        "sm_count": props.get("sm_count"),
        "device_memory_gib": round(float(props["memory_gib"]), 3),
        "driver": {"cuda": torch.version.cuda, "nvidia": _nvidia_driver()}
        if device.type == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
    }
