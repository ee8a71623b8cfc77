"""Cascades: a small model answers, a larger one takes the examples it is unsure of.

:mod:`.data` reads the models' stored examples (matched by example id and prompt) into arrays,
:mod:`.replay` replays a cascade at any thresholds with no new inference, :mod:`.curves` gives
the deferral curve and its references (each model alone, a random router, the oracle) with
RouteLLM's summary figures and each signal's calibration, :mod:`.choose` picks the cheapest
threshold that meets a budget, and :mod:`.analysis` puts these together for the reports.
"""
