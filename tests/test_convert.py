"""The converter's process refuses model-repository code, even when the converter asks for it."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

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
def test_converter_process_runs_repository_code_only_when_allowed(tmp_path, allowed):
    repo, marker, script = _evil_repo(tmp_path)
    env = {**os.environ, "SMALLFIT_ALLOW_REMOTE_CODE": "1" if allowed else "0", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "smallfit.sweep.convert", str(script), str(repo)], env=env,
                          capture_output=True, text=True, check=False, timeout=120)
    assert marker.exists() == allowed, proc.stderr[-2000:]
    assert (proc.returncode == 0) == allowed


def test_causal_lm_detection(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    assert is_causal_lm(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    assert not is_causal_lm(tmp_path)
    (tmp_path / "config.json").write_text("not json")
    assert not is_causal_lm(tmp_path)
