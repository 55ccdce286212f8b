"""VideoEncoder: patch embedding against an explicit patch loop; frames stay independent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfuse import ShapeError
from mmfuse.encoders import VideoEncoder


def test_matches_explicit_patches() -> None:
    torch.manual_seed(0)
    enc = VideoEncoder(2, 6, patch_size=3, dtype=torch.float64)
    x = torch.randn(2, 4, 2, 6, 9, dtype=torch.float64)
    out = enc(x)
    assert out.shape == (2, 4, 2, 3, 6)
    w = enc.patch.weight.reshape(6, -1)  # (D, C*P*P)
    for b in range(2):
        for t in range(4):
            for i in range(2):
                for j in range(3):
                    patch = x[b, t, :, 3 * i : 3 * i + 3, 3 * j : 3 * j + 3].reshape(-1)
                    z = F.layer_norm(w @ patch + enc.patch.bias, (6,), enc.norm.weight,
                                     enc.norm.bias, enc.norm.eps)
                    torch.testing.assert_close(out[b, t, i, j], z + enc.mlp(z))


def test_frames_are_independent() -> None:
    enc = VideoEncoder(3, 8, patch_size=4).eval()
    x = torch.randn(1, 5, 3, 8, 8)
    y = x.clone()
    y[:, 2] = torch.randn(3, 8, 8)
    a, b = enc(x), enc(y)
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(a[:, keep], b[:, keep])
    assert not torch.allclose(a[:, 2], b[:, 2])


def test_errors() -> None:
    enc = VideoEncoder(3, 8, patch_size=4)
    with pytest.raises(ShapeError, match=r"VideoEncoder: expected `video` of shape \(B, T, C, H, W\)"
                                         r" with H and W multiples of patch_size=4, got"):
        enc(torch.randn(1, 2, 3, 8, 6))
    with pytest.raises(ShapeError, match=r"expected `video` of shape \(B, T, C, H, W\) with C=3"):
        enc(torch.randn(1, 2, 1, 8, 8))
