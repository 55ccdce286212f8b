"""Contract cases: InfoNCELoss and SigLIPLoss.

Contrastive losses couple the rows of a batch (every row is a negative for the others), so
they are not batch independent; they return a scalar; an empty batch is an error.
"""

from __future__ import annotations

import torch

from mmfuse import ShapeError
from mmfuse.alignment import InfoNCELoss, SigLIPLoss

from ..registry import BadInput, ContractCase, register

D = 8


def pair_inputs(batch: int, gen: torch.Generator) -> dict:
    return {"a": torch.randn(batch, D, generator=gen), "b": torch.randn(batch, D, generator=gen)}


def grouped_inputs(batch: int, gen: torch.Generator) -> dict:
    out = pair_inputs(batch, gen)
    out["positives"] = torch.randint(0, 3, (batch,), generator=gen)
    out["weights"] = torch.rand(batch, generator=gen) + 0.5
    return out


def bad_positives(kwargs: dict) -> list[BadInput]:
    n = kwargs["a"].shape[0]
    return [
        BadInput("positives of floats", {**kwargs, "positives": torch.zeros(n)}, TypeError,
                 "positives"),
        BadInput("positives matrix of the wrong size",
                 {**kwargs, "positives": torch.ones(n, n + 1, dtype=torch.bool)}, ShapeError,
                 "positives"),
        BadInput("weights of the wrong length", {**kwargs, "weights": torch.ones(n + 1)},
                 ShapeError, "weights"),
    ]


COMMON = {"out_shape": lambda b: (), "tensor_args": ("a", "b"), "batch_independent": False,
          "empty_batch": "error", "bad_inputs": bad_positives}

register(ContractCase(id="InfoNCELoss", build=lambda **dd: InfoNCELoss(**dd),
                      inputs=pair_inputs, **COMMON))
register(ContractCase(id="InfoNCELoss-groups-smoothing",
                      build=lambda **dd: InfoNCELoss(label_smoothing=0.1, min_scale=1.0, **dd),
                      inputs=grouped_inputs, **COMMON))
register(ContractCase(id="InfoNCELoss-tiled",
                      build=lambda **dd: InfoNCELoss(chunk_size=2, **dd),
                      inputs=pair_inputs, **COMMON))
register(ContractCase(id="SigLIPLoss", build=lambda **dd: SigLIPLoss(**dd),
                      inputs=pair_inputs, **COMMON))
register(ContractCase(id="SigLIPLoss-groups-tiled",
                      build=lambda **dd: SigLIPLoss(chunk_size=2, max_scale=50.0, **dd),
                      inputs=grouped_inputs, **COMMON))
