"""``moe-report`` on real outputs: a small sweep, a comparison and a tiny tuning study, each made
here through the real command-line entry points; bad inputs exit 2 with one line and no report.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from moe_offload_lab.sim.cli import main as sim_main
from moe_offload_lab.sim.report import build
from moe_offload_lab.sim.report.cli import main
from moe_offload_lab.sim.report.style import save
from moe_offload_lab.sim.tune.space import load_space
from moe_offload_lab.sim.tune.storage import default_storage
from moe_offload_lab.sim.tune.study import run_worker
from sim_testing import quick_predictor_training

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_report(folder: Path, expected: set[str]) -> str:
    """Every expected figure is a PNG of reasonable size, and report.md links it and holds a
    table for it; returns report.md."""
    report = (folder / "report.md").read_text(encoding="utf-8")
    pngs = {p.stem for p in folder.glob("*.png")}
    assert expected <= pngs, f"missing figures {expected - pngs}"
    for name in pngs:
        data = (folder / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert 10_000 < len(data) < 2_000_000
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 400 and height >= 250
        assert f"]({name}.png)" in report
        assert (folder / f"{name}.csv").is_file()
    tables = re.findall(r"^\|:---\|", report, flags=re.MULTILINE)
    assert len(tables) == len(pngs)  # one table per figure
    assert not list(folder.parent.glob(".report.*"))  # no temporary folders left behind
    return report


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    assert sim_main(["--multirun", "hydra/launcher=basic", "policy=on-demand,lru",
                     "cache.fraction=0.25,0.5", "trace.tokens=300", f"out={out}"]) == 0
    return out


def test_sweep_report(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep)]) == 0
    assert "report.md" in capsys.readouterr().out
    report = _check_report(sweep / "report", {"speedup", "hit_ratio", "step_latency",
                                              "breakdown", "pareto", "timeline"})
    assert "lru, cache.fraction=0.5" in report
    assert "over on-demand" in report and "over LRU" in report
    # the on-demand baseline of its own group is exactly 1x
    speedup = pd.read_csv(sweep / "report" / "speedup.csv").set_index("run")
    assert speedup.loc["on-demand, cache.fraction=0.5", "over on-demand"] == 1.0
    assert speedup.loc["lru, cache.fraction=0.5", "over LRU"] == 1.0
    assert speedup.loc["lru, cache.fraction=0.5", "over on-demand"] > 1.0
    # rerunning replaces the report in place
    assert main([str(sweep), "--timeline-steps", "1"]) == 0
    assert "Steps " in (sweep / "report" / "report.md").read_text()


def test_run_report_into_chosen_folder(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "one" / "report"
    assert main([str(sweep / "3"), "-o", str(out)]) == 0
    report = _check_report(out, {"step_latency", "breakdown", "timeline"})
    assert "speedup" not in report.split("## Not drawn")[0]


def test_comparison_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quick_predictor_training(tmp_path, monkeypatch)
    out = tmp_path / "cmp"
    assert sim_main(["experiment=compare", "trace.tokens=300", f"out={out}"]) == 0
    assert main([str(out)]) == 0
    # each run's steps and events are kept under runs/<label>/: distributions and a timeline
    report = _check_report(out / "report", {"speedup", "step_latency", "breakdown", "pareto",
                                            "timeline"})
    for label in ("on-demand", "oracle", "prophet"):
        assert label in report
        assert (out / "runs" / label / "steps.parquet").is_file()


@pytest.mark.parametrize("multi", [True, False], ids=["pareto", "single"])
def test_tuning_study_report(tmp_path: Path, multi: bool) -> None:
    params = {"policy": {"type": "categorical", "choices": ["lru", "gate-lookahead"]}}
    if multi:
        params["cache.fraction"] = {"type": "float", "low": 0.25, "high": 1.0, "step": 0.25}
    data = {"objective": ["tpot_ms_mean", "cache_bytes"] if multi else "tpot_ms_mean",
            "base": ["trace.tokens=300"], "prune": {"prefix": None}, "params": params}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    folder = tmp_path / "tune" / "tiny"
    assert run_worker(load_space(tmp_path / "space.yaml"), "tiny", default_storage(folder), 4)
    if multi:
        assert main([str(folder)]) == 0
        _check_report(folder / "report", {"pareto", "hit_ratio"})
    else:  # the same study through --storage/--study
        out = tmp_path / "elsewhere"
        assert main(["--storage", default_storage(folder), "--study", "tiny", "-o",
                     str(out)]) == 0
        _check_report(out, {"history", "policies"})


def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-report: error: ") and err.count("\n") == 1
    return err


def test_bad_inputs_exit_2_without_a_report(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such folder" in _fails([str(tmp_path / "missing")], capsys)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    assert "nothing to report" in _fails([str(junk)], capsys)
    empty = tmp_path / "empty-sweep"
    empty.mkdir()
    (empty / "multirun.yaml").write_text("{}\n")
    assert "no finished jobs" in _fails([str(empty)], capsys)
    failed = tmp_path / "failed-sweep"
    (failed / "0" / ".hydra").mkdir(parents=True)
    (failed / "0" / "error.txt").write_text("unknown policy 'nope'\n")
    assert "1 failed" in _fails([str(failed)], capsys)
    _fails(["--storage", f"sqlite:///{tmp_path / 'none.db'}", "--study", "x", "-o",
            str(tmp_path / "r")], capsys)
    _fails(["--storage", "journal:x.log"], capsys)
    _fails([], capsys)
    for folder in (junk, empty, failed):
        assert not (folder / "report").exists()
    assert not (tmp_path / "r").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-sweep", "failed-sweep", "junk"]


def test_a_failing_figure_leaves_the_previous_report(sweep: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report"
    assert main([str(sweep / "0"), "-o", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())
    calls = []

    def broken(fig, path):  # noqa: ANN001, ANN202 - the second figure fails to save
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return save(fig, path)

    monkeypatch.setattr(build, "save", broken)
    with pytest.raises(OSError):
        main([str(sweep / "1"), "-o", str(out)])
    assert sorted(p.name for p in out.iterdir()) == before
    assert '"policy": "on-demand"' in (sweep / "0" / "summary.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folders
