"""Pieces shared by the contrastive losses' dense and tiled paths (private).

The constants are public through :mod:`mmfuse.functional.contrastive`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_TILE",
    "NORM_EPS",
    "REDUCTIONS",
    "_anchor_weights",
    "_auto_tile",
    "_compute_dtype",
    "_embedding_grads",
    "_neg_inf_safe",
    "_prep",
    "_prep_backward",
    "_run_row_blocks",
    "_scale_grad",
    "_tiles",
    "_valid_tile",
    "_workers",
]

DEFAULT_TILE = 1024
"""Tile size of the tiled path; also the size above which ``chunk_size=None`` tiles."""

NORM_EPS = 1e-6
"""L2 normalisation divides by ``max(||x||, NORM_EPS)``: a zero vector maps to zero and its
gradient stays bounded (by ``1 / NORM_EPS`` times the incoming one)."""

_NEG_INF = float("-inf")

_TILE_MACS = 2**26
"""``chunk_size="auto"``: multiply-adds of one tile's matmul (tile^2 * D) it aims for: 512 x 512
tiles at D=256, whose float32 buffer (1 MB) stays close to a core's cache, so the elementwise
passes over it run from cache and the single-threaded matmuls run at the machine's large-matmul
rate (``benchmarks/contrastive.py --tile`` compares sizes); the Python dispatch of a tile's few
kernels stays about 1 % of its arithmetic."""


def _auto_tile(n_q: int, n_k: int, dim: int, threads: int) -> int:
    """Tile side for ``chunk_size="auto"``: a power of two with ``tile^2 * dim`` close to
    :data:`_TILE_MACS` (512 at D=256), within [256, 2048] (two float32 tile buffers per worker:
    at most 32 MB), and no more than the rows per worker thread, so that every thread has a
    block of query rows to work on."""
    t = 2 ** round(math.log2(math.sqrt(_TILE_MACS / max(dim, 1))))
    t = min(max(t, 256), 2048)
    per_worker = -(-max(n_q, 1) // max(threads, 1))
    return max(1, min(t, per_worker, max(n_q, n_k)))


def _workers(x: Tensor, n_blocks: int) -> int:
    """How many threads walk the row blocks: the intra-op thread count on CPU in eager mode
    (each thread then runs its kernels single-threaded), one elsewhere (CUDA, compiling)."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return 1
    return max(1, min(torch.get_num_threads(), n_blocks))


def _run_row_blocks(n: int, tile: int, workers: int,
                    body: Callable[[int, int, int], None]) -> None:
    """Call ``body(w, i0, i1)`` for every block ``i0:i1`` of ``tile`` query rows.

    With ``workers > 1`` block number ``b`` goes to worker ``b % workers``, a thread of its own
    that runs its kernels on one intra-op thread and takes its blocks in order: which worker
    accumulates what never depends on timing, so the results are bitwise reproducible, and no
    kernel waits at a barrier for a thread the OS has descheduled (what makes many short
    multi-threaded kernels slow on a busy machine). ``body`` must write only rows ``i0:i1`` of
    shared outputs, or accumulators of its own worker ``w``. The first error is re-raised.
    """
    blocks = _tiles(n, tile)
    if workers <= 1:
        for i0, i1 in blocks:
            body(0, i0, i1)
        return
    errors: list[BaseException] = []
    grad_mode = torch.is_grad_enabled()

    def run(w: int) -> None:
        try:
            torch.set_num_threads(1)
            with torch.set_grad_enabled(grad_mode):
                for b in range(w, len(blocks), workers):
                    body(w, *blocks[b])
        except BaseException as e:  # re-raised in the calling thread
            errors.append(e)

    threads_before = torch.get_num_threads()
    pool = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(workers)]
    try:
        for th in pool:
            th.start()
    finally:
        for th in pool:
            if th.is_alive() or th.ident is not None:
                th.join()
        torch.set_num_threads(threads_before)  # the process-wide default the workers changed
    if errors:
        raise errors[0]


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _prep(x: Tensor, valid: Tensor | None, normalize: bool, ct: torch.dtype) -> Tensor:
    """Cast to the compute dtype, zero removed rows, L2-normalise (safely)."""
    x = x.to(ct)
    if valid is not None:
        x = x.where(valid[:, None], 0.0)
    if normalize:
        x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(NORM_EPS)
    return x


def _prep_backward(x: Tensor, valid: Tensor | None, normalize: bool, xh: Tensor,
                   grad: Tensor) -> Tensor:
    """Gradient of :func:`_prep` with respect to ``x`` (in ``x.dtype``), given ``xh = _prep(x)``
    and the gradient with respect to ``xh``. Works in place on ``grad`` (no (B, D) temporaries
    beyond the result, which matters at large B)."""
    if normalize:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=grad.dtype)  # (B, 1)
        proj = torch.linalg.vecdot(xh, grad, dim=1).unsqueeze(1)  # (B, 1)
        proj = proj.where(norm > NORM_EPS, 0.0)  # clamped norm: the projection term vanishes
        grad.addcmul_(xh, proj, value=-1.0).div_(norm.clamp_min(NORM_EPS))
    if valid is not None:  # removed rows (whose values may be anything) get no gradient
        grad = grad.where(valid[:, None], 0.0)
    return grad.to(x.dtype)


def _scale_grad(dq: Tensor, qh: Tensor) -> Tensor:
    """``sum(dq * qh)`` without a (B, D) temporary, summed over rows in float64."""
    return torch.linalg.vecdot(dq, qh, dim=1).double().sum()


def _tiles(n: int, t: int) -> list[tuple[int, int]]:
    return [(i, min(i + t, n)) for i in range(0, n, t)]


def _valid_tile(vq: Tensor | None, vk: Tensor | None, i0: int, i1: int, j0: int,
                j1: int) -> Tensor | None:
    if vq is None and vk is None:
        return None
    if vq is None:
        assert vk is not None
        return vk[None, j0:j1].expand(i1 - i0, j1 - j0)
    if vk is None:
        return vq[i0:i1, None].expand(i1 - i0, j1 - j0)
    return vq[i0:i1, None] & vk[None, j0:j1]


def _neg_inf_safe(n: Tensor) -> Tensor:
    """-inf (no negatives) -> +inf, so that ``exp(L - n)`` is 0 there instead of inf."""
    return n.where(n > _NEG_INF, float("inf"))


def _embedding_grads(needs: tuple[bool, ...], q: Tensor, k: Tensor, scale: Tensor, s: Tensor,
                     qh: Tensor, kh: Tensor, dq: Tensor, dk: Tensor, vq: Tensor | None,
                     vk: Tensor | None, normalize: bool
                     ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(grad q, grad k, grad scale) at the end of a tiled backward, from ``dq`` (the gradient
    with respect to ``qh = _prep(q)``, without the scale ``s``) and ``dk`` (with respect to
    ``kh``, scale included); ``needs`` is ``ctx.needs_input_grad`` of ``(q, k, scale, ...)``.
    Works in place on ``dq`` and ``dk`` (the scale's gradient is read before ``dq`` is scaled)."""
    grad_scale = _scale_grad(dq, qh).to(scale.dtype) if needs[2] else None
    grad_q = _prep_backward(q, vq, normalize, qh, dq.mul_(s)) if needs[0] else None
    grad_k = _prep_backward(k, vk, normalize, kh, dk) if needs[1] else None
    return grad_q, grad_k, grad_scale


REDUCTIONS = ("anchor", "pair")
"""How several positives per anchor are averaged: ``"anchor"`` (each anchor's loss is the mean
over its positives, then the mean over anchors) or ``"pair"`` (the mean over every
(anchor, positive) pair, pytorch-metric-learning's convention: an anchor counts as many
times as it has positives)."""


def _anchor_weights(count: Tensor, weights: Tensor | None, reduction: str) -> Tensor:
    """Each anchor's weight in the loss's mean: its weight (1 by default), times its number of
    positives for ``reduction="pair"``; 0 for anchors without a positive."""
    w = torch.ones_like(count) if weights is None else weights.to(count.dtype)
    if reduction == "pair":
        w = w * count
    return w.where(count > 0, 0.0)
