"""Judging a run: the budget (budget), intervals of stored figures (evidence, stats) and the
verdicts (verdict)."""
