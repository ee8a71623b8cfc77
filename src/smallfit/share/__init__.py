"""Shareable, verifiable results: signed result bundles (:mod:`.bundle`), the signing key
(:mod:`.keys`), the offline check (:mod:`.verify`) and physical plausibility bounds (:mod:`.physics`)."""
