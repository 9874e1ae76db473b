"""``moe-trace compare`` and the routing profile it prints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from moe_offload_lab.traces import bundled
from moe_offload_lab.traces.analysis.profile import (
    hottest_share,
    overlap_ratio,
    routing_profile,
    top1_reuse,
    top1_transition,
)
from moe_offload_lab.traces.cli import main
from moe_offload_lab.traces.compare import comparison_rows, format_rows


def test_profile_measures_on_a_hand_made_trace(analysis_make_trace):
    # one layer, 4 experts, top-2; two requests of three tokens
    ids = [[[0, 1]], [[0, 2]], [[0, 1]], [[2, 3]], [[2, 3]], [[3, 1]]]
    trace = analysis_make_trace(ids, 4, request_id=[0, 0, 0, 1, 1, 1])
    observed, chance = overlap_ratio(trace, 1)
    # pairs (0,1) (1,2) (3,4) (4,5): overlaps 1, 1, 2, 1 -> mean 1.25 of k = 2
    assert observed[0] == pytest.approx(1.25 / 2)
    counts = np.array([3, 3, 3, 3])  # every expert is picked by 3 of the 6 tokens
    assert chance[0] == pytest.approx(((counts / 6) ** 2).sum() / 2)
    reuse, reuse_chance = top1_reuse(trace)
    assert reuse[0] == pytest.approx(3 / 4)  # 0->0, 0->0, 2->2, 2->3
    assert reuse_chance[0] == pytest.approx((3 / 6) ** 2 + (2 / 6) ** 2 + (1 / 6) ** 2)
    assert hottest_share(np.array([[3, 1, 0, 0]]))[0] == pytest.approx(3.0)


def test_top1_transition_is_scored_on_the_second_half(analysis_make_trace):
    # expert e at layer 0 is always followed by e + 1 at layer 1
    ids = [[[e, (e + 2) % 4], [(e + 1) % 4, e]] for e in (0, 1, 2, 3, 0, 1, 2, 3)]
    accuracy, popular = top1_transition(analysis_make_trace(ids, 4))
    assert accuracy[0] == 1.0 and popular[0] == 0.25  # every expert equally popular


def test_compare_prints_both_profiles_and_draws_them(tmp_path, capsys):
    a = bundled.path("flame-moe-290m")
    b = bundled.path("flame-moe-290m-first10")
    figure = tmp_path / "cmp.png"
    assert main(["compare", str(a), str(b), "-o", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "flame-moe-290m.parquet" in out and "flame-moe-290m-first10.parquet" in out
    assert "LRU hit ratio at 25% of the keys" in out and "difference" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", str(a), str(a), "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["traces"] == [str(a), str(a)]  # same names: full paths label the columns
    assert both["profiles"][0] == both["profiles"][1]


def test_identical_traces_differ_by_nothing():
    profile = routing_profile(bundled.load("flame-moe-290m-first10"))
    table = format_rows(comparison_rows([profile, profile]), ["a", "b"], markdown=True)
    lines = table.splitlines()
    assert lines[0] == "| statistic | a | b | difference |"
    assert all(line.endswith(("| +0.000 |", "| - |")) for line in lines[2:])


@pytest.mark.parametrize("args, message", [
    (["compare", "missing.parquet", "other.parquet"], "no such file"),
    (["compare", "A", "B", "-o", "fig.svg"], "name it *.png"),
])
def test_bad_inputs_are_one_line_errors(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
