"""DecisionFusion against hand-computed tables and naive per-sample loops."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmfuse import ModalityError, ShapeError
from mmfuse.functional.fusion.decision import decision_fusion
from mmfuse.fusion import DecisionFusion

STRATEGIES = ["weighted", "product", "soft_vote", "hard_vote", "max"]

# Two modalities, three classes, weights a:b = 3:1. Every expected row below is worked out by hand.
PA = [0.5, 0.3, 0.2]
PB = [0.1, 0.6, 0.3]
TABLE = {
    # 0.75 * PA + 0.25 * PB
    "weighted": [0.4, 0.375, 0.225],
    # (PA + PB) / 2
    "soft_vote": [0.3, 0.45, 0.25],
    # PA**1.5 * PB**0.5 = [0.111803, 0.127279, 0.048990], / 0.288072
    "product": [0.388104, 0.441829, 0.170063],
    # votes [1, 1, 0] tie, broken by the weighted mean: ([1, 1, 0] + 0.5 * weighted) / 2.5
    "hard_vote": [0.48, 0.475, 0.045],
    # per-class max [0.5, 0.6, 0.3] / 1.4
    "max": [0.357143, 0.428571, 0.214286],
}


def _fuse(strategy: str, **kw: object) -> torch.Tensor:
    f = DecisionFusion(["a", "b"], 3, strategy=strategy, weights={"a": 3.0, "b": 1.0}, **kw)
    return f({"a": torch.tensor([PA], dtype=torch.float64),
              "b": torch.tensor([PB], dtype=torch.float64)})


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hand_computed_table(strategy: str) -> None:
    out = _fuse(strategy)
    torch.testing.assert_close(out, torch.tensor([TABLE[strategy]], dtype=torch.float64),
                               atol=1e-5, rtol=0)  # table rounded to 6 digits


def test_plain_product_of_experts() -> None:
    f = DecisionFusion(["a", "b"], 3, strategy="product")
    out = f({"a": torch.tensor([PA]), "b": torch.tensor([PB])})
    # [0.05, 0.18, 0.06] / 0.29
    torch.testing.assert_close(out, torch.tensor([[0.172414, 0.620690, 0.206897]]), atol=1e-5,
                               rtol=0)


def test_hard_vote_tie_goes_the_other_way_when_weights_flip() -> None:
    f = DecisionFusion(["a", "b"], 3, strategy="hard_vote", weights={"a": 1.0, "b": 3.0})
    out = f({"a": torch.tensor([PA]), "b": torch.tensor([PB])})
    assert f.decide(out).tolist() == [1]
    # weighted mean 0.25 PA + 0.75 PB = [0.2, 0.525, 0.275]
    torch.testing.assert_close(out, torch.tensor([[1.1 / 2.5, 1.2625 / 2.5, 0.1375 / 2.5]]))


def test_hard_vote_majority_beats_the_weighted_mean() -> None:
    # c votes 0 with a; b alone prefers 1 strongly and carries most of the weight
    f = DecisionFusion(["a", "b", "c"], 2, strategy="hard_vote",
                       weights={"a": 0.1, "b": 0.8, "c": 0.1})
    p = {"a": torch.tensor([[0.6, 0.4]]), "b": torch.tensor([[0.0, 1.0]]),
         "c": torch.tensor([[0.55, 0.45]])}
    assert f.decide(f(p)).tolist() == [0]
    assert DecisionFusion(["a", "b", "c"], 2, weights={"a": 0.1, "b": 0.8, "c": 0.1}).decide(
        DecisionFusion(["a", "b", "c"], 2, weights={"a": 0.1, "b": 0.8, "c": 0.1})(p)
    ).tolist() == [1]


def test_document_example() -> None:
    """The source document: text weight 0.6, audio 0.4, positive class at index 0."""
    f = DecisionFusion(["text", "audio"], 2, weights={"text": 0.6, "audio": 0.4})
    p = f({"text": torch.tensor([[0.8, 0.2]]), "audio": torch.tensor([[0.3, 0.7]])})
    torch.testing.assert_close(p, torch.tensor([[0.6, 0.4]]))
    assert f.decide(p).tolist() == [0]


def test_document_rule_on_a_batch() -> None:
    """Batched, our decision equals the document's per-sample rule (1 = positive = index 0)."""
    gen = torch.Generator().manual_seed(0)
    t0, a0 = torch.rand(64, generator=gen), torch.rand(64, generator=gen)
    text, audio = torch.stack([t0, 1 - t0], 1), torch.stack([a0, 1 - a0], 1)
    f = DecisionFusion(["text", "audio"], 2, weights={"text": 0.6, "audio": 0.4})
    got = f.decide(f({"text": text, "audio": audio}))

    def document(text_pred: list[float], audio_pred: list[float], text_weight: float = 0.6) -> int:
        fused = text_weight * text_pred[0] + (1 - text_weight) * audio_pred[0]
        return 1 if fused > 0.5 else 0

    want = [1 - document(text[i].tolist(), audio[i].tolist()) for i in range(64)]  # 1 -> index 0
    assert got.tolist() == want


def _naive(strategy: str, preds: torch.Tensor, observed: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-sample loops in float64 over (B, M, C) probabilities."""
    b, m, c = preds.shape
    out = torch.empty(b, c, dtype=torch.float64)
    for i in range(b):
        idx = [j for j in range(m) if observed[i, j]]
        if not idx:
            out[i] = 1.0 / c
            continue
        ps = [preds[i, j].double() for j in idx]
        ws = [float(w[j]) for j in idx]
        tot = sum(ws)
        wmean = sum(wj / tot * p for wj, p in zip(ws, ps))
        if strategy == "weighted":
            out[i] = wmean
        elif strategy == "soft_vote":
            out[i] = sum(ps) / len(ps)
        elif strategy == "product":
            row = torch.ones(c, dtype=torch.float64)
            for wj, p in zip(ws, ps):
                row = row * p ** (len(ps) * wj / tot)
            out[i] = row / row.sum()
        elif strategy == "max":
            row = torch.stack(ps).max(0).values
            out[i] = row / row.sum()
        else:
            votes = torch.zeros(c, dtype=torch.float64)
            for p in ps:
                votes[int(p.argmax())] += 1
            out[i] = (votes + 0.5 * wmean) / (len(ps) + 0.5)
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matches_naive_loops_with_presence(strategy: str) -> None:
    gen = torch.Generator().manual_seed(1)
    names = ["x", "y", "z"]
    preds = torch.randn(16, 3, 5, generator=gen, dtype=torch.float64).softmax(-1)
    observed = torch.rand(16, 3, generator=gen) > 0.4
    observed[0] = False
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    f = DecisionFusion(names, 5, strategy=strategy, weights=dict(zip(names, w.tolist())),
                       dtype=torch.float64)
    got = f({n: preds[:, j] for j, n in enumerate(names)},
            present={n: observed[:, j] for j, n in enumerate(names)})
    torch.testing.assert_close(got, _naive(strategy, preds, observed, w))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_absent_modality_drops_out(strategy: str) -> None:
    f = DecisionFusion(["a", "b"], 3, strategy=strategy, weights={"a": 3.0, "b": 1.0})
    pa = torch.tensor([PA])
    alone = f({"a": pa})
    marked = f({"a": pa, "b": torch.tensor([[float("nan"), float("inf"), -1.0]])},
               present={"b": torch.tensor([False])})
    torch.testing.assert_close(alone, marked)
    if strategy == "hard_vote":  # (one-hot(argmax PA) + 0.5 PA) / 1.5
        torch.testing.assert_close(alone, (torch.tensor([[1.0, 0, 0]]) + 0.5 * pa) / 1.5)
    else:
        torch.testing.assert_close(alone, pa)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("inputs", ["probs", "logits"])
def test_nothing_present_gives_uniform(strategy: str, inputs: str) -> None:
    f = DecisionFusion(["a", "b"], 4, strategy=strategy, inputs=inputs)
    bad = torch.full((2, 4), float("nan"))
    out = f({"a": bad, "b": bad}, present={"a": torch.tensor([False, False]),
                                           "b": torch.tensor([False, False])})
    torch.testing.assert_close(out, torch.full((2, 4), 0.25))


def test_logits_with_temperature() -> None:
    gen = torch.Generator().manual_seed(2)
    la, lb = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    f = DecisionFusion(["a", "b"], 3, inputs="logits", temperature={"a": 2.0, "b": 0.5},
                       weights={"a": 1.0, "b": 3.0})
    want = 0.25 * (la / 2.0).softmax(-1) + 0.75 * (lb / 0.5).softmax(-1)
    torch.testing.assert_close(f({"a": la, "b": lb}), want)
    torch.testing.assert_close(f.temperature(), torch.tensor([2.0, 0.5]))


def test_product_of_logits_is_softmax_of_summed_log_softmax() -> None:
    gen = torch.Generator().manual_seed(3)
    la, lb = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    f = DecisionFusion(["a", "b"], 6, strategy="product", inputs="logits")
    want = (la.log_softmax(-1) + lb.log_softmax(-1)).softmax(-1)
    torch.testing.assert_close(f({"a": la, "b": lb}), want)


def test_product_is_stable_for_confident_experts() -> None:
    f = DecisionFusion(["a", "b"], 2, strategy="product", inputs="logits")
    out = f({"a": torch.tensor([[800.0, -800.0]]), "b": torch.tensor([[700.0, -700.0]])})
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0]]))


def test_learned_weights_are_a_softmax_and_train() -> None:
    torch.manual_seed(0)
    f = DecisionFusion(["good", "noise"], 3, learnable=True)
    torch.testing.assert_close(f.weights(), torch.tensor([0.5, 0.5]))
    opt = torch.optim.SGD(f.parameters(), lr=1.0)
    labels = torch.randint(0, 3, (128,))
    good = torch.nn.functional.one_hot(labels, 3).float() * 0.9 + 0.1 / 3
    noise = torch.rand(128, 3).softmax(-1)
    for _ in range(30):
        p = f({"good": good, "noise": noise})
        loss = torch.nn.functional.nll_loss(p.log(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = f.weights().detach()
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
    assert float(w[0]) > 0.8


def test_dict_order_does_not_matter() -> None:
    f = DecisionFusion(["a", "b"], 3, strategy="product", weights={"a": 3.0, "b": 1.0})
    pa, pb = torch.tensor([PA]), torch.tensor([PB])
    torch.testing.assert_close(f({"a": pa, "b": pb}), f({"b": pb, "a": pa}))


@pytest.mark.parametrize("strategy", ["weighted", "product", "max", "soft_vote"])
def test_gradcheck(strategy: str) -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    observed = torch.tensor([[True, True], [True, False], [False, True]])
    w = torch.tensor([0.7, 0.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: decision_fusion(t, observed, w, strategy=strategy, inputs="logits"), (x,))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_compiled_parameter_free_configuration(strategy: str) -> None:
    torch._dynamo.reset()
    f = DecisionFusion(["a", "b"], 3, strategy=strategy, weights={"a": 3.0, "b": 1.0})
    c = torch.compile(f, backend="eager", fullgraph=True)
    p = {"a": torch.rand(4, 3).softmax(-1), "b": torch.rand(4, 3).softmax(-1)}
    pres = {"b": torch.tensor([True, False, True, False])}
    torch.testing.assert_close(c(p, pres), f(p, pres))


@given(b=st.integers(1, 6), m=st.integers(1, 4), c=st.integers(2, 6),
       strategy=st.sampled_from(STRATEGIES), inputs=st.sampled_from(["probs", "logits"]),
       seed=st.integers(0, 2**16))
def test_rows_sum_to_one(b: int, m: int, c: int, strategy: str, inputs: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    names = [f"m{j}" for j in range(m)]
    x = torch.randn(b, m, c, generator=gen) * 3
    if inputs == "probs":
        x = x.softmax(-1)
    present = {n: torch.rand(b, generator=gen) > 0.3 for n in names}
    f = DecisionFusion(names, c, strategy=strategy, inputs=inputs)
    out = f({n: x[:, j] for j, n in enumerate(names)}, present=present)
    assert out.shape == (b, c)
    assert bool((out >= 0).all())
    torch.testing.assert_close(out.sum(-1), torch.ones(b))
    assert f.decide(out).shape == (b,)


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match=r"DecisionFusion: unknown `strategy` 'mean'; expected one of"):
        DecisionFusion(["a", "b"], 2, strategy="mean")
    with pytest.raises(ValueError, match=r"`learnable=True` needs a strategy that uses weights"):
        DecisionFusion(["a", "b"], 2, strategy="max", learnable=True)
    with pytest.raises(ValueError, match=r"expected `weights` to name exactly the modalities"):
        DecisionFusion(["a", "b"], 2, weights={"a": 1.0})
    with pytest.raises(ValueError, match=r"expected `weights\['b'\]` to be a positive number, got -1"):
        DecisionFusion(["a", "b"], 2, weights={"a": 1.0, "b": -1.0})
    with pytest.raises(ValueError, match=r"expected `num_classes` to be an int >= 2, got 1"):
        DecisionFusion(["a", "b"], 1)
    with pytest.raises(ValueError, match=r"expected inputs='logits', got 'probs'"):
        DecisionFusion(["a", "b"], 2, learn_temperature=True)
    with pytest.raises(TypeError, match=r"expected `modalities` to be a non-empty sequence"):
        DecisionFusion("ab", 2)


def test_input_errors() -> None:
    f = DecisionFusion(["a", "b"], 3)
    with pytest.raises(ShapeError, match=r"DecisionFusion: expected `predictions\['a'\]` of shape "
                                         r"\(B, C\) with C=3, got \(2, 4\)"):
        f({"a": torch.rand(2, 4), "b": torch.rand(2, 3)})
    with pytest.raises(ModalityError, match=r"unknown modality \['c'\]"):
        f({"a": torch.rand(2, 3), "c": torch.rand(2, 3)})
    with pytest.raises(ShapeError, match=r"batch sizes disagree"):
        f({"a": torch.rand(2, 3), "b": torch.rand(3, 3)})


def test_names_and_weights_are_checked_like_the_other_modules() -> None:
    with pytest.raises(TypeError, match=r"^DecisionFusion: modality names in `modalities` must "
                       r"be non-empty str, got 1\.$"):
        DecisionFusion([1, 2], 3)  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"must be non-empty str, got ''\.$"):
        DecisionFusion(["a", ""], 3)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^DecisionFusion: expected `weights\['a'\]` to be a "):
            DecisionFusion(["a", "b"], 3, weights={"a": bad, "b": 1.0})
    with pytest.raises(TypeError, match=r"expected `num_classes` to be a positive int, got 3\.0"):
        DecisionFusion(["a", "b"], 3.0)  # type: ignore[arg-type]
