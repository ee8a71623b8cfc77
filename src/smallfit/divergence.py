"""KL divergence of a quantized variant's next-token distributions from its sweep's reference.

For each task, the first ``KL_PROMPTS`` prompts the task ran on (as the model saw them, chat
template included) are evaluated, and at each of the last ``KL_POSITIONS`` positions of each
prompt the full next-token distribution is taken. ``kl_divergence`` is the mean over those rows
of ``KL(P_ref || P_var) = Σ_v P_ref(v) (log P_ref(v) − log P_var(v))`` in nats, and
``kl_divergence_p95`` its 95th percentile.

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
        raise SmallfitError("this backend cannot return next-token distributions; KL divergence needs llamacpp")
    return np.concatenate([rows(p, KL_POSITIONS) for p in prompts])


def reference_file(folder: Path, reference: Path, prompts: list[str]) -> Path:
    """Where the reference's distributions for these prompts are cached."""
    digest = hashlib.sha256()
    digest.update(f"{reference.name}:{reference.stat().st_size}:{KL_POSITIONS}".encode())
    for p in prompts:
        digest.update(hashlib.sha256(p.encode()).digest())
    return folder / f"reference-logprobs-{digest.hexdigest()[:16]}.npy"


def _save(path: Path, array: Any) -> None:
    import numpy as np

    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array.astype(np.float32))
    os.replace(tmp, path)


def kl_metrics(backend: Backend, sweep: dict[str, Any], config: BackendConfig, prompts: list[str]) -> dict[str, Any]:
    """KL figures of this candidate against the sweep's reference, and how they were obtained.

    ``sweep`` holds ``variant``, ``reference`` (the reference's variant name), ``reference_path``
    and ``dir`` (the sweep's cache folder). Returns the metrics plus a ``label``.
    """
    import numpy as np

    prompts = prompts[:KL_PROMPTS]
    ref_path, folder = Path(sweep["reference_path"]), Path(sweep["dir"])
    cached = reference_file(folder, ref_path, prompts)
    mine = distributions(backend, prompts)
    label = f"measured: {len(mine)} next-token distributions (last {KL_POSITIONS} positions of {len(prompts)} prompts)"
    if sweep["variant"] == sweep["reference"]:
        if not cached.is_file():
            _save(cached, mine)
        return {**summarize(kl_rows(mine, mine)), "label": f"{label}; this is the reference"}
    if cached.is_file():
        ref = np.load(cached)
    else:
        reference = load_backend("llamacpp", BackendConfig(model_path=ref_path, threads=config.threads,
                                                           context_size=config.context_size,
                                                           batch_size=config.batch_size))
        try:
            ref = distributions(reference, prompts)
        finally:
            reference.close()
        _save(cached, ref)
        label += "; reference computed in this process"
    return {**summarize(kl_rows(ref, mine)), "label": f"{label} against {sweep['reference']}"}
