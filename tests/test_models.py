"""Model references: aliases, files, hub files, and the errors for each."""

import pytest

from smallfit.errors import SmallfitError
from smallfit.models import parse_model_ref, resolve_model


def test_alias_file_and_hub(tmp_path):
    assert parse_model_ref("smollm2-135m").kind == "alias"
    named = parse_model_ref("tiny=gemma3-270m")
    assert (named.name, named.location) == ("tiny", "gemma3-270m")
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    ref = parse_model_ref(str(f))
    assert (ref.kind, ref.name) == ("file", "m")
    hub = parse_model_ref("hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q8_0.gguf")
    assert (hub.kind, hub.location) == ("hub",
                                        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q8_0.gguf")


@pytest.mark.parametrize("ref, fragment", [
    ("gpt-17", "unknown model reference 'gpt-17'"),
    ("./nowhere/model.gguf", "model file not found"),
    ("hf:just-a-repo", "malformed hub reference"),
    ("bad name=smollm2-135m", "bad candidate name"),
])
def test_bad_references(ref, fragment):
    with pytest.raises(SmallfitError, match=fragment):
        parse_model_ref(ref)


def test_hub_download_offline_is_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    # read at import: an earlier test may have imported huggingface_hub already (then it would
    # try the network and wait for its timeouts instead)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ref = parse_model_ref("hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q8_0.gguf")
    with pytest.raises(SmallfitError, match="could not download .*offline.*local path"):
        resolve_model(ref)


def test_backend_suffix_folder_and_hub_repo(tmp_path):
    ref = parse_model_ref("smollm2-135m@transformers")
    assert (ref.name, ref.backend, ref.kind) == ("smollm2-135m@transformers", "transformers", "alias")
    assert parse_model_ref("smollm2-135m").backend == "llamacpp"
    assert parse_model_ref("q=smollm2-135m@hf").name == "q"
    folder = parse_model_ref(str(tmp_path))
    assert (folder.kind, folder.backend) == ("folder", "transformers")
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "model.onnx").write_bytes(b"")
    assert parse_model_ref(str(tmp_path / "exported")).backend == "onnx"  # optimum's export folder
    repo = parse_model_ref("hf:HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (repo.kind, repo.location, repo.backend) == ("hub-repo", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                        "transformers")
    with pytest.raises(SmallfitError, match="unknown backend 'onnx2'"):
        parse_model_ref("smollm2-135m@onnx2")


def test_server_urls_parse_as_served_models_without_a_file():
    from smallfit.models import locate_model, parse_model_ref

    ref = parse_model_ref("http://127.0.0.1:8080/v1#smollm2")
    assert (ref.kind, ref.backend, ref.name, ref.location) == ("server", "openai", "smollm2",
                                                                "http://127.0.0.1:8080/v1#smollm2")
    assert parse_model_ref("https://example.invalid/v1").name == "example.invalid"
    assert parse_model_ref("mine=http://127.0.0.1:8080/v1@server").backend == "openai"
    assert locate_model(ref) == (None, None)  # nothing opened, no size: None, never 0
