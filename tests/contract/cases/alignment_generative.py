"""Contract cases: the generative heads' deterministic forwards (eval mode).

The stochastic parts (condition dropout, posterior and augmentation noise) are off in eval mode
or fixed by the inputs; sampling loops are tested in tests/alignment/generative/. Zero-initialised
modulation and output layers are filled with small random values in ``build`` so that the
suite exercises the conditioning paths rather than an identity or a zero output.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse import ShapeError
from mmfuse.alignment import (
    ConditionalDecoder,
    ConditionEmbedding,
    ConditioningAugmentation,
    CVAEHead,
    DiffusionHead,
)

from ..registry import BadInput, ContractCase, register

DIMS = {"text": 6, "fused": 4}
E = 8


def excite(module: nn.Module, std: float = 0.2) -> nn.Module:
    """Fill every all-zero parameter (zero-initialised modulation) with small random values."""
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not bool(p.any()):
                p.normal_(0.0, std)
    return module


def cond_inputs(batch: int, gen: torch.Generator) -> dict:
    return {"cond": torch.randn(batch, E, generator=gen)}


# ----------------------------------------------------------------------------- ConditionEmbedding


def embedding_inputs(batch: int, gen: torch.Generator) -> dict:
    return {"features": {m: torch.randn(batch, d, generator=gen) for m, d in DIMS.items()}}


def embedding_all_inputs(batch: int, gen: torch.Generator) -> dict:
    return {
        "labels": torch.randint(0, 5, (batch,), generator=gen),
        "style": torch.randn(batch, 3, generator=gen),
        **embedding_inputs(batch, gen),
    }


def embedding_bad(kwargs: dict) -> list[BadInput]:
    labels = torch.zeros(3, dtype=torch.long)
    return [
        BadInput("float labels", {**kwargs, "labels": labels.float()}, TypeError, "labels"),
        BadInput("labels batch mismatch", {**kwargs, "labels": labels[:2]}, ShapeError,
                 "features"),
        BadInput("drop not bool", {**kwargs, "drop": torch.zeros(3)}, TypeError, "drop"),
    ]


register(ContractCase(
    id="ConditionEmbedding-features",
    build=lambda **dd: ConditionEmbedding(E, num_classes=5, dims=DIMS, **dd),
    inputs=embedding_inputs,
    out_shape=lambda b: (b, E),
    features_arg="features",
    presence_arg="present",
    empty_batch="empty",
    grad_exempt=("label_embed",),  # no labels passed in this case
    bad_inputs=embedding_bad,
))
register(ContractCase(
    id="ConditionEmbedding-all-sources",
    build=lambda **dd: ConditionEmbedding(E, num_classes=5, style_dim=3, dims=DIMS,
                                          hidden_dim=12, **dd),
    inputs=embedding_all_inputs,
    out_shape=lambda b: (b, E),
    features_arg="features",
    presence_arg="present",
    empty_batch="empty",
    grad_exempt=("null",),  # the label and style are always present here
    bad_inputs=lambda kw: [
        BadInput("style wrong size", {**kw, "style": kw["style"][:, :2]}, ShapeError, "style"),
    ],
))

# ----------------------------------------------------------------------------- augmentation

register(ContractCase(
    id="ConditioningAugmentation",
    build=lambda **dd: ConditioningAugmentation(E, 5, **dd),
    inputs=cond_inputs,
    out_shape=lambda b: (b, 5),
    tensor_args=["cond"],
    empty_batch="empty",
    float32_fields=("kl",),
    bad_inputs=lambda kw: [
        BadInput("noise wrong size", {**kw, "noise": torch.zeros(3, 4)}, ShapeError, "noise"),
    ],
))

register(ContractCase(
    id="ConditioningAugmentation-noise",  # the draw given: reparameterize's broadcast check runs
    build=lambda **dd: ConditioningAugmentation(E, 5, **dd),
    inputs=lambda b, g: {**cond_inputs(b, g), "noise": torch.randn(b, 5, generator=g)},
    out_shape=lambda b: (b, 5),
    tensor_args=["cond", "noise"],
    empty_batch="empty",
    float32_fields=("kl",),
))

# ----------------------------------------------------------------------------- decoder

register(ContractCase(
    id="ConditionalDecoder-image-adaln",
    build=lambda **dd: excite(ConditionalDecoder(E, (3, 8, 4), channels=8, **dd)),
    inputs=cond_inputs,
    out_shape=lambda b: (b, 3, 8, 4),
    tensor_args=["cond"],
    empty_batch="empty",
))
register(ContractCase(
    id="ConditionalDecoder-sequence-film",
    build=lambda **dd: excite(ConditionalDecoder(E, (12, 5), channels=8, modulation="film",
                                                 **dd)),
    inputs=cond_inputs,
    out_shape=lambda b: (b, 12, 5),
    tensor_args=["cond"],
    empty_batch="empty",
))

# ----------------------------------------------------------------------------- CVAE


def cvae_inputs(shape: tuple[int, ...]):
    def inputs(batch: int, gen: torch.Generator) -> dict:
        return {"x": torch.randn(batch, *shape, generator=gen),
                "cond": torch.randn(batch, E, generator=gen)}

    return inputs


register(ContractCase(
    id="CVAEHead-image",
    build=lambda **dd: CVAEHead((1, 6, 6), E, 4, hidden_dim=16, **dd),
    inputs=cvae_inputs((1, 6, 6)),
    out_shape=lambda b: (b, 1, 6, 6),
    tensor_args=["x", "cond"],
    empty_batch="empty",
    grad_exempt=("prior_net",),  # the prior enters the loss, not the reconstruction
    bad_inputs=lambda kw: [
        BadInput("noise wrong size", {**kw, "noise": torch.zeros(3, 5)}, ShapeError, "noise"),
    ],
))
register(ContractCase(
    id="CVAEHead-noise",  # the posterior draw given: reparameterize's broadcast check runs
    build=lambda **dd: CVAEHead((8, 3), E, 4, hidden_dim=16, **dd),
    inputs=lambda b, g: {**cvae_inputs((8, 3))(b, g), "noise": torch.randn(b, 4, generator=g)},
    out_shape=lambda b: (b, 8, 3),
    tensor_args=["x", "cond", "noise"],
    empty_batch="empty",
    grad_exempt=("prior_net",),
))
register(ContractCase(
    id="CVAEHead-sequence-decoder",
    build=lambda **dd: CVAEHead(
        (8, 3), E, 4, hidden_dim=16, prior="standard",
        decoder=excite(ConditionalDecoder(4 + E, (8, 3), channels=8, **dd)), **dd),
    inputs=cvae_inputs((8, 3)),
    out_shape=lambda b: (b, 8, 3),
    tensor_args=["x", "cond"],
    empty_batch="empty",
))

# ----------------------------------------------------------------------------- diffusion


def diffusion_inputs(shape: tuple[int, ...], steps: int):
    def inputs(batch: int, gen: torch.Generator) -> dict:
        return {"x": torch.randn(batch, *shape, generator=gen),
                "t": torch.randint(0, steps, (batch,), generator=gen),
                "cond": torch.randn(batch, E, generator=gen)}

    return inputs


def diffusion_bad(kwargs: dict) -> list[BadInput]:
    return [
        BadInput("float timesteps", {**kwargs, "t": kwargs["t"].float()}, TypeError, "t"),
        BadInput("timesteps batch mismatch", {**kwargs, "t": kwargs["t"][:2]}, ShapeError, "t"),
        BadInput("drop wrong shape", {**kwargs, "drop": torch.ones(3, 1, dtype=torch.bool)},
                 ShapeError, "drop"),
    ]


def register_diffusion(case_id: str, shape: tuple[int, ...], steps: int,
                       out: tuple[int, ...], **head_kwargs: object) -> None:
    """One DiffusionHead case: data of ``shape``, ``steps`` timesteps, output (B, *out)."""
    register(ContractCase(
        id=case_id,
        build=lambda **dd: excite(DiffusionHead(shape, E, hidden_dim=16, num_steps=steps,
                                                **head_kwargs, **dd)),
        inputs=diffusion_inputs(shape, steps),
        out_shape=lambda b: (b, *out),
        tensor_args=["x", "cond"],
        empty_batch="empty",
        grad_exempt=("null_cond",),  # used only where a condition is dropped
        bad_inputs=diffusion_bad,
    ))


register_diffusion("DiffusionHead-image-eps", (1, 4, 4), 50, (1, 4, 4), num_blocks=2)
register_diffusion("DiffusionHead-sequence-v", (5, 3), 20, (5, 3), num_blocks=1,
                   schedule="linear", prediction="v")
register_diffusion("DiffusionHead-image-unet", (2, 8, 4), 50, (2, 8, 4), num_blocks=1,
                   backbone="unet", unet_channels=8)
# learned_range: the prediction, then one variance value per element, along dim 1
register_diffusion("DiffusionHead-image-learned_range", (1, 4, 4), 50, (2, 4, 4), num_blocks=1,
                   variance_type="learned_range")
register_diffusion("DiffusionHead-sequence-unet-learned_range", (6, 3), 20, (12, 3),
                   num_blocks=1, backbone="unet", unet_channels=8, prediction="v",
                   variance_type="learned_range")
register_diffusion("DiffusionHead-sequence-unet-v", (6, 3), 20, (6, 3), num_blocks=1,
                   backbone="unet", unet_channels=8, prediction="v")
