"""Contract cases: SpatioTemporalAttention, FactorizedSpatioTemporalAttention,
ModalityGraphAttention."""

from __future__ import annotations

from typing import Any

import torch

from mmfuse.alignment import (
    FactorizedSpatioTemporalAttention,
    ModalityGraphAttention,
    SpatioTemporalAttention,
)

from ..registry import ContractCase, register

T, H, W, DV, L, D, HEADS = 3, 2, 3, 6, 4, 8, 2
K = 4


def video_text_inputs(frame_mask: bool):
    """inputs(batch, gen): video (B, T, H, W, Dv), text (B, L, D); with ``frame_mask`` also a
    (B, T) all-kept video_mask, so the suite masks whole frames."""

    def inputs(batch: int, gen: torch.Generator) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "video": torch.randn(batch, T, H, W, DV, generator=gen),
            "text": torch.randn(batch, L, D, generator=gen),
        }
        if frame_mask:
            kw["video_mask"] = torch.ones(batch, T, dtype=torch.bool)
        return kw

    return inputs


def valid_queries(kwargs: dict[str, Any]) -> torch.Tensor:
    """Outputs compared under masking: kept text queries (masked ones are zero anyway)."""
    text = kwargs["text"]
    mask = kwargs.get("text_mask")
    keep = torch.ones(text.shape[:2], dtype=torch.bool) if mask is None else mask
    return keep[..., None]  # (B, L, 1)


MASKS = {("video_mask",): ("video",), ("text_mask",): ("text",)}

for cls in (SpatioTemporalAttention, FactorizedSpatioTemporalAttention):
    for suffix, frame_mask, extra in (
        ("", False, {}),
        ("-frames-learnedpos", True, {"pos_encoding": "learned"}),
        ("-sinusoidal", False, {"pos_encoding": "sinusoidal"}),
    ):
        register(ContractCase(
            id=cls.__name__ + suffix,
            build=lambda cls=cls, extra=extra, **dd: cls(D, HEADS, video_dim=DV, **extra, **dd),
            inputs=video_text_inputs(frame_mask),
            out_shape=lambda b: (b, L, D),
            tensor_args=("video", "text"),
            masks=MASKS,
            valid_output=valid_queries,
            empty_batch="empty",
        ))


def node_inputs(batch: int, gen: torch.Generator) -> dict[str, Any]:
    return {"nodes": torch.randn(batch, K, D, generator=gen)}


register(ContractCase(
    id="ModalityGraphAttention",
    build=lambda **dd: ModalityGraphAttention(D, HEADS, num_layers=2, **dd),
    inputs=node_inputs,
    out_shape=lambda b: (b, K, D),
    tensor_args=("nodes",),
    masks={("node_mask",): ("nodes",)},
    empty_batch="empty",
))
register(ContractCase(
    id="ModalityGraphAttention-learned-adjacency",
    build=lambda **dd: ModalityGraphAttention(
        D, HEADS, adjacency=torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]],
                                         dtype=torch.bool),
        learn_adjacency=True, **dd),
    inputs=node_inputs,
    out_shape=lambda b: (b, K, D),
    tensor_args=("nodes",),
    masks={("node_mask",): ("nodes",)},
    empty_batch="empty",
))
