"""Durations as people write them: `30s`, `10m`, `2h`, `3d`, `1w` (business days come with the flow engine)."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """Parse `10m` into a timedelta; raise ValueError naming the accepted forms."""
    match = _PATTERN.match(str(text))
    if not match:
        raise ValueError(f"bad duration {text!r}: use a number and s, m, h, d or w, like 30s, 10m, 3d")
    number, unit = match.groups()
    return timedelta(**{_UNITS[unit]: int(number)})
