"""Errors raised by mmfuse's input validators.

Both subclass :class:`ValueError`, so code that already catches ``ValueError`` keeps working.
Messages follow one form: the module, the argument, what was expected, what was received::

    AttentionFusion: expected `text` of shape (B, D) with D=768, got (8, 512).
"""

from __future__ import annotations

__all__ = ["ModalityError", "ShapeError"]


class ShapeError(ValueError):
    """A tensor has the wrong rank or sizes for the module it was given to."""


class ModalityError(ValueError):
    """A modality mapping names modalities the module does not declare, or lacks required ones."""
