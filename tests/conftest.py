"""Suite-wide hooks.

``MOE_REQUIRE_CUDA=1`` (set by ``.ci/cuda``, the CUDA test job of a GPU host) turns every test
skipped because it "needs CUDA" into a failure, so that job cannot pass by skipping them.
"""

from __future__ import annotations

import os

import pytest

CUDA_SKIP_REASON = "needs CUDA"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("MOE_REQUIRE_CUDA") == "1" \
            and CUDA_SKIP_REASON in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"MOE_REQUIRE_CUDA=1 but the test was skipped: {report.longrepr}"


@pytest.fixture(scope="session")
def postgres():  # noqa: ANN201 - a postgres_server.PostgresServer
    """A throwaway PostgreSQL server for the whole session (tests/postgres_server.py); skips
    with the reason when this machine has no server binaries or no driver."""
    from postgres_server import PostgresServer, find_binaries

    bin_dir, why = find_binaries()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL storage tests need a local server: {why}")
    server = PostgresServer(bin_dir)
    try:
        yield server
    finally:
        server.stop()
