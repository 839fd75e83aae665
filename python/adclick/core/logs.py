"""Logging set-up shared by the roles: one line per record, carrying the role's name."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, *, role: str) -> None:
    """Configures the root logger once per process; `role` tags every line (tracker, worker, ...)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {role} %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
