"""Every command answers ``--version`` with its name and the distribution's version."""

from __future__ import annotations

import importlib

import pytest

import moe_offload_lab

COMMANDS = {
    "moe-trace": "moe_offload_lab.traces.cli",
    "moe-policy": "moe_offload_lab.policies.cli",
    "moe-sim": "moe_offload_lab.sim.cli",
    "moe-tune": "moe_offload_lab.sim.tune.cli",
    "moe-report": "moe_offload_lab.sim.report.cli",
    "moe-train": "moe_offload_lab.policies.learned.cli",
    "moe-hw": "moe_offload_lab.hw.cli",
}


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_version(prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = importlib.import_module(COMMANDS[prog]).main
    try:
        status = main(["--version"])
    except SystemExit as exc:  # argparse's version action exits
        status = exc.code
    assert status == 0
    assert capsys.readouterr().out.strip() == f"{prog} {moe_offload_lab.__version__} " \
                                              f"(moe-offload-lab)"
