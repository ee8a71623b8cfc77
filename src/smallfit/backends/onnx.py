"""ONNX Runtime backend (extra ``onnx``): a causal LM as an .onnx graph with past key values.

``model_path`` is an .onnx file (or a folder holding ``model.onnx`` or ``onnx/model.onnx``) with
its tokenizer files beside it, as smallfit and optimum export them; or a GGUF file or
transformers folder, exported once through torch.onnx (see :mod:`onnx_export`) and cached. An
.onnx graph with a ``last_hidden_state`` output and no ``logits`` is an encoder, handed to the
encoder backend.

Scoring tokenises exactly as the transformers backend (same context/continuation split, same
prefix token), so the same weights give the same log-likelihoods within float rounding. A
context shared by several continuations is evaluated once and its past key values reused;
other requests are length-sorted into right-padded batches (under causal attention no real
token sees the padding after it). Logits come out for every position of the graph's input, so
long inputs run in chunks on top of the growing past, to bound that buffer.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smallfit.backends import greedy
from smallfit.backends.base import Backend, BackendConfig, Capabilities, EmbeddingBackend
from smallfit.backends.hf_tokens import HFTokenScoring, TokenPair, special_tokens
from smallfit.backends.onnx_export import (
    int8_cached,
    int8_recipe,
    locate_graph,
    onnx_files_bytes,
    tokenizer_dir,
)
from smallfit.backends.onnx_graph import read_graph
from smallfit.backends.registry import BackendSpec
from smallfit.errors import MissingExtraError, SmallfitError
from smallfit.probes.cpu import int8_path
from smallfit.records import (
    Completion,
    GenerationRequest,
)

_LOGIT_BUFFER_BYTES = 64 * 2**20  # logits one graph run may return: bounds rows x positions
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_NUMPY_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
                "tensor(int32)": "int32", "tensor(bool)": "bool"}


class OnnxOptions(BaseModel):
    """Candidate options understood by this backend (``options = {...}`` in a spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantize: Literal["none", "int8"] = Field(default="none", description="int8: dynamic quantization, cached")
    providers: tuple[str, ...] = Field(default=("CPUExecutionProvider",),
                                       description="onnxruntime execution providers, first preferred (cpu, cuda)")
    batch_size: int = Field(default=8, ge=1, description="sequences per graph run when scoring")


def _options(raw: dict[str, Any]) -> OnnxOptions:
    try:
        return OnnxOptions.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SmallfitError(f"onnx option {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _import() -> tuple[Any, Any]:
    try:
        import numpy
        import onnxruntime
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnx") from None
    return onnxruntime, numpy


def load_onnx(config: BackendConfig) -> Backend | EmbeddingBackend:
    """Find (or export) the .onnx model and load it: a causal LM here, an encoder through
    :mod:`smallfit.backends.onnx_encoder`."""
    _import()
    path = config.model_path
    if path.is_dir() and not any(path.glob("*.onnx")) and not (path / "onnx").is_dir():
        from smallfit.backends.encoder import is_encoder_folder

        if is_encoder_folder(path):  # a transformers encoder: the encoder backend exports it
            from smallfit.backends.onnx_encoder import OnnxEncoderBackend

            return OnnxEncoderBackend(config)
    model, origin = locate_graph(path, config.options, _options)
    graph = read_graph(model)
    if "logits" not in graph.outputs:
        if "last_hidden_state" in graph.outputs:
            from smallfit.backends.onnx_encoder import OnnxEncoderBackend
            return OnnxEncoderBackend(config)
        raise SmallfitError(f"{model} has neither a logits output (a causal LM) nor a last_hidden_state output "
                            f"(an encoder); its outputs: {', '.join(graph.outputs[:5])}")
    return OnnxCausalLM(config, model, origin)


class OnnxCausalLM(HFTokenScoring):
    """A causal LM run by ONNX Runtime, with the KV cache fed back between graph runs."""

    capabilities = Capabilities(loglikelihood=True, generation=True, streaming=True, token_logprobs=True)

    def __init__(self, config: BackendConfig, model: Path, origin: dict[str, Any]) -> None:
        self._ort, self._np = _import()
        self.opts = _options(config.options)
        self.config, self.origin = config, dict(origin)
        self.fp32_path = model
        self.int8_mode = int8_path() if self.opts.quantize == "int8" else None  # refuses an unknown CPU
        if self.int8_mode is not None:
            model, self.origin["quantize_s"] = int8_cached(model, f"{model.stem}.int8.onnx", mode=self.int8_mode)
        self.path, self.graph = model, read_graph(model)
        # dynamic quantization scales activations per graph run: a request scored with others
        # (or after its context's cached run) would score differently than alone, so each request
        # is one run of its own, as a deployment's prefill of that text would be
        self._alone = self.graph.dynamic_quantization
        self.threads = config.threads or os.cpu_count() or 1
        self.session = self._session(model)
        self._bind_graph()
        self._load_tokenizer(tokenizer_dir(self.fp32_path))

    def _session(self, model: Path) -> Any:
        ort = self._ort
        providers = [_PROVIDERS.get(p.lower(), p) for p in self.opts.providers]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise SmallfitError(f"onnxruntime here has no {', '.join(missing)} (available: "
                                f"{', '.join(ort.get_available_providers())}); for CUDA install onnxruntime-gpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the exporter's graphs trigger harmless warnings
        try:
            return ort.InferenceSession(str(model), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's pybind errors share no useful base
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SmallfitError(f"onnxruntime could not load {model}: {why[:300]}") from None

    def _bind_graph(self) -> None:
        np = self._np
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self._past_names = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_order)
        self._present_names = [n.replace("past_key_values.", "present.", 1) for n in self._past_names]
        if not self._past_names or any(n not in outputs for n in self._present_names) or "input_ids" not in inputs:
            raise SmallfitError(f"{self.path} is not a causal LM exported with past key values (inputs input_ids, "
                                "past_key_values.N.key|value; outputs logits, present.N.key|value); export it "
                                "with optimum-cli export onnx --task text-generation-with-past")
        self._inputs = set(inputs)
        self._types = {n: np.dtype(_NUMPY_TYPES.get(i.type, "float32")) for n, i in inputs.items()}
        shape = inputs[self._past_names[0]].shape
        cfg = self._model_config()
        heads = shape[1] if isinstance(shape[1],
                                       int) else cfg.get("num_key_value_heads") or cfg.get("num_attention_heads")
        dim = shape[3] if isinstance(shape[3], int) else cfg.get("head_dim") or (
            cfg["hidden_size"] // cfg["num_attention_heads"] if "hidden_size" in cfg else None)
        if not heads or not dim:
            raise SmallfitError(f"cannot tell the KV cache's shape of {self.path}: no config.json beside it")
        self._kv_shape = (int(heads), int(dim))
        vocab = self.session.get_outputs()[outputs.index("logits")].shape[-1]
        self.n_vocab = int(vocab) if isinstance(vocab, int) else int(cfg.get("vocab_size") or 262144)

    def _model_config(self) -> dict[str, Any]:
        for folder in (self.fp32_path.parent, self.fp32_path.parent.parent):
            if (folder / "config.json").is_file():
                cfg: dict[str, Any] = json.loads((folder / "config.json").read_text())
                return {**cfg, **cfg.get("text_config", {})}
        return {}

    def _load_tokenizer(self, folder: Path) -> None:
        try:
            import transformers
        except ImportError:
            raise MissingExtraError("transformers", "onnx") from None  # the model's tokenizer needs it
        try:
            self.tokenizer: Any = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise SmallfitError(f"could not load the tokenizer in {folder}: {str(exc).splitlines()[0]}") from None
        cfg = self._model_config()
        trained = cfg.get("max_position_embeddings")
        self.max_length = int(min(self.config.context_size, trained or self.config.context_size))
        self.rolling_length = int(trained or self.max_length)  # lm-eval's window: the model's own context
        self.add_bos, self.prefix_token = special_tokens(self.tokenizer)
        eot = self.tokenizer.eos_token_id
        eos: Any = None
        generation = folder / "generation_config.json"
        if generation.is_file():
            eos = json.loads(generation.read_text()).get("eos_token_id")
        self.eos_ids = {e for e in ([eos] if isinstance(eos, int) else list(eos or [])) + [eot] if e is not None}

    # -- the graph ----------------------------------------------------------------------------

    def _empty_past(self, rows: int) -> list[Any]:
        heads, dim = self._kv_shape
        return [self._np.zeros((rows, heads, 0, dim), self._types[n]) for n in self._past_names]

    def _run(self, ids: Any, past: list[Any], start: int) -> tuple[Any, list[Any]]:
        """One graph run: ``ids`` (rows, n) at positions ``start``.. on top of ``past``."""
        np = self._np
        rows, n = ids.shape
        feed: dict[str, Any] = {"input_ids": ids.astype(self._types["input_ids"])}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = np.ones((rows, start + n), self._types["attention_mask"])
        if "position_ids" in self._inputs:
            feed["position_ids"] = np.broadcast_to(np.arange(start, start + n), (rows, n)).astype(
                self._types["position_ids"])
        if "use_cache_branch" in self._inputs:  # optimum's merged decoders
            feed["use_cache_branch"] = np.array([start > 0])
        feed.update(zip(self._past_names, past, strict=True))
        out = self.session.run(["logits", *self._present_names], feed)
        return out[0], out[1:]

    def _step_width(self, rows: int) -> int:
        return max(1, _LOGIT_BUFFER_BYTES // (rows * self.n_vocab * 4))

    def _prefill(self, tokens: Sequence[int]) -> tuple[list[Any], Any]:
        """Evaluate ``tokens`` from an empty past: the past and the last position's logits."""
        np = self._np
        past, logits = self._empty_past(1), None
        step = self._step_width(1)
        for lo in range(0, len(tokens), step):
            logits, past = self._run(np.array([tokens[lo : lo + step]]), past, lo)
        assert logits is not None
        return past, logits[0, -1]

    def next_token_logprobs(self, text: str, last_n: int) -> Any:
        """Next-token log-probabilities over the vocabulary at the last ``last_n`` positions of
        ``text``: float32 (rows, vocab), as the llama.cpp backend's (for the sweep's KL)."""
        np = self._np
        tokens, n = self._last_positions(text, last_n)
        past = self._prefill(tokens[:-n])[0] if len(tokens) > n else self._empty_past(1)
        logits, _ = self._run(np.array([tokens[len(tokens) - n :]]), past, len(tokens) - n)
        rows = logits[0].astype(np.float64)
        peak = rows.max(axis=1, keepdims=True)
        return (rows - peak - np.log(np.exp(rows - peak).sum(axis=1, keepdims=True))).astype(np.float32)

    def _score_rows(self, rows: Sequence[tuple[list[int], list[int]]], past: list[Any] | None,
                    start: int) -> list[tuple[float, bool]]:
        """Rows of (inputs, targets), right-padded and run together on top of ``past`` (one
        row's, shared by all) from position ``start``: input ``i`` predicts ``targets[i]``.
        Returns each row's summed target log-probability and whether all were the argmax."""
        np = self._np
        width = max(len(inputs) for inputs, _ in rows)
        ids = np.full((len(rows), width), self.prefix_token, dtype=np.int64)
        wanted = np.full((len(rows), width), -1, dtype=np.int64)
        for b, (inputs, targets) in enumerate(rows):
            ids[b, : len(inputs)] = inputs
            wanted[b, : len(targets)] = targets
        cache = self._empty_past(len(rows)) if past is None else [np.repeat(p, len(rows), axis=0) for p in past]
        totals = np.zeros(len(rows), dtype=np.float64)
        greedy = np.ones(len(rows), dtype=bool)
        step = self._step_width(len(rows))
        scored_at = np.nonzero(wanted >= 0)[1]
        last = int(scored_at.max()) if scored_at.size else -1  # no run past the last scored position
        for lo in range(0, last + 1, step):
            logits, cache = self._run(ids[:, lo : lo + step], cache, start + lo)
            b_idx, p_idx = np.nonzero(wanted[:, lo : lo + step] >= 0)
            if not b_idx.size:
                continue
            picked = logits[b_idx, p_idx].astype(np.float32)
            targets = wanted[b_idx, lo + p_idx]
            peak = picked.max(axis=1)
            lse = peak + np.log(np.exp(picked - peak[:, None]).sum(axis=1, dtype=np.float64))
            chosen = picked[np.arange(len(targets)), targets]
            np.add.at(totals, b_idx, chosen - lse)
            np.logical_and.at(greedy, b_idx, chosen >= peak)
        return [(float(t), bool(g)) for t, g in zip(totals, greedy, strict=True)]

    # -- scoring --------------------------------------------------------------------------------

    def _score(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (ctx, _) in enumerate(pairs):
            groups[tuple(ctx)].append(i)
        out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        singles = []
        for idxs in groups.values():
            if len(idxs) == 1 or self._alone:
                singles += idxs
                continue
            longest = max(len(pairs[i][1]) for i in idxs)
            ctx, _ = self._fit(pairs[idxs[0]][0], [0] * longest)
            conts = [self._fit(ctx, pairs[i][1])[1] for i in idxs]
            for i, res in zip(idxs, self._score_shared(ctx, conts), strict=True):
                out[i] = res
        singles.sort(key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))  # longest first
        size = 1 if self._alone else self.opts.batch_size
        for lo in range(0, len(singles), size):
            batch = singles[lo : lo + size]
            rows = []
            for i in batch:
                ctx, cont = self._fit(*pairs[i])
                rows.append(((ctx + cont)[:-1], [-1] * (len(ctx) - 1) + cont))
            for i, res in zip(batch, self._score_rows(rows, None, 0), strict=True):
                out[i] = res if pairs[i][1] else (0.0, True)
        return out

    def _score_shared(self, ctx: list[int], conts: Sequence[list[int]]) -> list[tuple[float, bool]]:
        """The context once through the graph, then the continuations in batches on top of its
        past key values."""
        past = self._prefill(ctx[:-1])[0] if len(ctx) > 1 else None
        results: list[tuple[float, bool]] = []
        for lo in range(0, len(conts), self.opts.batch_size):
            chunk = conts[lo : lo + self.opts.batch_size]
            rows = [([ctx[-1], *c[:-1]], c) for c in chunk]
            scored = self._score_rows([r if r[1] else ([ctx[-1]], []) for r in rows], past, len(ctx) - 1)
            results += [s if c else (0.0, True) for s, c in zip(scored, chunk, strict=True)]
        return results

    # -- generation -------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Greedy generation (:mod:`smallfit.backends.greedy`), one request at a time, each from
        an empty past."""
        model = greedy.GreedyModel(prefill=self._prefill, step=self._step, decode=self.detokenize,
                                   eos_ids=frozenset(self.eos_ids), context_size=self.max_length,
                                   logprob=self._token_logprob)
        out = []
        for req in requests:
            t0 = time.perf_counter()  # the request starts before tokenisation
            prompt = self.tokenize(req.prompt) or [self.prefix_token]
            out.append(greedy.generate(model, req, prompt, t0))
        return out

    def _token_logprob(self, logits: Any, token: int) -> float:
        """The chosen token's log-probability under one row of logits (float64 arithmetic)."""
        np = self._np
        row = np.asarray(logits, dtype=np.float64)
        peak = float(row.max())
        return float(row[token]) - peak - float(np.log(np.exp(row - peak).sum()))

    def _step(self, past: list[Any], token: int, position: int) -> tuple[list[Any], Any]:
        """One token at ``position`` on top of ``past``: the new past and the next logits."""
        logits, past = self._run(self._np.array([[token]]), past, position)
        return past, logits[0, -1]

    # -- bookkeeping ------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Settings recorded with every result of this candidate; ``model_size_bytes`` is the
        .onnx file actually run (with its external data), not the file it was exported from."""
        provider = self.session.get_providers()[0] if self.session is not None else None
        return {
            "library": "onnxruntime", "library_version": self._ort.__version__, "provider": provider,
            "device": "cuda:0" if provider == "CUDAExecutionProvider" else "cpu",
            "threads": self.threads, "inter_op_threads": 1, "context_size": self.max_length,
            "rolling_window_tokens": self.rolling_length,
            "batch_size": 1 if self._alone else self.opts.batch_size, "model_file": str(self.path),
            "opset": self.graph.opset,
            "quantization": int8_recipe(self.int8_mode) if self.int8_mode else "none (as stored)",
            "int8_kernel_path": self.int8_mode.name if self.int8_mode else None,
            "int8_reduce_range": self.int8_mode.onnx_reduce_range if self.int8_mode else None,
            "export": self.origin.get("export"), "source": self.origin.get("source"),
            "export_s": self.origin.get("export_s"), "quantize_s": self.origin.get("quantize_s"),
            "export_max_abs_logit_diff": self.origin.get("export_max_abs_logit_diff"),
            "prefix_cache": False,
            "shared_context": "none: each request one run (dynamic quantization)" if self._alone else "KV cache reuse",
            "scoring_batch_size": 1 if self._alone else self.opts.batch_size, "decoding": "greedy (argmax)",
            "model_size_bytes": onnx_files_bytes(self.path),
        }

    def close(self) -> None:
        """Drop the session."""
        self.session = None


def _layer_order(name: str) -> tuple[int, str]:
    _, layer, kind = name.split(".", 2)
    return (int(layer) if layer.isdigit() else 0, kind)


def needs_preparing(model_path: Path, options: Mapping[str, Any]) -> bool:
    """True when loading would build files: anything but a plain .onnx graph run as it is."""
    given = model_path.suffix.lower() == ".onnx" or (model_path.is_dir() and any(model_path.glob("*.onnx")))
    return not given or options.get("quantize") not in (None, "none")


def check_model(location: str, options: Mapping[str, Any]) -> None:
    """Before any work: an .onnx graph's inputs and outputs read, a GGUF header, or a folder's files."""
    path = Path(location)
    if path.suffix.lower() == ".onnx":
        read_graph(path)
    elif path.suffix.lower() == ".gguf":
        from smallfit.backends.gguf_file import check_gguf

        check_gguf(path)
    elif path.is_dir():
        if not any(path.glob("*.onnx")) and not (path / "onnx" / "model.onnx").is_file() \
                and not any(path.glob("*.safetensors")):
            raise SmallfitError(f"{path} has no model.onnx and no safetensors weights to export")
    else:
        raise SmallfitError(f"{path} is not an .onnx, GGUF file or model folder; the onnx backend runs .onnx models "
                            "and exports GGUF files and transformers folders")


def _example(folder: Path) -> str:
    """The bundled SmolLM2 GGUF file (the contract test's model)."""
    from smallfit.models import ALIASES

    return str(ALIASES["smollm2-135m"].locate())


BACKEND = BackendSpec(
    name="onnx", load=load_onnx, aliases=("onnxruntime",), formats=("onnx", "gguf", "transformers"),
    default_for=("onnx",), needs_preparing=needs_preparing, example=_example, check_model=check_model, extra="onnx",
    variants={"onnx-f32": {}, "onnx-int8": {"quantize": "int8"}},
    description="ONNX Runtime: .onnx graphs, and GGUF files or transformers folders exported by torch.onnx",
)
