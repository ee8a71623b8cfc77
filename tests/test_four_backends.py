"""One run, one table: the same model on llama.cpp, transformers, ONNX Runtime and
llama-cpp-python's real OpenAI-compatible server on 127.0.0.1 (issue: backends behind one contract).

SmolLM2 on a generation task: the server cannot score SmolLM2 (its echoed log-probabilities are
shifted for models without BOS; the contract test covers that), but generates like the others.
"""

import json
from pathlib import Path

import pytest

from tests.conftest import have_onnx_export, needs_models
from tests.servers import llama_server, needs_server

pytestmark = [needs_models, needs_server, pytest.mark.models,
              pytest.mark.skipif(not have_onnx_export(), reason="extras 'onnx' and 'hf' not installed")]

REPO = Path(__file__).resolve().parents[1]


def test_one_run_compares_the_same_model_on_four_backends(cli):
    from smallfit.models import parse_model_ref, resolve_model

    gguf = resolve_model(parse_model_ref("smollm2-135m"))
    with llama_server(gguf) as url:
        proc = cli("run", "-m", "llamacpp=smollm2-135m", "-m", "transformers=smollm2-135m@transformers",
                   "-m", "onnx=smollm2-135m@onnx", "-m", f"server={url}", "-t",
                   str(REPO / "examples" / "capitals.toml"), "--limit", "4", "--quick", "--threads", "1", check=True)
    for name in ("llamacpp", "transformers", "onnx", "server"):
        assert f"│ {name} " in proc.stdout  # one comparison table, a row per backend
    rows = {r["candidate"]: r for r in json.loads(cli("results", "--format", "json", check=True).stdout)}
    assert sorted(rows) == ["llamacpp", "onnx", "server", "transformers"]
    answers = {}
    for name, row in rows.items():
        m = row["metrics"]
        assert row["error"] is None, (name, row["error"])
        assert m["exact_match"] is not None and m["timed_requests"] >= 3
        assert 0 < m["ttft_s"] <= m["latency_s"] <= m["latency_s_p95"]  # short answers: decode may be null
        answers[name] = m["exact_match"]
    # transformers and ONNX Runtime run the same fp32 weights greedily: the same answers
    assert answers["transformers"] == answers["onnx"]
    served = rows["server"]
    assert served["metrics"]["model_size_bytes"] is None  # served: no file
    # the server's memory and energy are not smallfit's process's: not reported as if they were
    assert served["metrics"]["peak_rss_bytes"] is None and rows["llamacpp"]["metrics"]["peak_rss_bytes"] > 0
    if not served["labels"]["energy_j"].startswith("measured"):  # RAPL would measure the whole package
        assert served["metrics"]["energy_j"] is None and "server's process" in served["labels"]["energy_j"]
