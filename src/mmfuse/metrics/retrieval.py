"""Cross-modal retrieval metrics: hit rate, recall, precision and nDCG at k, ranks, MRR, mAP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import (
    check_choice,
    check_has_values,
    check_same_device,
    check_tensor,
    format_shape,
    owner_name,
)

__all__ = ["RetrievalMetrics", "retrieval_metrics"]

TIES = ("pessimistic", "optimistic", "average")
# similarity entries per chunk by default: about 180 bytes of work each at peak (measured), so
# about 190 MB
_CHUNK_ELEMENTS = 1 << 20


def _relevance(positives: Any, n: int, m: int, *, owner: object) -> Any:
    """A function rows -> (rows, M) bool relevance, validated."""
    if positives is None:
        if n != m:
            raise ValueError(
                f"{owner_name(owner)}: expected as many gallery items as queries when "
                f"`positives` is None (pairs by index), got N={n}, M={m}."
            )
        return lambda r0, r1, dev: (torch.arange(r0, r1, device=dev)[:, None]
                                    == torch.arange(m, device=dev)[None, :])
    if isinstance(positives, tuple):
        if len(positives) != 2:
            raise ValueError(
                f"{owner_name(owner)}: expected `positives` as (query_labels, gallery_labels), "
                f"got a tuple of {len(positives)}."
            )
        ql, gl = positives
        check_tensor(ql, "N", owner=owner, arg="positives[0]", floating=None, N=n)
        check_tensor(gl, "M", owner=owner, arg="positives[1]", floating=None, M=m)
        return lambda r0, r1, dev: ql[r0:r1, None].to(dev) == gl[None, :].to(dev)
    if isinstance(positives, Tensor) and positives.dim() == 1:
        if n != m:
            raise ValueError(
                f"{owner_name(owner)}: expected `positives` as (query_labels, gallery_labels) "
                f"when N != M, got one label vector of shape {format_shape(positives.shape)}."
            )
        check_tensor(positives, "N", owner=owner, arg="positives", floating=None, N=n)
        return lambda r0, r1, dev: positives[r0:r1, None].to(dev) == positives[None, :].to(dev)
    check_tensor(positives, "N M", owner=owner, arg="positives", floating=False, N=n, M=m)
    assert isinstance(positives, Tensor)
    return lambda r0, r1, dev: positives[r0:r1].to(dev)


def _check_config(ks: Any, chunk_size: Any, ties: Any, *, owner: object) -> tuple[int, ...]:
    """Validate ``ks`` (a non-empty sequence of positive ints), ``chunk_size`` and ``ties``;
    return ks."""
    name = owner_name(owner)
    check_choice(ties, TIES, owner=owner, arg="ties")
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence):
        raise TypeError(f"{name}: expected `ks` to be a sequence of positive ints, got {ks!r}.")
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"{name}: expected `ks` to be positive ints, got {ks!r}.")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size <= 0):
        raise ValueError(f"{name}: expected `chunk_size` to be a positive int, got {chunk_size!r}.")
    return ks


def _lchoose(n: Tensor, k: Tensor) -> Tensor:
    """log C(n, k) for float tensors with 0 <= k <= n."""
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def _chunk_stats(sim: Tensor, rel: Tensor, ks: tuple[int, ...], ties: str) -> dict[str, Tensor]:
    """Per query row of a chunk: the rank of the first relevant item, reciprocal rank,
    average precision and, per k, hit, relevant-in-top-k count and DCG, under a tie policy.

    Items are sorted by score; a *tie group* is a run of equal scores (positions ``start ..
    start + g - 1``, 0-based, holding ``r`` relevant items, ``R`` relevant items above it).
    ``"pessimistic"`` puts a group's relevant items last, ``"optimistic"`` first; ``"average"``
    takes the expectation over all orders within each group (every position of a group is
    relevant with probability ``r / g``), which is exact for the metrics that are sums over
    positions (recall, precision, DCG), and computed in closed form for the others (hit rate:
    hypergeometric; first rank ``start + (g + 1) / (r + 1)``; reciprocal rank and average
    precision as McSherry & Najork, 2008).
    """
    c, m = sim.shape
    f64 = torch.float64
    n_rel = rel.sum(1)  # (c,)
    vals, order = sim.sort(dim=1, descending=True, stable=True)  # (c, M)
    rel_sorted = rel.gather(1, order)
    asc = vals.flip(1).contiguous()
    end = m - torch.searchsorted(asc, vals, side="left")  # (c, M) items scored >= this one
    start = m - torch.searchsorted(asc, vals, side="right")  # (c, M) items scored > this one
    cum0 = torch.nn.functional.pad(rel_sorted.to(torch.int64).cumsum(1), (1, 0))  # (c, M + 1)
    above = cum0.gather(1, start)  # R: relevant items above the group
    r = (cum0.gather(1, end) - above).to(f64)  # relevant items in the group
    g = (end - start).to(f64)  # group size
    pos = torch.arange(1, m + 1, device=sim.device, dtype=f64)  # 1-based positions
    j = pos - start.to(f64)  # 1-based position inside the group
    if ties == "pessimistic":
        inside = (j - (g - r)).clamp_min(0)  # relevant among the group's first j
    elif ties == "optimistic":
        inside = torch.minimum(j, r)
    else:
        inside = j * r / g
    cum = above.to(f64) + inside  # (c, M) (expected) relevant items in the top `pos`
    expect = torch.diff(cum, dim=1, prepend=torch.zeros(c, 1, dtype=f64, device=sim.device))
    nr = n_rel.to(f64)

    # the first relevant item's tie group: its start s, size gf and relevant count rf
    first = rel_sorted.to(torch.uint8).argmax(1, keepdim=True)  # (c, 1)
    s = start.gather(1, first).to(f64).squeeze(1)
    gf, rf = g.gather(1, first).squeeze(1), r.gather(1, first).squeeze(1).clamp_min(1)
    if ties == "pessimistic":
        rank = s + gf - rf + 1
        rr = 1 / rank
    elif ties == "optimistic":
        rank = s + 1
        rr = 1 / rank
    else:
        rank = s + (gf + 1) / (rf + 1)
        # P(first relevant at group position q) = C(gf - q, rf - 1) / C(gf, rf), q = 1..gf-rf+1
        q = pos[None, :]  # (1, M)
        ok = q <= (gf - rf + 1)[:, None]
        qq = torch.where(ok, q, torch.ones_like(q))
        logp = _lchoose(gf[:, None] - qq, rf[:, None] - 1) - _lchoose(gf, rf)[:, None]
        rr = torch.where(ok, logp.exp() / (s[:, None] + qq), 0.0).sum(1)

    if ties == "average":  # McSherry & Najork: E[precision at each position | relevant there]
        hits_before = torch.where(g > 1, (j - 1) * (r - 1) / (g - 1).clamp_min(1), 0.0)
        prec = (above.to(f64) + 1 + hits_before) / pos
    else:
        prec = cum / pos
    ap = (expect * prec).sum(1) / nr.clamp_min(1)

    out = {"rank": rank, "rr": rr, "ap": ap, "ok": n_rel > 0}
    disc = 1 / torch.log2(pos + 1)  # (M,)
    dcg = (expect * disc).cumsum(1)  # (c, M)
    idcg = disc.cumsum(0)  # (M,)
    for k in ks:
        kk = min(k, m)
        count = cum[:, kk - 1]
        if ties == "average":  # P(no relevant item among the group's first jk) by counting
            jk, gk, rk = j[:, kk - 1], g[:, kk - 1], r[:, kk - 1]
            fits = (gk - jk) >= rk
            none = torch.where(fits, (_lchoose((gk - jk).clamp_min(rk), rk)
                                      - _lchoose(gk, rk)).exp(), 0.0)
            hit = torch.where(above[:, kk - 1] > 0, 1.0, 1.0 - none)
        else:
            hit = (count > 0).to(f64)
        ideal = idcg[(torch.minimum(nr, torch.tensor(float(kk), dtype=f64)) - 1)
                     .clamp_min(0).long()]
        out[f"hit@{k}"] = hit
        out[f"count@{k}"] = count
        out[f"ndcg@{k}"] = dcg[:, kk - 1] / ideal
    return out


def retrieval_metrics(
    query: Tensor,
    gallery: Tensor | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    positives: Tensor | tuple[Tensor, Tensor] | None = None,
    chunk_size: int | None = None,
    normalize: bool = True,
    ties: str = "pessimistic",
) -> dict[str, float]:
    """Retrieval quality of ``query`` against ``gallery``: hit rate, recall, precision and
    nDCG at each k, ranks, MRR and mAP.

    For each query, gallery items are ranked by cosine similarity (dot product with
    ``normalize=False``). Per query, then averaged over the queries that have at least one
    relevant item (the others are left out):

    - ``hit_rate@k``: 1 if a relevant item is among the top k (torchmetrics'
      ``RetrievalHitRate``); ``R@k`` is the same number under its historical name (kept as an
      alias: the cross-modal retrieval literature calls it "recall@k" for one positive per
      query, where the two coincide);
    - ``recall@k``: relevant items in the top k / relevant items (``RetrievalRecall``);
    - ``precision@k``: relevant items in the top k / k (``RetrievalPrecision``);
    - ``ndcg@k``: binary-relevance nDCG, ``sum 1/log2(1 + pos)`` over the relevant items in the
      top k divided by its best possible value (``RetrievalNormalizedDCG``);
    - ``median_rank``, ``mean_rank``: the rank (1 = best) of the first relevant item;
      ``mrr``: the mean of its reciprocal (``RetrievalMRR``);
    - ``mAP``: mean over queries of the average precision over all relevant items
      (``RetrievalMAP``; ``sklearn.metrics.average_precision_score`` without ties).

    Ties (equal scores) follow ``ties``: ``"pessimistic"`` ranks the relevant items of a tie
    after the non-relevant ones (the default, and the behaviour of earlier releases for
    ``R@k`` and the ranks), ``"optimistic"`` before them, and ``"average"`` gives the
    expectation over every order of the tied items (fractional ranks; nDCG then equals
    scikit-learn's and torchmetrics' tie-averaged nDCG). Earlier releases computed ``mAP``
    with scikit-learn's tie convention (a relevant item's precision counted every item scored
    at least as high); with ties it now follows ``ties`` like every other entry.

    The similarity is computed ``chunk_size`` query rows at a time (by default about a million
    entries at once, some 190 MB of work), so a 50k x 50k evaluation never holds the full
    matrix: memory is O(chunk x M) plus a few numbers per query.

    Args:
        query: (N, D) query embeddings, or a precomputed (N, M) similarity with ``gallery=None``.
        gallery: (M, D) gallery embeddings, or None.
        ks: The cut-offs k.
        positives: Which gallery items are relevant: None (query i <-> gallery i), (N,) labels
            shared by both sides (N == M), a pair ``(query_labels (N,), gallery_labels (M,))``
            (equal label = relevant), or an (N, M) bool matrix.
        chunk_size: Query rows per chunk; None picks it from the gallery size.
        normalize: L2-normalise the embeddings first (ignored for a precomputed similarity).
        ties: ``"pessimistic"``, ``"optimistic"`` or ``"average"``.

    Returns:
        Python floats: per k in ``ks`` the keys ``R@k``, ``hit_rate@k``, ``recall@k``,
        ``precision@k``, ``ndcg@k``; then ``median_rank``, ``mean_rank``, ``mrr``, ``mAP``.

    Example:
        >>> x = torch.randn(20, 8)
        >>> retrieval_metrics(x, x + 0.01 * torch.randn(20, 8))["R@1"]
        1.0
    """
    owner = "retrieval_metrics"
    ks = _check_config(ks, chunk_size, ties, owner=owner)
    if gallery is None:
        sizes = check_tensor(query, "N M", owner=owner, arg="query")
        n, m = sizes["N"], sizes["M"]
    else:
        sizes = check_tensor(query, "N D", owner=owner, arg="query")
        m = check_tensor(gallery, "M D", owner=owner, arg="gallery", D=sizes["D"])["M"]
        n = sizes["N"]
        check_same_device({"query": query, "gallery": gallery}, owner=owner)
        work = torch.promote_types(query.dtype, gallery.dtype)  # e.g. float32 with float64
        query, gallery = query.to(work), gallery.to(work)
        if normalize:
            query = query / query.norm(dim=1, keepdim=True).clamp_min(1e-12)
            gallery = gallery / gallery.norm(dim=1, keepdim=True).clamp_min(1e-12)
    check_has_values(query, owner=owner, arg="query")
    if n == 0 or m == 0:
        raise ValueError(f"{owner}: expected at least one query and one gallery item, got N={n}, M={m}.")
    relevance = _relevance(positives, n, m, owner=owner)
    rows = chunk_size or max(1, _CHUNK_ELEMENTS // m)
    parts: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            sim = query[r0:r1] if gallery is None else query[r0:r1] @ gallery.T  # (c, M)
            sim = sim.float() if sim.dtype != torch.float64 else sim
            if not bool(torch.isfinite(sim).all()):  # ranks of NaN scores are meaningless
                raise ValueError(
                    f"{owner}: expected finite similarities, got NaN or inf (check `query` and "
                    f"`gallery` for NaN/inf values)."
                )
            rel = relevance(r0, r1, sim.device)
            stats = _chunk_stats(sim, rel, ks, ties)
            ok = stats.pop("ok")
            stats["n_rel"] = rel.sum(1).double()
            for key, value in stats.items():
                parts.setdefault(key, []).append(value[ok])
    per_query = {key: torch.cat(v).double() for key, v in parts.items()}
    rank_all = per_query["rank"]
    if rank_all.numel() == 0:
        raise ValueError(f"{owner}: expected at least one query with a relevant item, got none.")
    out: dict[str, float] = {}
    for k in ks:
        hit = per_query[f"hit@{k}"].mean().item()
        count = per_query[f"count@{k}"]
        out[f"R@{k}"] = hit
        out[f"hit_rate@{k}"] = hit
        out[f"recall@{k}"] = (count / per_query["n_rel"]).mean().item()
        out[f"precision@{k}"] = (count / k).mean().item()
        out[f"ndcg@{k}"] = per_query[f"ndcg@{k}"].mean().item()
    out["median_rank"] = float(rank_all.quantile(0.5).item())
    out["mean_rank"] = rank_all.mean().item()
    out["mrr"] = per_query["rr"].mean().item()
    out["mAP"] = per_query["ap"].mean().item()
    return out


class RetrievalMetrics:
    """Stateful retrieval metrics for a training or evaluation loop (torchmetrics-style).

    ``update`` stores detached CPU copies of each batch's query and gallery embeddings (and
    labels, if given); ``compute`` ranks every query against the whole accumulated gallery
    with :func:`retrieval_metrics` (chunked: O(chunk x M) memory beyond the stored
    embeddings), with the same keys and ``ties`` policy; ``reset`` clears the state. Without labels, queries and
    gallery items pair by their position in the accumulated order.

    Example:
        >>> metric = RetrievalMetrics(ks=(1, 5))
        >>> for _ in range(3):
        ...     x = torch.randn(4, 8)
        ...     metric.update(x, x)
        >>> metric.compute()["R@1"]
        1.0
    """

    def __init__(self, *, ks: Sequence[int] = (1, 5, 10), chunk_size: int | None = None,
                 normalize: bool = True, ties: str = "pessimistic") -> None:
        self.ks = _check_config(ks, chunk_size, ties, owner=self)
        self.chunk_size, self.normalize, self.ties = chunk_size, normalize, ties
        self.reset()

    def reset(self) -> None:
        self._query: list[Tensor] = []
        self._gallery: list[Tensor] = []
        self._labels: list[tuple[Tensor, Tensor]] = []

    def update(self, query: Tensor, gallery: Tensor, query_labels: Tensor | None = None,
               gallery_labels: Tensor | None = None) -> None:
        """Add a batch: query (n, D), gallery (m, D), optional labels (n,) and (m,)."""
        owner = self
        d = check_tensor(query, "N D", owner=owner, arg="query")["D"]
        if self._query:  # every update must match the first one's embedding size
            d = check_tensor(query, "N D", owner=owner, arg="query", D=self._query[0].shape[1])["D"]
        check_tensor(gallery, "M D", owner=owner, arg="gallery", D=d)
        check_has_values(query, owner=owner, arg="query")
        check_has_values(gallery, owner=owner, arg="gallery")
        labelled = query_labels is not None or gallery_labels is not None
        if labelled and (query_labels is None or gallery_labels is None):
            raise ValueError(
                "RetrievalMetrics: expected both `query_labels` and `gallery_labels` or "
                "neither, got only one."
            )
        if self._query and labelled != bool(self._labels):
            raise ValueError(
                "RetrievalMetrics: expected every update to give labels or none to, got a mix."
            )
        self._query.append(query.detach().cpu())
        self._gallery.append(gallery.detach().cpu())
        if labelled:
            assert query_labels is not None and gallery_labels is not None
            self._labels.append((query_labels.detach().cpu(), gallery_labels.detach().cpu()))

    def compute(self) -> dict[str, float]:
        if not self._query:
            raise ValueError("RetrievalMetrics: expected at least one update before compute, got none.")
        positives = None
        if self._labels:
            positives = (torch.cat([q for q, _ in self._labels]),
                         torch.cat([g for _, g in self._labels]))
        return retrieval_metrics(torch.cat(self._query), torch.cat(self._gallery), ks=self.ks,
                                 positives=positives, chunk_size=self.chunk_size,
                                 normalize=self.normalize, ties=self.ties)
