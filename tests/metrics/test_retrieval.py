"""retrieval_metrics and RetrievalMetrics against a per-query loop and scikit-learn."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from torch.utils._python_dispatch import TorchDispatchMode

from _peers import torchmetrics_per_query, torchmetrics_stateful
from mmfuse import ShapeError
from mmfuse.metrics import RetrievalMetrics, retrieval_metrics


def loop_reference(sim: torch.Tensor, rel: torch.Tensor, ks) -> dict[str, float]:
    """Per query loop over an explicit sort (scores without ties, or ties put pessimistically
    for the ranks); AP from scikit-learn."""
    rows = []
    for i in range(sim.shape[0]):
        if not rel[i].any():
            continue
        order = sorted(range(sim.shape[1]), key=lambda j: -float(sim[i, j]))
        first = next(p for p, j in enumerate(order) if rel[i, j])
        rr = [bool(rel[i, j]) for j in order]
        n_rel = sum(rr)
        row = {"rank": first + 1.0,
               "ap": average_precision_score(rel[i].numpy(), sim[i].numpy())}
        for k in ks:
            c = sum(rr[:k])
            dcg = sum(1 / math.log2(p + 1) for p, x in enumerate(rr[:k], 1) if x)
            idcg = sum(1 / math.log2(p + 1) for p in range(1, min(k, n_rel) + 1))
            row.update({f"hit{k}": float(c > 0), f"recall{k}": c / n_rel,
                        f"precision{k}": c / k, f"ndcg{k}": dcg / idcg})
        rows.append(row)

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    out: dict[str, float] = {}
    for k in ks:
        out.update({f"R@{k}": mean(f"hit{k}"), f"hit_rate@{k}": mean(f"hit{k}"),
                    f"recall@{k}": mean(f"recall{k}"), f"precision@{k}": mean(f"precision{k}"),
                    f"ndcg@{k}": mean(f"ndcg{k}")})
    ranks = np.array([r["rank"] for r in rows])
    out.update(median_rank=float(np.median(ranks)), mean_rank=float(ranks.mean()),
               mrr=float((1 / ranks).mean()), mAP=mean("ap"))
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k


def test_paired_embeddings_match_loop_reference():
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g)
    gal = gal + 1.5 * q
    qn = q / q.norm(dim=1, keepdim=True)
    gn = gal / gal.norm(dim=1, keepdim=True)
    want = loop_reference(qn @ gn.T, torch.eye(40, dtype=torch.bool), (1, 5, 10))
    for chunk in (None, 1, 7, 40):
        assert_same(retrieval_metrics(q, gal, chunk_size=chunk), want)


def test_labels_and_matrix_positives_match_loop_reference():
    g = torch.Generator().manual_seed(1)
    q, gal = torch.randn(25, 5, generator=g), torch.randn(31, 5, generator=g)
    ql, gl = torch.randint(0, 4, (25,), generator=g), torch.randint(0, 4, (31,), generator=g)
    gl[0] = 9
    ql[3] = 7  # a query without any relevant item: left out
    rel = ql[:, None] == gl[None, :]
    sim = torch.randn(25, 31, generator=g, dtype=torch.float64)
    want = loop_reference(sim, rel, (1, 3))
    assert_same(retrieval_metrics(sim, positives=(ql, gl), ks=(1, 3), chunk_size=4), want)
    assert_same(retrieval_metrics(sim, positives=rel, ks=(1, 3)), want)
    emb = retrieval_metrics(q, gal, positives=(ql, gl), ks=(2,))
    qn, gn = q / q.norm(dim=1, keepdim=True), gal / gal.norm(dim=1, keepdim=True)
    assert_same(emb, loop_reference(qn @ gn.T, rel, (2,)))


def test_ties_count_against_the_query_by_default():
    sim = torch.tensor([[0.5, 0.5, 0.5, 0.1], [0.9, 0.2, 0.2, 0.2]])
    rel = torch.tensor([[False, True, False, True], [False, False, True, True]])
    out = retrieval_metrics(sim, positives=rel, ks=(1, 2, 3))
    # query 0: the relevant 0.5 ties two non-relevant items -> rank 3; query 1: the relevant
    # 0.2s come after 0.9 and tie a non-relevant 0.2 -> rank 3
    assert out["R@1"] == 0 and out["R@2"] == 0 and out["R@3"] == 1.0
    assert out["mean_rank"] == 3.0
    # pessimistic order: N N R R for both queries -> AP = (1/3 + 2/4) / 2 each (scikit-learn,
    # which counts a tie group at its end, gives 0.5 for query 1)
    assert out["mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    opt = retrieval_metrics(sim, positives=rel, ks=(1, 2, 3), ties="optimistic")
    # optimistic: R N N R (query 0) and N R R N (query 1)
    assert opt["mean_rank"] == 1.5 and opt["R@1"] == 0.5 and opt["recall@2"] == 0.5
    assert opt["mAP"] == pytest.approx(((1 + 2 / 4) / 2 + (1 / 2 + 2 / 3) / 2) / 2)


def enumerated_reference(sim: torch.Tensor, rel: torch.Tensor, ks, ties: str) -> dict[str, float]:
    """Every metric from explicit orders: all orders of each tie group, averaged ("average"),
    or the one order with the relevant items of each tie last / first."""
    rows = []
    for i in range(sim.shape[0]):
        s, r = sim[i].tolist(), rel[i].tolist()
        if not any(r):
            continue
        groups: dict[float, list[int]] = {}
        for t in range(len(s)):
            groups.setdefault(s[t], []).append(t)
        levels = sorted(groups, reverse=True)
        if ties == "average":
            orders = [list(itertools.chain(*p)) for p in
                      itertools.product(*[list(itertools.permutations(groups[v])) for v in levels])]
        else:
            sign = 1 if ties == "pessimistic" else -1
            orders = [list(itertools.chain(*[sorted(groups[v], key=lambda t: sign * r[t])
                                             for v in levels]))]
        acc: dict[str, float] = {}
        for order in orders:
            rr = [r[t] for t in order]
            n_rel, first = sum(rr), rr.index(1) + 1
            hits, ap = 0, 0.0
            for p, x in enumerate(rr, 1):
                if x:
                    hits += 1
                    ap += hits / p
            row = {"mean_rank": first, "mrr": 1 / first, "mAP": ap / n_rel}
            for k in ks:
                c = sum(rr[:k])
                dcg = sum(x / math.log2(p + 1) for p, x in enumerate(rr[:k], 1))
                idcg = sum(1 / math.log2(p + 1) for p in range(1, min(k, n_rel) + 1))
                row.update({f"hit_rate@{k}": float(c > 0), f"recall@{k}": c / n_rel,
                            f"precision@{k}": c / k, f"ndcg@{k}": dcg / idcg})
            for key, value in row.items():
                acc[key] = acc.get(key, 0.0) + value / len(orders)
        rows.append(acc)
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic", "average"])
def test_every_tie_policy_matches_enumerated_orders(ties):
    g = torch.Generator().manual_seed(3)
    ks = (1, 2, 3, 9)  # 9 > M: the whole gallery
    for _ in range(12):
        sim = torch.randint(0, 3, (4, 7), generator=g).double()  # many ties
        rel = torch.rand(4, 7, generator=g) < 0.4  # several positives per query
        got = retrieval_metrics(sim, positives=rel, ks=ks, ties=ties, chunk_size=3)
        for key, value in enumerated_reference(sim, rel, ks, ties).items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        assert got["R@2"] == got["hit_rate@2"]


def test_average_lies_between_the_bounds_and_all_agree_without_ties():
    g = torch.Generator().manual_seed(4)
    sim = torch.randint(0, 4, (30, 20), generator=g).float()
    rel = torch.rand(30, 20, generator=g) < 0.2
    lo, mid, hi = (retrieval_metrics(sim, positives=rel, ks=(1, 5), ties=t)
                   for t in ("pessimistic", "average", "optimistic"))
    for key in lo:
        worse_is_lower = "rank" not in key
        a, b = (lo[key], hi[key]) if worse_is_lower else (hi[key], lo[key])
        assert a - 1e-12 <= mid[key] <= b + 1e-12, key
    assert lo["mAP"] < mid["mAP"] < hi["mAP"]
    untied = torch.randn(30, 20, generator=g)
    outs = [retrieval_metrics(untied, positives=rel, ties=t)
            for t in ("pessimistic", "average", "optimistic")]
    for key in outs[0]:
        assert outs[1][key] == pytest.approx(outs[0][key], abs=1e-12) == outs[2][key], key


def test_hit_rate_and_recall_differ_with_several_positives():
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    rel = torch.tensor([[True, False, True, True]])
    out = retrieval_metrics(sim, positives=rel, ks=(1, 2))
    assert out["hit_rate@1"] == out["R@1"] == 1.0
    assert out["recall@1"] == pytest.approx(1 / 3) and out["recall@2"] == pytest.approx(1 / 3)
    assert out["precision@2"] == 0.5


def test_matches_torchmetrics_functional_with_several_positives():
    # torchmetrics ignores relevant items scored <= 0 in recall, precision, MRR and AP (and
    # orders ties by position): compare on positive scores without ties.
    g = torch.Generator().manual_seed(5)
    sim = torch.rand(40, 50, generator=g, dtype=torch.float64) + 0.01
    rel = torch.rand(40, 50, generator=g) < 0.1
    rel[::7] = False  # queries without a relevant item: left out by both (torchmetrics: skip)
    rel[1, :] = True
    ks = (1, 3, 10, 60)
    got = retrieval_metrics(sim, positives=rel, ks=ks, chunk_size=6)
    pytest.importorskip("torchmetrics.functional.retrieval")
    want = torchmetrics_per_query(sim, rel, ks)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key  # torchmetrics: float32


def test_tie_averaged_ndcg_matches_torchmetrics_and_sklearn():
    from sklearn.metrics import ndcg_score

    g = torch.Generator().manual_seed(6)
    sim = torch.randint(1, 4, (25, 12), generator=g).double()
    rel = torch.rand(25, 12, generator=g) < 0.3
    rel[:, 0] = True
    pytest.importorskip("torchmetrics")
    got = retrieval_metrics(sim, positives=rel, ks=(1, 4), ties="average")
    theirs = torchmetrics_per_query(sim, rel, (1, 4))  # every row has a relevant item
    for k in (1, 4):
        assert got[f"ndcg@{k}"] == pytest.approx(theirs[f"ndcg@{k}"], abs=1e-6)
        sk = ndcg_score(rel.double().numpy(), sim.numpy(), k=k)  # ties averaged too
        assert got[f"ndcg@{k}"] == pytest.approx(sk, rel=1e-12)


def test_stateful_metric_matches_torchmetrics_stateful():
    pytest.importorskip("torchmetrics")
    g = torch.Generator().manual_seed(7)
    q, gal = torch.randn(30, 6, generator=g), torch.randn(24, 6, generator=g)
    ql, gl = torch.randint(0, 5, (30,), generator=g), torch.randint(0, 5, (24,), generator=g)
    gal = gal + 2 * torch.nn.functional.one_hot(gl, 6).float()  # related by label
    q = q + 2 * torch.nn.functional.one_hot(ql, 6).float()
    ours = RetrievalMetrics(ks=(1, 5), normalize=False, chunk_size=4)
    ours.update(q[:10], gal[:12], ql[:10], gl[:12])
    ours.update(q[10:], gal[12:], ql[10:], gl[12:])
    got = ours.compute()
    sim = q @ gal.T + 100.0  # every score positive, ties impossible (continuous draws)
    theirs = torchmetrics_stateful(sim, ql[:, None] == gl[None, :], [slice(0, 13), slice(13, 30)])
    assert set(theirs) == {"hit_rate@5", "recall@5", "precision@5", "ndcg@5", "mrr", "mAP"}
    for key, want in theirs.items():
        assert got[key] == pytest.approx(want, abs=1e-6), key


class _LargestTensor(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_holds_the_full_similarity_matrix():
    n = 2400  # 5.8M similarities; the default chunk holds about 1M
    q, gal = torch.randn(n, 4), torch.randn(n, 4)
    with _LargestTensor() as mode:
        retrieval_metrics(q, gal)
    assert mode.largest <= (1 << 20) + n
    assert mode.largest < n * n // 2


def test_stateful_metric_equals_one_call_and_resets():
    g = torch.Generator().manual_seed(2)
    qs = [torch.randn(5, 3, generator=g) for _ in range(3)]
    gs = [q + 0.5 * torch.randn(5, 3, generator=g) for q in qs]
    m = RetrievalMetrics(ks=(1, 2))
    for q, gal in zip(qs, gs):
        m.update(q, gal)
    assert_same(m.compute(), retrieval_metrics(torch.cat(qs), torch.cat(gs), ks=(1, 2)))
    labels = [torch.randint(0, 3, (5,), generator=g) for _ in range(3)]
    m.reset()
    for q, gal, lab in zip(qs, gs, labels):
        m.update(q, gal, lab, lab)
    lab = torch.cat(labels)
    assert_same(m.compute(), retrieval_metrics(torch.cat(qs), torch.cat(gs), ks=(1, 2),
                                                positives=(lab, lab)))
    tied = RetrievalMetrics(ks=(1, 2), ties="average", normalize=False)
    rounded = [q.round() for q in qs]  # integer embeddings: many tied scores
    for q, part in zip(rounded, labels):
        tied.update(q, q, part, part)
    want = retrieval_metrics(torch.cat(rounded), torch.cat(rounded), ks=(1, 2), positives=(lab, lab),
                             normalize=False, ties="average")
    assert_same(tied.compute(), want)
    assert want != retrieval_metrics(torch.cat(rounded), torch.cat(rounded), ks=(1, 2),
                                     positives=(lab, lab), normalize=False)
    m.reset()
    with pytest.raises(ValueError, match="at least one update"):
        m.compute()


def test_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ShapeError, match=r"retrieval_metrics: expected `gallery` of shape \(M, D\) with D=3"):
        retrieval_metrics(x, torch.randn(4, 2))
    with pytest.raises(ValueError, match="as many gallery items as queries"):
        retrieval_metrics(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least one query with a relevant item"):
        retrieval_metrics(torch.randn(2, 2), positives=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="`ks` to be positive ints"):
        retrieval_metrics(x, x, ks=(0,))
    with pytest.raises(ValueError, match=r"^retrieval_metrics: unknown `ties` .random.; expected one of \[.pessimistic., .optimistic., .average.\]"):
        retrieval_metrics(x, x, ties="random")
    with pytest.raises(ValueError, match=r"^RetrievalMetrics: unknown `ties` .first.; expected one of "):
        RetrievalMetrics(ties="first")


def test_config_errors_fail_in_the_constructor():
    bad: list[Any] = [(0,), (True,), (1.5,), ()]
    for ks in bad:
        with pytest.raises(ValueError, match=r"^RetrievalMetrics: expected `ks` to be positive ints"):
            RetrievalMetrics(ks=ks)
    with pytest.raises(ValueError, match="^RetrievalMetrics: expected `chunk_size` to be a "
                       "positive int, got 0"):
        RetrievalMetrics(chunk_size=0)
    for not_seq in (5, "15"):
        with pytest.raises(TypeError, match="^retrieval_metrics: expected `ks` to be a sequence "
                           "of positive ints"):
            retrieval_metrics(torch.randn(3, 4), torch.randn(3, 4), ks=not_seq)  # type: ignore[arg-type]


def test_update_refuses_a_changed_embedding_size():
    metric = RetrievalMetrics()
    metric.update(torch.randn(3, 8), torch.randn(3, 8))
    with pytest.raises(ShapeError, match=r"^RetrievalMetrics: expected `query` of shape \(N, D\) "
                       r"with D=8, got \(3, 7\)\.$"):
        metric.update(torch.randn(3, 7), torch.randn(3, 7))


def test_mixed_devices_and_non_finite_inputs():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match="^retrieval_metrics: expected `gallery` on meta like "
                       "`query`, got cpu"):
        retrieval_metrics(x.to("meta"), x)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="^retrieval_metrics: expected finite similarities"):
        retrieval_metrics(bad, x)
    with pytest.raises(ValueError, match="expected finite similarities"):
        retrieval_metrics(torch.full((3, 3), float("inf")))


def test_mixed_dtypes_promote_and_meta_tensors_are_named() -> None:
    from mmfuse.metrics import RetrievalMetrics, retrieval_metrics

    q = torch.randn(6, 4)
    g = q + 0.01 * torch.randn(6, 4)
    assert retrieval_metrics(q, g.double()) == retrieval_metrics(q.double(), g.double())
    with pytest.raises(ValueError, match=r"^retrieval_metrics: expected `query` with values to "
                       r"compute from, got a tensor on the meta device \(shapes only\)\.$"):
        retrieval_metrics(q.to("meta"), g.to("meta"))
    with pytest.raises(ValueError, match=r"^RetrievalMetrics: expected `query` with values"):
        RetrievalMetrics().update(q.to("meta"), g.to("meta"))
