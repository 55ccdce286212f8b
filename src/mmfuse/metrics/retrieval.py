"""Cross-modal retrieval metrics: recall@K, median and mean rank, mean average precision."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import check_has_values, check_same_device, check_tensor, format_shape, owner_name

__all__ = ["RetrievalMetrics", "retrieval_metrics"]

_CHUNK_ELEMENTS = 1 << 21  # similarity entries held at once by default (about 80 MB of work)


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


def _check_config(ks: Any, chunk_size: Any, *, owner: object) -> tuple[int, ...]:
    """Validate ``ks`` (a non-empty sequence of positive ints) and ``chunk_size``; return ks."""
    name = owner_name(owner)
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence):
        raise TypeError(f"{name}: expected `ks` to be a sequence of positive ints, got {ks!r}.")
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"{name}: expected `ks` to be positive ints, got {ks!r}.")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size <= 0):
        raise ValueError(f"{name}: expected `chunk_size` to be a positive int, got {chunk_size!r}.")
    return ks


def _chunk_stats(sim: Tensor, rel: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(rank of the first relevant item, average precision, has-relevant) per query row.

    Ties are counted against the query: a non-relevant item scored equal to a relevant one
    ranks before it (and precision at a score counts every item scored at least as high, as
    ``sklearn.metrics.average_precision_score`` does).
    """
    n_rel = rel.sum(1)
    best = sim.masked_fill(~rel, float("-inf")).amax(1)  # (c,)
    rank = 1 + ((sim >= best[:, None]) & ~rel).sum(1)
    vals, order = sim.sort(dim=1, descending=True)  # (c, M)
    rel_sorted = rel.gather(1, order)
    cum_rel = rel_sorted.cumsum(1)
    m = sim.shape[1]
    at_least = m - torch.searchsorted(vals.flip(1).contiguous(), vals, side="left")  # (c, M)
    precision = cum_rel.gather(1, at_least - 1).double() / at_least
    ap = (precision * rel_sorted).sum(1) / n_rel.clamp_min(1)
    return rank, ap, n_rel > 0


def retrieval_metrics(
    query: Tensor,
    gallery: Tensor | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    positives: Tensor | tuple[Tensor, Tensor] | None = None,
    chunk_size: int | None = None,
    normalize: bool = True,
) -> dict[str, float]:
    """Retrieval quality of ``query`` against ``gallery``: recall@K, ranks and mAP.

    For each query, items are ranked by cosine similarity (dot product with
    ``normalize=False``). ``R@k`` is the fraction of queries with a relevant item among the top
    k; ``median_rank``/``mean_rank`` are over the rank (1 = best) of each query's first relevant
    item; ``mAP`` is the mean over queries of the average precision over all relevant items.
    Queries without any relevant item are left out. Ties count against the query.

    The similarity is computed ``chunk_size`` query rows at a time (by default about two
    million entries at once), so a 50k x 50k evaluation never holds the full matrix.

    Args:
        query: (N, D) query embeddings, or a precomputed (N, M) similarity with ``gallery=None``.
        gallery: (M, D) gallery embeddings, or None.
        ks: The cut-offs of recall@k.
        positives: Which gallery items are relevant: None (query i <-> gallery i), (N,) labels
            shared by both sides (N == M), a pair ``(query_labels (N,), gallery_labels (M,))``
            (equal label = relevant), or an (N, M) bool matrix.
        chunk_size: Query rows per chunk; None picks it from the gallery size.
        normalize: L2-normalise the embeddings first (ignored for a precomputed similarity).

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ..., "median_rank": ..., "mean_rank": ...,
        "mAP": ...}`` as Python floats (one ``R@k`` per entry of ``ks``).

    Example:
        >>> x = torch.randn(20, 8)
        >>> retrieval_metrics(x, x + 0.01 * torch.randn(20, 8))["R@1"]
        1.0
    """
    owner = "retrieval_metrics"
    ks = _check_config(ks, chunk_size, owner=owner)
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
    ranks, aps = [], []
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
            rank, ap, ok = _chunk_stats(sim, relevance(r0, r1, sim.device))
            ranks.append(rank[ok])
            aps.append(ap[ok])
    rank_all = torch.cat(ranks).double()
    if rank_all.numel() == 0:
        raise ValueError(f"{owner}: expected at least one query with a relevant item, got none.")
    out = {f"R@{k}": (rank_all <= k).double().mean().item() for k in ks}
    out["median_rank"] = float(rank_all.quantile(0.5).item())
    out["mean_rank"] = rank_all.mean().item()
    out["mAP"] = torch.cat(aps).double().mean().item()
    return out


class RetrievalMetrics:
    """Stateful retrieval metrics for a training or evaluation loop (torchmetrics-style).

    ``update`` stores detached CPU copies of each batch's query and gallery embeddings (and
    labels, if given); ``compute`` ranks every query against the whole accumulated gallery
    with :func:`retrieval_metrics`; ``reset`` clears the state. Without labels, queries and
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
                 normalize: bool = True) -> None:
        self.ks = _check_config(ks, chunk_size, owner=self)
        self.chunk_size, self.normalize = chunk_size, normalize
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
                                 normalize=self.normalize)
