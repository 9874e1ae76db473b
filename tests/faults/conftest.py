"""The fault-injection suite's report: one line at the end of the session (kills and
interrupts tried, outputs checked, work lost), whenever a fault test ran."""

from __future__ import annotations

import pytest
from faults_testing import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY.kills or TALLY.interrupts or TALLY.outputs_checked or TALLY.finished_first:
        terminalreporter.write_sep("-", "fault injection")
        terminalreporter.write_line(TALLY.line())
