"""mmfuse against the peer packages its tests compare it with, on the same inputs.

For every comparison the test suite makes against an installed peer package
(pytorch-metric-learning, info-nce-pytorch, torchmetrics, scikit-learn, librosa, diffusers),
runs mmfuse and the peer on the same inputs (several seeds, shapes and options; float32 and
float64 where both support them; gradients where the tests compare gradients) and prints a
markdown table of the largest differences:

- max abs difference: max |mmfuse - peer| over every compared value;
- max relative difference: per case, max |mmfuse - peer| divided by max |peer| (the scale of
  the compared tensor, as the tests measure it), then the largest over the cases;
- tests' bound: the tolerance the named test asserts for that comparison.

A peer that is not installed gives rows that say so. ``--json PATH`` writes the rows too.

    OMP_NUM_THREADS=1 python benchmarks/peers.py            # every case (about a minute)
    OMP_NUM_THREADS=1 python benchmarks/peers.py --quick    # one seed, small shapes
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the comparison loops shared with the tests
from _peers import (  # noqa: E402
    PRED,
    ddpm_steps,
    dpm_solver_steps,
    learned_range_head,
    random_head,
    scheduler_loop,
    sklearn_classification_pairs,
    torchmetrics_per_query,
    torchmetrics_stateful,
)

FSDD = Path(os.environ.get("MMFUSE_FSDD", ROOT.parent / "shared" / "data" / "fsdd"))
F32, F64 = torch.float32, torch.float64
SUPCON = "tests/functional/contrastive/test_supcon.py"
OPTIONS = "tests/functional/contrastive/test_info_nce_options.py"
RETRIEVAL = "tests/metrics/test_retrieval.py"
LIBROSA = "tests/functional/audio/test_librosa.py"
DIFFUSERS = "tests/functional/generative/test_diffusers.py"


@dataclass
class Row:
    """One line of the table: a comparison, the bound its test asserts, the largest gaps."""

    capability: str
    dist: str  # the peer's distribution name
    api: str  # the peer's function or class
    dtype: str
    bound: tuple[str, float]  # ("abs" | "rel", tolerance)
    test: str  # file::function (or the file: its docstring) that asserts the bound
    version: str | None = None  # None: not installed
    max_abs: float = 0.0
    max_rel: float = 0.0
    cases: int = 0

    def add(self, got: Any, want: Any) -> None:
        g, w = _array(got), _array(want)
        assert g.shape == w.shape, (self.capability, g.shape, w.shape)
        gap = float(np.abs(g - w).max()) if g.size else 0.0
        scale = float(np.abs(w).max()) if w.size else 0.0
        self.max_abs = max(self.max_abs, gap)
        self.max_rel = max(self.max_rel, gap / max(scale, 1e-30))
        self.cases += 1

    @property
    def within(self) -> bool:
        kind, tol = self.bound
        return (self.max_abs if kind == "abs" else self.max_rel) <= tol


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


class Table:
    """The rows in order; ``row(...)`` returns the existing row of the same key."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Row] = {}

    def row(self, capability: str, dist: str, api: str, dtype: str, bound: tuple[str, float],
            test: str) -> Row:
        key = (capability, api, dtype)
        if key not in self.rows:
            self.rows[key] = Row(capability, dist, api, dtype, bound, test,
                                 version=importlib.metadata.version(dist))
        return self.rows[key]


def grads(fn: Callable[..., torch.Tensor], *xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and the gradients of every input, flattened into one vector."""
    leaves = [x.detach().clone().requires_grad_() for x in xs]
    loss = fn(*leaves)
    gs = torch.autograd.grad(loss, leaves)
    return loss.detach(), torch.cat([g.reshape(-1) for g in gs])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def contrastive_bound(dtype: torch.dtype, test: str, f64_test: str | None = None):
    """float64: 1e-10 relative; float32: 1e-5 relative (the test files' stated tolerances)."""
    if dtype == F64:
        return ("rel", 1e-10), f64_test or test
    return ("rel", 1e-5), test


# --- pytorch-metric-learning ---------------------------------------------------------------

def pml_rows(t: Table, seeds: list[int], quick: bool) -> None:
    from pytorch_metric_learning import losses

    from mmfuse.functional import info_nce, nt_xent_loss, supcon_loss

    dist = "pytorch-metric-learning"
    shapes = [(16, 8, 5)] if quick else [(16, 8, 5), (64, 32, 8), (128, 64, 16)]
    temps = [0.1] if quick else [0.1, 0.5]
    for dtype in (F32, F64):
        name = str(dtype).removeprefix("torch.")
        bound, test = contrastive_bound(dtype, f"{SUPCON}::test_supcon_matches_pytorch_metric_learning")
        loss_row = t.row("Supervised contrastive, SupCon L_out: loss", dist, "losses.SupConLoss",
                         name, bound, test)
        grad_row = t.row("Supervised contrastive, SupCon L_out: gradient", dist,
                         "losses.SupConLoss", name, bound, test)
        bound, test = contrastive_bound(dtype, SUPCON,
                                        f"{SUPCON}::test_nt_xent_matches_pytorch_metric_learning_and_the_formula")
        nt_loss = t.row("Supervised contrastive, NT-Xent: loss", dist, "losses.NTXentLoss", name,
                        bound, test)
        nt_grad = t.row("Supervised contrastive, NT-Xent: gradient", dist, "losses.NTXentLoss",
                        name, bound, test)
        bound, test = contrastive_bound(dtype, OPTIONS,
                                        f"{OPTIONS}::test_pair_reduction_matches_pytorch_metric_learning")
        pair_loss = t.row("InfoNCE, several positives per pair: loss", dist,
                          "losses.NTXentLoss(ref_emb=)", name, bound, test)
        pair_grad = t.row("InfoNCE, several positives per pair: gradient", dist,
                          "losses.NTXentLoss(ref_emb=)", name, bound, test)
        for seed in seeds:
            for n, d, classes in shapes:
                g = gen(seed)
                z = torch.randn(n, d, generator=g, dtype=dtype)
                y = torch.randint(0, classes, (n,), generator=g)
                a, b = torch.randn(2, n, d, generator=g, dtype=dtype)
                for temp in temps:
                    supcon = losses.SupConLoss(temperature=temp)
                    want = grads(partial(supcon, labels=y), z)
                    for chunk in (None, 5):  # dense and tiled
                        got = grads(partial(supcon_loss, labels=y, temperature=temp,
                                            chunk_size=chunk), z)
                        loss_row.add(got[0], want[0])
                        grad_row.add(got[1], want[1])
                    nt_xent = losses.NTXentLoss(temperature=temp)
                    want = grads(partial(_pml_views, loss=nt_xent), a, b)
                    for chunk in (None, 7):
                        got = grads(partial(nt_xent_loss, temperature=temp, chunk_size=chunk),
                                    a, b)
                        nt_loss.add(got[0], want[0])
                        nt_grad.add(got[1], want[1])
                    want = grads(partial(_pml_pairs, loss=nt_xent, labels=y), a, b)
                    for chunk in (None, 3):
                        got = grads(partial(info_nce, temperature=temp, positives=y,
                                            direction="a2b", reduction="pair", chunk_size=chunk),
                                    a, b)
                        pair_loss.add(got[0], want[0])
                        pair_grad.add(got[1], want[1])


def _pml_views(a: torch.Tensor, b: torch.Tensor, loss: Any) -> torch.Tensor:
    """NT-Xent as pytorch-metric-learning takes it: both views stacked, the sample id as label."""
    return loss(torch.cat([a, b]), torch.arange(len(a)).repeat(2))


def _pml_pairs(a: torch.Tensor, b: torch.Tensor, loss: Any, labels: torch.Tensor) -> torch.Tensor:
    """a -> b with labels; ref_labels another tensor object, or pml drops the diagonal as it
    does when the reference is the query set."""
    return loss(a, labels, ref_emb=b, ref_labels=labels.clone())


# --- info-nce-pytorch ----------------------------------------------------------------------

def info_nce_rows(t: Table, seeds: list[int], quick: bool) -> None:
    import info_nce as pkg

    from mmfuse.functional import info_nce

    dist = "info-nce-pytorch"
    shapes = [(7, 9, 5)] if quick else [(7, 9, 5), (32, 64, 16), (128, 256, 32)]
    for dtype in (F32, F64):
        name = str(dtype).removeprefix("torch.")
        bound, test = contrastive_bound(dtype, f"{OPTIONS}::test_explicit_negatives_match_info_nce_pytorch",
                                        OPTIONS)
        rows = {(mode, what): t.row(f"InfoNCE, explicit {label} negatives: {what}", dist,
                                    f"info_nce(negative_mode='{mode}')", name, bound, test)
                for mode, label in (("unpaired", "shared"), ("paired", "per-sample"))
                for what in ("loss", "gradient")}
        plain = t.row("InfoNCE, a -> b without negatives: loss", dist, "info_nce", name, bound,
                      test)
        for seed in seeds:
            for n, m, d in shapes:
                g = gen(seed)
                a, b = torch.randn(2, n, d, generator=g, dtype=dtype)
                negs = {"unpaired": torch.randn(m, d, generator=g, dtype=dtype),
                        "paired": torch.randn(n, 4, d, generator=g, dtype=dtype)}
                for mode, neg in negs.items():
                    got = grads(lambda x, p, q: info_nce(x, p, temperature=0.1, negatives=q),
                                a, b, neg)
                    want = grads(lambda x, p, q, mode=mode: pkg.info_nce(
                        x, p, q, temperature=0.1, negative_mode=mode), a, b, neg)
                    rows[mode, "loss"].add(got[0], want[0])
                    rows[mode, "gradient"].add(got[1], want[1])
                plain.add(info_nce(a, b, temperature=0.1, direction="a2b"),
                          pkg.info_nce(a, b, temperature=0.1))


# --- torchmetrics and scikit-learn ---------------------------------------------------------

def untied_in_float32(sim: torch.Tensor) -> bool:
    """No two scores of a row equal once cast to float32 (as torchmetrics casts them)."""
    ordered = sim.float().sort(dim=1).values
    return bool((ordered[:, 1:] != ordered[:, :-1]).all())


def torchmetrics_rows(t: Table, seeds: list[int], quick: bool) -> None:
    from mmfuse.metrics import RetrievalMetrics, retrieval_metrics

    def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels, classes).to(dtype)

    dist = "torchmetrics"
    shapes = [(40, 50)] if quick else [(40, 50), (100, 200), (300, 80)]
    bound = ("abs", 1e-6)
    for dtype in (F32, F64):
        name = str(dtype).removeprefix("torch.")
        row = t.row("Retrieval metrics: hit rate, recall, precision, nDCG @k, MRR, mAP", dist,
                    "functional.retrieval_*", name, bound,
                    f"{RETRIEVAL}::test_matches_torchmetrics_functional_with_several_positives")
        tied = t.row("Retrieval metrics: nDCG @k, ties averaged", dist,
                     "functional.retrieval_normalized_dcg", name, bound,
                     f"{RETRIEVAL}::test_tie_averaged_ndcg_matches_torchmetrics_and_sklearn")
        stateful = t.row("Retrieval metrics: stateful, several updates", dist,
                         "retrieval.Retrieval* classes", name, bound,
                         f"{RETRIEVAL}::test_stateful_metric_matches_torchmetrics_stateful")
        for seed in seeds:
            for n, m in shapes:
                g = gen(seed)
                # torchmetrics leaves out relevant items scored <= 0, casts scores to float32
                # and orders ties by position: positive scores, without ties in float32
                sim = torch.rand(n, m, generator=g, dtype=dtype) + 0.01
                while not untied_in_float32(sim):
                    sim = torch.rand(n, m, generator=g, dtype=dtype) + 0.01
                rel = torch.rand(n, m, generator=g) < 0.1
                rel[::7] = False  # queries without a relevant item: left out by both
                ks = [1, 3, 10, m + 10]
                got = retrieval_metrics(sim, positives=rel, ks=ks, chunk_size=6)
                for key, value in torchmetrics_per_query(sim, rel, ks).items():
                    row.add(got[key], value)
                ints = torch.randint(1, 4, (n, 12), generator=g).to(dtype)
                rel = torch.rand(n, 12, generator=g) < 0.3
                rel[:, 0] = True
                got = retrieval_metrics(ints, positives=rel, ks=(1, 4), ties="average")
                theirs = torchmetrics_per_query(ints, rel, (1, 4))  # every row has one
                for k in (1, 4):
                    tied.add(got[f"ndcg@{k}"], theirs[f"ndcg@{k}"])
                ql = torch.randint(0, 5, (n,), generator=g)
                gl = torch.randint(0, 5, (m,), generator=g)
                q, gal = torch.zeros(n, 6, dtype=dtype), torch.zeros(m, 6, dtype=dtype)
                while not untied_in_float32(q @ gal.T):
                    # non-negative coordinates, related by label: every score positive
                    q = torch.rand(n, 6, generator=g, dtype=dtype) + 2 * one_hot(ql, 6)
                    gal = torch.rand(m, 6, generator=g, dtype=dtype) + 2 * one_hot(gl, 6)
                ours = RetrievalMetrics(ks=(1, 5), normalize=False, chunk_size=4)
                half_q, half_g = n // 2, m // 2
                ours.update(q[:half_q], gal[:half_g], ql[:half_q], gl[:half_g])
                ours.update(q[half_q:], gal[half_g:], ql[half_q:], gl[half_g:])
                got = ours.compute()
                theirs = torchmetrics_stateful(q @ gal.T, ql[:, None] == gl[None, :],
                                               [slice(0, n // 3), slice(n // 3, n)])
                for key, want in theirs.items():
                    stateful.add(got[key], want)


def sklearn_rows(t: Table, seeds: list[int], quick: bool) -> None:
    from sklearn import metrics as skm

    from mmfuse.metrics import retrieval_metrics

    dist = "scikit-learn"
    shapes = [(40, 30)] if quick else [(40, 30), (120, 200), (300, 50)]
    for dtype in (F32, F64):
        name = str(dtype).removeprefix("torch.")
        ap = t.row("Retrieval metrics: mAP", dist, "metrics.average_precision_score", name,
                   ("rel", 1e-9), f"{RETRIEVAL}::test_paired_embeddings_match_loop_reference")
        ndcg = t.row("Retrieval metrics: nDCG @k, ties averaged", dist, "metrics.ndcg_score",
                     name, ("rel", 1e-12),
                     f"{RETRIEVAL}::test_tie_averaged_ndcg_matches_torchmetrics_and_sklearn")
        for seed in seeds:
            for n, m in shapes:
                g = gen(seed)
                sim = torch.randn(n, m, generator=g, dtype=dtype)  # no ties
                rel = torch.rand(n, m, generator=g) < 0.15
                rel[:, seed % m] = True
                got = retrieval_metrics(sim, positives=rel, ks=(1,))
                ap.add(got["mAP"], np.mean([skm.average_precision_score(rel[i].numpy(),
                                                                        sim[i].numpy())
                                            for i in range(n)]))
                ints = torch.randint(1, 4, (n, 12), generator=g).to(dtype)
                rel = torch.rand(n, 12, generator=g) < 0.3
                rel[:, 0] = True
                got = retrieval_metrics(ints, positives=rel, ks=(1, 4), ties="average")
                for k in (1, 4):
                    ndcg.add(got[f"ndcg@{k}"], skm.ndcg_score(rel.double().numpy(),
                                                              ints.double().numpy(), k=k))
    cls = t.row("Classification metrics: accuracy, F1 (macro, weighted, micro)", dist,
                "metrics.accuracy_score, f1_score", "int64", ("rel", 1e-6),
                "tests/metrics/test_classification.py::test_match_sklearn")
    for seed in range(len(seeds) * (5 if quick else 40)):
        g = gen(seed)
        n, c = int(torch.randint(1, 200, (1,), generator=g)), int(torch.randint(1, 8, (1,), generator=g))
        target, pred = torch.randint(0, c, (2, n), generator=g)
        for _, got, want in sklearn_classification_pairs(pred, target, c):
            cls.add(got, want)


# --- librosa -------------------------------------------------------------------------------

def waveforms(seeds: list[int], recordings: int) -> Iterator[tuple[np.ndarray, int]]:
    """Synthetic sweeps (one per seed) and the first FSDD recordings found beside the repo."""
    sr = 8000
    for seed in seeds:
        rng = np.random.default_rng(seed)
        time = np.arange(int(rng.uniform(0.3, 0.8) * sr)) / sr
        f0, f1 = rng.uniform(80, 300), rng.uniform(1500, 3800)
        sweep = np.sin(2 * np.pi * (f0 * time + (f1 - f0) / (2 * time[-1]) * time**2))
        yield sweep * np.hanning(time.size) + 0.01 * rng.standard_normal(time.size), sr
    folder = FSDD / "recordings" if (FSDD / "recordings").is_dir() else FSDD
    paths = sorted(folder.glob("*.wav"))[:recordings] if folder.is_dir() else []
    if paths:
        import soundfile as sf

        for path in paths:
            y, rate = sf.read(path, dtype="float64")
            yield y, int(rate)


def librosa_rows(t: Table, seeds: list[int], quick: bool) -> None:
    import librosa

    from mmfuse.functional import log_mel_spectrogram, mel_filterbank, mfcc, power_to_db

    dist = "librosa"
    like: dict[str, Any] = {"mel_scale": "slaney", "norm": "slaney", "pad_mode": "constant"}
    signals = list(waveforms(seeds, 1 if quick else 10))
    db_options: list[dict[str, Any]] = [{}, {"ref": "max"}, {"top_db": None}, {"top_db": 40.0, "amin": 1e-5}]
    for dtype, tol in ((np.float64, 1e-4), (np.float32, 1e-3)):
        name = np.dtype(dtype).name
        db = t.row("Log-mel, decibels (ref, amin, top_db)", dist,
                   "feature.melspectrogram + power_to_db", name, ("abs", tol),
                   f"{LIBROSA}::test_log_mel_db_matches_librosa")
        power = t.row("Log-mel, mel power before the log", dist, "feature.melspectrogram",
                      name, ("rel", 1e-6), f"{LIBROSA}::test_log_mel_db_matches_librosa")
        cep = t.row("Log-mel and MFCC: MFCC", dist, "feature.mfcc", name, ("abs", tol),
                    f"{LIBROSA}::test_mfcc_matches_librosa")
        for y64, sr in signals:
            y = y64.astype(dtype)
            mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=256, hop_length=64, n_mels=40)
            ours = log_mel_spectrogram(torch.from_numpy(y), sr, n_fft=256, hop_length=64,
                                       n_mels=40, eps=1e-30, **like).exp()
            power.add(ours, mel)
            for opt in db_options:
                kw = {"ref": np.max} if opt.get("ref") == "max" else dict(opt)
                db.add(log_mel_spectrogram(torch.from_numpy(y), sr, n_fft=256, hop_length=64,
                                           n_mels=40, scale="db", **like, **opt),
                       librosa.power_to_db(mel, **kw))
            want = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, n_fft=512, hop_length=128,
                                        n_mels=64, fmin=50.0, fmax=3500.0)
            cep.add(mfcc(torch.from_numpy(y), sr, n_mfcc=20, n_fft=512, hop_length=128,
                         n_mels=64, f_min=50.0, f_max=3500.0, scale="db", **like), want)
    framing = t.row("Log-mel, framing (center, pad_mode) and mel scales (HTK, Slaney)", dist,
                    "feature.melspectrogram", "float64", ("rel", 1e-7),
                    f"{LIBROSA}::test_framing_and_mel_scales_match_librosa")
    for y, sr in signals:
        pads: list[tuple[bool, Any]] = [(True, "reflect"), (True, "constant"), (True, "edge"),
                                        (False, "constant")]
        for center, pad in pads:
            for htk in (True, False):
                want = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=256, hop_length=80,
                                                      n_mels=32, center=center, pad_mode=pad,
                                                      htk=htk, norm=None)
                framing.add(log_mel_spectrogram(
                    torch.from_numpy(y), sr, n_fft=256, hop_length=80, n_mels=32, center=center,
                    pad_mode={"edge": "replicate"}.get(pad, pad), eps=1e-30,
                    mel_scale="htk" if htk else "slaney").exp(), want)
    filters = t.row("Log-mel, Slaney mel filterbank", dist, "filters.mel", "float64",
                    ("rel", 1e-10), f"{LIBROSA}::test_slaney_norm_flag_equals_librosa_filters")
    for sr, n_fft, n_mels, fmin, fmax in [(8000, 256, 30, 20.0, 3800.0), (16000, 512, 64, 0.0, None),
                                          (22050, 2048, 128, 30.0, 11000.0)][:1 if quick else 3]:
        filters.add(mel_filterbank(n_fft // 2 + 1, n_mels, sr, fmin, fmax, mel_scale="slaney",
                                   norm="slaney", dtype=F64).T,
                    librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                        dtype=np.float64))
    to_db = t.row("Log-mel, power_to_db per spectrogram", dist, "power_to_db", "float64",
                  ("abs", 1e-10),
                  f"{LIBROSA}::test_power_to_db_matches_librosa_per_item_and_on_silence")
    for seed in seeds:
        spec = torch.rand(3, 16, 20, generator=gen(seed), dtype=F64) ** 6 * torch.tensor(
            [1.0, 1e-3, 1e4], dtype=F64)[:, None, None]
        spec[1, :4] = 0.0
        for kw in ({"ref": "max", "top_db": 50.0}, {}, {"top_db": None, "amin": 1e-6}):
            got = power_to_db(spec, **kw)
            lkw = {**kw, "ref": np.max} if "ref" in kw else kw
            for i in range(3):
                to_db.add(got[i], librosa.power_to_db(spec[i].numpy(), **lkw))


# --- diffusers -----------------------------------------------------------------------------

def diffusers_rows(t: Table, seeds: list[int], quick: bool) -> None:
    import diffusers

    from mmfuse.alignment import DiffusionHead
    from mmfuse.functional import beta_schedule

    dist = "diffusers"
    mixed = "float32 (mmfuse float64)"

    def dpm(**config: Any) -> Any:
        return diffusers.DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", **config)

    betas = t.row("Diffusion: beta schedules (linear, scaled-linear, sigmoid)", dist,
                  "DDPMScheduler.betas", "float64 (diffusers float32)", ("abs", 1e-8),
                  f"{DIFFUSERS}::test_schedules_match_diffusers")
    for steps in [1000, 37] if quick else [1000, 500, 250, 100, 37]:
        for kind, kw in (("linear", {}), ("sigmoid", {}), ("sigmoid", {"beta_start": 1e-3,
                                                                      "beta_end": 0.05}),
                         ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012})):
            betas.add(beta_schedule(kind, steps, rescale=False, **kw),  # type: ignore[arg-type]
                      diffusers.DDPMScheduler(num_train_timesteps=steps, beta_schedule=kind,
                                              **kw).betas)
    x0_row = t.row("Diffusion: x0 from eps / v, clipping, dynamic thresholding", dist,
                   "DDPMScheduler.step().pred_original_sample", mixed, ("abs", 1e-5),
                   f"{DIFFUSERS}::test_ddpm_steps_match_diffusers")
    step_row = t.row("Diffusion: DDPM step (fixed small / large, learned range)", dist,
                     "DDPMScheduler.step().prev_sample", mixed, ("rel", 1e-5),
                     f"{DIFFUSERS}::test_ddpm_steps_match_diffusers")
    shapes = [(3, 2, 4, 4)] if quick else [(3, 2, 4, 4), (8, 3, 16, 16)]

    for seed in seeds:
        for shape in shapes:
            for variance in ("fixed_small", "fixed_large", "learned_range"):
                for policy in (None, "clip", "threshold"):
                    for prediction in ("eps", "v"):
                        sched = diffusers.DDPMScheduler(
                            num_train_timesteps=100, beta_schedule="scaled_linear",
                            beta_start=0.001, beta_end=0.03, variance_type=variance,
                            clip_sample=policy == "clip", clip_sample_range=1.0,
                            thresholding=policy == "threshold", dynamic_thresholding_ratio=0.9,
                            sample_max_value=2.5, prediction_type=PRED[prediction])
                        sched.set_timesteps(20)
                        g = gen(seed)
                        x = torch.randn(*shape, generator=g)
                        for x0, want_x0, got, want in ddpm_steps(sched, x, g, 1000 * seed):
                            x0_row.add(x0, want_x0)
                            step_row.add(got, want)
    solver = t.row("Diffusion: DPM-Solver++(2M) step", dist, "DPMSolverMultistepScheduler.step",
                   mixed, ("rel", 1e-5),
                   f"{DIFFUSERS}::test_dpm_solver_2m_matches_diffusers_step_by_step")
    for seed in seeds:
        for steps in [6, 20] if quick else [6, 20, 50]:
            for prediction in ("eps", "v"):
                for threshold in (False, True):
                    sched = dpm(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                beta_start=0.00085, beta_end=0.012,
                                prediction_type=PRED[prediction], thresholding=threshold,
                                dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
                    sched.set_timesteps(steps)
                    x = torch.randn(3, 2, 5, generator=gen(seed))
                    for got, want in dpm_solver_steps(sched, x):
                        solver.add(got, want)
    head_row = t.row("Diffusion: DiffusionHead sampling (DPM-Solver++ 2M, DDPM), 10 steps", dist,
                     "DPMSolverMultistepScheduler / DDPMScheduler loop", "float32", ("rel", 1e-4),
                     f"{DIFFUSERS}::test_head_samplers_match_a_diffusers_loop")
    for seed in seeds:
        for prediction in ("eps", "v"):
            head = random_head(prediction, seed)
            cond = torch.randn(3, 4, generator=gen(seed + 100))
            noise = torch.randn(3, 6, generator=gen(seed + 200))
            ts = head.timesteps(10)
            common: dict[str, Any] = {"num_train_timesteps": 100,
                                      "trained_betas": head.betas.float().tolist(),
                                      "prediction_type": PRED[prediction]}
            for sampler in ("dpmpp_2m", "ddpm"):
                if sampler == "dpmpp_2m":
                    sched = dpm(**common)
                    got = head.sample(cond, sampler=sampler, steps=10, noise=noise)
                else:
                    sched = diffusers.DDPMScheduler(**common, variance_type="fixed_large",
                                                    clip_sample=False)
                    got = head.sample(cond, sampler=sampler, steps=10, noise=noise,
                                      variance_type="fixed_large", generator=gen(seed + 300))
                sched.set_timesteps(timesteps=ts)
                head_row.add(got, scheduler_loop(head, sched, cond, noise, gen(seed + 300)
                                                 if sampler == "ddpm" else None))
    if "variance_type" in inspect.signature(DiffusionHead).parameters:
        learned_rows(t, seeds, quick)


def learned_rows(t: Table, seeds: list[int], quick: bool) -> None:
    """DiffusionHead(variance_type="learned_range"): its DDPM sampler, guided or not, against
    DDPMScheduler(variance_type="learned_range") around the same denoiser."""
    import diffusers

    row = t.row("Diffusion: DiffusionHead learned-range DDPM sampling, guided, 10 steps",
                "diffusers", "DDPMScheduler(variance_type='learned_range') loop", "float32",
                ("rel", 3e-5), "tests/alignment/generative/test_diffusion_learned_range.py"
                "::test_ddpm_sampler_matches_diffusers_learned_range")
    cases = [((2, 4, 4), "mlp"), ((6, 3), "unet")]
    for seed in seeds:
        for shape, backbone in cases if quick else [*cases, ((2, 8, 4), "unet"), ((7,), "mlp")]:
            for prediction in ("eps", "v"):  # the test's head, at this seed
                head = learned_range_head(shape, backbone, seed=seed, prediction=prediction,
                                          schedule="scaled_linear", beta_start=0.001,
                                          beta_end=0.03)
                cond = torch.randn(3, 5, generator=gen(seed + 100))
                noise = torch.randn(3, *shape, generator=gen(seed + 200))
                sched = diffusers.DDPMScheduler(
                    num_train_timesteps=100, trained_betas=head.betas.float().tolist(),
                    prediction_type=PRED[prediction], clip_sample=False,
                    variance_type="learned_range")
                sched.set_timesteps(timesteps=head.timesteps(10))
                for scale in (1.0, 2.5):
                    got = head.sample(cond, sampler="ddpm", steps=10, noise=noise,
                                      guidance_scale=scale, generator=gen(seed + 300))
                    row.add(got, scheduler_loop(head, sched, cond, noise, gen(seed + 300), scale))


GROUPS: list[tuple[str, str, Callable[[Table, list[int], bool], None]]] = [
    ("pytorch-metric-learning", "pytorch_metric_learning", pml_rows),
    ("info-nce-pytorch", "info_nce", info_nce_rows),
    ("torchmetrics", "torchmetrics", torchmetrics_rows),
    ("scikit-learn", "sklearn", sklearn_rows),
    ("librosa", "librosa", librosa_rows),
    ("diffusers", "diffusers", diffusers_rows),
]


def run(quick: bool) -> list[Row]:
    seeds = [0] if quick else [0, 1, 2, 3, 4]
    rows: list[Row] = []
    for dist, module, fill in GROUPS:
        try:
            importlib.import_module(module)
        except ImportError:
            rows.append(Row("(every comparison with this package)", dist, "-", "-",
                            ("rel", 0.0), "-"))
            continue
        table = Table()
        fill(table, seeds, quick)
        first: dict[tuple[str, str], int] = {}
        for i, r in enumerate(table.rows.values()):  # a comparison's dtypes side by side
            first.setdefault((r.capability, r.api), i)
        rows.extend(sorted(table.rows.values(), key=lambda r: first[r.capability, r.api]))
    return rows


def fmt(x: float, digits: int = 1) -> str:
    """2.5e-06 -> 2.5e-6."""
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def markdown(rows: list[Row]) -> str:
    lines = ["| capability | peer | dtype | max abs difference | max relative difference | "
             "cases | tests' bound |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.version is None:
            lines.append(f"| {r.capability} | {r.dist}: not installed | - | - | - | 0 | - |")
            continue
        kind, tol = r.bound
        lines.append(f"| {r.capability} | {r.dist} {r.version} `{r.api}` | {r.dtype} | "
                     f"{fmt(r.max_abs)} | {fmt(r.max_rel)} | {r.cases} | {kind} {fmt(tol, 0)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, small shapes")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    rows = run(args.quick)
    print(f"torch {torch.__version__}, numpy {np.__version__}, python "
          f"{sys.version.split()[0]}{', --quick' if args.quick else ''}\n")
    print(markdown(rows))
    outside = [r for r in rows if r.version is not None and not r.within]
    for r in outside:
        print(f"\nOUTSIDE the tests' bound: {r.capability} ({r.dist}, {r.dtype})")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"within": r.within} for r in rows],
                                        indent=1))
    return 1 if outside else 0


if __name__ == "__main__":
    raise SystemExit(main())
