"""Progress lines for logs without a terminal (Airflow task logs), under a fake clock: at most one line
every EVERY_S seconds, with the count so far and the rate since the previous line, and a done line."""

from __future__ import annotations

import logging

from builders import FakeClock

from instatag import progress


def test_ticker_is_due_every_few_seconds_with_the_rate_since_the_previous_line():
    ticker = progress.Ticker(every_s=10, clock=FakeClock(4))  # start at t=4
    assert [ticker.tick(8) for _ in range(6)] == [None, None, 24 / 12, None, None, 24 / 12]
    assert ticker.n == 48


def test_meter_logs_count_rate_and_done(caplog):
    caplog.set_level(logging.INFO, "instatag.progress")
    with progress.Meter("scoring shard 1/4", total=100, unit="images", every_s=10, clock=FakeClock(4),
                        bar=False) as meter:
        for _ in range(5):
            meter.update(20)
    assert caplog.messages == [
        "scoring shard 1/4: 60/100 images, 5.0 images/s",  # 60 images in 12 s
        "scoring shard 1/4: done, 100 images in 24.0s (4.2 images/s)",
    ]


def test_meter_says_nothing_done_after_a_failure(caplog):
    caplog.set_level(logging.INFO, "instatag.progress")
    try:
        with progress.Meter("work", every_s=10, bar=False) as meter:
            meter.update(3)
            raise RuntimeError("broken")
    except RuntimeError:
        pass
    assert caplog.messages == []


def test_progress_wraps_an_iterable(caplog, monkeypatch):
    caplog.set_level(logging.INFO, "instatag.progress")
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line per item
    assert list(progress.progress(["a", "b"], desc="items", unit="item")) == ["a", "b"]
    assert [m.split(",")[0] for m in caplog.messages] == ["items: 1/2 item", "items: 2/2 item", "items: done"]
    assert progress.rate_text(521000.4) == "521000" and progress.rate_text(4.25) == "4.2"
