"""install.sh, the README's first command: its arguments and what it says before it compiles."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_an_unknown_target_is_one_line_and_exit_2_before_anything_is_made(tmp_path):
    venv = tmp_path / "venv"
    proc = subprocess.run(["sh", str(REPO / "install.sh"), "everything"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "VENV": str(venv)}, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "install.sh: unknown target 'everything'; use 'sh install.sh' or 'sh install.sh dev'"]
    assert not venv.exists()


def test_the_compile_is_announced_with_minutes_for_the_cores_present():
    text = (REPO / "install.sh").read_text()
    # the announcement comes before the first pip install that could compile
    assert text.index("pip compiles $KIND from source once: $TAKES on $CORES cores") < text.index(
        '$PIP install -e ".[$EXTRAS]"')
    readme = (REPO / "README.md").read_text().splitlines()
    assert readme[3] == "sh install.sh && .venv/bin/smallfit run"
    ci = (REPO / ".ci" / "run").read_text()
    assert readme[4] in ci  # the README's test command is the one CI runs


def test_the_minutes_announced_follow_the_core_count(tmp_path):
    # install.sh's own helper, run by sh with the script's figures for the library-only build
    text = (REPO / "install.sh").read_text()
    helper = text[text.index("LIB_CORE_MIN_FAST="):text.index("case \"$WHAT\" in")]
    said = {}
    for cores in (1, 2, 4, 16):
        script = f"CORES={cores}\n{helper}\nminutes $LIB_CORE_MIN_FAST $LIB_CORE_MIN_SLOW\n"
        said[cores] = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert said == {1: "4 to 9 minutes", 2: "2 to 5 minutes", 4: "1 to 3 minutes", 16: "about a minute"}


def test_a_llama_cpp_library_that_does_not_load_is_one_line_naming_the_rebuild(tmp_path):
    """A llama_cpp package whose shared library the loader rejects (here: not an ELF file; an old
    glibc or a foreign build fails the same call) is a SmallfitError naming the cause and the
    rebuild, which smallfit reports as one line."""
    import sys

    pkg = tmp_path / "llama_cpp"
    pkg.mkdir()
    (pkg / "libllama.so").write_bytes(b"not a shared library")
    (pkg / "__init__.py").write_text("import ctypes, pathlib\nctypes.CDLL(str(pathlib.Path(__file__).parent / "
                                     "'libllama.so'))\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{REPO / 'src'}", "SMALLFIT_DB": str(tmp_path / "r.db")}
    proc = subprocess.run([sys.executable, "-c", "from smallfit.backends.llamacpp import _import; _import()"],
                          capture_output=True, text=True, env=env, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert "llama.cpp's library does not load on this machine" in last
    assert "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python==0.3.36" in last
