"""The HTML templates (``instatag/templates/``) and their filters: one Jinja environment for the
web pages (``webapp``) and the model report (``report``).

Filters: ``pct`` (0.123 → ``12.3``; None → ``–``), ``day`` (a datetime → ``2026-11-29 21:30``),
``plural`` (``plural``), ``learned`` (a per-label row with ``ap`` and ``baseline.ap`` → ``metrics.learned``'s
verdict). Jinja is imported when the environment is first built.
"""

from __future__ import annotations

import functools


def plural(n: int, noun: str) -> str:
    """``1 label``, ``2 labels``, ``1,024 labels``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


@functools.cache
def templates():
    """The Jinja ``Environment`` of the package's templates (autoescaped HTML), built once per process."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from . import metrics

    env = Environment(loader=PackageLoader("instatag", "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}"
    env.filters["day"] = lambda v: "" if v is None else v.strftime("%Y-%m-%d %H:%M")
    env.filters["plural"] = plural
    env.filters["learned"] = lambda r: metrics.learned(r.get("ap"), (r.get("baseline") or {}).get("ap")) or "–"
    return env
