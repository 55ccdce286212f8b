"""ConditionEmbedding against a naive per-row reference."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ModalityError, ShapeError
from mmfuse.alignment import ConditionEmbedding

DIMS = {"text": 5, "fused": 3}


def make(**kw) -> ConditionEmbedding:
    torch.manual_seed(0)
    return ConditionEmbedding(8, **{"num_classes": 4, "style_dim": 2, "dims": DIMS, **kw}).eval()


def inputs(b: int = 4):
    g = torch.Generator().manual_seed(1)
    return {
        "labels": torch.randint(0, 4, (b,), generator=g),
        "style": torch.randn(b, 2, generator=g),
        "features": {m: torch.randn(b, d, generator=g) for m, d in DIMS.items()},
    }


def naive(emb: ConditionEmbedding, labels, style, features, present):
    rows = []
    for i in range(labels.shape[0]):
        parts = []
        if present["label"][i]:
            parts.append(emb.label_embed.weight[labels[i]])
        if present["style"][i]:
            parts.append(emb.style_proj(style[i]))
        for m in DIMS:
            if present[m][i]:
                parts.append(emb.proj[m](features[m][i]))
        h = sum(parts) if parts else emb.null
        rows.append(emb.mlp(h))
    return torch.stack(rows)


def test_matches_naive_sum_of_present_sources() -> None:
    emb = make()
    kw = inputs(6)
    present = {
        "label": torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool),
        "style": torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool),
        "text": torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.bool),
        "fused": torch.tensor([1, 0, 0, 1, 1, 0], dtype=torch.bool),
    }
    got = emb(**kw, present=present)
    torch.testing.assert_close(got, naive(emb, **kw, present=present))
    # Row 5 has nothing present: it is the null condition, as is any dropped row.
    null = emb(**kw, drop=torch.ones(6, dtype=torch.bool))
    torch.testing.assert_close(got[5], null[0])
    torch.testing.assert_close(null, emb.mlp(emb.null).expand(6, 8))


def test_subsets_of_sources() -> None:
    emb = make()
    kw = inputs()
    only_labels = emb(labels=kw["labels"])
    torch.testing.assert_close(only_labels, emb.mlp(emb.label_embed(kw["labels"])))
    only_text = emb(features={"text": kw["features"]["text"]})
    torch.testing.assert_close(only_text, emb.mlp(emb.proj["text"](kw["features"]["text"])))
    style_labels = emb(labels=kw["labels"], style=kw["style"])
    torch.testing.assert_close(
        style_labels, emb.mlp(emb.label_embed(kw["labels"]) + emb.style_proj(kw["style"])))


def test_absent_values_do_not_matter() -> None:
    emb = make()
    kw = inputs()
    present = {"style": torch.tensor([True, False, True, False])}
    a = emb(**kw, present=present)
    style = kw["style"].clone()
    style[~present["style"]] = float("nan")
    b = emb(**{**kw, "style": style}, present=present)
    torch.testing.assert_close(a, b)


def test_condition_dropout_in_training_only() -> None:
    emb = make(cond_dropout=0.5)
    kw = inputs(400)
    torch.testing.assert_close(emb(**kw), make()(**kw))  # eval: no dropout
    emb.train()
    torch.manual_seed(3)
    out = emb(**kw)
    null = emb.mlp(emb.null)
    dropped = (out - null).abs().amax(-1) < 1e-6
    assert 0.4 < dropped.float().mean().item() < 0.6
    emb.eval()
    torch.testing.assert_close(out[~dropped], emb(**kw)[~dropped])


def test_gradients_reach_every_source_and_the_null() -> None:
    emb = make()
    kw = inputs()
    present = {s: torch.tensor([False, True, True, True]) for s in ("label", "style", *DIMS)}
    emb.train()
    emb(**kw, present=present).sum().backward()
    for name, p in emb.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_errors() -> None:
    with pytest.raises(ValueError, match="ConditionEmbedding: expected at least one source"):
        ConditionEmbedding(8)
    with pytest.raises(ValueError, match=r"ConditionEmbedding: expected `dims` names other than 'label' and 'style'"):
        ConditionEmbedding(8, dims={"label": 3})
    with pytest.raises(ValueError, match=r"ConditionEmbedding: expected `cond_dropout` in \[0, 1\), got 1"):
        ConditionEmbedding(8, num_classes=3, cond_dropout=1)
    emb = make()
    kw = inputs()
    with pytest.raises(TypeError, match="ConditionEmbedding: expected at least one of `labels`, `style`, `features`, got none"):
        emb()
    with pytest.raises(TypeError, match=r"ConditionEmbedding: expected `labels` to be an integer tensor of class indices, got torch\.float32"):
        emb(labels=kw["labels"].float())
    with pytest.raises(ShapeError, match=r"ConditionEmbedding: expected `style` of shape \(B, S\) with S=2, B=4, got \(3, 2\)"):
        emb(labels=kw["labels"], style=kw["style"][:3])
    with pytest.raises(ModalityError, match=r"ConditionEmbedding: unknown modality \['audio'\] in `present`"):
        emb(**kw, present={"audio": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(TypeError, match="ConditionEmbedding: expected no `style`"):
        ConditionEmbedding(8, num_classes=3)(labels=kw["labels"], style=kw["style"])
