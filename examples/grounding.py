"""Ground text queries in videos with SpatioTemporalAttention: "where is the seven".

Short videos of real handwritten digits (scikit-learn's ``load_digits``) drifting on a
canvas, several distinct digits per video. A small frame encoder gives a (T, H, W) grid of
visual tokens; a small text encoder embeds a templated query ("where is the seven"); a
:class:`mmfuse.alignment.SpatioTemporalAttention` lets the query tokens attend over every
video token. Training uses a pointing loss: the attention mass (averaged over heads and query
tokens) that falls inside the named digit's box, frame by frame, is maximised. The model
must therefore tell the ten digit names apart in the text and the ten handwritten shapes in
the video, and match them, since every video holds several digits.

Evaluation on held-out videos, made from held-out digit images: pointing accuracy, i.e. the
peak of the attention map (averaged over heads and query tokens, summed over time) falls
inside the named digit's box (its box over the video: the region it covers in some frame).

Run:
    python examples/grounding.py            # full run, a few minutes on a CPU
    python examples/grounding.py --quick    # under a minute, lower accuracy
Options: --steps N, --out PATH (PNG of attention maps over frames), --seed S.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mmfuse.alignment import SpatioTemporalAttention

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOCAB = ["where", "is", "the", *NAMES]
CANVAS, DIGIT, CELL = 32, 8, 4  # pixels; the frame encoder's grid cell is 4 x 4 pixels


@dataclass
class Videos:
    frames: np.ndarray  # (N, T, S, S) float32 in [0, 1]
    classes: np.ndarray  # (N, K) digit class of each of the K digits
    corners: np.ndarray  # (N, K, T, 2) top-left (y, x) of each digit in each frame


def make_videos(images: np.ndarray, labels: np.ndarray, n: int, frames: int, per_video: int,
                rng: np.random.Generator) -> Videos:
    """Videos of ``per_video`` distinct digits moving 1 px/frame at most, whose swept boxes
    do not overlap (so "the box of the seven" is unambiguous)."""
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    out = np.zeros((n, frames, CANVAS, CANVAS), dtype=np.float32)
    classes = np.zeros((n, per_video), dtype=np.int64)
    corners = np.zeros((n, per_video, frames, 2), dtype=np.int64)
    steps = np.arange(frames)[:, None]  # (T, 1)
    for i in range(n):
        classes[i] = rng.choice(10, size=per_video, replace=False)
        placed: list[tuple[int, int, int, int]] = []
        for k, c in enumerate(classes[i]):
            img = images[rng.choice(by_class[c])] / 16.0
            while True:
                vel = rng.integers(-1, 2, size=2)
                start = rng.integers(0, CANVAS - DIGIT + 1, size=2)
                path = start + steps * vel  # (T, 2)
                if path.min() < 0 or path.max() > CANVAS - DIGIT:
                    continue
                y0, x0 = path.min(0)
                y1, x1 = path.max(0) + DIGIT
                if all(y0 >= b[2] or y1 <= b[0] or x0 >= b[3] or x1 <= b[1] for b in placed):
                    break
            placed.append((y0, x0, y1, x1))
            corners[i, k] = path
            for t, (y, x) in enumerate(path):
                out[i, t, y : y + DIGIT, x : x + DIGIT] = np.maximum(
                    out[i, t, y : y + DIGIT, x : x + DIGIT], img)
    return Videos(out, classes, corners)


def queries(v: Videos, which: np.ndarray) -> tuple[Tensor, Tensor, np.ndarray]:
    """Tokens of "where is the <digit k>" (N, 4); the grid cells whose centre lies inside the
    digit in each frame (N, T, G, G) bool; and its box over the video (N, 4) = (y0, x0, y1, x1)
    in pixels (the region it covers in some frame)."""
    n = len(which)
    cls = v.classes[np.arange(n), which]
    tokens = np.stack([np.zeros(n), np.ones(n), np.full(n, 2), 3 + cls], axis=1)
    path = v.corners[np.arange(n), which]  # (N, T, 2)
    centres = (np.arange(CANVAS // CELL) + 0.5) * CELL  # (G,)
    lo, hi = path[..., None], path[..., None] + DIGIT  # (N, T, 2, 1)
    inside = (centres >= lo) & (centres < hi)  # (N, T, 2, G): rows, columns
    cells = inside[:, :, 0, :, None] & inside[:, :, 1, None, :]  # (N, T, G, G)
    box = np.concatenate([path.min(1), path.max(1) + DIGIT], axis=1)
    return torch.as_tensor(tokens, dtype=torch.long), torch.as_tensor(cells), box


class Grounder(nn.Module):
    """Frame encoder -> (B, T, 8, 8, Cv) tokens; query encoder -> (B, 4, D); attention."""

    def __init__(self, dim: int = 64, video_dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.frames = nn.Sequential(
            nn.Conv2d(1, video_dim, CELL, stride=CELL), nn.GELU(),  # (., Cv, 8, 8) patches
            nn.Conv2d(video_dim, video_dim, 3, padding=1), nn.GELU(),
            nn.Conv2d(video_dim, video_dim, 3, padding=1),
        )
        self.words = nn.Embedding(len(VOCAB), dim)
        self.word_pos = nn.Parameter(torch.zeros(4, dim))
        self.context = nn.Linear(dim, dim)
        self.attn = SpatioTemporalAttention(dim, heads, video_dim=video_dim,
                                            pos_encoding="sinusoidal")

    def forward(self, video: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        b, t, s, _ = video.shape
        f = self.frames(video.reshape(b * t, 1, s, s))  # (B*T, Cv, 8, 8)
        f = f.unflatten(0, (b, t)).permute(0, 1, 3, 4, 2)  # (B, T, 8, 8, Cv)
        e = self.words(tokens) + self.word_pos  # (B, 4, D)
        e = e + self.context(e.mean(1, keepdim=True))  # every token knows the query
        res = self.attn(f, e, return_attention=True)  # maps (B, heads, 4, T, 8, 8)
        return res.output, res.attention


def pointing_accuracy(maps: Tensor, boxes: np.ndarray) -> float:
    """Peak of the map averaged over heads and tokens, summed over time, inside the box."""
    heat = maps.mean(dim=(1, 2)).sum(1)  # (B, 8, 8)
    g = heat.shape[-1]
    peak = heat.flatten(1).argmax(1).numpy()
    cy, cx = (peak // g + 0.5) * CELL, (peak % g + 0.5) * CELL
    hit = (cy >= boxes[:, 0]) & (cy < boxes[:, 2]) & (cx >= boxes[:, 1]) & (cx < boxes[:, 3])
    return float(hit.mean())


def chance_level(boxes: np.ndarray) -> float:
    """Accuracy of a peak drawn uniformly over the grid cells."""
    g = CANVAS // CELL
    c = (np.arange(g) + 0.5) * CELL
    inside_y = (c[None] >= boxes[:, :1]) & (c[None] < boxes[:, 2:3])  # (N, g)
    inside_x = (c[None] >= boxes[:, 1:2]) & (c[None] < boxes[:, 3:4])
    return float((inside_y.sum(1) * inside_x.sum(1)).mean() / g**2)


def evaluate(model: Grounder, test: Videos, per_video: int) -> tuple[float, float]:
    model.eval()
    accs, n = [], len(test.frames)
    boxes_all = []
    with torch.no_grad():
        for k in range(per_video):
            tokens, _, boxes = queries(test, np.full(n, k))
            _, maps = model(torch.as_tensor(test.frames), tokens)
            accs.append(pointing_accuracy(maps, boxes))
            boxes_all.append(boxes)
    model.train()
    return float(np.mean(accs)), chance_level(np.concatenate(boxes_all))


def save_figure(model: Grounder, test: Videos, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    rows = 3
    t = test.frames.shape[1]
    fig, axes = plt.subplots(rows, t + 1, figsize=(1.6 * (t + 1), 1.7 * rows))
    with torch.no_grad():
        for r in range(rows):
            which = np.array([r % test.classes.shape[1]])
            sub = Videos(test.frames[r : r + 1], test.classes[r : r + 1], test.corners[r : r + 1])
            tokens, _, box = queries(sub, which)
            _, maps = model(torch.as_tensor(sub.frames), tokens)
            heat = maps.mean(dim=(1, 2))[0]  # (T, 8, 8)
            name = NAMES[int(sub.classes[0, which[0]])]
            for c in range(t):
                ax = axes[r, c]
                ax.imshow(sub.frames[0, c], cmap="gray", extent=(0, CANVAS, CANVAS, 0))
                ax.imshow(heat[c].numpy(), cmap="inferno", alpha=0.55, extent=(0, CANVAS, CANVAS, 0),
                          vmin=0, vmax=float(heat.max()))
                ax.set_title(f"t={c}", fontsize=8)
            ax = axes[r, t]
            ax.imshow(heat.sum(0).numpy(), cmap="inferno", extent=(0, CANVAS, CANVAS, 0))
            y0, x0, y1, x1 = box[0]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="cyan"))
            ax.set_title("sum over t", fontsize=8)
            axes[r, 0].set_ylabel(f"where is\nthe {name}", fontsize=8)
            for ax in axes[r]:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    model.train()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (< 1 min)")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--out", type=Path, default=None, help="PNG of attention maps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from sklearn.datasets import load_digits

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    frames, per_video, batch = 4, 3, 32
    steps = args.steps or (400 if args.quick else 3000)
    n_test = 150 if args.quick else 400
    digits = load_digits()
    order = rng.permutation(len(digits.target))
    train_idx, test_idx = order[:1300], order[1300:]  # held-out images for the test videos
    test = make_videos(digits.images[test_idx], digits.target[test_idx], n_test, frames,
                       per_video, rng)
    model = Grounder()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps,
                                                pct_start=0.1)
    start = time.perf_counter()
    for step in range(steps):
        train = make_videos(digits.images[train_idx], digits.target[train_idx], batch, frames,
                            per_video, rng)
        tokens, cells, _ = queries(train, rng.integers(0, per_video, size=batch))
        _, maps = model(torch.as_tensor(train.frames), tokens)
        heat = maps.mean(dim=(1, 2))  # (B, T, G, G), sums to 1 over (T, G, G)
        loss = -torch.log((heat * cells).sum(dim=(1, 2, 3)) + 1e-6).mean()  # pointing loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 5) == 0:
            print(f"step {step + 1:5d}  loss {loss.item():.4f}  "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    acc, chance = evaluate(model, test, per_video)
    print(f"pointing accuracy on {n_test} held-out videos x {per_video} queries: {acc:.3f} "
          f"(chance {chance:.3f}); training {time.perf_counter() - start:.0f}s")
    if args.out is not None:
        save_figure(model, test, args.out)
        print(f"saved {args.out}")
    return acc


if __name__ == "__main__":
    main()
