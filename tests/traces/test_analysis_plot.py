"""plot_stats writes a PNG atomically."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.traces.analysis.plot import plot_stats
from moe_offload_lab.traces.analysis.report import compute_stats
from moe_offload_lab.traces.errors import ConfigError


@pytest.mark.parametrize("with_lookahead", [True, False])
def test_plot_stats_writes_a_png(analysis_make_trace, tmp_path, with_lookahead):
    rng = np.random.default_rng(4)
    ids = np.argsort(rng.random((60, 4, 8)), axis=2)[:, :, :2]
    ahead = np.full_like(ids, -1)
    ahead[:, :-1] = ids[:, 1:]
    trace = analysis_make_trace(ids, 8, lookahead={1: ahead} if with_lookahead else None)
    target = tmp_path / "deep" / "folder" / "stats.png"
    out = plot_stats(compute_stats(trace), target)
    assert out == target
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert [p.name for p in target.parent.iterdir()] == ["stats.png"]  # no temp file left


def test_plot_stats_rejects_other_dicts(tmp_path):
    with pytest.raises(ConfigError):
        plot_stats({"schema": "something-else"}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
