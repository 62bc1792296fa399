"""Durations in the plan: ``14d``, ``48h``, ``90s``; production uses days, tests and the demo seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
# No plan duration is sane beyond a century; the cap also keeps timedelta from overflowing
# (it stops at 999,999,999 days) so a typo such as 99999999999999d is one clear error.
MAX_DURATION = timedelta(days=36_600)
_MAX_TEXT = 64


def _too_long(value: object) -> ValueError:
    return ValueError(f"duration {value!r} is longer than the limit of {format_duration(MAX_DURATION)}")


def parse_duration(value: object) -> timedelta:
    """Parse ``"1d12h"``, ``"30m"``, ``"2.5h"`` or a number of seconds; reject anything else.

    Negative, empty, non-finite or absurdly long durations are errors; each field sets its own
    lower bound (a bake or soak must last at least a second, see the plan model).
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '48h' or '14d', got {value!r}")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"duration must be a finite number of seconds, got {value!r}")
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        if value > MAX_DURATION.total_seconds():
            raise _too_long(value)
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like '48h' or '14d', got {value!r}")
    if len(value) > _MAX_TEXT:
        raise ValueError(f"bad duration {value[:_MAX_TEXT]!r}...: longer than {_MAX_TEXT} characters")
    text = value.strip().lower().replace(" ", "")
    if not text or _PART.sub("", text):
        raise ValueError(
            f"bad duration {value!r}: use a number and a unit (ms, s, m, h, d, w), e.g. '48h', '14d', '1d12h'"
        )
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    if seconds > MAX_DURATION.total_seconds():
        raise _too_long(value)
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Render a duration the way people write it in a plan (``14d``, ``48h``, ``1h30m``, ``45s``)."""
    total = delta.total_seconds()
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            count = int(total // size)
            parts.append(f"{count}{unit}")
            total -= count * size
    if total > 1e-9:
        parts.append(f"{round(total * 1000)}ms")
    return "".join(parts)
