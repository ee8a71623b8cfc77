"""Packing scored text into llama.cpp decode calls: many sequences per call, logits only where scored.

A *unit* is what is scored together: one context with all its continuations, or one
rolling-perplexity window. Its *prefix* (the context, or the whole window) is decoded once on the
unit's first sequence; a context's cache is then copied to one more sequence per further
continuation, and each continuation (its *branch*) is decoded on its own sequence. Units are
packed, whole, while their sequences fit ``max_seqs`` and each sequence fits ``max_len`` tokens;
a pack's prefixes go through llama_decode together, then its branches together, in calls of at
most ``n_batch`` tokens and ``max_rows`` scored positions.

A scored position's logits (one *row*) score one or more ``(request, target)`` pairs: the last
context token predicts the first token of every continuation.

This module only plans (pure Python, no llama.cpp); :class:`~smallfit.backends.llamacpp.LlamaCppBackend`
fills llama.cpp's batch from the plan and reads the rows back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

# (token, position, targets scored from its logits; empty: no logits wanted)
Item = tuple[int, int, tuple[tuple[int, int], ...]]


@dataclass
class Unit:
    """A prefix on local sequence 0, copied to sequences 1..n-1, then one branch per sequence."""

    prefix: list[Item] = field(default_factory=list)
    branches: list[list[Item]] = field(default_factory=list)

    @property
    def n_seqs(self) -> int:
        return max(1, len(self.branches))

    @property
    def longest(self) -> int:
        """Tokens in the cache of its longest sequence."""
        return len(self.prefix) + max((len(b) for b in self.branches), default=0)


def choices_unit(ctx: Sequence[int], conts: Sequence[tuple[int, Sequence[int]]]) -> Unit:
    """A context evaluated once for all of its continuations ``(request, tokens)`` (each non-empty):
    the context's last token scores each continuation's first token; then every continuation token
    but the last, on the continuation's own sequence, scores the next."""
    prefix: list[Item] = [(tok, p, ()) for p, tok in enumerate(ctx[:-1])]
    prefix.append((ctx[-1], len(ctx) - 1, tuple((req, cont[0]) for req, cont in conts)))
    branches = [[(tok, len(ctx) + j, ((req, cont[j + 1]),)) for j, tok in enumerate(cont[:-1])]
                for req, cont in conts]
    return Unit(prefix, branches)


def window_unit(request: int, ctx: Sequence[int], targets: Sequence[int]) -> Unit:
    """One rolling window: ``ctx`` unscored but its last token, which predicts ``targets[0]``; then
    every target but the last predicts the next one."""
    prefix: list[Item] = [(tok, p, ()) for p, tok in enumerate(ctx[:-1])]
    inputs = [ctx[-1], *targets[:-1]]
    prefix += [(tok, len(ctx) - 1 + j, ((request, targets[j]),)) for j, tok in enumerate(inputs)]
    return Unit(prefix, [])


@dataclass
class Call:
    """One llama_decode: each token's position and (global) sequence, and the targets of each
    scored position, in order."""

    tokens: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    scored: list[bool] = field(default_factory=list)
    rows: list[tuple[tuple[int, int], ...]] = field(default_factory=list)


@dataclass
class Pack:
    """Units decoded together: prefix calls, then copies ``(from, to)``, then branch calls."""

    units: list[Unit]
    copies: list[tuple[int, int]]
    prefix_items: list[tuple[Item, int]]
    branch_items: list[tuple[Item, int]]


def packs(units: Sequence[Unit], max_seqs: int) -> Iterator[Pack]:
    """Consecutive units grouped while their sequences fit ``max_seqs`` (a unit needing more than
    ``max_seqs`` sequences is the caller's to avoid)."""
    group: list[Unit] = []
    n_seq = 0
    for unit in units:
        if group and n_seq + unit.n_seqs > max_seqs:
            yield _pack(group)
            group, n_seq = [], 0
        group.append(unit)
        n_seq += unit.n_seqs
    if group:
        yield _pack(group)


def _pack(units: list[Unit]) -> Pack:
    copies, prefix_items, branch_items = [], [], []
    base = 0
    for unit in units:
        prefix_items += [(item, base) for item in unit.prefix]
        copies += [(base, base + k) for k in range(1, unit.n_seqs)]
        for k, branch in enumerate(unit.branches):
            branch_items += [(item, base + k) for item in branch]
        base += unit.n_seqs
    return Pack(units, copies, prefix_items, branch_items)


def calls(items: Sequence[tuple[Item, int]], n_batch: int, max_rows: int) -> Iterator[Call]:
    """Items in decode calls of at most ``n_batch`` tokens and ``max_rows`` scored positions (each
    sequence's tokens stay in order)."""
    call = Call()
    for (tok, pos, targets), seq in items:
        if len(call.tokens) >= n_batch or (targets and len(call.rows) >= max_rows):
            yield call
            call = Call()
        call.tokens.append(tok)
        call.pos.append(pos)
        call.seqs.append(seq)
        call.scored.append(bool(targets))
        if targets:
            call.rows.append(targets)
    if call.tokens:
        yield call
