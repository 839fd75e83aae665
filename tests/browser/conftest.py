"""Fixtures of the browser tests: the running system on PostgreSQL, a landing page, and a Chromium tab whose steps
are kept as screenshots (and, when a test fails, the last page and every role's log)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from browserkit import Landing, Shots, Tab, artifacts_root, chromium_tab
from support.procs import ProcessGuard
from support.system import System

REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
WRITTEN = pytest.StashKey[list[Path]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    written = config.stash.get(WRITTEN, [])
    if written:
        terminalreporter.section("browser screenshots")
        for directory in written:
            terminalreporter.write_line(str(directory))


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    """Screenshots of this test's steps in `<artifacts>/<test name>/`, emptied first."""
    directory = artifacts_root() / re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    request.config.stash.setdefault(WRITTEN, []).append(directory)
    print(f"screenshots: {directory}")
    return Shots(directory)


@pytest.fixture
def tab(request: pytest.FixtureRequest, shots: Shots, process_guard: ProcessGuard) -> Iterator[Tab]:
    """A Chromium tab; if the test fails, its last page is saved as failure.png beside the roles' logs."""
    with chromium_tab() as opened:
        yield opened
        reports = request.node.stash.get(REPORTS, {})
        if any(report.failed for report in reports.values()):
            try:
                opened.page.screenshot(path=str(shots.directory / "failure.png"), full_page=True)
            finally:
                shutil.copytree(process_guard.log_dir, shots.directory / "logs", dirs_exist_ok=True)


@pytest.fixture
def landing() -> Iterator[Landing]:
    server = Landing()
    yield server
    server.close()


@pytest.fixture
def stack(process_guard: ProcessGuard, adclick_env: dict[str, str], database_url: str) -> System:
    """Tracker, worker, postback and manager, not yet started (`stack.start()`), on `database_url` (use PostgreSQL)."""
    return System(process_guard, adclick_env, database_url)
