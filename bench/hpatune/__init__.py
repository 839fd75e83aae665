"""The parts of bench/hpa_tune.py, which sizes one pod of each role: its story and command line are in `cli`."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT_TESTS = Path(__file__).resolve().parents[2] / "tests"
# The worker phase reuses the test suite's throwaway PostgreSQL and its seed and message helpers.
sys.path.insert(0, str(ROOT_TESTS))
