"""Building blocks shared by the reference encoders (private)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBlock", "TransformerBlock", "groups_for"]


def groups_for(channels: int) -> int:
    """GroupNorm groups: 8 where they divide the channels, else 1 (per-sample statistics either
    way, so the encoders never mix rows of a batch)."""
    return 8 if channels % 8 == 0 else 1


class ConvBlock(nn.Sequential):
    """3x3 convolution, GroupNorm, GELU."""

    def __init__(self, c_in: int, c_out: int, stride: int, **dd: Any) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, **dd),
            nn.GroupNorm(groups_for(c_out), c_out, **dd),
            nn.GELU(),
        )


class TransformerBlock(nn.Module):
    """Pre-norm self-attention block on F.scaled_dot_product_attention.

    ``mask`` is (B, N) bool, True = keep (the convention of ``scaled_dot_product_attention``,
    the opposite of ``nn.MultiheadAttention``'s ``key_padding_mask``). A row with every key
    masked attends to all keys instead, so it stays finite; callers discard those rows.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4, dropout: float = 0.0,
                 **dd: Any) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.qkv = nn.Linear(dim, 3 * dim, **dd)
        self.out = nn.Linear(dim, dim, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim, **dd), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim, **dd))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.num_heads, d // self.num_heads
                                                  ).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d/h)
        attn_mask = None
        if mask is not None:
            keep = mask | ~mask.any(dim=1, keepdim=True)  # (B, N); fully masked rows see all
            attn_mask = keep[:, None, None, :]  # (B, 1, 1, N)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.out(a.transpose(1, 2).reshape(b, n, d))  # (B, N, D)
        return x + self.mlp(self.norm2(x))
