"""Locate data files shipped inside installed packages, without importing those packages."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError


def package_dir(package: str, install: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SmallfitError(f"this task needs data from the package {package}; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, relative: str, install: str) -> Path:
    """Path of ``relative`` inside ``package``; a clear error naming the install if missing."""
    path = package_dir(package, install) / relative
    if not path.is_file():
        raise SmallfitError(f"data file missing: {path}; reinstall it with: {install}")
    return path


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-empty line, with a one-line error on bad input."""
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SmallfitError(f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or remove the line") \
                        from None
                if not isinstance(obj, dict):
                    raise SmallfitError(f"{path}:{lineno}: expected a JSON object per line")
                yield lineno, obj
    except UnicodeDecodeError as exc:
        raise SmallfitError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from None
