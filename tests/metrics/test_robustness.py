"""Robustness evaluation: toy models whose behaviour is known, FGSM's closed form on a linear
model, PGD's budget, the table's schema, the presence subsets."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfuse.metrics import (
    Corruption,
    RobustnessTable,
    accuracy,
    fgsm,
    pgd,
    plot_robustness,
    robustness,
)
from mmfuse.metrics.robustness import _dropout

C = 3


def data(n_batches: int = 3, batch: int = 16, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, C, (batch,), generator=g)
        a = F.one_hot(y, C).float() * 2 + 0.5 * torch.randn(batch, C, generator=g)
        b = torch.randn(batch, 4, 6, generator=g)
        out.append(({"a": a, "b": b}, y))
    return out


class ReadsOnlyA(nn.Module):
    """Logits from modality ``a`` only; ``b`` and ``present`` ignored."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(C, C)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(C) * 3)
            self.lin.bias.zero_()

    def forward(self, x, present=None):
        return self.lin(x["a"])


def test_a_modality_the_model_ignores_changes_nothing() -> None:
    table = robustness(ReadsOnlyA(), data(), noise=(1.0, 4.0), dropout=(0.5,),
                       epsilons=(0.5,), dropout_axes={"b": (2,)})
    assert table.clean > 0.8  # the toy task is learnable from `a`
    for r in table:
        if r.modality == "b":
            assert r.score == table.clean and r.drop == 0.0, r
    a_rows = {(r.perturbation, r.severity): r for r in table if r.modality == "a"}
    assert a_rows[("gaussian", 4.0)].score < table.clean  # ... while `a` matters
    assert a_rows[("pgd", 0.5)].score < table.clean


def test_fgsm_on_a_linear_model_is_the_closed_form() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(5, C).double()
    x = {"a": torch.randn(6, 5, dtype=torch.float64), "b": torch.randn(6, 2, dtype=torch.float64)}
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    model = lambda inputs, present: lin(inputs["a"]) + inputs["b"].sum(1, keepdim=True)  # noqa: E731
    eps = 0.3
    got = fgsm(model, x, y, "a", eps)
    # d CE / d x = (softmax(z) - onehot(y)) W / B, z = W x + b + sum(b)
    z = lin(x["a"]) + x["b"].sum(1, keepdim=True)
    grad = (torch.softmax(z, -1) - F.one_hot(y, C).double()) @ lin.weight / len(y)
    torch.testing.assert_close(got, x["a"] + eps * grad.sign())
    # along b, the gradient is sum over classes of (softmax - onehot) = 0: sign 0, nothing moves
    # (up to rounding), which the closed form says too


def test_pgd_stays_within_the_linf_budget_and_raises_the_loss() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, C))
    model = lambda inputs, present: net(inputs["a"])  # noqa: E731
    x = {"a": torch.randn(32, 4)}
    y = torch.randint(0, C, (32,))
    for eps in (0.01, 0.2, 1.0):
        adv = pgd(model, x, y, "a", eps, steps=7, generator=torch.Generator().manual_seed(1))
        # the projection is exact up to float32 rounding of x0 +- eps
        assert float((adv - x["a"]).abs().max()) <= eps + 1e-6
        assert float((adv - x["a"]).abs().max()) > 0.9 * eps  # it uses the budget
        assert F.cross_entropy(net(adv), y) > F.cross_entropy(net(x["a"]), y)
        step = fgsm(model, x, y, "a", eps)
        assert float((step - x["a"]).abs().max()) == pytest.approx(eps, abs=1e-6)


def test_table_schema_drop_and_markdown() -> None:
    custom = Corruption("flip", lambda t, s, g: t * (1 - 2 * s), (0.5, 1.0), modalities=["a"])
    table = robustness(ReadsOnlyA(), data(), noise=(0.5, 1.0, 2.0), dropout=(0.25,),
                       corruptions=[custom], epsilons=(0.1, 0.2), attacks=("fgsm", "pgd"),
                       pgd_steps=3)
    assert isinstance(table, RobustnessTable) and table.metric == "accuracy"
    m = 2
    want = 1 + (2**m - 2) + m * (3 + 1) + 2 + m * 2 * 2
    assert len(table) == want
    kinds = [r.kind for r in table]
    assert kinds == sorted(kinds, key=["clean", "absent", "corrupted", "adversarial"].index)
    for r in table:
        assert r.drop == pytest.approx((table.clean - r.score) / table.clean)
    flips = [r for r in table if r.perturbation == "flip"]
    assert [(r.modality, r.severity) for r in flips] == [("a", 0.5), ("a", 1.0)]
    assert flips[0].score == accuracy(torch.zeros(48, C), torch.cat([y for _, y in data()]))
    assert flips[1].score < 0.2  # logits negated: the argmax is the worst class
    md = table.to_markdown().splitlines()
    assert md[0] == "| kind | perturbation | modality | severity | accuracy | drop |"
    assert len(md) == 2 + want
    assert md[2].startswith("| clean | none | - | - | ")
    assert table.scales["b"] == pytest.approx(
        torch.cat([x["b"].flatten() for x, _ in data()]).double().std(unbiased=False).item())
    assert set(table.to_dicts()[0]) == {"kind", "perturbation", "modality", "severity",
                                           "score", "drop"}


class RecordsPresence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[frozenset[str]] = []
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x, present=None):
        if present is not None:
            assert all(not bool(v.any()) for v in present.values())
            self.seen.append(frozenset(present))
        return x["a"] + self.p


def test_absent_rows_cover_every_nonempty_proper_subset_via_present() -> None:
    model = RecordsPresence()
    batches = [({"a": torch.randn(4, C), "b": torch.randn(4, 2), "c": torch.randn(4, 1)},
                torch.zeros(4).long())]
    table = robustness(model, batches, noise=(), dropout=(), attacks=())
    names = ["a", "b", "c"]
    want = {frozenset(s) for k in (1, 2) for s in itertools.combinations(names, k)}
    assert set(model.seen) == want and len(model.seen) == len(want)
    assert [r.modality for r in table if r.kind == "absent"] == [
        "a", "b", "c", "a+b", "a+c", "b+c"]


def test_same_seed_same_table_and_noise_is_relative_to_std() -> None:
    batches = data()
    scaled = [({"a": x["a"], "b": x["b"] * 100}, y) for x, y in batches]

    def reads_b(x, present=None):
        return x["b"].mean(dim=(2,))[:, :C] / x["b"].std()

    t1 = robustness(reads_b, batches, dropout=(), epsilons=(), absent=False)
    t2 = robustness(reads_b, batches, dropout=(), epsilons=(), absent=False)
    t3 = robustness(reads_b, scaled, dropout=(), epsilons=(), absent=False)
    assert t1.to_dicts() == t2.to_dicts()
    # noise in units of the modality's std: scaling `b` by 100 gives the same scores
    assert [r.score for r in t1] == pytest.approx([r.score for r in t3])


def test_dropout_zeroes_whole_time_steps() -> None:
    x = torch.ones(64, 3, 50)
    out = _dropout(x, 0.5, (2,), torch.Generator().manual_seed(0))
    assert bool((out == out[:, :1, :]).all())  # shared across the 3 channels
    assert 0.4 < float((out == 0).float().mean()) < 0.6


def test_restores_training_mode_and_errors() -> None:
    model = ReadsOnlyA().train()
    robustness(model, data(1), noise=(), dropout=(), epsilons=())
    assert model.training
    with pytest.raises(ValueError, match=r"robustness: unknown `attacks` \['cw'\]; expected "
                                         r"names from \['fgsm', 'pgd'\]"):
        robustness(model, data(1), attacks=("cw",))
    with pytest.raises(ValueError, match=r"robustness: expected `loader` to yield at least one "
                                         r"batch, got none"):
        robustness(model, [])
    with pytest.raises(TypeError, match=r"robustness: expected each batch to be an \(inputs, "
                                        r"labels\) pair or a mapping with a 'labels' entry"):
        robustness(model, [torch.zeros(3)])
    dict_batches = [{**x, "labels": y} for x, y in data(1)]
    assert robustness(model, dict_batches, noise=(), dropout=(), epsilons=()).clean == (
        robustness(model, data(1), noise=(), dropout=(), epsilons=()).clean)
    always_wrong = robustness(lambda x, p: -F.one_hot(torch.cat([y for _, y in data(1)]), C)
                              .float() + 0 * x["a"], data(1), noise=(1.0,), dropout=(), epsilons=(),
                              absent=False)
    assert always_wrong.clean == 0.0 and math.isnan(always_wrong.rows[1].drop)


def test_plot(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    table = robustness(ReadsOnlyA(), data(1), noise=(1.0,), dropout=(0.5,), epsilons=(0.1,),
                       pgd_steps=2)
    fig = plot_robustness(table, tmp_path / "r.png", title="toy")
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert len(fig.axes[0].patches) == len(table)
