"""transformers backend (extra ``hf``): a hub id, a local folder, or a GGUF file (dequantised).

Scores as lm-evaluation-harness's HF model does (same context/continuation split, same prefix
token), but faster: continuations that share a context reuse one evaluation of it through the
KV cache, other requests are length-sorted into right-padded batches, and logits are computed
only for positions that are scored. Batch size never changes a score beyond float rounding.

Safety: ``trust_remote_code`` is off unless the candidate's options turn it on, and only
safetensors weights load unless ``allow_pickle`` is set.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smallfit.backends.base import BackendConfig, Capabilities
from smallfit.backends.llamacpp import split_pair
from smallfit.errors import MissingExtraError, SmallfitError
from smallfit.models import cache_dir
from smallfit.records import (
    Completion,
    GenerationRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    RollingLoglikelihood,
    RollingRequest,
)

TokenPair = tuple[list[int], list[int]]


class HFOptions(BaseModel):
    """Candidate options understood by this backend (``options = {...}`` in a spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = Field(default="cpu", description="cpu, cuda, cuda:N or auto")
    batch_size: int = Field(default=8, ge=1, description="sequences per forward pass")
    trust_remote_code: bool = False
    allow_pickle: bool = False


def _import() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise MissingExtraError("torch/transformers", "hf") from None
    return torch, transformers


def gguf_to_safetensors(path: Path) -> Path:
    """Dequantise a GGUF file through transformers once and cache it as a safetensors folder.

    transformers refuses to save a GGUF-loaded model, so the weights are moved into a model
    built from the same config without its quantization settings, then saved.
    """
    torch, tf = _import()
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "hf" / f"{path.stem}-{key}"
    if (target / "smallfit-converted").is_file():
        return target
    tokenizer = tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "smallfit-converted").write_text(f"{path.resolve()}\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) or sum(
        p.stat().st_size for p in folder.glob("*.bin"))


class TransformersBackend:
    """A causal LM loaded through transformers, on CPU or CUDA."""

    capabilities = Capabilities(loglikelihood=True, generation=True, streaming=True)

    def __init__(self, config: BackendConfig) -> None:
        self._torch, tf = _import()
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
        self.max_length = int(min(config.context_size, getattr(self.model.config, "max_position_embeddings", 2048)))
        probe = self.tokenizer("a", add_special_tokens=True).input_ids
        bare = self.tokenizer("a", add_special_tokens=False).input_ids
        bos = self.tokenizer.bos_token_id
        self.add_bos = bos is not None and len(probe) > len(bare) and probe[0] == bos
        eot = self.tokenizer.eos_token_id
        self.prefix_token = bos if bos is not None else eot
        # transformers 5.x renamed past_key_values to cache; older releases only know the old name
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        self.eos_ids = {e for e in ([eos] if isinstance(eos, int) else list(eos or [])) + [eot] if e is not None}

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
                                        "use a safetensors copy, or set options = {allow_pickle = true} if you trust it")
            else:
                raise SmallfitError(f"{path} has no model weights (*.safetensors)")
        return path, "safetensors" if any(path.glob("*.safetensors")) else "pickle (allowed by the user)"

    # -- tokens ----------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids; BOS only where the tokenizer itself adds one (as lm-eval's HF model)."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=False).input_ids
        return [self.tokenizer.bos_token_id, *ids] if add_bos and self.add_bos else ids

    def _pair(self, req: LoglikelihoodRequest) -> TokenPair:
        context, continuation = split_pair(req.context, req.continuation)
        if not context:
            return [self.prefix_token], self.tokenize(continuation, add_bos=False)
        ctx = self.tokenize(context)
        whole = self.tokenize(context + continuation)
        return ctx, whole[len(ctx):]

    # -- scoring ---------------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        """Score continuations; a context shared by several is evaluated once."""
        pairs = [self._pair(r) for r in requests]
        scored = self._score(pairs)
        return [Loglikelihood(lp, greedy, len(cont)) for (lp, greedy), (_, cont) in zip(scored, pairs, strict=True)]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingLoglikelihood]:
        """Disjoint windows of the context size, each predicted from the token before it."""
        window = self.max_length - 1
        pairs: list[TokenPair] = []
        owners: list[int] = []
        counts = []
        for i, req in enumerate(requests):
            tokens = self.tokenize(req.text, add_bos=False)
            counts.append(len(tokens))
            for start in range(0, len(tokens), window):
                first = self.prefix_token if start == 0 else tokens[start - 1]
                pairs.append(([first], tokens[start : start + window]))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (lp, _) in zip(owners, self._score(pairs), strict=True):
            totals[owner] += lp
        return [RollingLoglikelihood(t, n) for t, n in zip(totals, counts, strict=True)]

    def _score(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (ctx, _) in enumerate(pairs):
            groups[tuple(ctx)].append(i)
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        singles = [idxs[0] for idxs in groups.values() if len(idxs) == 1]
        for idxs in groups.values():
            if len(idxs) > 1:
                for i, res in zip(idxs, self._score_shared([pairs[i] for i in idxs]), strict=True):
                    out[i] = res
        singles.sort(key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))  # longest first
        for lo in range(0, len(singles), self.opts.batch_size):
            chunk = singles[lo : lo + self.opts.batch_size]
            for i, res in zip(chunk, self._score_batch([pairs[i] for i in chunk]), strict=True):
                out[i] = res
        return [o if o is not None else (0.0, True) for o in out]

    def _fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        cont = cont[-(self.max_length - 1):] if len(cont) >= self.max_length else cont
        keep = max(1, self.max_length - len(cont))
        return ctx[-keep:], cont

    def _gather(self, logits: Any, rows: Sequence[tuple[int, list[int]]]) -> list[tuple[float, bool]]:
        """Sum the log-probabilities of ``targets`` read from ``logits[row, start + j]``."""
        torch = self._torch
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        results = []
        for b, (start, targets) in enumerate(rows):
            if not targets:
                results.append((0.0, True))
                continue
            span = logprobs[b, start : start + len(targets)]
            index = torch.tensor(targets, device=span.device).unsqueeze(-1)
            total = float(span.gather(-1, index).sum(dtype=torch.float64))
            greedy = bool((span.argmax(-1) == index.squeeze(-1)).all())
            results.append((total, greedy))
        return results

    def _score_batch(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        """Full sequences, right-padded (padding after real tokens cannot be attended to under
        causal attention), logits kept from the first scored position onwards."""
        torch = self._torch
        fitted = [self._fit(ctx, cont) for ctx, cont in pairs]
        seqs = [(ctx + cont)[:-1] for ctx, cont in fitted]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.prefix_token, dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
        first = min(len(ctx) - 1 for ctx, _ in fitted)
        with torch.inference_mode():
            logits = self.model(ids.to(self.device), use_cache=False, logits_to_keep=width - first).logits
        return self._gather(logits, [(len(ctx) - 1 - first, cont) for ctx, cont in fitted])

    def _score_shared(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        """One context, several continuations: the context goes through the model once, then
        the continuations run as a batch on top of its KV cache."""
        torch = self._torch
        longest = max(len(cont) for _, cont in pairs)
        ctx, _ = self._fit(pairs[0][0], [0] * longest)
        conts = [self._fit(ctx, cont)[1] for _, cont in pairs]
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
                results.extend(self._gather(logits, [(0, c) for c in chunk]))
        return results

    # -- generation ------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Greedy generation, one request at a time, timestamps after the device finished."""
        return [self._generate_one(r) for r in requests]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)

    def _generate_one(self, req: GenerationRequest) -> Completion:
        torch = self._torch
        t0 = time.perf_counter()
        prompt = self.tokenize(req.prompt) or [self.prefix_token]
        room = self.max_length - len(prompt)
        if room <= 0:
            raise SmallfitError(f"prompt of {len(prompt)} tokens leaves no room in the {self.max_length}-token context")
        out: list[int] = []
        times: list[float] = []
        finish, text = "length", ""
        with torch.inference_mode():
            result = self.model(torch.tensor([prompt], device=self.device), use_cache=True, logits_to_keep=1)
            for _ in range(min(req.max_tokens, room)):
                logits = result.logits[0, -1]
                if req.ignore_eos and self.eos_ids:
                    logits = logits.clone()
                    logits[list(self.eos_ids)] = -float("inf")
                tok = int(logits.argmax())
                self._sync()
                if tok in self.eos_ids:
                    finish = "eos"
                    break
                out.append(tok)
                times.append(time.perf_counter() - t0)
                text = self.tokenizer.decode(out, skip_special_tokens=True)
                hits = [text.find(s) for s in req.stop if s and s in text]
                if hits:
                    text, finish = text[: min(hits)], "stop"
                    break
                result = self.model(torch.tensor([[tok]], device=self.device), use_cache=True,
                                    **{self._cache_kw: _cache_of(result)})
        latency = times[-1] if times else time.perf_counter() - t0
        return Completion(text=text, n_prompt_tokens=len(prompt), n_output_tokens=len(out),
                          ttft_s=times[0] if times else None, latency_s=latency,
                          token_times_s=tuple(times), finish_reason=finish)

    def info(self) -> dict[str, Any]:
        """Settings recorded with every result of this candidate."""
        torch = self._torch
        import transformers

        info: dict[str, Any] = {
            "library": "transformers", "library_version": transformers.__version__,
            "torch_version": torch.__version__, "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "context_size": self.max_length,
            "batch_size": self.opts.batch_size, "source": self.source, "weights": str(self.folder),
            "trust_remote_code": self.opts.trust_remote_code, "prefix_cache": False,
            "decoding": "greedy (argmax)", "model_size_bytes": _weights_bytes(self.folder),
        }
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info

    def close(self) -> None:
        """Drop the model."""
        self.model = None


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _copy_cache(cache: Any) -> Any:
    """A deep copy of a KV cache: expanding it for a batch must not change the shared one."""
    import copy

    return copy.deepcopy(cache)
