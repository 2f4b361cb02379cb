"""Progress on long work: a bar in a terminal, a log line every few seconds elsewhere (Airflow).

An Airflow task log is plain ``logging`` with no terminal behind it, so bars draw nothing useful
there: long work logs one line at most every ``EVERY_S`` seconds instead, with how far it got and
its current rate. ``Ticker`` decides when a line is due (its clock can be replaced in tests);
``Meter`` counts units of work and logs (or draws a bar); ``progress`` wraps an iterable.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("instatag.progress")

#: seconds between two progress lines of the same work in a log (an Airflow task log shows them live)
EVERY_S = 10.0


def rate_text(rate: float) -> str:
    """A rate for a log line: whole numbers from 10 up, one decimal below."""
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.1f}"


class Ticker:
    """Says when the next progress line is due: at most one every ``every_s`` seconds of ``clock``."""

    def __init__(self, every_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.every_s, self.clock = EVERY_S if every_s is None else every_s, clock
        self.start = self.last = clock()
        self.n = self._n_last = 0

    def tick(self, n: float = 1) -> float | None:
        """Count ``n`` more units; when a line is due, the rate (units per second) since the previous
        line (or the start), else None."""
        self.n += n
        now = self.clock()
        seconds = now - self.last
        if seconds < self.every_s:
            return None
        rate = (self.n - self._n_last) / seconds if seconds > 0 else float("inf")
        self.last, self._n_last = now, self.n
        return rate

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start


class Meter:
    """Counts work done (``update(n)``) and shows it: a tqdm bar when stderr is a terminal, else a log
    line at most every ``every_s`` seconds (``desc: 120/750 images, 41.3 images/s``) and one at the end
    (``close``: ``desc: done, 750 images in 18.2s (41.2 images/s)``)."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, bar: bool | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.ticker = Ticker(every_s, clock)
        self._bar = None
        if sys.stderr.isatty() if bar is None else bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)
            self.ticker.n += n
            return
        rate = self.ticker.tick(n)
        if rate is not None:
            of = f"/{self.total}" if self.total else ""
            log.info("%s: %d%s %s, %s %s/s", self.desc, self.ticker.n, of, self.unit, rate_text(rate), self.unit)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            return
        n, seconds = self.ticker.n, self.ticker.elapsed
        if n:
            log.info("%s: done, %d %s in %.1fs (%s %s/s)", self.desc, n, self.unit, seconds,
                     rate_text(n / seconds if seconds > 0 else 0.0), self.unit)

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif self._bar is not None:  # no "done" line for work that failed
            self._bar.close()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", every_s: float | None = None,
             unit: str = "it") -> Iterator[T]:
    """Yield from ``iterable`` while showing progress (``Meter``, one unit per item)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Meter(desc, total, unit, every_s) as meter:
        for item in iterable:
            yield item
            meter.update(1)
