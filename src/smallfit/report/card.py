"""``smallfit card``: Markdown for a model's README, with a Hugging Face ``model-index`` block.

The YAML is written by a tiny emitter (strings always double-quoted as JSON, which YAML reads),
so no YAML library is needed to produce it.
"""

from __future__ import annotations

import json
from typing import Any

from smallfit.errors import SmallfitError
from smallfit.metrics import EFFICIENCY_METRICS, QUALITY_METRICS
from smallfit.report.table import fmt_metric, high_of
from smallfit.results import RunResults

_HF_TASK = {"multiple_choice": ("multiple-choice", "Multiple choice"),
            "classification": ("text-classification", "Text classification"),
            "generation": ("text-generation", "Text generation"),
            "perplexity": ("text-generation", "Language modelling (perplexity)"),
            "embedding_classification": ("text-classification", "Text classification (nearest label embedding)")}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(round(value, 6)) if isinstance(value, float) else str(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def to_yaml(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML lines for nested dicts, lists and scalars."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{k}:")
                lines.extend(to_yaml(v, indent + 2))
            else:
                lines.append(f"{pad}{k}: {_scalar(v) if not isinstance(v, dict | list) else '[]'}")
    elif isinstance(value, list):
        for item in value:
            sub = to_yaml(item, indent + 2)
            lines.append(f"{pad}- {sub[0].lstrip()}" if sub else f"{pad}- []")
            lines.extend(sub[1:])
    else:
        lines.append(pad + _scalar(value))
    return lines


def _results(res: RunResults, candidate: str) -> list[dict[str, Any]]:
    out = []
    for r in res.rows:
        if r.candidate != candidate or r.error:
            continue
        metrics = [{"type": m, "value": v, "name": m + (f" (± {se:.3g} s.e., n={r.info.n_samples})"
                                                          if (se := r.metrics.get(f"{m}_stderr")) is not None else "")}
                   for m in QUALITY_METRICS if (v := r.metrics.get(m)) is not None]
        if not metrics:
            continue
        task_type, task_name = _HF_TASK.get(r.info.kind, ("text-generation", "Evaluation"))
        out.append({"task": {"type": task_type, "name": task_name},
                    "dataset": {"name": r.task, "type": r.task}, "metrics": metrics})
    return out


def model_card(res: RunResults, candidate: str) -> str:
    """The card: YAML front matter with ``model-index``, then efficiency figures, hardware and verdict."""
    names = [c["name"] for c in res.candidates]
    if candidate not in names:
        raise SmallfitError(f"run {res.run['id']} has no candidate {candidate!r}; its candidates: {', '.join(names)}")
    results = _results(res, candidate)
    front = ["---", *to_yaml({"model-index": [{"name": candidate, "results": results}]}), "---", ""]
    body = [f"# {candidate}: measured with smallfit", "",
            f"Run `{res.run['id']}`. Quality results are in the `model-index` metadata above"
            + ("." if results else " (none: no quality task of this candidate finished)."), ""]
    rows = [r for r in res.rows if r.candidate == candidate]
    body += ["## Efficiency", "", "| task | " + " | ".join(EFFICIENCY_METRICS) + " |",
             "|---|" + "---|" * len(EFFICIENCY_METRICS)]
    for r in rows:
        if r.error:
            cells = ["error: " + r.error.replace("|", "/")] + [""] * (len(EFFICIENCY_METRICS) - 1)
        else:
            cells = [fmt_metric(m, r.metrics.get(m)) for m in EFFICIENCY_METRICS]
        body.append(f"| {r.task} | " + " | ".join(cells) + " |")
    hw = json.loads(res.run.get("hardware_json") or "{}")
    body += ["", "Measured on: " + ", ".join(f"{k} {v}" for k, v in (
        ("CPU", hw.get("cpu_model")), ("usable CPUs", hw.get("usable_cpus")), ("threads", res.run.get("threads")),
        ("RAM", fmt_metric("peak_rss_bytes", hw.get("ram_bytes"))), ("OS", hw.get("os"))) if v is not None) + ".", ""]
    verdict = res.verdicts.get(candidate)
    if not res.budget or verdict is None:
        body.append("No budget was declared for this run: no verdict.")
    else:
        body += [f"## Verdict: {verdict.verdict}", "", f"Budget `{', '.join(res.budget)}` (95% intervals):", ""]
        for c in verdict.checks:
            interval = (f" [{fmt_metric(c.metric, c.low)}, {high_of(c)}], n={c.n}"
                        if c.low is not None else "")
            note = f": {c.reason}" if c.reason else ""
            body.append(f"- `{c.check}` on {c.task}: {fmt_metric(c.metric, c.value)}{interval} — {c.outcome}{note}")
    return "\n".join(front + body) + "\n"

