"""retrieval_metrics and RetrievalMetrics against a per-query loop and scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from torch.utils._python_dispatch import TorchDispatchMode

from mmfuse import ShapeError
from mmfuse.metrics import RetrievalMetrics, retrieval_metrics


def loop_reference(sim: torch.Tensor, rel: torch.Tensor, ks) -> dict[str, float]:
    ranks, aps = [], []
    for i in range(sim.shape[0]):
        if not rel[i].any():
            continue
        order = sorted(range(sim.shape[1]), key=lambda j: -float(sim[i, j]))
        first = next(p for p, j in enumerate(order) if rel[i, j])
        ranks.append(first + 1)
        aps.append(average_precision_score(rel[i].numpy(), sim[i].numpy()))
    ranks_np = np.array(ranks, dtype=float)
    out = {f"R@{k}": float((ranks_np <= k).mean()) for k in ks}
    out.update(median_rank=float(np.median(ranks_np)), mean_rank=float(ranks_np.mean()),
               mAP=float(np.mean(aps)))
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


def test_ties_count_against_the_query_and_ap_matches_sklearn():
    sim = torch.tensor([[0.5, 0.5, 0.5, 0.1], [0.9, 0.2, 0.2, 0.2]])
    rel = torch.tensor([[False, True, False, True], [False, False, True, True]])
    out = retrieval_metrics(sim, positives=rel, ks=(1, 2, 3))
    # query 0: the relevant 0.5 ties two non-relevant items -> rank 3; query 1: the relevant
    # 0.2s come after 0.9 and tie a non-relevant 0.2 -> rank 3
    assert out["R@1"] == 0 and out["R@2"] == 0 and out["R@3"] == 1.0
    assert out["mean_rank"] == 3.0
    want = np.mean([average_precision_score(rel[i].numpy(), sim[i].numpy()) for i in range(2)])
    assert out["mAP"] == pytest.approx(want)


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
    n = 2400  # 5.8M similarities; the default chunk holds about 2M
    q, gal = torch.randn(n, 4), torch.randn(n, 4)
    with _LargestTensor() as mode:
        retrieval_metrics(q, gal)
    assert mode.largest <= (1 << 21) + n
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
