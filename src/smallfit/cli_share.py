"""The commands that share results: keys, bundle, verify-bundle, upload, and the board's serve and
board commands (registered on the app by :func:`smallfit.cli.main`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from smallfit.cli import DbOption, app, db_path, err, out

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
