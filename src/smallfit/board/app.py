"""The board's web app: server-rendered pages (Jinja2, autoescaped, no script) and a JSON API
described by OpenAPI (``/openapi.json``, ``/docs``). Reads are public; an upload needs a token.
Every error is JSON: ``{"error": "one line"}`` with its status code."""


import json
import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from smallfit.board import ingest, rank
from smallfit.board.db import BoardDB
from smallfit.errors import SmallfitError
from smallfit.report.svg import PALETTE, scatter
from smallfit.share.bundle import MAX_BUNDLE_BYTES, BundleError

TEMPLATES = Path(__file__).parent / "templates"
UPLOAD_TYPES = ("application/zip", "application/octet-stream")
HASH = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="A task hash (64 hex digits).")]
CLASS = Annotated[str, PathParam(pattern=r"^[0-9a-f]{12}$", description="A hardware class id (12 hex digits).")]
SUB = Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$", description="A submission id (16 hex digits).")]
_CHECK = (r"\s*([A-Za-z0-9_.\-]+:)?[A-Za-z_][A-Za-z0-9_]*\s*(>=|<=|>|<)\s*[-+]?[0-9.]+([eE][-+]?[0-9]+)?"
          r"\s*[A-Za-z]*\s*")
BUDGET = Annotated[str | None, Query(max_length=300, pattern=f"^(|{_CHECK}(,{_CHECK})*)$",
                                     description="A budget filter, e.g. 'acc >= 0.8, p95 <= 300 ms, "
                                     "RAM <= 2 GB' (metric names or p95, ttft, RAM, size, decode, quality).")]


HINTS = {"budget": "write checks as METRIC OP VALUE[UNIT], comma-separated, e.g. 'acc >= 0.8, p95 <= 300 ms'",
         "task_hash": "a task hash is 64 hex digits", "class_id": "a hardware class id is 12 hex digits",
         "sid": "a submission id is 16 hex digits"}


@dataclass(frozen=True)
class Limits:
    """What one upload may be, and how often a token may upload."""

    max_upload_bytes: int = MAX_BUNDLE_BYTES
    uploads_per_minute: int = 10


class ErrorOut(BaseModel):
    """Every error the app answers: one line saying what was wrong and what to do."""

    error: str


class BoardSummary(BaseModel):
    """A board: one task hash on one hardware class."""

    task_hash: str
    class_id: str
    hardware_class: str
    task: str
    entries: int
    url: str


class RowOut(BaseModel):
    """One submitted candidate on a board (figures in SI units: seconds, bytes)."""

    submission_id: str
    candidate: str
    label: str
    created_at: float
    key_id: str
    config_sha256: str
    model_sha256: str | None
    quality: float | None
    quality_low: float | None
    quality_high: float | None
    p95_s: float | None
    p95_low_s: float | None
    p95_high_s: float | None = Field(description="None: open above (too few requests bound the p95).")
    peak_rss_bytes: float | None
    tiers: list[str]
    place: str
    budget: str | None
    budget_notes: list[str]


class BoardOut(BaseModel):
    """A board's rows, best quality first, and the budget filter applied."""

    task_hash: str
    class_id: str
    hardware_class: str
    task: str
    quality_metric: str | None
    checks: list[str]
    hidden: int
    rows: list[RowOut]


class SubmissionOut(BaseModel):
    """A stored submission: who signed it, its configuration, its entries and the signed manifest."""

    id: str
    created_at: float
    run_id: str
    key_id: str
    public_key: str
    config_sha256: str
    smallfit_version: str | None
    recomputed: int
    tiers: list[str]
    bundle_url: str
    manifest: dict[str, Any]


class Accepted(BaseModel):
    """An accepted upload."""

    id: str
    url: str
    entries: int
    recomputed: int


class Reproduced(BaseModel):
    """An accepted reproduction report."""

    stored: int
    agreed: int
    url: str


class RateLimiter:
    """At most ``per_minute`` uploads per token in any 60 seconds (in memory, per process)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.seen: dict[int, deque[float]] = {}
        self.lock = threading.Lock()

    def allow(self, token_id: int) -> float | None:
        """None when allowed (and counted), else seconds until the next upload is."""
        now = time.monotonic()
        with self.lock:
            times = self.seen.setdefault(token_id, deque())
            while times and now - times[0] >= 60:
                times.popleft()
            if len(times) >= self.per_minute:
                return 60 - (now - times[0])
            times.append(now)
        return None


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut, "description": why} for code, why in (
    (400, "Unreadable input (not a bundle, a bad filter)"), (404, "Not found"), (422, "Refused: does not check out"))}
# The pages answer errors in JSON too: documented as such (not as the page's text/html).
PAGE_ERRORS: dict[int | str, dict[str, Any]] = {code: {"description": e["description"], "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}} for code, e in ERRORS.items()}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, **{code: {"model": ErrorOut, "description": why}
                                                               for code, why in (
    (401, "No token, or one the board does not know"), (409, "Already on the board"), (411, "No Content-Length"),
    (413, "Too large"), (415, "Not a zip bundle"), (429, "Too many uploads from this token: retry after"))}}


def _rows_json(b: rank.Board) -> BoardOut:
    rows = [RowOut(**{k: v for k, v in asdict(r).items() if k in RowOut.model_fields}) for r in b.rows]
    return BoardOut(task_hash=b.task_hash, class_id=b.class_id, hardware_class=b.hardware_class, task=b.task,
                    quality_metric=b.quality_metric, checks=b.checks, hidden=b.hidden, rows=rows)


def _plot(b: rank.Board) -> str:
    frontier = rank.frontier_of(b)
    if frontier is None:
        return ""
    rows = [r for r in b.rows if r.quality is not None and r.p95_s is not None]
    top = max((r.peak_rss_bytes or 0.0 for r in rows), default=0.0)
    radii = {r.label: 4 + 8 * math.sqrt(r.peak_rss_bytes / top) for r in rows if r.peak_rss_bytes and top}
    colours = {r.label: PALETTE[i % len(PALETTE)] for i, r in enumerate(rows)}
    return scatter(frontier, colours, radii)


def create_app(db_path: Path, limits: Limits | None = None) -> FastAPI:
    """The board app over the database at ``db_path`` (created and migrated on first use)."""
    limits = limits or Limits()
    BoardDB.open(db_path).close()  # a bad path fails at start, not on the first request
    limiter = RateLimiter(limits.uploads_per_minute)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True))
    env.filters["si"] = _si
    app = FastAPI(title="smallfit board", version="1",
                  description="Signed smallfit result bundles, checked on upload and ranked by task hash within a "
                              "hardware class. Reads are public; uploads need a token (Authorization: Bearer).")
    bearer = HTTPBearer(auto_error=False, description="An upload token from 'smallfit board add-token NAME'.")

    def db() -> Iterator[BoardDB]:
        conn = BoardDB.open(db_path)
        try:
            yield conn
        finally:
            conn.close()

    DB = Annotated[BoardDB, Depends(db)]

    def page(name: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ())]
        hint = HINTS.get(loc[-1] if loc else "") if first.get("type") == "string_pattern_mismatch" else None
        return JSONResponse({"error": f"{'.'.join(loc)}: {hint or first.get('msg', 'invalid')}"}, 422)

    @app.exception_handler(BundleError)
    async def _bundle(_: Request, exc: BundleError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, exc.status)

    @app.exception_handler(SmallfitError)
    async def _user(_: Request, exc: SmallfitError) -> JSONResponse:
        return JSONResponse({"error": str(exc).splitlines()[0]}, 400)

    @app.exception_handler(LookupError)
    async def _missing(_: Request, exc: LookupError) -> JSONResponse:
        return JSONResponse({"error": str(exc.args[0]) if exc.args else "not found"}, 404)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); nothing was stored"}, 500)

    @app.get("/", response_class=HTMLResponse, summary="Every board")
    def index(request: Request, conn: DB) -> HTMLResponse:
        return page("index.html", boards=rank.boards(conn), tasks=list(conn.known_tasks().values()),
                    base=str(request.base_url).rstrip("/"))

    @app.get("/board/{task_hash}/{class_id}", response_class=HTMLResponse, responses=PAGE_ERRORS,
             summary="A board's page: plot, frontier, trust tiers, budget filter")
    def board_page(task_hash: HASH, class_id: CLASS, conn: DB, budget: BUDGET = None) -> HTMLResponse:
        b = rank.board(conn, task_hash, class_id, budget or None)
        return page("board.html", b=b, plot=Markup(_plot(b)), budget=budget or "")

    @app.get("/submission/{sid}", response_class=HTMLResponse, responses=PAGE_ERRORS, summary="A submission's page")
    def submission_page(request: Request, sid: SUB, conn: DB) -> HTMLResponse:
        sub = _submission(conn, sid)
        base = str(request.base_url).rstrip("/")
        return page("submission.html", s=sub, m=sub.manifest, base=base,
                    entries=conn.conn.execute("SELECT candidate, task, task_hash, class_id, hardware_class FROM entries"
                                              " WHERE submission_id = ? ORDER BY candidate, task", (sid,)).fetchall(),
                    repros=conn.conn.execute("SELECT * FROM reproductions WHERE submission_id = ? ORDER BY id",
                                             (sid,)).fetchall())

    @app.get("/submission/{sid}/bundle", responses={**PAGE_ERRORS, 200: {"content": {"application/zip": {
             "schema": {"type": "string", "format": "binary"}}}}},
             response_class=Response, summary="The submission's bundle file, as uploaded")
    def bundle_file(sid: SUB, conn: DB) -> Response:
        row = conn.conn.execute("SELECT bundle FROM submissions WHERE id = ?", (sid,)).fetchone()
        if row is None:
            raise LookupError(f"no submission {sid}; the boards are at /")
        return Response(bytes(row["bundle"]), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{sid}.zip"'})

    @app.get("/api/boards", summary="Every board")
    def api_boards(conn: DB) -> list[BoardSummary]:
        return [BoardSummary(**b) for b in rank.boards(conn)]

    @app.get("/api/boards/{task_hash}/{class_id}", responses=ERRORS, summary="A board's rows")
    def api_board(task_hash: HASH, class_id: CLASS, conn: DB, budget: BUDGET = None) -> BoardOut:
        return _rows_json(rank.board(conn, task_hash, class_id, budget or None))

    @app.get("/api/submissions/{sid}", responses=ERRORS, summary="A submission")
    def api_submission(sid: SUB, conn: DB) -> SubmissionOut:
        return _submission(conn, sid)

    @app.post("/api/submissions", status_code=201, responses=UPLOAD_ERRORS, summary="Upload a signed bundle",
              openapi_extra={"requestBody": {"required": True, "content": {
                  kind: {"schema": {"type": "string", "format": "binary"}} for kind in UPLOAD_TYPES}}})
    async def upload(request: Request, conn: DB,
                     auth: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None) -> Accepted:
        token_id = _token(conn, auth)
        wait = limiter.allow(token_id)
        if wait is not None:
            raise HTTPException(429, f"this token may upload {limits.uploads_per_minute} bundles a minute; retry in "
                                f"{math.ceil(wait)} s", headers={"Retry-After": str(math.ceil(wait))})
        data = await _body(request, limits.max_upload_bytes)
        b, recomputed = ingest.check(conn, data)
        sid = ingest.store(conn, b, recomputed, token_id, data)
        n = int(conn.conn.execute("SELECT COUNT(*) FROM entries WHERE submission_id = ?", (sid,)).fetchone()[0])
        return Accepted(id=sid, url=f"/submission/{sid}", entries=n, recomputed=recomputed)

    @app.post("/api/submissions/{sid}/reproductions", status_code=201, responses=UPLOAD_ERRORS,
              summary="Upload a signed reproduction report (smallfit reproduce --to)",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"type": "object"}}}}})
    async def reproduction(request: Request, sid: SUB, conn: DB,
                           auth: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None) -> Reproduced:
        token_id = _token(conn, auth)
        wait = limiter.allow(token_id)
        if wait is not None:
            raise HTTPException(429, f"this token may upload {limits.uploads_per_minute} times a minute; retry in "
                                f"{math.ceil(wait)} s", headers={"Retry-After": str(math.ceil(wait))})
        data = await _body(request, ingest.MAX_REPRODUCTION_BYTES, ("application/json",))
        stored, agreed = ingest.add_reproduction(conn, sid, data, token_id)
        return Reproduced(stored=stored, agreed=agreed, url=f"/submission/{sid}")

    return app


def _token(conn: BoardDB, auth: HTTPAuthorizationCredentials | None) -> int:
    if auth is None or not auth.credentials:
        raise HTTPException(401, "an upload needs a token: send 'Authorization: Bearer TOKEN' (the board's owner "
                            "makes one with 'smallfit board add-token NAME')", headers={"WWW-Authenticate": "Bearer"})
    row = conn.token(auth.credentials)
    if row is None:
        raise HTTPException(401, "this board does not know that token; ask its owner for one",
                            headers={"WWW-Authenticate": "Bearer"})
    return int(row["id"])


async def _body(request: Request, limit: int, kinds: tuple[str, ...] = UPLOAD_TYPES) -> bytes:
    """The request body, read no further than ``limit`` bytes whatever Content-Length says."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in kinds:
        raise HTTPException(415, f"send the file as the body with Content-Type: {kinds[0]} (got {kind or 'none'!r})")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the upload is {declared} bytes, over this board's limit of {limit} bytes for a "
                            "bundle")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the upload is over {limit} bytes, this board's limit for a bundle")
        chunks.append(chunk)
    if not size:
        raise HTTPException(400, "the upload is empty: send the bundle file as the request body")
    return b"".join(chunks)


def _submission(conn: BoardDB, sid: str) -> SubmissionOut:
    row = conn.conn.execute("SELECT * FROM submissions WHERE id = ?", (sid,)).fetchone()
    if row is None:
        raise LookupError(f"no submission {sid}; the boards are at /")
    tiers = [rank.SIGNED]
    if row["config_sha256"] in conn.allowed_configs():
        tiers.append(rank.ALLOWLISTED)
    if conn.conn.execute("SELECT 1 FROM reproductions WHERE submission_id = ? AND agreed = 1", (sid,)).fetchone():
        tiers.append(rank.REPRODUCED)
    return SubmissionOut(id=row["id"], created_at=row["created_at"], run_id=row["run_id"], key_id=row["key_id"],
                         public_key=row["public_key"], config_sha256=row["config_sha256"],
                         smallfit_version=row["smallfit_version"], recomputed=row["recomputed"], tiers=tiers,
                         bundle_url=f"/submission/{sid}/bundle", manifest=json.loads(row["manifest_json"]))


def _si(value: Any, unit: str = "") -> str:
    """A figure for a page: seconds as ms, bytes as MB/GB, ratios with three decimals."""
    if value is None:
        return "—"
    v = float(value)
    if unit == "s":
        return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "bytes":
        return f"{v / 1e9:.2f} GB" if v >= 1e9 else f"{v / 1e6:.1f} MB"
    return f"{v:.4g}" if abs(v) >= 1000 or v == int(v) else f"{v:.3f}"
