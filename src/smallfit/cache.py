"""One cache for everything smallfit builds: a content key, a locked build, an atomic commit.

An entry is a folder ``cache_dir()/KIND/NAME-KEY16``. Its key (:func:`key`) is a SHA-256 of the
bytes of its inputs (files or folders), the builder's version string and the build's
parameters: moving, renaming or touching an input keeps the key, changing one byte changes it.
File hashes are remembered in ``cache_dir()/hashes.json`` under the file's resolved path, size,
mtime, inode and ctime, so a large unchanged file is read once.

:func:`build` returns the finished entry or makes it: under an exclusive ``fcntl.flock`` on
``.NAME-KEY16.lock`` beside it (a second process building the same entry waits, then finds it
finished), the builder fills a temporary folder ``.NAME-KEY16.PID.tmp`` beside it, which is
renamed into place when the builder returns. The rename is the commit: an entry folder exists
only complete. A builder that raises leaves nothing; a process killed mid-build leaves only its
temporary folder, which the next build in that kind folder removes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smallfit.errors import SmallfitError

_MEMO = "hashes.json"
_BLOCK = 1 << 20
_SKIPPED = re.compile(r"^(\.|__pycache__$)")  # hidden files and folders (.git, .cache) and bytecode


def cache_dir() -> Path:
    """Where smallfit keeps what it builds: ``$SMALLFIT_CACHE``, else ``$XDG_CACHE_HOME/smallfit``
    (default ``~/.cache/smallfit``)."""
    env = os.environ.get("SMALLFIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "smallfit"


@contextmanager
def _locked(lock: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock`` (created if missing); yields False when ``wait`` is
    False and another holder has it. Closing the descriptor releases it, also when killed."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# -- content hashes -------------------------------------------------------------------------------

def _read_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    # ctime too: a write that restores the mtime afterwards (cp -p, rsync -t) still changes it
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _load_memo(memo_file: Path) -> dict[str, list[Any]]:
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _remember(real: Path, record: list[Any]) -> None:
    """Add one file's hash to the memo (merged under a lock; entries of deleted files dropped)."""
    memo_file = cache_dir() / _MEMO
    try:
        with _locked(memo_file.with_name(f".{_MEMO}.lock")):
            memo = {p: r for p, r in _load_memo(memo_file).items() if os.path.exists(p)}
            memo[str(real)] = record
            tmp = memo_file.with_name(f".{_MEMO}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(memo, indent=0), encoding="utf-8")
            os.replace(tmp, memo_file)
    except OSError:
        pass  # an unwritable memo only means hashing the file again next time


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (links followed), read once per (path, size, mtime, inode, ctime)."""
    real = path.resolve()
    before = real.stat()
    record = _load_memo(cache_dir() / _MEMO).get(str(real))
    if record and record[:-1] == _stamp(before):
        return str(record[-1])
    sha = _read_sha256(real)
    if _stamp(real.stat()) == _stamp(before):  # not remembered if the file changed while read
        _remember(real, [*_stamp(before), sha])
    return sha


def _folder_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _SKIPPED.match(d))
        files += [Path(root, n) for n in names if not _SKIPPED.match(n) and Path(root, n).is_file()]
    return sorted(files, key=lambda f: f.relative_to(folder).as_posix())


def content_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (their paths inside it and their bytes;
    hidden files and ``__pycache__`` left out). The path of the file or folder itself is not part
    of it."""
    if path.is_dir():
        lines = "".join(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n" for f in _folder_files(path))
        return hashlib.sha256(lines.encode()).hexdigest()
    return file_sha256(path)


def key(*, inputs: Sequence[Path] = (), version: str, params: Mapping[str, Any] | None = None) -> str:
    """The cache key of a build: the content of ``inputs`` (in order), the builder's ``version``
    (change it when the builder's output changes) and its JSON-serialisable ``params``."""
    try:
        hashes = [content_sha256(p) for p in inputs]
    except OSError as exc:
        raise SmallfitError(f"cannot read {exc.filename or 'an input'} to key the cache: {exc.strerror}") from None
    doc = {"version": version, "params": dict(params or {}), "inputs": hashes}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# -- entries ---------------------------------------------------------------------------------------

def entry(kind: str, key: str, name: str) -> Path:
    """Where the entry of this kind, key and name lives, finished or not."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", name).lstrip(".") or "entry"
    return cache_dir() / kind / f"{safe}-{key[:16]}"


def find(kind: str, key: str, name: str) -> Path | None:
    """The finished entry, or None when it has not been built."""
    path = entry(kind, key, name)
    return path if path.is_dir() else None


def build(kind: str, key: str, name: str, builder: Callable[[Path], object]) -> Path:
    """The finished entry, made first if missing by ``builder(temporary folder)`` (see the module
    docstring). The builder's exceptions propagate, with its temporary folder removed."""
    final = entry(kind, key, name)
    if final.is_dir():
        return final
    with _locked(final.with_name(f".{final.name}.lock")):
        if final.is_dir():  # built by another process while this one waited
            return final
        _clean_stale(final)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        tmp.mkdir()
        try:
            builder(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _clean_stale(final: Path) -> None:
    """Remove temporary folders nobody is building into: this entry's (its lock is held here)
    and those of other entries in the same kind folder whose lock is free."""
    for tmp in final.parent.glob(".*.tmp"):
        owner = tmp.name[1:].rsplit(".", 2)[0]
        if owner == final.name:
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        with _locked(final.with_name(f".{owner}.lock"), wait=False) as free:
            if free:
                shutil.rmtree(tmp, ignore_errors=True)
