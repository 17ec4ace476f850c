"""JSON that every parser reads: a float that is not finite is written as ``null``.

Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON: jq before 1.7, JavaScript's
``JSON.parse``, Go's ``encoding/json`` and Rust's ``serde_json`` refuse the whole line. A round that
trains nothing has no loss, and a daemon without an evaluation has no accuracy: those are ``null`` in
``rounds.jsonl``, ``metrics.jsonl`` and the ``summary.json`` files. Readers here take ``null`` and an
earlier version's ``NaN`` alike (``number``).
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth of dicts, lists and tuples, made None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``finite(value)``; anything non-finite left over is an error, never ``NaN``."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def number(value: float | None) -> float:
    """A float read back: ``null`` (no value) as NaN, for arithmetic that skips or shows it as such."""
    return math.nan if value is None else float(value)
