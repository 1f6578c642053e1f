"""JSON has no NaN or Infinity: every report goes through `json_safe` before it is emitted."""

from __future__ import annotations

import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """Map non-finite floats to None, recursively through dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
