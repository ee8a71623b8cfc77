"""transformers backend (extra ``hf``): a hub id, a local folder, or a GGUF file (dequantised).

Scores as lm-evaluation-harness's HF model does (same context/continuation split, same prefix
token), but faster: continuations that share a context reuse one evaluation of it through the
KV cache, other requests are length-sorted into right-padded batches, and logits are computed
only for positions that are scored. Batch size never changes a score beyond float rounding.

Safety: ``trust_remote_code`` is off unless the candidate's options turn it on, and only
safetensors weights load unless ``allow_pickle`` is set.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smallfit.backends import greedy
from smallfit.backends.base import BackendConfig, Capabilities
from smallfit.backends.hf_common import gguf_to_safetensors, import_torch_transformers
from smallfit.backends.hf_tokens import HFTokenScoring, TokenPair, special_tokens
from smallfit.errors import SmallfitError
from smallfit.models import weights_size
from smallfit.records import (
    Completion,
    GenerationRequest,
)


class HFOptions(BaseModel):
    """Candidate options understood by this backend (``options = {...}`` in a spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = Field(default="cpu", description="cpu, cuda, cuda:N or auto")
    batch_size: int = Field(default=8, ge=1, description="sequences per forward pass")
    trust_remote_code: bool = False
    allow_pickle: bool = False
    quantize: Literal["int8"] | None = Field(default=None, description="int8: torch dynamic quantization (CPU)")


class TransformersBackend(HFTokenScoring):
    """A causal LM loaded through transformers, on CPU or CUDA."""

    capabilities = Capabilities(loglikelihood=True, generation=True, streaming=True, device_memory=True,
                                token_logprobs=True)

    def __init__(self, config: BackendConfig) -> None:
        self._torch, tf = import_torch_transformers()
        torch = self._torch
        try:
            self.opts = HFOptions.model_validate(config.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise SmallfitError(f"transformers option {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if self.opts.device == "auto" else self.opts.device)
        folder, self.source = self._locate(config.model_path)
        self.folder = folder
        dtype = "auto" if self.opts.dtype == "auto" else getattr(torch, self.opts.dtype)
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(folder, trust_remote_code=self.opts.trust_remote_code)
            self.model = tf.AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, trust_remote_code=self.opts.trust_remote_code,
                use_safetensors=None if self.opts.allow_pickle else True,
            ).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise SmallfitError(f"transformers could not load {folder}: {str(exc).splitlines()[0]}") from None
        self._quant: dict[str, Any] = {}
        if self.opts.quantize == "int8":
            from smallfit.backends.torch_int8 import quantize_int8

            self.model, self._quant = quantize_int8(torch, self.model, self.device)
        trained = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = int(min(config.context_size, trained or 2048))
        self.rolling_length = int(trained or self.max_length)  # lm-eval's window: the model's own context
        self.add_bos, self.prefix_token = special_tokens(self.tokenizer)
        eot = self.tokenizer.eos_token_id
        # transformers 5.x renamed past_key_values to cache; older releases only know the old name
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        self.eos_ids = {e for e in ([eos] if isinstance(eos, int) else list(eos or [])) + [eot] if e is not None}
        self._packing_ok = True
        self._check_packing()

    def _locate(self, path: Path) -> tuple[Path, str]:
        if path.is_file():
            with open(path, "rb") as fh:
                magic = fh.read(4)
            if magic != b"GGUF":
                raise SmallfitError(f"{path} is not a GGUF file or a model folder; the transformers backend reads "
                                    "a hub id, a local model folder, or a .gguf file (dequantised)")
            return gguf_to_safetensors(path), "gguf (dequantised to a cached safetensors copy)"
        if not path.is_dir():
            raise SmallfitError(f"model not found: {path}")
        if not any(path.glob("*.safetensors")):
            if any(path.glob("*.bin")) or any(path.glob("*.pt")):
                if not self.opts.allow_pickle:
                    raise SmallfitError(f"{path} has only pickle checkpoints, which can run code when loaded; "
                                        "use a safetensors copy, or set options = {allow_pickle = true} "
                                        "if you trust it")
            else:
                raise SmallfitError(f"{path} has no model weights (*.safetensors)")
        return path, "safetensors" if any(path.glob("*.safetensors")) else "pickle (allowed by the user)"

    # -- tokens ----------------------------------------------------------------------------

    # -- scoring (requests to tokens: HFTokenScoring) -----------------------------------------

    def _score(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (ctx, _) in enumerate(pairs):
            groups[tuple(ctx)].append(i)
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        packed: list[tuple[list[int], list[list[int]], list[int]]] = []  # (ctx, conts, request ids)
        singles = []
        for idxs in groups.values():
            if len(idxs) == 1:
                singles.append(idxs[0])
                continue
            longest = max(len(pairs[i][1]) for i in idxs)
            ctx, _ = self._fit(pairs[idxs[0]][0], [0] * longest)
            conts = [self._fit(ctx, pairs[i][1])[1] for i in idxs]
            if self._can_pack(len(ctx) + sum(len(c) for c in conts)):
                packed.append((ctx, conts, idxs))
            else:
                for i, res in zip(idxs, self._score_shared(ctx, conts), strict=True):
                    out[i] = res
        packed.sort(key=lambda item: -(len(item[0]) + sum(len(c) for c in item[1])))
        for lo in range(0, len(packed), self.opts.batch_size):
            chunk = packed[lo : lo + self.opts.batch_size]
            results = self._score_packed([(ctx, conts) for ctx, conts, _ in chunk])
            for (_, _, idxs), group_results in zip(chunk, results, strict=True):
                for i, res in zip(idxs, group_results, strict=True):
                    out[i] = res
        singles.sort(key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))  # longest first
        for lo in range(0, len(singles), self.opts.batch_size):
            batch = singles[lo : lo + self.opts.batch_size]
            for i, res in zip(batch, self._score_batch([pairs[i] for i in batch]), strict=True):
                out[i] = res
        return [o if o is not None else (0.0, True) for o in out]

    # Logits only where they are scored: the decoder's hidden states at those positions go
    # through the output layer (and the model's final soft-capping, if it has one).

    def _hidden(self, ids: Any, **kwargs: Any) -> Any:
        return self.model.get_decoder()(ids.to(self.device), use_cache=False, **kwargs).last_hidden_state

    def _logprobs_at(self, hidden_rows: Any) -> Any:
        torch = self._torch
        logits = self.model.get_output_embeddings()(hidden_rows).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return torch.log_softmax(logits, dim=-1)

    def _sum_targets(self, hidden: Any, rows: Sequence[tuple[int, list[int], list[int]]]) -> list[tuple[float, bool]]:
        """For each (batch row, positions, targets): summed log-probability and greediness."""
        torch = self._torch
        flat_b = [b for b, positions, _ in rows for _ in positions]
        flat_p = [p for _, positions, _ in rows for p in positions]
        if not flat_p:
            return [(0.0, True) for _ in rows]
        logprobs = self._logprobs_at(hidden[torch.tensor(flat_b), torch.tensor(flat_p)])
        results, at = [], 0
        for _, positions, targets in rows:
            span = logprobs[at : at + len(positions)]
            at += len(positions)
            if not targets:
                results.append((0.0, True))
                continue
            index = torch.tensor(targets, device=span.device).unsqueeze(-1)
            total = float(span.gather(-1, index).sum(dtype=torch.float64))
            results.append((total, bool((span.argmax(-1) == index.squeeze(-1)).all())))
        return results

    def _score_batch(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        """Full sequences, right-padded: under causal attention no real token can attend to the
        padding after it, so no mask is needed."""
        torch = self._torch
        fitted = [self._fit(ctx, cont) for ctx, cont in pairs]
        seqs = [(ctx + cont)[:-1] for ctx, cont in fitted]
        ids = torch.full((len(seqs), max(len(s) for s in seqs)), self.prefix_token, dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
        with torch.inference_mode():
            hidden = self._hidden(ids)
            rows = [(b, list(range(len(ctx) - 1, len(ctx) - 1 + len(cont))), cont)
                    for b, (ctx, cont) in enumerate(fitted)]
            return self._sum_targets(hidden, rows)

    def _can_pack(self, length: int) -> bool:
        window = getattr(self.model.config, "sliding_window", None)
        return self._packing_ok and length <= self.max_length and (not window or length <= window)

    def _score_packed(self, items: Sequence[tuple[list[int], list[list[int]]]]) -> list[list[tuple[float, bool]]]:
        """Each item is one context and its continuations packed into one sequence: the context
        once, then every continuation at the positions right after it, each allowed to see the
        context and itself but not the others (a tree attention mask)."""
        torch = self._torch
        layouts = [_pack(ctx, conts) for ctx, conts in items]
        width = max(len(lay.tokens) for lay in layouts)
        ids = torch.full((len(items), width), self.prefix_token, dtype=torch.long)
        pos = torch.zeros((len(items), width), dtype=torch.long)
        allow = torch.eye(width, dtype=torch.bool).repeat(len(items), 1, 1)  # padding sees itself
        for b, lay in enumerate(layouts):
            n = len(lay.tokens)
            ids[b, :n] = torch.tensor(lay.tokens)
            pos[b, :n] = torch.tensor(lay.positions)
            seg = torch.tensor(lay.segments)
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            same = (seg[:, None] == seg[None, :]) | (seg[None, :] == 0)
            allow[b, :n, :n] = causal & same
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(allow.shape, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)[:, None]
        with torch.inference_mode():
            hidden = self._hidden(ids, attention_mask=mask.to(self.device), position_ids=pos.to(self.device))
            out = []
            for b, lay in enumerate(layouts):
                rows = [(b, positions, cont) for positions, cont in zip(lay.reads, items[b][1], strict=True)]
                out.append(self._sum_targets(hidden, rows))
        return out

    def _check_packing(self) -> bool:
        """Packing needs a model that honours a custom 4D attention mask: check once, on a
        short example, that packed and separate scores agree."""
        self._packing_ok = True
        ctx = self.tokenize("Question: is the sky blue?\nAnswer:")
        conts = [self.tokenize(" yes it is", add_bos=False), self.tokenize(" no", add_bos=False)]
        try:
            packed = self._score_packed([(ctx, conts)])[0]
        except (RuntimeError, ValueError, TypeError, IndexError):
            self._packing_ok = False
            return False
        alone = self._score_batch([(ctx, c) for c in conts])
        self._packing_ok = all(abs(a[0] - b[0]) < 1e-3 for a, b in zip(packed, alone, strict=True))
        return self._packing_ok

    def _score_shared(self, ctx: list[int], conts: Sequence[list[int]]) -> list[tuple[float, bool]]:
        """Fallback for models that cannot pack: the context once through the model, then the
        continuations as a batch on top of its KV cache."""
        torch = self._torch
        results: list[tuple[float, bool]] = []
        with torch.inference_mode():
            past = None
            if len(ctx) > 1:
                prefix = torch.tensor([ctx[:-1]], device=self.device)
                past = _cache_of(self.model(prefix, use_cache=True, logits_to_keep=1))
            for lo in range(0, len(conts), self.opts.batch_size):
                chunk = conts[lo : lo + self.opts.batch_size]
                inputs = [[ctx[-1], *c[:-1]] for c in chunk]
                width = max(len(s) for s in inputs)
                ids = torch.full((len(inputs), width), self.prefix_token, dtype=torch.long)
                for b, s in enumerate(inputs):
                    ids[b, : len(s)] = torch.tensor(s)
                cache = None
                if past is not None:
                    cache = _copy_cache(past)
                    cache.batch_repeat_interleave(len(chunk))
                logits = self.model(ids.to(self.device), use_cache=cache is not None,
                                    **{self._cache_kw: cache}).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                for b, c in enumerate(chunk):
                    span = logprobs[b, : len(c)]
                    index = torch.tensor(c, device=span.device).unsqueeze(-1)
                    results.append((float(span.gather(-1, index).sum(dtype=torch.float64)),
                                    bool((span.argmax(-1) == index.squeeze(-1)).all())))
        return results

    def next_token_logprobs(self, text: str, last_n: int) -> Any:
        """Next-token log-probabilities over the vocabulary at the last ``last_n`` positions of
        ``text``: float32 (rows, vocab), as the llama.cpp backend's (for the sweep's KL)."""
        torch = self._torch
        tokens, n = self._last_positions(text, last_n)
        with torch.inference_mode():
            hidden = self._hidden(torch.tensor([tokens]))
            rows = self._logprobs_at(hidden[0, len(tokens) - n :])
        return rows.float().cpu().numpy()

    # -- generation ------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Greedy generation (:mod:`smallfit.backends.greedy`), one request at a time, each from
        an empty cache; each token timestamped once the device has finished it."""
        model = greedy.GreedyModel(prefill=self._prefill, step=self._step, decode=self.detokenize,
                                   eos_ids=frozenset(self.eos_ids), context_size=self.max_length,
                                   sync=self._sync, logprob=self._token_logprob)
        out = []
        for req in requests:
            t0 = time.perf_counter()  # the request starts before tokenisation
            prompt = self.tokenize(req.prompt) or [self.prefix_token]
            with self._torch.inference_mode():
                out.append(greedy.generate(model, req, prompt, t0))
        return out

    def _prefill(self, ids: Sequence[int]) -> tuple[Any, Any]:
        """The prompt through the model: its KV cache and the next token's logits."""
        result = self.model(self._torch.tensor([list(ids)], device=self.device), use_cache=True, logits_to_keep=1)
        return _cache_of(result), result.logits[0, -1]

    def _step(self, cache: Any, token: int, position: int) -> tuple[Any, Any]:
        """One token on top of ``cache`` (it is at ``position``; the cache knows that already)."""
        result = self.model(self._torch.tensor([[token]], device=self.device), use_cache=True,
                            **{self._cache_kw: cache})
        return _cache_of(result), result.logits[0, -1]

    def _token_logprob(self, logits: Any, token: int) -> float:
        """The chosen token's log-probability under ``logits`` (one row, any dtype)."""
        return float(self._torch.log_softmax(logits.float(), dim=-1)[token])

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)

    def reset_peak_device_memory(self) -> None:
        """Start a new peak-VRAM window (CUDA only)."""
        if self.device.type == "cuda":
            self._torch.cuda.reset_peak_memory_stats(self.device)

    def peak_device_memory_bytes(self) -> int | None:
        """Peak memory torch allocated on the GPU since the last reset; None on the CPU."""
        if self.device.type != "cuda":
            return None
        return int(self._torch.cuda.max_memory_allocated(self.device))

    def info(self) -> dict[str, Any]:
        """Settings recorded with every result of this candidate."""
        torch = self._torch
        import transformers

        info: dict[str, Any] = {
            "library": "transformers", "library_version": transformers.__version__,
            "torch_version": torch.__version__, "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "context_size": self.max_length,
            "rolling_window_tokens": self.rolling_length,
            "batch_size": self.opts.batch_size, "source": self.source, "weights": str(self.folder),
            "trust_remote_code": self.opts.trust_remote_code, "prefix_cache": False,
            "shared_context": "packed (tree attention mask)" if self._packing_ok else "KV cache reuse",
            "decoding": "greedy (argmax)", "weights_on_disk_bytes": weights_size(self.folder),
            # an int8 model has no file: its size is its quantized weights' (torch.save of the state dict)
            "model_size_bytes": self._quant.get("weights_in_memory_bytes", weights_size(self.folder)),
            "quantize": self.opts.quantize, **self._quant,
        }
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
            info["cuda_version"] = torch.version.cuda
            info["gpu_total_memory_bytes"] = torch.cuda.get_device_properties(self.device).total_memory
        return info

    def close(self) -> None:
        """Drop the model."""
        self.model = None


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _copy_cache(cache: Any) -> Any:
    """A deep copy of a KV cache: expanding it for a batch must not change the shared one."""
    return copy.deepcopy(cache)


class _Layout:
    """A packed context and continuations: tokens, their positions and segments (0 = context),
    and for each continuation the sequence indices whose outputs predict its tokens."""

    def __init__(self, tokens: list[int], positions: list[int], segments: list[int], reads: list[list[int]]) -> None:
        self.tokens, self.positions, self.segments, self.reads = tokens, positions, segments, reads


def _pack(ctx: list[int], conts: Sequence[list[int]]) -> _Layout:
    tokens, positions, segments = list(ctx), list(range(len(ctx))), [0] * len(ctx)
    reads = []
    for k, cont in enumerate(conts, 1):
        start = len(tokens)
        body = cont[:-1]  # the last token is only predicted, never read
        tokens += body
        positions += range(len(ctx), len(ctx) + len(body))
        segments += [k] * len(body)
        reads.append([len(ctx) - 1, *range(start, start + len(body))][: len(cont)])
    return _Layout(tokens, positions, segments, reads)
