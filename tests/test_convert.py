"""The converter's process refuses model-repository code, even when the converter asks for it."""

import importlib.util
import json

import pytest

from smallfit.childjob import run_child
from smallfit.errors import SmallfitError
from smallfit.sweep.convert import is_causal_lm

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="needs the hf extra (transformers)")


def _evil_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    marker = tmp_path / "code-ran"
    (repo / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    (repo / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    script = tmp_path / "convert_hf_to_gguf.py"  # stands in for llama.cpp's converter
    script.write_text("import sys\nfrom transformers import AutoConfig\n"
                      "AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)\n")
    return repo, marker, script


@pytest.mark.models
@needs_transformers
@pytest.mark.parametrize("allowed", [False, True])
def test_converter_process_runs_repository_code_only_when_allowed(tmp_path, monkeypatch, allowed):
    repo, marker, script = _evil_repo(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    job = {"script": str(script), "folder": str(repo), "outfile": str(tmp_path / "out.gguf"),
           "allow_remote_code": allowed}
    if allowed:
        assert run_child("smallfit.sweep.convert:convert_job", job, "converting") == {}
    else:
        with pytest.raises(SmallfitError, match="^converting failed: ") as refused:
            run_child("smallfit.sweep.convert:convert_job", job, "converting")
        assert "\n" not in str(refused.value)
    assert marker.exists() == allowed


def test_causal_lm_detection(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    assert is_causal_lm(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    assert not is_causal_lm(tmp_path)
    (tmp_path / "config.json").write_text("not json")
    assert not is_causal_lm(tmp_path)
