"""`bench/compare.py --rounds`: the tracker and bare Robyn alternate, and the table reports medians.

No figure is measured here: the results are built by hand, so only the arithmetic and the ordering are checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import compare  # noqa: E402


def result(target: str, *peaks: float) -> compare.Result:
    r = compare.Result(target, compare.TITLES[target], rps=peaks[0])
    r.round_rps = list(peaks)
    return r


def row(md: str, title: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == title:
            return cells
    raise AssertionError(f"no row for {title}")


def test_the_pair_alternates_which_goes_first_after_the_full_round() -> None:
    targets = ["tracker", "fastapi", "robyn", "nginx"]
    assert compare.round_orders(1, targets) == []
    assert compare.round_orders(4, targets) == [["robyn", "tracker"], ["tracker", "robyn"], ["robyn", "tracker"]]
    # Without bare Robyn there is nothing to pair the tracker with, but its peak still gets rounds.
    assert compare.round_orders(3, ["tracker", "fastapi"]) == [["tracker"], ["tracker"]]


def test_the_ratio_is_the_median_of_same_round_ratios_not_a_ratio_of_medians() -> None:
    tracker = result("tracker", 9000, 6000, 7000)
    robyn = result("robyn", 9500, 6100, 8000)
    # Same-round ratios 0.947, 0.984, 0.875: median 0.947. The medians' ratio would be 7000/8000 = 0.875.
    assert abs(compare.paired_ratio(tracker, robyn) - 9000 / 9500) < 1e-9
    md = compare.table([tracker, result("fastapi", 1400), robyn])
    cells = row(md, compare.TITLES["tracker"])
    assert cells[1] == "7,000"  # the median peak
    assert cells[4] == "5.00x"  # vs FastAPI: median over its one peak
    assert cells[5] == "0.95x"
    assert "median of rounds 9,000 / 6,000 / 7,000 req/s" in cells[-1]
    assert row(md, compare.TITLES["robyn"])[5] == "1.00x"


def test_one_round_keeps_the_plain_ratio() -> None:
    md = compare.table([result("tracker", 8000), result("robyn", 10000)])
    cells = row(md, compare.TITLES["tracker"])
    assert cells[1] == "8,000" and cells[5] == "0.80x"
    assert "median of rounds" not in cells[-1]
