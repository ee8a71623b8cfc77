"""Quantization sweeps: variants of one model (quantize), their reference conversion (convert) and
their fidelity to it (divergence)."""
