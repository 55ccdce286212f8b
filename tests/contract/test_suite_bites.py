"""The contract suite must fail deliberately broken modules, and pass their correct twins.

Each broken module below has exactly one defect that the library has seen in peer code:
absent-modality values leaking into the output, rows mixed across the batch, no validation,
NaN for a row with nothing present, factors kept in a Python list (never saved), and token
masks ignored. The suite's checks are run on them directly and must raise AssertionError.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import Tensor, nn

from mmfuse._checks import check_features, check_mask, check_presence, presence_matrix
from mmfuse.fusion import ConcatFusion

from . import checks
from .cases.fusion_concat import DIMS, feature_inputs
from .registry import ContractCase

# ----------------------------------------------------------------------------- broken fusions


class LeakyFusion(ConcatFusion):
    """Ignores presence: absent modalities' values reach the output."""

    def forward(self, features: Mapping[str, Tensor], present=None) -> Tensor:
        check_features(features, self.dims, owner=self, allow_missing=True)
        return super().forward(features, None)


class BatchMixingFusion(ConcatFusion):
    """Centres the output over the batch: rows depend on each other."""

    def forward(self, features: Mapping[str, Tensor], present=None) -> Tensor:
        out = super().forward(features, present)
        return out - out.mean(0, keepdim=True)


class UncheckedFusion(nn.Module):
    """No validation: bad inputs fail deep inside (or not at all)."""

    def __init__(self, dims, out_dim=5, *, device=None, dtype=None):
        super().__init__()
        self.dims = dict(dims)
        self.proj = nn.Linear(sum(dims.values()), out_dim, device=device, dtype=dtype)

    def forward(self, features, present=None):
        return self.proj(torch.cat([features[m] for m in self.dims], -1))


class SoftmaxPresenceFusion(nn.Module):
    """Attention over present modalities, scores -inf for absent ones; ``nan_on_empty`` leaves
    the all-absent row as softmax of all -inf (NaN); otherwise that row is zeros."""

    def __init__(self, dims, out_dim=5, *, nan_on_empty=False, device=None, dtype=None):
        super().__init__()
        self.dims = dict(dims)
        self.nan_on_empty = nan_on_empty
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim, device=device, dtype=dtype)
                                   for m, d in dims.items()})
        self.score = nn.Linear(out_dim, 1, device=device, dtype=dtype)

    def forward(self, features, present=None):
        batch = check_features(features, self.dims, owner=self, allow_missing=True)
        ref = next(iter(features.values()))
        check_presence(present, self.dims, batch, owner=self, device=ref.device)
        obs = presence_matrix(features, present, list(self.dims), batch, ref.device)  # (B, M)
        z = torch.stack([
            self.proj[m](features[m]) if m in features
            else self.proj[m].bias.expand(batch, -1) for m in self.dims
        ], 1)  # (B, M, D)
        z = z.where(obs[..., None], torch.zeros((), dtype=z.dtype))
        s = self.score(z).squeeze(-1).masked_fill(~obs, float("-inf"))  # (B, M)
        w = s.softmax(-1)
        if not self.nan_on_empty:
            w = w.nan_to_num(0.0)
        return (w[..., None] * z).sum(1)


class ListFactorsFusion(ConcatFusion):
    """Keeps an extra factor in a Python list: not a registered parameter, so it is neither
    trained, saved nor moved (the bug of a widely copied low-rank fusion)."""

    def __init__(self, dims, *, device=None, dtype=None):
        super().__init__(dims, out_dim=5, device=device, dtype=dtype)
        self.factors = [torch.randn(5, device=device, dtype=dtype)]

    def forward(self, features, present=None):
        return super().forward(features, present) * self.factors[0]


# ----------------------------------------------------------------------------- token pooling


class MaskedMeanPool(nn.Module):
    """Mean over kept tokens, then a linear map; a row with no kept token gives the bias."""

    def __init__(self, dim=4, out_dim=3, *, ignore_mask=False, device=None, dtype=None):
        super().__init__()
        self.dims = {"tokens": dim}
        self.ignore_mask = ignore_mask
        self.proj = nn.Linear(dim, out_dim, device=device, dtype=dtype)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        from mmfuse._checks import check_tensor

        size = check_tensor(tokens, "B N D", owner=self, arg="tokens", D=self.dims["tokens"])
        check_mask(mask, owner=self, arg="mask", B=size["B"], N=size["N"], device=tokens.device)
        if mask is None or self.ignore_mask:
            pooled = tokens.mean(1)
        else:
            keep = mask[..., None].to(tokens.dtype)  # (B, N, 1)
            pooled = (tokens * keep).sum(1) / keep.sum(1).clamp(min=1)
            pooled = pooled.where(mask.any(1, keepdim=True), torch.zeros_like(pooled))
        return self.proj(pooled)


def token_inputs(batch: int, gen: torch.Generator) -> dict:
    return {"tokens": torch.randn(batch, 7, 4, generator=gen)}


# ----------------------------------------------------------------------------- cases


def fusion_case(id: str, build, out_dim: int = 5) -> ContractCase:
    return ContractCase(id=id, build=build, inputs=feature_inputs(DIMS),
                        out_shape=lambda b: (b, out_dim), features_arg="features",
                        presence_arg="present", empty_batch="empty")


def token_case(id: str, ignore_mask: bool) -> ContractCase:
    return ContractCase(id=id, build=lambda **dd: MaskedMeanPool(ignore_mask=ignore_mask, **dd),
                        inputs=token_inputs, out_shape=lambda b: (b, 3),
                        masks={("mask",): ("tokens",)}, tensor_args=("tokens",),
                        empty_batch="empty")


CORRECT = [
    fusion_case("concat", lambda **dd: ConcatFusion(DIMS, out_dim=5, **dd)),
    fusion_case("softmax", lambda **dd: SoftmaxPresenceFusion(DIMS, **dd)),
    token_case("masked-mean", ignore_mask=False),
]

BROKEN = [
    (fusion_case("leaky", lambda **dd: LeakyFusion(DIMS, out_dim=5, **dd)),
     checks.check_presence_invariance),
    (fusion_case("batch-mixing", lambda **dd: BatchMixingFusion(DIMS, out_dim=5, **dd)),
     checks.check_batch_independence),
    (fusion_case("unchecked", lambda **dd: UncheckedFusion(DIMS, **dd)),
     checks.check_bad_inputs),
    (fusion_case("nan-on-empty", lambda **dd: SoftmaxPresenceFusion(DIMS, nan_on_empty=True, **dd)),
     checks.check_presence_invariance),
    (fusion_case("list-factors", lambda **dd: ListFactorsFusion(DIMS, **dd)),
     checks.check_state_dict),
    (token_case("mask-ignored", ignore_mask=True), checks.check_mask_invariance),
]


@pytest.mark.parametrize("name", list(checks.ALL_CHECKS))
@pytest.mark.parametrize("case", CORRECT, ids=lambda c: c.id)
def test_correct_modules_pass_every_check(case: ContractCase, name: str) -> None:
    checks.ALL_CHECKS[name](case)


@pytest.mark.parametrize(("case", "check"), BROKEN, ids=[c.id for c, _ in BROKEN])
def test_suite_catches_broken_module(case: ContractCase, check) -> None:
    with pytest.raises(AssertionError):
        check(case)


def test_unchecked_module_fails_with_the_inner_error_named() -> None:
    case = BROKEN[2][0]
    with pytest.raises(AssertionError, match=r"from the validators, got (IndexError|RuntimeError|KeyError)"):
        checks.check_bad_inputs(case)


class ParameterFreeMean(nn.Module):
    """Mean of the present modalities (all of one size); no parameters."""

    def __init__(self, dims, *, device=None, dtype=None):
        super().__init__()
        self.dims = dict(dims)

    def forward(self, features, present=None):
        batch = check_features(features, self.dims, owner=self, allow_missing=True)
        ref = next(iter(features.values()))
        check_presence(present, self.dims, batch, owner=self, device=ref.device)
        obs = presence_matrix(features, present, list(self.dims), batch, ref.device)  # (B, M)
        z = torch.stack([features[m] if m in features else ref.new_zeros(batch, d)
                         for m, d in self.dims.items()], 1)  # (B, M, D)
        z = z.where(obs[..., None], torch.zeros((), dtype=z.dtype))
        return z.sum(1) / obs.sum(1, keepdim=True).clamp(min=1)


def test_parameter_free_module_checks_input_gradients() -> None:
    dims = {"a": 3, "b": 3}
    case = ContractCase(id="mean", build=lambda **dd: ParameterFreeMean(dims, **dd),
                        inputs=feature_inputs(dims), out_shape=lambda b: (b, 3),
                        features_arg="features", presence_arg="present", empty_batch="empty")
    for check in checks.ALL_CHECKS.values():
        check(case)
    detached = ContractCase(id="detached", build=lambda **dd: ParameterFreeMean(dims, **dd),
                            inputs=feature_inputs(dims), out_shape=lambda b: (b, 3),
                            output=lambda out: out.detach(), features_arg="features",
                            presence_arg="present", empty_batch="empty")
    with pytest.raises(AssertionError, match="does not depend differentiably"):
        checks.check_gradients(detached)
