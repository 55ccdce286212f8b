"""Pure tensor math behind mmfuse's modules: no parameters, no module state."""

from __future__ import annotations

from .fusion import fill_absent

__all__ = ["fill_absent"]
