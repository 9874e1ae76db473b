"""The prefetch-outcome figure (from event logs alone) and ``moe-report --timeline-run``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from moe_offload_lab.sim.cli import main as sim_main
from moe_offload_lab.sim.report.cli import main
from moe_offload_lab.sim.report.prefetch import OUTCOMES, prefetch_outcomes, prefetch_section
from moe_offload_lab.sim.report.sources import load_folder
from moe_offload_lab.sim.report.timeline import find_run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prefetch") / "sweep"
    assert sim_main(["--multirun", "hydra/launcher=basic", "policy=gate-lookahead,history,lru",
                     "hardware=h100-sxm", "cache.fraction=0.25", "trace.tokens=400",
                     f"out={out}"]) == 0
    return out


@pytest.mark.parametrize("job", ["0", "1"])
def test_outcomes_account_for_every_prefetch(sweep: Path, job: str) -> None:
    events = pd.read_parquet(sweep / job / "events.parquet")
    table = prefetch_outcomes(events).set_index("layer")
    copies = events[events["kind"] == "copy"]
    prefetches = copies[copies["detail"].isin(["prefetch", "prefetch_used", "cancelled"])]
    assert int(table[list(OUTCOMES)].to_numpy().sum()) == len(prefetches) > 0
    # copy rows name the copied expert's layer: used prefetches per layer are on time + late
    used = copies[copies["detail"] == "prefetch_used"].groupby("layer").size()
    both = (table["on time"] + table["late"])
    assert both[both > 0].to_dict() == used.to_dict()
    never = copies[copies["detail"] == "prefetch"].groupby("layer").size()
    assert table["never used"][table["never used"] > 0].to_dict() == never.to_dict()
    # every used prefetch's (layer, expert) is accessed at that layer
    compute = events[(events["kind"] == "compute")
                     & events["detail"].isin(["prefetch_hit", "inflight"])]
    accessed = set(zip(compute["layer"], compute["expert"], strict=True))
    used_rows = copies[copies["detail"] == "prefetch_used"]
    assert set(zip(used_rows["layer"], used_rows["expert"], strict=True)) <= accessed


def test_report_draws_outcomes_and_the_chosen_timeline(sweep: Path) -> None:
    assert main([str(sweep), "--timeline-run", "history"]) == 0
    report = (sweep / "report" / "report.md").read_text()
    assert "## Prefetch outcomes per layer" in report
    assert "](prefetch_outcomes.png)" in report
    assert "Timeline excerpt" in report and "of run history" in report
    table = pd.read_csv(sweep / "report" / "prefetch_outcomes.csv")
    assert set(table["run"]) == {"gate-lookahead", "history"}  # lru prefetches nothing
    totals = table[table["layer"] == "all"].set_index("run")
    assert (totals[list(OUTCOMES)].sum(axis=1) == totals["issued"]).all()
    runs = load_folder(sweep).runs
    assert find_run(runs, "lru")["label"] == "lru"
    assert find_run(runs, "GATE")["label"] == "gate-lookahead"  # a unique part, any case


def test_unknown_or_ambiguous_timeline_run_is_one_line(sweep: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep), "--timeline-run", "belady"]) == 2
    err = capsys.readouterr().err
    assert "no such run" in err and "'gate-lookahead'" in err and err.count("\n") == 1
    assert main([str(sweep), "--timeline-run", "r"]) == 2  # history and lru
    assert "matches 2 runs" in capsys.readouterr().err


def test_no_prefetching_run_is_noted(sweep: Path) -> None:
    assert prefetch_section(load_folder(sweep / "2")) == ("no run with prefetch copies in an "
                                                          "events.parquet")
