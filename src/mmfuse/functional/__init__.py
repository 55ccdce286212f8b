"""Pure tensor math behind mmfuse's modules: no parameters, no module state."""

from __future__ import annotations

from .contrastive import info_nce, siglip_loss
from .fusion import fill_absent

__all__ = ["fill_absent", "info_nce", "siglip_loss"]
