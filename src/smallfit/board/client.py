"""Talk to a board from the command line (standard library only): upload a bundle."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from smallfit.errors import SmallfitError


def post(url: str, path: str, data: bytes, token: str | None, kind: str = "application/zip") -> dict[str, object]:
    """POST ``data`` (a zip) to ``url + path`` with the token; the JSON answer, or the board's
    one-line error as a SmallfitError."""
    token = token or os.environ.get("SMALLFIT_BOARD_TOKEN")
    if not token:
        raise SmallfitError("no upload token: pass --token or set SMALLFIT_BOARD_TOKEN (the board's owner makes "
                            "one with 'smallfit board add-token NAME')")
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method="POST", headers={
        "Content-Type": kind, "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            body: dict[str, object] = json.loads(answer.read())
            return body
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        raise SmallfitError(f"the board refused it ({exc.code}): {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SmallfitError(f"cannot reach the board at {url}: {getattr(exc, 'reason', exc)}; check --to") from None


def post_bundle(file: Path, url: str, token: str | None) -> tuple[str, str]:
    """Upload a bundle file; its submission id and page URL."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise SmallfitError(f"cannot read the bundle {file}: {exc.strerror}") from None
    answer = post(url, "/api/submissions", data, token)
    return str(answer["id"]), url.rstrip("/") + str(answer["url"])
