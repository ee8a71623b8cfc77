"""The cache layer with real files and real processes: content keys, one build per entry across
processes, nothing that looks finished after a failure or a kill, one child-process protocol."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smallfit import cache
from smallfit.childjob import child_builder, run_child
from smallfit.errors import SmallfitError

# A process that builds entry "entry" of kind "demo" under KEY: its builder logs its pid, writes a
# partial file, waits for GATE to exist, then finishes. It prints the entry's path.
BUILD = r"""
import os, sys, time
from pathlib import Path
from smallfit import cache

key, log, gate = sys.argv[1:4]

def builder(out):
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    (out / "part").write_text("half")
    while not Path(gate).exists():
        time.sleep(0.01)
    (out / "data").write_text(f"built by {os.getpid()}")

print(cache.build("demo", key, "entry", builder))
"""
KEY = "ab" * 32
HANG_GUARD_S = 120  # only bounds a wait that would otherwise hang when the code is broken


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SMALLFIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


Spawn = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start ``python -c CODE ARGS...``; whatever is still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        started.append(subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _builder_process(spawn: Spawn, tmp_path: Path) -> subprocess.Popen[str]:
    return spawn(BUILD, KEY, str(tmp_path / "log"), str(tmp_path / "gate"))


def _wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended while waiting for {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def _builders_logged(tmp_path: Path) -> list[str]:
    log = tmp_path / "log"
    return log.read_text().split() if log.is_file() else []


def _blocked_on_flock(pid: int, lock: Path) -> bool:
    """Whether ``pid`` waits for an flock on ``lock`` (a ``->`` line of /proc/locks)."""
    ino = str(lock.stat().st_ino) if lock.exists() else None
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and ino:
            waiter = fields[fields.index("->") + 1:]
            if waiter[0] == "FLOCK" and waiter[3] == str(pid) and waiter[4].rsplit(":", 1)[-1] == ino:
                return True
    return False


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks to see a waiting process")
def test_two_processes_building_one_entry_run_the_builder_once(spawn: Spawn, tmp_path: Path) -> None:
    first = _builder_process(spawn, tmp_path)
    _wait_for(lambda: len(_builders_logged(tmp_path)) == 1, "the first builder to start", first)
    second = _builder_process(spawn, tmp_path)
    lock = cache.entry("demo", KEY, "entry").with_name(f".entry-{KEY[:16]}.lock")
    _wait_for(lambda: _blocked_on_flock(second.pid, lock), "the second process to wait for the lock", second)
    (tmp_path / "gate").touch()
    outs = [p.communicate(timeout=HANG_GUARD_S) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(cache.entry("demo", KEY, "entry"))}
    assert _builders_logged(tmp_path) == [str(first.pid)]  # the second found the finished entry
    assert (Path(paths.pop()) / "data").read_text() == f"built by {first.pid}"


def _leftovers(kind: str) -> list[str]:
    folder = cache.cache_dir() / kind
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_a_builder_that_raises_leaves_no_entry_and_no_temporary_folder() -> None:
    def broken(out: Path) -> None:
        (out / "part").write_text("half")
        raise ValueError("conversion failed")

    with pytest.raises(ValueError, match="conversion failed"):
        cache.build("demo", KEY, "entry", broken)
    assert cache.find("demo", KEY, "entry") is None
    assert _leftovers("demo") == []


def test_a_killed_builder_leaves_nothing_finished_and_the_next_build_succeeds(spawn: Spawn,
                                                                              tmp_path: Path) -> None:
    proc = _builder_process(spawn, tmp_path)  # its gate never opens
    _wait_for(lambda: len(_builders_logged(tmp_path)) == 1, "the builder to start", proc)
    stale = cache.entry("demo", KEY, "entry").with_name(f".entry-{KEY[:16]}.{proc.pid}.tmp")
    _wait_for(lambda: (stale / "part").is_file(), "the partial file", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=HANG_GUARD_S)
    assert cache.find("demo", KEY, "entry") is None and stale.is_dir()
    path = cache.build("demo", KEY, "entry", lambda out: (out / "data").write_text("rebuilt"))
    assert path == cache.find("demo", KEY, "entry") and (path / "data").read_text() == "rebuilt"
    assert not (path / "part").exists()
    assert _leftovers("demo") == [path.name]  # the dead process's temporary folder is gone


def test_stale_temporary_folders_of_other_entries_go_unless_their_build_is_alive(spawn: Spawn,
                                                                                tmp_path: Path) -> None:
    proc = _builder_process(spawn, tmp_path)  # builds "entry" and waits: its lock is held, its folder alive
    _wait_for(lambda: len(_builders_logged(tmp_path)) == 1, "the builder to start", proc)
    live = cache.entry("demo", KEY, "entry").with_name(f".entry-{KEY[:16]}.{proc.pid}.tmp")
    dead = cache.entry("demo", KEY, "other").with_name(f".other-{KEY[:16]}.999999.tmp")
    dead.mkdir()
    try:
        cache.build("demo", "cd" * 32, "third", lambda out: (out / "data").write_text("x"))
        assert live.is_dir() and not dead.exists()
    finally:
        (tmp_path / "gate").touch()
        proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0 and not live.exists()


def test_key_follows_content_version_and_params_not_path_or_mtime(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    base = cache.key(inputs=[model], version="v1", params={"variant": "q8_0"})
    assert cache.key(inputs=[model], version="v2", params={"variant": "q8_0"}) != base
    assert cache.key(inputs=[model], version="v1", params={"variant": "q4_0"}) != base
    assert cache.key(inputs=[model], version="v1") != base
    moved = tmp_path / "elsewhere" / "renamed.gguf"
    moved.parent.mkdir()
    model.rename(moved)
    assert cache.key(inputs=[moved], version="v1", params={"variant": "q8_0"}) == base
    later = moved.stat().st_mtime_ns + 5 * 10**9
    os.utime(moved, ns=(later, later))
    assert cache.key(inputs=[moved], version="v1", params={"variant": "q8_0"}) == base
    with open(moved, "r+b") as fh:  # one byte changed, size and mtime kept
        fh.seek(100)
        fh.write(b"\xff")
    os.utime(moved, ns=(later, later))
    assert cache.key(inputs=[moved], version="v1", params={"variant": "q8_0"}) != base


def test_folder_key_follows_its_files_not_its_own_name(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    base = cache.key(inputs=[folder], version="v1")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: main")  # hidden: not content of the model
    assert cache.key(inputs=[folder], version="v1") == base
    folder = folder.rename(tmp_path / "copy-of-model")
    assert cache.key(inputs=[folder], version="v1") == base
    (folder / "config.json").rename(folder / "settings.json")
    assert cache.key(inputs=[folder], version="v1") != base  # a file's name inside is content


def test_file_hashes_are_remembered_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Path] = []
    real_read = cache._read_sha256

    def counting(path: Path) -> str:
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(cache, "_read_sha256", counting)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights" * 10000)
    first = cache.key(inputs=[model], version="v1")
    assert len(reads) == 1
    assert cache.key(inputs=[model], version="v1") == first and len(reads) == 1  # not read again
    later = model.stat().st_mtime_ns + 10**9
    os.utime(model, ns=(later, later))
    assert cache.key(inputs=[model], version="v1") == first and len(reads) == 2  # touched: read, same key
    assert cache.key(inputs=[model], version="v1") == first and len(reads) == 2
    (cache.cache_dir() / "hashes.json").unlink()  # the memo is that file
    assert cache.key(inputs=[model], version="v1") == first and len(reads) == 3


def test_cache_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMALLFIT_CACHE", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("SMALLFIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "smallfit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == Path.home() / ".cache" / "smallfit"


def test_a_build_in_a_child_process_fails_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    bad_type = child_builder("smallfit.sweep.quantize:build_job", {"source": "x.gguf", "variant": "q9_9",
                                                                   "file": "x.gguf",
                                                             "reference": "x.gguf"}, "building the q9_9 variant")
    with pytest.raises(SmallfitError, match=r"^unknown quantization type 'q9_9'") as raised:
        cache.build("demo", KEY, "entry", bad_type)
    missing = child_builder("smallfit.sweep.quantize:build_job", {"source": str(tmp_path / "none.gguf"),
                                                                  "variant": "f32",
                                                            "file": "x.gguf"}, "building the f32 variant")
    with pytest.raises(SmallfitError, match=r"^building the f32 variant failed: \w+") as other:
        cache.build("demo", KEY, "entry", missing)
    for exc in (raised, other):
        assert "\n" not in str(exc.value) and "Traceback" not in str(exc.value)
    assert cache.find("demo", KEY, "entry") is None and _leftovers("demo") == []


def test_the_child_protocol_answers_and_refuses_modules_outside_smallfit(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    answer = run_child("smallfit.sweep.quantize:is_gguf_variant", {"variant": "q8_0"}, "asking")
    assert answer == {}  # a non-dict answer (True) comes back as an empty answer
    with pytest.raises(SmallfitError, match="os is not a smallfit module"):
        run_child("os:remove", {"path": str(folder)}, "removing")
    assert folder.is_dir()


def test_a_build_run_twice_returns_the_finished_entry_without_building() -> None:
    calls: list[Path] = []

    def builder(out: Path) -> None:
        calls.append(out)
        (out / "data").write_text("x")

    first = cache.build("demo", KEY, "entry", builder)
    assert cache.build("demo", KEY, "entry", builder) == first and len(calls) == 1
    shutil.rmtree(first)
    assert cache.build("demo", KEY, "entry", builder) == first and len(calls) == 2


# A parent that runs one child job through the protocol: llama.cpp's converter entry point, given
# a script that records its pid in FOLDER and waits for a file that never comes.
PARENT = r"""
import sys
from smallfit.childjob import run_child

run_child("smallfit.sweep.convert:convert_job", {"script": sys.argv[1], "folder": sys.argv[2], "outfile": "-",
                                           "allow_remote_code": True}, "waiting")
"""
WAITING_SCRIPT = r"""
import os, sys, time
from pathlib import Path

folder = Path(sys.argv[1])
(folder / "pid").write_text(str(os.getpid()))
while not (folder / "never").exists():
    time.sleep(0.01)
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has ended; only its parent has not reaped it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_child_job_ends_when_its_parent_is_killed(spawn: Spawn, tmp_path: Path) -> None:
    script = tmp_path / "wait.py"
    script.write_text(WAITING_SCRIPT)
    parent = spawn(PARENT, str(script), str(tmp_path))
    _wait_for(lambda: (tmp_path / "pid").is_file() and (tmp_path / "pid").read_text() != "", "the child", parent)
    child = int((tmp_path / "pid").read_text())
    try:
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=HANG_GUARD_S)
        _wait_for(lambda: not _alive(child), "the orphaned child to end")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
