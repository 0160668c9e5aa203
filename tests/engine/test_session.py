"""The exchange calendar and the trading day's phases, on real dates (engine.session)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from engine.config import SessionConfig
from engine.session import CheckStatus, TradingCalendar
from kernel.errors import ConfigError
from kernel.events import SessionPhase
from kernel.model import MarketClock

NY = ZoneInfo("America/New_York")
P = SessionPhase
CAL = TradingCalendar()  # preflight 60 min, warm-up 30 min, no new entries 10 min


def ny(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=NY)


def where(text: str, cal: TradingCalendar = CAL) -> tuple[P, str, P, str]:
    w = cal.where(ny(text))
    return (w.phase, w.session.date.isoformat(), w.next_phase,
            w.next_at.astimezone(NY).strftime("%Y-%m-%d %H:%M"))


class TestNormalDay:
    @pytest.mark.parametrize(("at", "expected"), [
        ("2024-03-05 07:00", (P.CLOSED, "2024-03-04", P.PREFLIGHT, "2024-03-05 08:30")),
        ("2024-03-05 08:30", (P.PREFLIGHT, "2024-03-05", P.WARMUP, "2024-03-05 09:00")),
        ("2024-03-05 09:00", (P.WARMUP, "2024-03-05", P.OPEN, "2024-03-05 09:30")),
        ("2024-03-05 09:30", (P.OPEN, "2024-03-05", P.CLOSING, "2024-03-05 15:50")),
        ("2024-03-05 15:49:59", (P.OPEN, "2024-03-05", P.CLOSING, "2024-03-05 15:50")),
        ("2024-03-05 15:50", (P.CLOSING, "2024-03-05", P.CLOSED, "2024-03-05 16:00")),
        ("2024-03-05 16:00", (P.CLOSED, "2024-03-05", P.PREFLIGHT, "2024-03-06 08:30")),
        ("2024-03-05 23:59", (P.CLOSED, "2024-03-05", P.PREFLIGHT, "2024-03-06 08:30")),
    ])
    def test_where_when_tuesday_then_phases_follow_the_clock(
        self, at: str, expected: tuple[P, str, P, str]
    ) -> None:
        assert where(at) == expected

    def test_session_when_regular_day_then_open_and_close_in_utc(self) -> None:
        s = CAL.session_on(date(2024, 3, 5))
        assert s is not None
        assert (s.open, s.close) == (datetime(2024, 3, 5, 14, 30, tzinfo=UTC),
                                     datetime(2024, 3, 5, 21, 0, tzinfo=UTC))
        assert not s.early_close

    def test_where_when_weekend_then_closed_until_midnight_then_holiday(self) -> None:
        assert where("2024-03-08 17:00") == (P.CLOSED, "2024-03-08", P.HOLIDAY,
                                             "2024-03-09 00:00")
        assert where("2024-03-09 00:00") == (P.HOLIDAY, "2024-03-08", P.PREFLIGHT,
                                             "2024-03-11 08:30")
        assert where("2024-03-11 08:29") == (P.HOLIDAY, "2024-03-08", P.PREFLIGHT,
                                             "2024-03-11 08:30")


class TestHolidaysAndEarlyCloses:
    def test_july_4_when_holiday_then_no_session_and_the_3rd_closes_at_13(self) -> None:
        assert CAL.session_on(date(2024, 7, 4)) is None
        assert where("2024-07-03 12:49") == (P.OPEN, "2024-07-03", P.CLOSING, "2024-07-03 12:50")
        assert where("2024-07-03 12:50") == (P.CLOSING, "2024-07-03", P.CLOSED,
                                             "2024-07-03 13:00")
        assert where("2024-07-03 13:00") == (P.CLOSED, "2024-07-03", P.HOLIDAY,
                                             "2024-07-04 00:00")
        assert where("2024-07-04 10:00") == (P.HOLIDAY, "2024-07-03", P.PREFLIGHT,
                                             "2024-07-05 08:30")

    def test_thanksgiving_when_thursday_then_holiday_and_friday_closes_at_13(self) -> None:
        assert where("2024-11-27 16:30") == (P.CLOSED, "2024-11-27", P.HOLIDAY,
                                             "2024-11-28 00:00")
        assert where("2024-11-28 09:30") == (P.HOLIDAY, "2024-11-27", P.PREFLIGHT,
                                             "2024-11-29 08:30")
        friday = CAL.session_on(date(2024, 11, 29))
        assert friday is not None and friday.early_close
        assert friday.close.astimezone(NY).strftime("%H:%M") == "13:00"
        assert where("2024-11-29 12:50") == (P.CLOSING, "2024-11-29", P.CLOSED,
                                             "2024-11-29 13:00")
        assert where("2024-11-29 14:00") == (P.CLOSED, "2024-11-29", P.HOLIDAY,
                                             "2024-11-30 00:00")

    def test_christmas_eve_when_early_close_then_closing_at_1250_and_25th_holiday(self) -> None:
        eve = CAL.where(ny("2024-12-24 11:00"))
        assert eve.phase is P.OPEN and eve.upcoming.early_close
        assert where("2024-12-24 12:55")[0] is P.CLOSING
        assert CAL.session_on(date(2024, 12, 25)) is None
        assert where("2024-12-25 12:00") == (P.HOLIDAY, "2024-12-24", P.PREFLIGHT,
                                             "2024-12-26 08:30")


class TestDaylightSaving:
    def test_open_when_dst_starts_then_utc_hour_moves_and_new_york_time_stays(self) -> None:
        before = CAL.session_on(date(2024, 3, 8))
        after = CAL.session_on(date(2024, 3, 11))  # Sunday the 10th: clocks spring forward
        assert before is not None and after is not None
        assert before.open.hour == 14 and after.open.hour == 13
        assert where("2024-03-11 08:30") == (P.PREFLIGHT, "2024-03-11", P.WARMUP,
                                             "2024-03-11 09:00")
        # The weekend gap is an hour shorter in absolute time, the schedule is the same.
        gap = CAL.where(ny("2024-03-08 16:00")).upcoming.open - before.close
        assert gap == timedelta(hours=64, minutes=30)

    def test_close_when_dst_ends_then_2100_utc_becomes_2100_utc(self) -> None:
        fri = CAL.session_on(date(2024, 11, 1))
        mon = CAL.session_on(date(2024, 11, 4))  # Sunday the 3rd: clocks fall back
        assert fri is not None and mon is not None
        assert (fri.close.hour, mon.close.hour) == (20, 21)
        assert where("2024-11-04 15:50") == (P.CLOSING, "2024-11-04", P.CLOSED,
                                             "2024-11-04 16:00")


class TestConfig:
    def test_leads_when_changed_then_phases_move(self) -> None:
        cal = TradingCalendar(SessionConfig(preflight_lead_mins=120, warmup_lead_mins=5,
                                            no_new_entries_before_close_mins=0))
        assert where("2024-03-05 07:30", cal)[0] is P.PREFLIGHT
        assert where("2024-03-05 09:25", cal) == (P.WARMUP, "2024-03-05", P.OPEN,
                                                  "2024-03-05 09:30")
        # No CLOSING phase: trading until the close.
        assert where("2024-03-05 15:59:59", cal) == (P.OPEN, "2024-03-05", P.CLOSING,
                                                     "2024-03-05 16:00")

    def test_config_when_warmup_before_preflight_then_invalid(self) -> None:
        with pytest.raises(ValidationError, match="warmup_lead_mins"):
            SessionConfig(preflight_lead_mins=10, warmup_lead_mins=20)

    def test_config_when_closing_window_longer_than_early_close_session_then_invalid(
        self
    ) -> None:
        with pytest.raises(ValidationError):
            SessionConfig(no_new_entries_before_close_mins=211)

    def test_where_when_beyond_the_calendar_then_config_error_names_it(self) -> None:
        with pytest.raises(ConfigError, match=r"session\.calendar.*upgrade"):
            CAL.where(datetime(2090, 1, 3, 15, tzinfo=UTC))


class TestBrokerClock:
    def test_cross_check_when_broker_agrees_then_ok(self) -> None:
        t = ny("2024-11-29 10:00")
        broker = MarketClock(ts=t, is_open=True, next_open=ny("2024-12-02 09:30"),
                             next_close=ny("2024-11-29 13:00"))
        got = CAL.cross_check(broker)
        assert got.status is CheckStatus.OK and got.problems == ()

    def test_cross_check_when_broker_open_on_a_holiday_then_fail(self) -> None:
        t = ny("2024-11-28 10:00")
        broker = MarketClock(ts=t, is_open=True, next_open=ny("2024-11-29 09:30"),
                             next_close=ny("2024-11-28 16:00"))
        got = CAL.cross_check(broker)
        assert got.status is CheckStatus.FAIL
        assert got.problems[0] == "broker says open, XNYS says closed"
        assert not got.expected.is_open

    def test_cross_check_when_broker_misses_the_early_close_then_warn_with_both_times(
        self
    ) -> None:
        t = ny("2024-11-29 10:00")
        broker = MarketClock(ts=t, is_open=True, next_open=ny("2024-12-02 09:30"),
                             next_close=ny("2024-11-29 16:00"))
        got = CAL.cross_check(broker)
        assert got.status is CheckStatus.WARN
        assert got.problems == ("next_close: broker 2024-11-29T16:00:00-05:00, "
                                "XNYS 2024-11-29T13:00:00-05:00",)

    def test_expected_clock_when_closed_before_open_then_next_open_is_today(self) -> None:
        exp = CAL.expected_clock(ny("2024-03-05 08:00"))
        assert not exp.is_open
        assert exp.next_open == ny("2024-03-05 09:30")
        assert exp.next_close == ny("2024-03-05 16:00")
