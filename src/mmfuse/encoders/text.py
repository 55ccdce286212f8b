"""A byte-level tokenizer and a small Transformer text encoder (no download needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from .._checks import check_inputs, check_mask, check_size, check_tensor
from ._layers import TransformerBlock

__all__ = ["ByteTokenizer", "TextEncoder", "TokenizedText"]


class TokenizedText(NamedTuple):
    """Token ids (B, L) long and their mask (B, L) bool, True = real token (keep)."""

    ids: Tensor
    mask: Tensor


class ByteTokenizer:
    """UTF-8 bytes as tokens: a fixed vocabulary of 256 bytes plus ``PAD``, ``CLS`` and ``EOS``.

    Needs no vocabulary file and covers any text. Ids: ``PAD=0``, ``CLS=1``, ``EOS=2``, byte
    ``b`` is ``b + 3``. Each text becomes ``[CLS] bytes... [EOS]``, cut to ``max_len`` and
    padded to the longest text of the batch.

    Example:
        >>> ByteTokenizer(max_len=8)(["hi", "a"]).ids
        tensor([[  1, 107, 108,   2],
                [  1, 100,   2,   0]])
    """

    PAD, CLS, EOS = 0, 1, 2
    OFFSET = 3
    vocab_size = 256 + OFFSET

    def __init__(self, max_len: int = 128) -> None:
        check_size(max_len, owner="ByteTokenizer", arg="max_len")
        if max_len < 2:
            raise ValueError(f"ByteTokenizer: expected `max_len` >= 2, got {max_len}.")
        self.max_len = max_len

    def encode(self, text: str) -> list[int]:
        """One text to ids, ``[CLS] ... [EOS]``, at most ``max_len`` long."""
        body = [b + self.OFFSET for b in text.encode("utf-8")][: self.max_len - 2]
        return [self.CLS, *body, self.EOS]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text (special tokens dropped)."""
        return bytes(i - self.OFFSET for i in ids if i >= self.OFFSET).decode("utf-8", "replace")

    def __call__(self, texts: Sequence[str], *, device: torch.device | str | None = None
                 ) -> TokenizedText:
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(
            isinstance(t, str) for t in texts
        ):
            raise TypeError(
                f"ByteTokenizer: expected `texts` to be a sequence of str, got {type(texts).__name__}."
            )
        rows = [self.encode(t) for t in texts]
        length = max((len(r) for r in rows), default=2)
        ids = torch.full((len(rows), length), self.PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        ids = ids.to(device)
        return TokenizedText(ids, ids != self.PAD)


class TextEncoder(nn.Module):
    """Reference text encoder: byte tokens, learned positions, a few Transformer blocks.

    :meth:`tokenize` turns strings into ``(ids, mask)`` with a :class:`ByteTokenizer` (no
    download). ``forward`` gives one vector per text, the mean of its unmasked token outputs;
    :meth:`forward_tokens` the (B, L, D) token outputs, zero at masked positions.

    Masks are bool (B, L) with True = keep (a real token), the convention of
    ``F.scaled_dot_product_attention``; the opposite of ``nn.MultiheadAttention``'s
    ``key_padding_mask``. A text with every token masked gives the zero vector, whatever its
    token values.

    For a pretrained sentence model use :class:`mmfuse.encoders.SentenceEncoder` instead.

    Args:
        out_dim: Feature size D.
        width: Transformer width (divisible by ``num_heads``).
        depth: Transformer blocks.
        num_heads: Attention heads.
        max_len: Longest token sequence (positions learned up to it).
        dropout: Attention dropout in training.

    Shape:
        - ids: (B, L) long, L <= max_len; mask: (B, L) bool, True = keep
        - output: (B, D); tokens: (B, L, D)

    Example:
        >>> enc = TextEncoder(32)
        >>> ids, mask = enc.tokenize(["a red square", "two"])
        >>> enc(ids, mask).shape
        torch.Size([2, 32])
    """

    def __init__(
        self,
        out_dim: int,
        *,
        width: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        max_len: int = 128,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        for arg, v in (("out_dim", out_dim), ("width", width), ("depth", depth),
                       ("num_heads", num_heads), ("max_len", max_len)):
            check_size(v, owner=self, arg=arg)
        if width % num_heads:
            raise ValueError(
                f"TextEncoder: expected `width` divisible by num_heads={num_heads}, got {width}."
            )
        self.out_dim, self.width, self.depth = out_dim, width, depth
        self.num_heads, self.max_len = num_heads, max_len
        self.tokenizer = ByteTokenizer(max_len)
        self.embed = nn.Embedding(ByteTokenizer.vocab_size, width, **dd)
        self.pos = nn.Parameter(torch.empty(max_len, width, **dd))
        self.blocks = nn.ModuleList(
            [TransformerBlock(width, num_heads, dropout=dropout, **dd) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, **dd)
        self.proj = nn.Linear(width, out_dim, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.reset_parameters()

    def tokenize(self, texts: Sequence[str]) -> TokenizedText:
        """Strings to ``(ids, mask)`` on the module's device."""
        return self.tokenizer(texts, device=self.pos.device)

    def forward_tokens(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, L, D) token outputs, zero where ``mask`` is False."""
        sizes = check_tensor(ids, "B L", owner=self, arg="ids", floating=None)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"TextEncoder: expected `ids` to be an integer tensor, got {ids.dtype}.")
        if sizes["L"] > self.max_len:
            raise ValueError(
                f"TextEncoder: expected `ids` of length L <= max_len={self.max_len}, "
                f"got {sizes['L']}."
            )
        check_mask(mask, owner=self, arg="mask", device=ids.device, B=sizes["B"], N=sizes["L"])
        check_inputs(self, {"ids": ids, "mask": mask})
        h = self.embed(ids) + self.pos[: sizes["L"]]  # (B, L, W)
        for block in self.blocks:
            h = block(h, mask)
        h = self.proj(self.norm(h))  # (B, L, D)
        if mask is None:
            return h
        return h.where(mask[..., None], torch.zeros((), dtype=h.dtype, device=h.device))

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        tokens = self.forward_tokens(ids, mask)  # (B, L, D)
        if mask is None:
            return tokens.mean(dim=1)
        count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(tokens.dtype)  # (B, 1)
        return tokens.sum(dim=1) / count  # masked tokens are zero

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        return (f"out_dim={self.out_dim}, width={self.width}, depth={self.depth}, "
                f"num_heads={self.num_heads}, max_len={self.max_len}")
