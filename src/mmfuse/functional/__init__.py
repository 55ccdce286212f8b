"""Pure tensor math behind mmfuse's modules: no parameters, no module state."""

from __future__ import annotations

from .attention import divided_attention, graph_attention, masked_attention, sinusoidal_encoding_3d
from .fusion import fill_absent

__all__ = ["fill_absent"]
__all__ += ["divided_attention", "graph_attention", "masked_attention", "sinusoidal_encoding_3d"]
