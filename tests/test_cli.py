"""`adclick` as a user runs it: a real subprocess. `adclick links` and `bench-links` on a database are in
tests/manager/test_link_commands.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adclick.cli", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else {**os.environ},
        timeout=60,
    )


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in ("links", "bench-links", "tracker", "dev"):
        assert f"  {name}" in result.stdout


def test_no_command_prints_usage_and_fails() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: adclick" in result.stdout


def test_unknown_command_fails() -> None:
    result = run_cli("nope")
    assert result.returncode == 2
    assert "unknown command 'nope'" in result.stderr


@pytest.mark.parametrize("args", [["links"], ["links", "put"], ["links", "get"], ["links", "delete"], ["bench-links"]])
def test_links_help(args: list[str]) -> None:
    result = run_cli(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: adclick {args[0]}")


@pytest.mark.parametrize("command", ["tracker", "worker", "postback", "manager", "dev", "migrate"])
def test_role_help_reaches_the_role(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_links_on_a_missing_sqlite_database_are_refused_and_create_no_file(tmp_path: Path) -> None:
    """`adclick links` and `bench-links` write the database; one that is not there is not made up on the spot."""
    path = tmp_path / "nowhere.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADCLICK_")}
    env["ADCLICK_DATABASE_URL"] = f"sqlite+aiosqlite:///{path}"
    for args in (
        ["links", "get", "x"],
        ["links", "put", "x", "https://a.example/", "--offer", "1"],
        ["bench-links", "3"],
    ):
        done = run_cli(*args, env=env)
        assert done.returncode == 2, done.stderr
        assert f"no database at {path}" in done.stderr and "adclick migrate" in done.stderr
    assert not path.exists()
