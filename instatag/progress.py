"""Progress on long work: a bar in a terminal, a log line every few seconds elsewhere (Airflow)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("instatag.progress")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", every_s: float = 10.0,
             unit: str = "it") -> Iterator[T]:
    """Yield from ``iterable`` while showing progress."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    n = 0
    for n, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            rate = n / (now - start)
            of = f"/{total}" if total else ""
            log.info("%s: %d%s %s (%.1f %s/s)", desc, n, of, unit, rate, unit)
    if n:
        log.info("%s: done, %d %s in %.1fs", desc, n, unit, time.monotonic() - start)
