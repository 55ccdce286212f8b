"""mmfuse: composable PyTorch modules for multimodal fusion, alignment and perception.

Three layers, as in the source design: ``perception`` (sensors and APIs to timestamped
tensors), features (encoders to vectors and tokens) and decision (``fusion``, ``alignment``,
``metrics``). Subpackages load on first use, so ``import mmfuse`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ModalityError, ShapeError

__version__ = "0.1.0"

__all__ = ["ModalityError", "ShapeError", "__version__"]

_SUBMODULES = {
    "alignment",
    "data",
    "deploy",
    "distributed",
    "encoders",
    "functional",
    "fusion",
    "metrics",
    "perception",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBMODULES])
