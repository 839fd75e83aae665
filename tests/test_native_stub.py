"""The hand-written stub python/adclick/_native.pyi matches the compiled extension (mypy's stubtest)."""

from __future__ import annotations

import subprocess
import sys


def test_stub_matches_the_extension() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "adclick._native"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
