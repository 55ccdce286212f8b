"""Import optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

_EXTRA_OF = {
    "cv2": ("opencv-python-headless", "vision"),
    "soundfile": ("soundfile", "audio"),
    "sounddevice": ("sounddevice", "audio"),
    "httpx": ("httpx", "api"),
    "sklearn": ("scikit-learn", "demo"),
    "matplotlib": ("matplotlib", "demo"),
    "tqdm": ("tqdm", "demo"),
    "scipy": ("scipy", "data"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "onnxscript": ("onnxscript", "export"),
}


def require(module: str, *, feature: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` naming the ``pip install`` that provides it.

    Args:
        module: Importable name, e.g. ``"cv2"``.
        feature: What needs it, for the message, e.g. ``"mmfuse.perception.CameraLoader"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package, extra = _EXTRA_OF.get(module.split(".")[0], (module, "all"))
        raise ImportError(
            f"{feature} needs the optional dependency {package!r}, which is not installed "
            f'({exc}). Install it with: pip install "mmfuse[{extra}]"'
        ) from exc
