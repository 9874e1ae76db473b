"""Fixtures of the learned-predictor tests (helpers in ``learned_testing``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from learned_testing import planted_trace  # noqa: E402
from moe_offload_lab.traces.format import Trace  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def planted() -> Trace:
    return planted_trace()
