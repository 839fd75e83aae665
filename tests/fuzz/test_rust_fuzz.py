"""The Rust fuzz targets (fuzz/) in their short form: replay the committed corpus, then a fixed number of runs.

`make fuzz` runs them for longer. A crash leaves its input under fuzz/artifacts/<target>/ and fails this test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
RUNS = 50_000  # per target, with a fixed seed: the same inputs every time, whatever the machine's speed


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a cold build of the instrumented targets takes minutes on two cores
@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo")
def test_fuzz_targets_survive_corpus_and_fixed_runs() -> None:
    done = subprocess.run(
        [str(FUZZ / "run.sh"), "--runs", str(RUNS)], capture_output=True, text=True, timeout=1150, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    for target in ("clickid", "link_config", "template"):
        assert f"== {target}:" in output
    assert output.count(f"Done {RUNS} runs") == 3, output[-3000:]
