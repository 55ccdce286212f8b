"""Generate handwritten digits from their label, and check that they show that label.

Trains two label-conditioned generators on scikit-learn's real 8x8 digits (scaled to [-1, 1]):
a :class:`~mmfuse.alignment.DiffusionHead` sampled with DDIM and classifier-free guidance, and
a :class:`~mmfuse.alignment.CVAEHead` with a conditional prior. Each uses a
:class:`~mmfuse.alignment.ConditionEmbedding` of the label. An independent classifier
(logistic regression trained on the real training split only) then reads the generated digits:
the share it recognises as the digit they were conditioned on is the alignment of generation
with its condition, also reported as :func:`~mmfuse.alignment.consistency_score` between the
classifier's probabilities and the one-hot condition.

    python examples/generate_digits.py            # full size, a few minutes per model on CPU
    python examples/generate_digits.py --quick    # under a minute, lower quality

The full run saves a grid of samples (rows: conditioned digit) to docs/img/generated_digits.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mmfuse._optional import require
from mmfuse.alignment import ConditionEmbedding, CVAEHead, DiffusionHead, consistency_score

ROOT = Path(__file__).resolve().parents[1]
FIGURE = ROOT / "docs" / "img" / "generated_digits.png"


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Real digits scaled to [-1, 1], split 80/20 (stratified)."""
    datasets = require("sklearn.datasets", feature="examples/generate_digits.py")
    model_selection = require("sklearn.model_selection", feature="examples/generate_digits.py")
    digits = datasets.load_digits()
    x = digits.data.astype(np.float32) / 8.0 - 1.0  # (N, 64) in [-1, 1]
    return model_selection.train_test_split(
        x, digits.target, test_size=0.2, stratify=digits.target, random_state=seed
    )


def train_classifier(x: np.ndarray, y: np.ndarray):
    linear_model = require("sklearn.linear_model", feature="examples/generate_digits.py")
    clf = linear_model.LogisticRegression(max_iter=3000, C=1.0)
    clf.fit(x, y)
    return clf


class Generator(nn.Module):
    """A label embedding and a generative head, trained together."""

    def __init__(self, kind: str, cond_dim: int, hidden: int) -> None:
        super().__init__()
        self.kind = kind
        # The embedding owns condition dropout (for guidance); the diffusion head's is off.
        self.embed = ConditionEmbedding(cond_dim, num_classes=10,
                                        cond_dropout=0.1 if kind == "diffusion" else 0.0)
        if kind == "diffusion":
            self.head: nn.Module = DiffusionHead((1, 8, 8), cond_dim, hidden_dim=hidden,
                                                 num_blocks=3, num_steps=400, schedule="cosine",
                                                 prediction="eps", cond_dropout=0.0)
        else:
            self.head = CVAEHead((1, 8, 8), cond_dim, latent_dim=8, hidden_dim=hidden,
                                 prior="learned", obs_sigma=0.3)

    def loss(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        c = self.embed(labels=y)
        if isinstance(self.head, DiffusionHead):
            return self.head.loss(x, c, generator=gen)
        assert isinstance(self.head, CVAEHead)
        return self.head.loss(x, c, generator=gen).total

    @torch.no_grad()
    def sample(self, y: Tensor, gen: torch.Generator, guidance: float) -> Tensor:
        c = self.embed(labels=y)
        if isinstance(self.head, DiffusionHead):
            null = self.embed(labels=y, drop=torch.ones_like(y, dtype=torch.bool))
            return self.head.sample(c, steps=50, guidance_scale=guidance, uncond=null,
                                    generator=gen, clip_x0=(-1.0, 1.0))
        assert isinstance(self.head, CVAEHead)
        return self.head.sample(c, generator=gen).clamp(-1, 1)


def train(model: Generator, x: Tensor, y: Tensor, *, iters: int, batch: int, lr: float,
          seed: int, log_every: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters,
                                                pct_start=0.05)
    model.train()
    start = time.perf_counter()
    running = 0.0
    for it in range(1, iters + 1):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        loss = model.loss(x[idx], y[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if log_every and it % log_every == 0:
            print(f"  [{model.kind}] iter {it}/{iters}  loss {running / log_every:.4f}", flush=True)
            running = 0.0
    model.eval()
    return time.perf_counter() - start


def spread(x: Tensor, y: Tensor) -> float:
    """Mean per-pixel standard deviation within each digit: how varied the samples are."""
    return float(torch.stack([x[y == d].reshape(-1, 64).std(0).mean() for d in range(10)]).mean())


def evaluate(samples: Tensor, labels: Tensor, clf) -> dict[str, float]:
    flat = samples.reshape(samples.shape[0], 64).numpy()
    pred = clf.predict(flat)
    proba = torch.from_numpy(clf.predict_proba(flat)).float()
    onehot = nn.functional.one_hot(labels, 10).float()
    score = consistency_score(proba, onehot)
    return {
        "accuracy": float((pred == labels.numpy()).mean()),
        "cosine": float(score.cosine),
        "retrieval": float(score.retrieval_accuracy),
        "spread": spread(samples, labels),
    }


def save_grid(panels: dict[str, Tensor], path: Path, per_row: int) -> None:
    require("matplotlib", feature="examples/generate_digits.py")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6))
    for ax, (title, s) in zip(np.atleast_1d(axes), panels.items()):
        imgs = s[:, 0].reshape(10, per_row, 8, 8).numpy()  # (digit, k, 8, 8)
        grid = np.ones((10 * 9 - 1, per_row * 9 - 1))
        for d in range(10):
            for k in range(per_row):
                grid[d * 9 : d * 9 + 8, k * 9 : k * 9 + 8] = (imgs[d, k] + 1) / 2
        ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_yticks([d * 9 + 3.5 for d in range(10)], [str(d) for d in range(10)])
        ax.set_xticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small run (< 1 min), lower quality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    p.add_argument("--per-digit", type=int, default=None, help="samples per digit to score")
    p.add_argument("--figure", type=Path, default=None,
                   help=f"where to save the sample grid (full run default: {FIGURE})")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x_tr, x_te, y_tr, y_te = load_data(args.seed)
    clf = train_classifier(x_tr, y_tr)
    real_acc = float((clf.predict(x_te) == y_te).mean())
    print(f"independent classifier (logistic regression, real train split): "
          f"{real_acc:.3f} accuracy on real held-out digits", flush=True)

    x = torch.from_numpy(x_tr).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(y_tr).long()
    if args.quick:
        cfg = {"diffusion": (500, 128), "cvae": (500, 128)}
        hidden, per_digit = 128, args.per_digit or 20
    else:
        cfg = {"diffusion": (6000, 128), "cvae": (4000, 128)}
        hidden, per_digit = 256, args.per_digit or 100

    labels = torch.arange(10).repeat_interleave(per_digit)
    results: dict[str, dict[str, float]] = {}
    panels: dict[str, Tensor] = {}
    for kind, (iters, batch) in cfg.items():
        torch.manual_seed(args.seed)
        model = Generator(kind, cond_dim=64, hidden=hidden)
        secs = train(model, x, y, iters=iters, batch=batch, lr=2e-3, seed=args.seed,
                     log_every=0 if args.quick else 1000)
        gen = torch.Generator().manual_seed(args.seed + 1)
        t0 = time.perf_counter()
        samples = model.sample(labels, gen, args.guidance)
        sample_secs = time.perf_counter() - t0
        res = evaluate(samples, labels, clf)
        res.update(train_seconds=secs, sample_seconds=sample_secs, iters=iters,
                   samples=float(labels.numel()))
        results[kind] = res
        if kind == "diffusion" and args.guidance != 1.0:  # plain conditional sampling, for reference
            plain = model.sample(labels, torch.Generator().manual_seed(args.seed + 1), 1.0)
            results["diffusion, guidance 1"] = {**evaluate(plain, labels, clf), "iters": iters,
                                                "train_seconds": secs,
                                                "samples": float(labels.numel())}
        name = (f"diffusion (DDIM 50 steps, guidance {args.guidance:g})" if kind == "diffusion"
                else "CVAE (conditional prior)")
        cols = min(10, per_digit)
        panels[name] = samples.reshape(10, per_digit, 1, 8, 8)[:, :cols].reshape(-1, 1, 8, 8)
        print(f"{kind}: trained {iters} iters in {secs:.1f} s; {labels.numel()} samples in "
              f"{sample_secs:.1f} s; classifier recognises the conditioned digit in "
              f"{res['accuracy']:.1%}", flush=True)

    print()
    real_spread = spread(x, y)
    print("| samples from | train iters | train s | samples | recognised as the conditioned digit "
          "| consistency cosine | consistency retrieval | within-digit spread |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, r in results.items():
        print(f"| {kind} | {int(r['iters'])} | {r['train_seconds']:.0f} | {int(r['samples'])} | "
              f"{r['accuracy']:.1%} | {r['cosine']:.3f} | {r['retrieval']:.1%} | "
              f"{r['spread']:.3f} |")
    print(f"| real held-out digits | - | - | {len(y_te)} | {real_acc:.1%} | - | - | "
          f"{real_spread:.3f} (train) |")

    figure = args.figure if args.figure is not None else (None if args.quick else FIGURE)
    if figure is not None:
        save_grid(panels, figure, per_row=min(10, per_digit))
        print(f"saved {figure}")
    results["real"] = {"accuracy": real_acc, "spread": real_spread}
    return results


if __name__ == "__main__":
    main()
