"""Measure one pod of each role and write the autoscaling targets into the prod overlay (`make hpa-tune`).

The tuner lives in bench/hpatune/ (its story in hpatune/cli.py, shown by --help); this file is how it is run.
"""

from __future__ import annotations

import sys

from hpatune.cli import main

if __name__ == "__main__":
    sys.exit(main())
