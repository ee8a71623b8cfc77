"""Every registered backend, built-in or a plugin's, keeps the contract of smallfit.testing.

The cases are read from the registry itself, so a backend a plugin registers is checked too, on
the small model its spec's ``example`` gives. The toy plugin (tests/plugins/toy) runs in the
fast subset; the built-ins load real models (marked ``models``); the openai backend is checked
against llama-cpp-python's real server on 127.0.0.1 serving its example model.
"""

from pathlib import Path

import pytest

from smallfit.backends.base import BackendConfig
from smallfit.backends.registry import registry
from smallfit.errors import SmallfitError
from smallfit.testing import check_backend
from tests.conftest import have_bundled
from tests.servers import have_server_deps, llama_server

NEEDS = {"llamacpp": ("llama_cpp",), "transformers": ("torch", "transformers"),
         "onnx": ("onnxruntime", "onnx", "torch", "transformers"), "openai": ("httpx",), "cascade": ("llama_cpp",)}


def _cases():
    import importlib.util

    for name, spec in registry().items():
        marks = []
        if spec.distribution == "smallfit":
            missing = [m for m in NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
            marks = [pytest.mark.models, pytest.mark.skipif(bool(missing) or not have_bundled(),
                                                            reason=f"{', '.join(missing) or 'bundled models'} missing")]
            if name == "openai":
                marks.append(pytest.mark.skipif(not have_server_deps(), reason="llama_cpp.server's deps missing"))
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(_cases()))
def test_backend_keeps_the_contract(name, tmp_path):
    spec = registry()[name]
    if spec.serves:  # a served backend is checked against a real server on 127.0.0.1 serving a GGUF file
        example = registry()["llamacpp"].example
        assert example is not None
        with llama_server(Path(example(tmp_path))) as url:
            check_backend(lambda: spec.load(BackendConfig(Path(), threads=1, location=url)), tolerance_nats=1e-3)
        return
    assert spec.example is not None, f"backend {name} declares no example model for the contract test"
    location = spec.example(tmp_path)
    tolerance = 1e-4 if spec.distribution != "smallfit" else 1e-3
    check_backend(lambda: spec.load(BackendConfig(Path(location), threads=1, context_size=512)), tolerance)


def test_the_checks_can_fail(tmp_path):
    """A backend that breaks a rule is caught: a stop sequence left in the text."""
    spec = registry().get("toy")
    if spec is None:
        pytest.skip("the toy plugin is not installed")
    location = spec.example(tmp_path)

    class LeavesStops:
        def __init__(self) -> None:
            self.inner = spec.load(BackendConfig(Path(location), threads=1))
            self.capabilities = self.inner.capabilities

        def __getattr__(self, attr):
            return getattr(self.inner, attr)

        def generate(self, requests):
            from dataclasses import replace

            return self.inner.generate([replace(r, stop=()) for r in requests])

    with pytest.raises(AssertionError, match="stop sequence"):
        check_backend(LeavesStops)
    with pytest.raises(SmallfitError):
        spec.load(BackendConfig(Path(location), options={"fail": "load"}))
