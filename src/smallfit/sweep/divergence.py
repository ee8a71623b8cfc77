"""Fidelity of a sweep variant to its sweep's reference: KL divergence of next-token
distributions for causal LMs, cosine similarity of embeddings for encoders.

For each task, the first ``KL_PROMPTS`` prompts the task ran on (as the model saw them, chat
template included) are evaluated, and at each of the last ``KL_POSITIONS`` positions of each
prompt the full next-token distribution is taken. ``kl_divergence`` is the mean over those rows
of ``KL(P_ref || P_var) = Σ_v P_ref(v) (log P_ref(v) − log P_var(v))`` in nats, and
``kl_divergence_p95`` its 95th percentile. The positions compared must hold the same tokens:
the reference's token ids are saved with its distributions, and a variant whose tokenizer
splits a prompt differently gets no figure (with that reason) rather than a wrong one.

An encoder variant instead embeds the same prompts; ``embedding_cosine`` is the mean cosine
similarity of its embedding and the reference's for each text, ``embedding_cosine_min`` the
lowest.

Design: the reference variant's own worker, which has the reference model loaded anyway, saves
its log-probabilities as a float32 ``.npy`` file in the sweep's cache folder, keyed by the
reference file and a hash of the prompts; each variant's worker reads that file, so the
reference is evaluated once per prompt set and no variant loads two models. When the file is
missing (the reference failed, or the cache was cleared before a resume), the variant's worker
loads the reference itself to make it, after the task's measurements are taken.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from smallfit.backends.base import Backend, BackendConfig, load_backend
from smallfit.errors import SmallfitError
from smallfit.scoring import percentile

KL_PROMPTS = 16
KL_POSITIONS = 4


def kl_rows(ref_logprobs: Any, logprobs: Any) -> Any:
    """Per-row ``KL(P_ref || P)`` in nats from two (rows, vocab) arrays of log-probabilities.

    Computed in float64; a token the reference gives probability 0 (log-prob ``-inf``) adds 0.
    """
    import numpy as np

    ref = np.asarray(ref_logprobs, dtype=np.float64)
    other = np.asarray(logprobs, dtype=np.float64)
    if ref.shape != other.shape:
        raise SmallfitError(f"reference distributions have shape {ref.shape}, the variant's {other.shape}: "
                            "the variants do not share a vocabulary")
    p = np.exp(ref)
    terms = p * np.where(p > 0, ref - other, 0.0)
    return np.maximum(terms.sum(axis=1), 0.0)  # rounding can leave -1e-12 for identical rows


def summarize(values: Any) -> dict[str, float | None]:
    """``kl_divergence`` (mean) and ``kl_divergence_p95`` of per-row divergences."""
    vals = [float(v) for v in values]
    if not vals:
        return {"kl_divergence": None, "kl_divergence_p95": None}
    return {"kl_divergence": sum(vals) / len(vals), "kl_divergence_p95": percentile(vals, 95)}


def distributions(backend: Backend, prompts: list[str]) -> Any:
    """The stacked next-token log-probabilities of the last positions of each prompt."""
    import numpy as np

    rows = getattr(backend, "next_token_logprobs", None)
    if rows is None:
        raise SmallfitError("this backend cannot return next-token distributions (no next_token_logprobs)")
    return np.concatenate([rows(p, KL_POSITIONS) for p in prompts])


def scored_tokens(backend: Backend, prompts: list[str]) -> Any:
    """The token ids at the positions :func:`distributions` reads (the last of each prompt)."""
    import numpy as np

    tails = [(backend.tokenize(p) or [-1])[-KL_POSITIONS:] for p in prompts]  # type: ignore[attr-defined]
    return np.array([t for tail in tails for t in tail], dtype=np.int64)


def embeddings(backend: Backend, prompts: list[str]) -> Any:
    """Unit-length embeddings of the prompts (float64 rows)."""
    import numpy as np

    vectors = np.asarray(backend.embed(prompts), dtype=np.float64)  # type: ignore[attr-defined]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def cosine_summary(ref: Any, mine: Any) -> dict[str, float | None]:
    """``embedding_cosine`` (mean) and ``embedding_cosine_min`` of row-wise cosine similarities."""
    if ref.shape != mine.shape:
        raise SmallfitError(f"reference embeddings have shape {ref.shape}, the variant's {mine.shape}")
    cos = (ref * mine).sum(axis=1)
    return {"embedding_cosine": float(cos.mean()), "embedding_cosine_min": float(cos.min())}


def reference_file(folder: Path, reference: Path, prompts: list[str], what: str = "logprobs") -> Path:
    """Where the reference's distributions (or embeddings) for these prompts are cached."""
    digest = hashlib.sha256()
    size = reference.stat().st_size if reference.is_file() else 0
    digest.update(f"{reference.name}:{size}:{KL_POSITIONS}".encode())
    for p in prompts:
        digest.update(hashlib.sha256(p.encode()).digest())
    return folder / f"reference-{what}-{digest.hexdigest()[:16]}.npz"


def _save(path: Path, **arrays: Any) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _measure(backend: Backend, prompts: list[str], encoder: bool) -> dict[str, Any]:
    import numpy as np

    if encoder:
        return {"embeddings": embeddings(backend, prompts)}
    return {"logprobs": distributions(backend, prompts).astype(np.float32), "tokens": scored_tokens(backend, prompts)}


def _reference(sweep: dict[str, Any], config: BackendConfig, prompts: list[str], encoder: bool) -> dict[str, Any]:
    """The reference's figures, loading the reference model in this process."""
    reference = load_backend(sweep["reference_backend"],
                             BackendConfig(model_path=Path(sweep["reference_path"]), threads=config.threads,
                                           context_size=config.context_size, batch_size=config.batch_size,
                                           options=sweep.get("reference_options") or {}))
    try:
        return _measure(reference, prompts, encoder)
    finally:
        reference.close()


def kl_metrics(backend: Backend, sweep: dict[str, Any], config: BackendConfig, prompts: list[str]) -> dict[str, Any]:
    """Fidelity figures of this candidate against the sweep's reference, and how they were obtained.

    ``sweep`` holds ``variant``, ``reference`` (the reference's variant name), ``reference_path``,
    ``reference_backend``, ``reference_options`` and ``dir`` (the sweep's cache folder). Returns
    the metrics plus a ``label``.
    """
    import numpy as np

    prompts = prompts[:KL_PROMPTS]
    encoder = bool(getattr(backend.capabilities, "embedding", False)) and not backend.capabilities.loglikelihood
    ref_path, folder = Path(sweep["reference_path"]), Path(sweep["dir"])
    cached = reference_file(folder, ref_path, prompts, "embeddings" if encoder else "logprobs")
    mine = _measure(backend, prompts, encoder)
    if encoder:
        label = f"measured: cosine similarity of {len(prompts)} embeddings"
    else:
        label = (f"measured: {len(mine['logprobs'])} next-token distributions (last {KL_POSITIONS} positions of "
                 f"{len(prompts)} prompts)")
    if sweep["variant"] == sweep["reference"]:
        if not cached.is_file():
            _save(cached, **mine)
        ref = mine
        label += "; this is the reference"
    else:
        if cached.is_file():
            with np.load(cached) as data:
                ref = {k: data[k] for k in data.files}
        else:
            ref = _reference(sweep, config, prompts, encoder)
            _save(cached, **ref)
            label += "; reference computed in this process"
        label += f" against {sweep['reference']}"
    if encoder:
        return {**cosine_summary(ref["embeddings"], mine["embeddings"]), "label": label}
    if not np.array_equal(ref["tokens"], mine["tokens"]):
        raise SmallfitError(f"this variant's tokenizer splits the prompts differently from {sweep['reference']}'s, "
                            "so their next-token distributions are not comparable")
    return {**summarize(kl_rows(ref["logprobs"], mine["logprobs"])), "label": label}
