"""The house's layers, as ARCHITECTURE.md draws them: `core` knows no web framework, and the worker loads none."""

from __future__ import annotations

import subprocess
import sys


def test_core_and_the_worker_import_no_web_framework() -> None:
    code = (
        "import sys, pkgutil, importlib, adclick.core\n"
        "for info in pkgutil.walk_packages(adclick.core.__path__, 'adclick.core.'):\n"
        "    importlib.import_module(info.name)\n"
        "import adclick.worker.main\n"
        "print(sorted(m for m in ('fastapi', 'starlette', 'robyn') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
