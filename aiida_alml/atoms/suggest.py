"""Name the closest known names when an unknown one is given (no AiiDA import: engines use it too)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str], n: int = 2, joiner: str = ' or ') -> str:
    """``' (did you mean a or b?)'`` for the known names closest to ``name``, or ``''`` if none is close."""
    close = difflib.get_close_matches(name, list(known), n=n)
    return f' (did you mean {joiner.join(close)}?)' if close else ''
