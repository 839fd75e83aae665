"""Cap periods: which slots a conversion takes (its day, month or lifetime in the offer's cap time zone), and when
each resets."""

from __future__ import annotations

from datetime import UTC, date, datetime

from adclick.core.counting import LIFETIME, Cap, cap_zone


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_day_starts_at_midnight_in_the_offers_time_zone() -> None:
    cap = Cap("offer", 0, 5, "America/New_York")
    # 03:00 UTC on 2 Dec is still 1 Dec in New York (UTC-5).
    assert cap.start(at("2026-12-02T03:00:00")) == date(2026, 12, 1)
    assert cap.start(at("2026-12-02T05:00:00")) == date(2026, 12, 2)
    assert cap.end(at("2026-12-02T03:00:00")) == at("2026-12-02T05:00:00")
    assert Cap("offer", 0, 5).start(at("2026-12-02T03:00:00")) == date(2026, 12, 2)  # UTC by default


def test_a_month_starts_on_the_first_in_the_offers_time_zone_and_ends_on_the_next_first() -> None:
    cap = Cap("offer_month", 0, 100, "Asia/Tokyo")
    # 20:00 UTC on 31 Dec is already 1 Jan in Tokyo (UTC+9).
    assert cap.start(at("2026-12-31T20:00:00")) == date(2027, 1, 1)
    assert cap.start(at("2026-12-31T14:00:00")) == date(2026, 12, 1)
    assert cap.end(at("2026-12-15T00:00:00")) == at("2026-12-31T15:00:00")
    assert cap.describe() == "the offer's monthly cap (100)"


def test_daylight_saving_moves_the_utc_hour_of_a_reset() -> None:
    cap = Cap("offer", 0, 5, "Europe/Berlin")
    assert cap.end(at("2026-07-01T12:00:00")) == at("2026-07-01T22:00:00")  # summer: UTC+2
    assert cap.end(at("2026-12-01T12:00:00")) == at("2026-12-01T23:00:00")  # winter: UTC+1


def test_a_lifetime_cap_has_one_period_that_never_ends() -> None:
    cap = Cap("offer_total", 0, 1000, "Europe/Berlin")
    assert cap.start(at("2026-12-02T03:00:00")) == cap.start(at("2031-06-30T23:59:59")) == LIFETIME
    assert cap.end(at("2026-12-02T03:00:00")) is None
    assert cap.describe() == "the offer's lifetime cap (1000)"


def test_an_unknown_zone_is_utc() -> None:
    assert str(cap_zone("Not/AZone")) == "UTC" and str(cap_zone(None)) == "UTC"
    assert Cap("affiliate_offer", 3, 2).describe() == "the affiliate's daily cap (2)"
