"""Contract cases: SupConLoss (supervised, with labels; self-supervised views; tiled, L_in).

Like the other contrastive losses it couples the rows of a batch (not batch independent),
returns a scalar, and refuses an empty batch.
"""

from __future__ import annotations

import torch

from mmfuse import ShapeError
from mmfuse.alignment import SupConLoss

from ..registry import BadInput, ContractCase, register

D = 8


def views(batch: int, gen: torch.Generator) -> dict:
    return {"features": torch.randn(batch, 2, D, generator=gen)}


def labelled(batch: int, gen: torch.Generator) -> dict:
    out = views(batch, gen)
    out["labels"] = torch.randint(0, 3, (batch,), generator=gen)
    out["weights"] = torch.rand(batch, generator=gen) + 0.5
    return out


def bad_labels(kwargs: dict) -> list[BadInput]:
    # any D is valid (one embedding tensor), so the suite's generic `tensor_args` checks
    # (which change D) do not apply; rank and dtype are checked here instead
    n, x = kwargs["features"].shape[0], kwargs["features"]
    return [
        BadInput("features of rank 4", {**kwargs, "features": x[..., None]}, ShapeError,
                 "features"),
        BadInput("integer features", {**kwargs, "features": x.long()}, TypeError, "features"),
        BadInput("labels of floats", {**kwargs, "labels": torch.zeros(n)}, TypeError, "labels"),
        BadInput("labels of the wrong length",
                 {**kwargs, "labels": torch.zeros(n + 1, dtype=torch.long)}, ShapeError,
                 "labels"),
        BadInput("features without a view axis",
                 {**kwargs, "features": torch.randn(n, D)[:, 0]}, ShapeError, "features"),
    ]


COMMON = {"out_shape": lambda b: (), "batch_independent": False,
          "empty_batch": "error", "bad_inputs": bad_labels}

register(ContractCase(id="SupConLoss", build=lambda **dd: SupConLoss(**dd), inputs=labelled,
                      **COMMON))
register(ContractCase(id="SupConLoss-views-learnable",
                      build=lambda **dd: SupConLoss(learnable=True, **dd), inputs=views,
                      **COMMON))
register(ContractCase(id="SupConLoss-in-tiled",
                      build=lambda **dd: SupConLoss(variant="in", chunk_size=2, **dd),
                      inputs=labelled, **COMMON))
