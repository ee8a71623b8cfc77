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
its log-probabilities (float32) in a cache entry (:mod:`smallfit.cache`, kind ``fidelity``)
keyed by the reference model's content, its backend and options, and the prompts; each
variant's worker reads that entry, so the reference is evaluated once per prompt set and no
variant loads two models. When the entry is missing (the reference failed, or the cache was
cleared before a resume), the variant's worker loads the reference itself to make it, after the
task's measurements are taken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smallfit import cache
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


def reference_key(sweep: dict[str, Any], prompts: list[str], what: str) -> str:
    """The cache key of the reference's distributions (or embeddings) of these prompts: the
    reference model's content, the backend and options it runs with, the prompts."""
    params = {"what": what, "positions": KL_POSITIONS, "prompts": prompts,
              "backend": sweep.get("reference_backend", "llamacpp"), "options": sweep.get("reference_options") or {}}
    return cache.key(inputs=[Path(sweep["reference_path"])], version="reference-figures-1", params=params)


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
    ``reference_backend`` and ``reference_options``. Returns the metrics plus a ``label``.
    """
    import numpy as np

    prompts = prompts[:KL_PROMPTS]
    encoder = bool(getattr(backend.capabilities, "embedding", False)) and not backend.capabilities.loglikelihood
    what = "embeddings" if encoder else "logprobs"
    mine = _measure(backend, prompts, encoder)
    if encoder:
        label = f"measured: cosine similarity of {len(prompts)} embeddings"
    else:
        label = (f"measured: {len(mine['logprobs'])} next-token distributions (last {KL_POSITIONS} positions of "
                 f"{len(prompts)} prompts)")
    is_reference = sweep["variant"] == sweep["reference"]
    computed: list[bool] = []

    def save(out: Path) -> None:
        figures = mine if is_reference else _reference(sweep, config, prompts, encoder)
        np.savez(out / "figures.npz", **figures)
        computed.append(True)

    entry = cache.build("fidelity", reference_key(sweep, prompts, what), f"{Path(sweep['reference_path']).stem}-{what}",
                        save)
    if is_reference:
        ref = mine
        label += "; this is the reference"
    else:
        with np.load(entry / "figures.npz") as data:
            ref = {k: data[k] for k in data.files}
        if computed:
            label += "; reference computed in this process"
        label += f" against {sweep['reference']}"
    if encoder:
        return {**cosine_summary(ref["embeddings"], mine["embeddings"]), "label": label}
    if not np.array_equal(ref["tokens"], mine["tokens"]):
        raise SmallfitError(f"this variant's tokenizer splits the prompts differently from {sweep['reference']}'s, "
                            "so their next-token distributions are not comparable")
    return {**summarize(kl_rows(ref["logprobs"], mine["logprobs"])), "label": label}
