"""Attention math behind ``mmfuse.alignment`` and ``CrossAttentionFusion``: masked and
divided spatio-temporal attention, 3-D sinusoidal encodings, graph attention and masked
cross-attention."""

from __future__ import annotations

from .cross import (
    masked_cross_attention,
    masked_mean,
)
from .spatiotemporal import (
    divided_attention,
    graph_attention,
    masked_attention,
    sinusoidal_encoding_3d,
)

__all__ = [
    "divided_attention",
    "graph_attention",
    "masked_attention",
    "masked_cross_attention",
    "masked_mean",
    "sinusoidal_encoding_3d",
]
