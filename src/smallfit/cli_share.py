"""The commands that share results: keys, bundle, verify-bundle, upload, and the board's serve and
board commands (registered on the app by :func:`smallfit.cli.main`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from smallfit.cli import DbOption, app, db_path, err, out
from smallfit.errors import SmallfitError

KeyOption = Annotated[Path | None, typer.Option(
    "--key", help="Signing key file. Default: $SMALLFIT_KEY, else ~/.config/smallfit/signing-key.pem.",
    show_default=False)]


def _key_path(key: Path | None) -> Path:
    from smallfit.share.keys import default_key_path

    return key or default_key_path()


@app.command()
def keys(
    generate: Annotated[bool, typer.Option("--generate", help="Create the key (never replaces one).")] = False,
    key: KeyOption = None,
) -> None:
    """Show (or --generate) the local Ed25519 key that signs result bundles."""
    from smallfit.share import keys as k

    path = _key_path(key)
    loaded = k.generate(path) if generate else k.load(path)
    if generate:
        err.print(f"new signing key written to {path} (mode 0600)")
    out.print(f"key file:   {path}\nkey id:     {loaded.key_id}\npublic key: {loaded.public_hex}", highlight=False)


@app.command()
def bundle(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle file to write (a zip).")],
    key: KeyOption = None,
    db: DbOption = None,
) -> None:
    """Write a signed result bundle of a finished run: configuration, hashes, hardware, every example
    and request, and the aggregates, signed by your key (see 'smallfit keys')."""
    from smallfit.share import bundle as b
    from smallfit.share.keys import load
    from smallfit.store import Store

    signer = load(_key_path(key))
    manifest = b.write(Store.open(db_path(db), create=False), run_id, signer, output)
    n = sum(v["count"] for v in manifest["rows"].values())
    err.print(f"bundle of run {manifest['run_id']} written to {output}: {len(manifest['candidates'])} candidates, "
              f"{n} rows, config {manifest['config_sha256'][:16]}, signed by key {signer.key_id}")


@app.command("verify-bundle")
def verify_bundle(file: Annotated[Path, typer.Argument(help="The bundle file.")]) -> None:
    """Check a bundle offline: signature, hashes, and every aggregate recomputed from its rows.
    Exit 0 when it checks out, 1 when a check fails, 2 when it cannot be read."""
    from smallfit.share.bundle import read
    from smallfit.share.verify import verify

    b = read(file)
    v = verify(b)
    for line in v.checked:
        out.print(f"[green]ok[/]    {escape(line)}", highlight=False)
    for line in v.problems:
        out.print(f"[red]FAIL[/]  {escape(line)}", highlight=False)
    m = b.manifest
    if v.ok:
        out.print(f"bundle of run {escape(str(m.get('run_id')))} checks out: {v.recomputed} figures recomputed, "
                  f"{v.stated_only} stated measurements (memory, load time, energy) taken as signed", highlight=False)
    else:
        raise typer.Exit(1)


BoardDbOption = Annotated[Path | None, typer.Option(
    "--board-db", help="The board's database (SQLite, its own schema). Default: $SMALLFIT_BOARD_DB, else "
    "~/.local/share/smallfit/board.db.", show_default=False)]


def _board(path: Path | None) -> object:
    from smallfit.board.db import BoardDB, default_board_path

    return BoardDB.open(path or default_board_path())


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; another than 127.0.0.1 exposes the board.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port.")] = 8765,
    uploads_per_minute: Annotated[int, typer.Option(min=1, help="Uploads a token may make per minute.")] = 10,
    board_db: BoardDbOption = None,
) -> None:
    """Run the leaderboard web app: boards per task and hardware class, submission pages, a JSON API
    (/docs, /openapi.json), uploads of signed bundles with a token."""
    try:
        import uvicorn

        from smallfit.board.app import Limits, create_app
        from smallfit.board.db import default_board_path
    except ImportError:
        from smallfit.errors import MissingExtraError

        raise MissingExtraError("fastapi/uvicorn/jinja2", "board") from None
    path = board_db or default_board_path()
    web = create_app(path, Limits(uploads_per_minute=uploads_per_minute))
    err.print(f"board at http://{host}:{port}/ · database {path}")
    uvicorn.run(web, host=host, port=port, log_level="warning")


board_app = typer.Typer(help="Manage a board: upload tokens, the tasks it ranks, its configuration allowlist.",
                        no_args_is_help=True)
app.add_typer(board_app, name="board")


@board_app.command("add-token")
def add_token(name: Annotated[str, typer.Argument(help="Who the token is for.")],
              board_db: BoardDbOption = None) -> None:
    """Make an upload token (printed once; the board stores only its SHA-256)."""
    from smallfit.board.db import BoardDB

    db = _board(board_db)
    assert isinstance(db, BoardDB)
    token = db.add_token(name)
    err.print(f"upload token for {escape(name)} (shown once, keep it secret):")
    out.print(token, highlight=False)


def _checked(file: Path) -> object:
    from smallfit.share.bundle import read
    from smallfit.share.verify import verify

    b = read(file)
    v = verify(b)
    if not v.ok:
        raise SmallfitError(f"{file} does not check out: {v.problems[0]}; see 'smallfit verify-bundle {file}'")
    return b


@board_app.command("allow-tasks")
def allow_tasks(file: Annotated[Path, typer.Argument(help="A bundle whose tasks the board should rank.")],
                board_db: BoardDbOption = None) -> None:
    """Make the task hashes of a (verified) bundle known to the board: uploads are ranked only on
    tasks the board knows."""
    from smallfit.board.db import BoardDB
    from smallfit.share.bundle import Bundle

    b = _checked(file)
    db = _board(board_db)
    assert isinstance(b, Bundle) and isinstance(db, BoardDB)
    seen = set()
    for r in b.manifest.get("results", []):
        h = r.get("task_hash")
        if r.get("status") != "done" or not h or h in seen or str(r.get("task")).startswith("probe:"):
            continue
        seen.add(h)
        new = db.add_task(h, str(r["task"]), str((r.get("info") or {}).get("kind", "")), int(r.get("n_samples") or 0))
        out.print(f"{'added' if new else 'known'}  {escape(str(r['task']))}  {h}", highlight=False)


@board_app.command("allow-config")
def allow_config(file: Annotated[Path, typer.Argument(help="A bundle whose configuration to allowlist.")],
                 note: Annotated[str, typer.Option(help="Why it is allowed.")] = "",
                 board_db: BoardDbOption = None) -> None:
    """Put a bundle's configuration (its SHA-256) on the board's allowlist: every submission with
    that configuration shows the 'allowlisted config' tier."""
    from smallfit.board.db import BoardDB
    from smallfit.share.bundle import Bundle

    b = _checked(file)
    db = _board(board_db)
    assert isinstance(b, Bundle) and isinstance(db, BoardDB)
    sha = str(b.manifest["config_sha256"])
    new = db.allow_config(sha, note or f"from {file.name}")
    out.print(f"{'allowed' if new else 'already allowed'}  config {sha}", highlight=False)


@app.command()
def upload(
    file: Annotated[Path, typer.Argument(help="The bundle file.")],
    to: Annotated[str, typer.Option("--to", help="The board's URL, e.g. http://127.0.0.1:8765.")],
    token: Annotated[str | None, typer.Option(help="Upload token. Default: $SMALLFIT_BOARD_TOKEN.",
                                              show_default=False)] = None,
) -> None:
    """Upload a signed bundle to a board; prints the submission's permalink."""
    from smallfit.board.client import post_bundle

    sid, url = post_bundle(file, to, token)
    out.print(f"accepted as submission {sid}: {url}", highlight=False)


@app.command()
def reproduce(
    file: Annotated[Path, typer.Argument(help="The bundle to reproduce (it must check out).")],
    examples: Annotated[int, typer.Option("--examples", "-k", min=1,
                                          help="Random examples per candidate x task.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the random pick.")] = 0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the signed report here.",
                                                show_default=False)] = None,
    to: Annotated[str | None, typer.Option("--to", help="Upload the report to this board (with --token).",
                                           show_default=False)] = None,
    token: Annotated[str | None, typer.Option(help="Upload token. Default: $SMALLFIT_BOARD_TOKEN.",
                                              show_default=False)] = None,
    key: KeyOption = None,
) -> None:
    """Re-run K random examples of each candidate x task of a bundle on this machine (same hardware
    class, same model by SHA-256, same task by its examples' hashes), compare scores and time per
    output token, and sign the comparison; --to uploads it to a board (the 'reproduced' tier)."""
    from smallfit.share.bundle import Bundle
    from smallfit.share.keys import load
    from smallfit.share.reproduce import dumps
    from smallfit.share.reproduce import reproduce as run_reproduction

    signer = load(_key_path(key))
    b = _checked(file)
    assert isinstance(b, Bundle)
    signed = run_reproduction(b, examples, seed, signer)
    for e in signed["report"]["entries"]:
        state = "[green]agrees[/]" if e["agreed"] else "[red]differs[/]"
        out.print(f"{state}  {escape(e['candidate'])} · {escape(e['task'])}: {e['matched']}/{e['examples']} examples "
                  f"match" + "".join(f"\n        {escape(d)}" for d in e["differences"][:5]), highlight=False)
    if output is not None:
        try:
            output.write_text(dumps(signed), encoding="utf-8")
        except OSError as exc:
            raise SmallfitError(f"cannot write {output}: {exc.strerror}; pass another path with -o") from None
        err.print(f"signed reproduction report written to {output}")
    if to is not None:
        from smallfit.board.client import post

        sid = signed["report"]["submission_id"]
        answer = post(to, f"/api/submissions/{sid}/reproductions", dumps(signed).encode("utf-8"), token,
                      "application/json")
        out.print(f"uploaded: {answer.get('agreed')} of {answer.get('stored')} candidate x task(s) reproduced "
                  f"({to.rstrip('/')}/submission/{sid})", highlight=False)
