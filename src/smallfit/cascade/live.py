"""A cascade as a candidate: ``cascade:SMALL,LARGE@T`` (``cascade:A,B,C@T1,T2`` for a chain),
each member any model reference, run for real by the cascade backend, one request at a time.

Resolving it resolves each member (its file, content hash and size) and writes a small JSON file,
``<cache>/cascades/<hash>.cascade``, that the backend loads: the members' backends, files and
options, the thresholds and the signal. The cascade's content hash is that file's; its size the
members' sizes together.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError

PREFIX = "cascade:"
SUFFIX = ".cascade"
_REF = re.compile(r"^cascade:(?P<members>.+)@(?P<thresholds>[-+0-9.eE]+(?:,[-+0-9.eE]+)*)$")


@dataclass(frozen=True)
class CascadeRef:
    """The members (model references, smallest first) and the per-stage thresholds."""

    members: tuple[str, ...]
    thresholds: tuple[float, ...]


def parse(text: str) -> CascadeRef:
    """``cascade:A,B@0.72`` -> members and thresholds; a one-line error naming the fix."""
    m = _REF.match(text.strip())
    if not m:
        raise SmallfitError(f"malformed cascade reference {text!r}: write cascade:SMALL,LARGE@THRESHOLD, e.g. "
                            "cascade:smollm2-135m,gemma3-270m@0.72 (a chain: cascade:A,B,C@T1,T2)")
    members = tuple(x.strip() for x in m["members"].split(",") if x.strip())
    try:
        thresholds = tuple(float(t) for t in m["thresholds"].split(","))
    except ValueError:
        raise SmallfitError(f"{text!r}: the thresholds after @ must be numbers") from None
    if len(members) < 2:
        raise SmallfitError(f"{text!r}: a cascade needs at least two models, smallest first")
    if len(thresholds) != len(members) - 1:
        raise SmallfitError(f"{text!r}: {len(members)} models need {len(members) - 1} threshold(s), one per stage "
                            f"that defers (got {len(thresholds)})")
    if any(not math.isfinite(t) for t in thresholds):
        raise SmallfitError(f"{text!r}: thresholds must be finite numbers")
    if any(x.startswith(PREFIX) for x in members):
        raise SmallfitError(f"{text!r}: a cascade's member cannot be a cascade; list the models in one chain")
    return CascadeRef(members, thresholds)


def check_members(text: str) -> None:
    """Before any model loads: every member is a model reference that parses, and its files or
    packages are there."""
    from smallfit.models import parse_model_ref
    from smallfit.plan import PlannedCandidate, check_candidate

    ref = parse(PREFIX + text if not text.startswith(PREFIX) else text)
    for member in ref.members:
        try:
            m = parse_model_ref(member)
            check_candidate(PlannedCandidate(m.name, member, m.backend))
        except SmallfitError as exc:
            raise SmallfitError(f"cascade member {member!r}: {exc}") from None


def resolve(text: str, options: dict[str, Any]) -> Path:
    """Resolve every member and write the file the cascade backend loads; its path."""
    from smallfit.cache import cache_dir
    from smallfit.models import parse_model_ref, resolve_model, weights_sha256, weights_size

    ref = parse(PREFIX + text if not text.startswith(PREFIX) else text)
    stages = []
    for member in ref.members:
        m = parse_model_ref(member)
        path = resolve_model(m)
        stages.append({"name": m.name, "ref": member, "backend": m.backend, "location": str(path),
                       "sha256": weights_sha256(path), "size_bytes": weights_size(path),
                       "options": dict(options.get("members", {}).get(m.name, {}))})
    body = {"stages": stages, "thresholds": list(ref.thresholds), "signal": options.get("signal")}
    text_out = json.dumps(body, sort_keys=True, indent=1)
    digest = hashlib.sha256(text_out.encode()).hexdigest()[:16]
    out = cache_dir() / "cascades" / f"{digest}{SUFFIX}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text_out, encoding="utf-8")
        tmp.replace(out)
    return out


def read(path: Path) -> dict[str, Any]:
    """A resolved cascade file."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SmallfitError(f"{path} is not a resolved cascade: {exc}") from None
    return data


def size_bytes(path: Path) -> int:
    """The members' weights together."""
    return sum(int(s["size_bytes"]) for s in read(path)["stages"])
