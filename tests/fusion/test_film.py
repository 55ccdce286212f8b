"""FiLMFusion: identity at initialisation, the modulation formula, target/conditioner absence."""

from __future__ import annotations

import pytest
import torch

from fusion._reference import (
    assert_all_present_fast_path_equals_presence_path,
    random_features,
    randomise,
)
from mmfuse.functional import film
from mmfuse.fusion import FiLMFusion

DIMS = {"image": 5, "text": 3, "audio": 4}


def test_starts_as_projection_of_target() -> None:
    torch.manual_seed(0)
    f = FiLMFusion(DIMS, 6, target="text")
    x = random_features(DIMS, 4, torch.float32)
    torch.testing.assert_close(f(x), f.proj(x["text"]))


def test_modulation_formula_and_absence() -> None:
    torch.manual_seed(1)
    f = FiLMFusion(DIMS, 6, target="image", dtype=torch.float64)
    randomise(f)
    x = random_features(DIMS, 4)
    present = {
        "image": torch.tensor([True, False, True, False]),
        "audio": torch.tensor([True, True, False, False]),
        "text": torch.tensor([True, True, False, False]),
    }
    got = f(x, present)
    for i in range(4):
        h = f.proj(x["image"][i]) if bool(present["image"][i]) else f.missing
        mod = torch.zeros(12, dtype=torch.float64)
        for m in ("text", "audio"):
            if bool(present[m][i]):
                mod = mod + f.cond[m](x[m][i])
        want = (1 + mod[:6]) * h + mod[6:]
        torch.testing.assert_close(got[i], want)
    # row 2: only the target, no conditioning: its projection; row 3: nothing: `missing`
    torch.testing.assert_close(got[2], f.proj(x["image"][2]))
    torch.testing.assert_close(got[3], f.missing)


def test_default_target_is_first_modality() -> None:
    assert FiLMFusion(DIMS, 4).target == "image"


def test_gradcheck_float64() -> None:
    torch.manual_seed(2)
    f = FiLMFusion(DIMS, 3, dtype=torch.float64)
    randomise(f)
    names = list(DIMS)
    xs = tuple(v.requires_grad_() for v in random_features(DIMS, 2).values())
    present = {"text": torch.tensor([False, True])}
    assert torch.autograd.gradcheck(lambda *a: f(dict(zip(names, a)), present), xs)
    g = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(film, (g, g.detach().clone().requires_grad_(),
                                           g.detach().clone().requires_grad_()))


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"FiLMFusion: unknown `target` 'video'; expected one of"):
        FiLMFusion(DIMS, 4, target="video")
    with pytest.raises(ValueError, match=r"FiLMFusion: expected `dims` to name at least 2 modalities \(a target"):
        FiLMFusion({"image": 3}, 4)
    assert "target='image'" in repr(FiLMFusion(DIMS, 4))


def test_all_present_fast_path_equals_presence_path() -> None:
    torch.manual_seed(5)
    assert_all_present_fast_path_equals_presence_path(FiLMFusion(DIMS, 4), DIMS)
