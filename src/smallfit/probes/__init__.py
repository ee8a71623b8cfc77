"""Probes: what is measured around the model (hardware, machine load, memory)."""
