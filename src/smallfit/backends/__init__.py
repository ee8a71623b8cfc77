"""Backends: one module each, behind the :class:`~smallfit.backends.base.Backend` protocol."""

from smallfit.backends.base import Backend, BackendConfig, Capabilities, load_backend

__all__ = ["Backend", "BackendConfig", "Capabilities", "load_backend"]
