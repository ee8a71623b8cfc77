"""Canonical JSON: the exact bytes that are hashed and signed.

Keys sorted, no insignificant whitespace, UTF-8 (not ASCII escapes), floats as Python's shortest
round-trip repr, NaN and infinities refused (JSON has none; a figure that was not measured is
null). The same value always gives the same bytes, so a hash or signature over them is stable.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (what canonical JSON can carry)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj`` (a ValueError on NaN or infinity)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    """Hex SHA-256 of bytes, or of a string's UTF-8 bytes."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def digest(obj: Any) -> str:
    """Hex SHA-256 of ``obj``'s canonical JSON."""
    return sha256_hex(canonical(obj))
