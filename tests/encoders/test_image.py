"""ImageEncoder: against an explicit functional re-computation, and on real digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfuse import ShapeError
from mmfuse.encoders import ImageEncoder


def _reference_tokens(enc: ImageEncoder, x: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(enc.blocks):
        conv, norm = block[0], block[1]
        x = F.conv2d(x, conv.weight, conv.bias, stride=1 if i == 0 else 2, padding=1)
        x = F.gelu(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps))
    x = F.conv2d(x, enc.proj.weight, enc.proj.bias)  # (B, D, H', W')
    _b, _d = x.shape[:2]
    return torch.stack([x[:, :, i, j] for i in range(x.shape[2]) for j in range(x.shape[3])], 1)


def test_tokens_and_pooled_match_reference() -> None:
    torch.manual_seed(0)
    enc = ImageEncoder(3, 16, width=8, depth=3, dtype=torch.float64)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    tokens = enc.forward_tokens(x)
    assert tokens.shape == (2, 3 * 2, 16)  # 9 -> 5 -> 3, 7 -> 4 -> 2
    torch.testing.assert_close(tokens, _reference_tokens(enc, x))
    torch.testing.assert_close(enc(x), tokens.mean(1))


def test_errors() -> None:
    enc = ImageEncoder(1, 8)
    with pytest.raises(ShapeError, match=r"ImageEncoder: expected `images` of shape \(B, C, H, W\) "
                                         r"with C=1, got \(2, 3, 8, 8\)"):
        enc(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected `out_dim` to be a positive int, got 0"):
        ImageEncoder(1, 0)


def test_learns_real_digits() -> None:
    """A few hundred steps on sklearn's real handwritten digits beat chance by far."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(data.target)
    enc = ImageEncoder(1, 32, width=16, depth=2)
    head = torch.nn.Linear(32, 10)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=3e-3)
    train, test = slice(0, 1200), slice(1200, None)
    for _step in range(150):
        idx = torch.randint(0, 1200, (64,))
        loss = F.cross_entropy(head(enc(x[train][idx])), y[train][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (head(enc(x[test])).argmax(1) == y[test]).float().mean().item()
    assert acc > 0.8
