"""``mmfuse bench utd-mhad``: every fusion level on UTD-MHAD's cross-subject protocol.

Trains single-sensor models (inertial, skeleton, depth), a data-level model (inertial aligned
onto the Kinect frame times by ``DataLevelFusion``), feature-level fusions (attention, gated,
low-rank tensor, cross-attention; each with and without ``ModalityDropout``), sensor-pair
models, and decision-level fusion (a learned ``DecisionFusion``, and the product of experts of
the single-sensor models), then tests each on the test subjects clean, with every sensor and
every pair of sensors absent (``present`` masks). Settings were chosen on the training
subjects only (``--validate``: train on subjects 1, 3, 5, test on 7).

``--robustness`` also runs :func:`mmfuse.metrics.robustness` on chosen fusions end to end
(frozen encoders and trained fusion, from the sensor tensors): every absent subset, Gaussian
noise and time-step dropout per sensor, FGSM and PGD on one sensor at a time; ``--models``
trains only the named models (and the single-sensor models they build on).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

from ..data.utd_mhad import TEST_SUBJECTS, TRAIN_SUBJECTS
from ._utd_models import FEATURE_FUSIONS, DecisionHead, FusionHead, ProductHead, build_model
from ._utd_prep import SENSORS, Split, load_splits, make_batch
from ._utd_robust import (
    GRID,
    QUICK_GRID,
    ROBUST_DEFAULT,
    EndToEnd,
    evaluate,
    mean_std,
    summarise_robustness,
)

__all__ = ["DEFAULT_DATA_DIR", "add_arguments", "model_specs", "run"]

DEFAULT_DATA_DIR = "../shared/data/utd-mhad"
DESCRIPTION = __doc__
#: Training settings (chosen with ``--validate`` on the training subjects only).
SETTINGS: dict[str, Any] = {
    "epochs": 30, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.05, "label_smoothing": 0.1,
    "views": 4, "head_epochs": 10, "head_lr": 2e-3, "modality_dropout": 0.3,
    "feature_dropout": 0.5,
}


def model_specs(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Every model of the benchmark by name (``quick``: one of each level).

    ``single`` and ``data`` models train end to end (stage 1); ``feature`` and ``decision``
    models train a fusion module on the frozen single-sensor encoders (stage 2); ``product``
    multiplies the single-sensor models' distributions (no training).
    """
    specs: dict[str, dict[str, Any]] = {m: {"kind": "single", "sensors": (m,)} for m in SENSORS}
    specs["data_level"] = {"kind": "data", "sensors": ("inertial", "skeleton")}
    for fusion in FEATURE_FUSIONS:
        specs[fusion] = {"kind": "feature", "sensors": SENSORS, "fusion": fusion}
        specs[f"{fusion}+dropout"] = {"kind": "feature", "sensors": SENSORS, "fusion": fusion,
                                      "dropout": SETTINGS["modality_dropout"]}
    for pair in itertools.combinations(SENSORS, 2):
        specs["+".join(pair)] = {"kind": "feature", "sensors": pair, "fusion": "attention"}
    specs["decision_learned"] = {"kind": "decision", "sensors": SENSORS}
    specs["decision_product"] = {"kind": "product", "sensors": SENSORS}
    if quick:
        keep = ("inertial", "skeleton", "depth", "data_level", "attention+dropout",
                "cross_attention", "decision_learned", "decision_product")
        specs = {k: specs[k] for k in keep}
    return specs


def select_models(specs: Mapping[str, Any], models: Sequence[str] | None
                  ) -> dict[str, dict[str, Any]]:
    """``specs`` restricted to ``models`` and the single-sensor models (every fusion builds
    on their encoders); None keeps all."""
    if models is None:
        return dict(specs)
    unknown = [m for m in models if m not in specs]
    if unknown:
        raise ValueError(f"utd-mhad: unknown --models {unknown}; expected names from "
                         f"{list(specs)}.")
    if all(specs[m]["kind"] == "single" for m in models):
        raise ValueError(f"utd-mhad: expected at least one fusion in --models (the single-"
                         f"sensor models always train), got {list(models)}.")
    return {k: v for k, v in specs.items() if v["kind"] == "single" or k in models}


def robust_models(specs: Mapping[str, Any], names: Sequence[str] | None) -> list[str]:
    """The models ``--robustness`` evaluates: ``names`` (each a feature-level fusion of all
    three sensors or the product of experts, which run end to end), or, for an empty list,
    those of ``ROBUST_DEFAULT`` that train."""
    if names is None:
        return []
    allowed = [k for k, v in specs.items()
               if v["kind"] in ("feature", "product") and tuple(v["sensors"]) == SENSORS]
    chosen = list(names) or [n for n in ROBUST_DEFAULT if n in specs]
    bad = [n for n in chosen if n not in allowed]
    if bad or not chosen:
        raise ValueError(f"utd-mhad: --robustness {bad or chosen}: expected trained "
                         "feature-level fusions of all three sensors or decision_product (end "
                         f"to end differentiable), from {allowed}.")
    return chosen


def _absent_patterns() -> list[tuple[str, ...]]:
    return [(m,) for m in SENSORS] + list(itertools.combinations(SENSORS, 2))


def _schedule(model: torch.nn.Module, lr: float, steps: int) -> tuple[Any, Any]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=SETTINGS["weight_decay"])
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)


def _step(model: torch.nn.Module, opt: Any, sched: Any, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
    opt.step()
    sched.step()


def train_end_to_end(model: torch.nn.Module, train: Split, sensors: Sequence[str], epochs: int,
                     gen: torch.Generator) -> None:
    """Stage 1: a single-sensor or data-level model on augmented batches."""
    n, bs = train["label"].shape[0], SETTINGS["batch_size"]
    opt, sched = _schedule(model, SETTINGS["lr"], epochs * math.ceil(n / bs))
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(bs):
            batch = make_batch(train, idx, sensors, augment=True, generator=gen)
            loss = F.cross_entropy(model(batch), batch["label"],
                                   label_smoothing=SETTINGS["label_smoothing"])
            _step(model, opt, sched, loss)


@torch.no_grad()
def encode(encoders: Mapping[str, torch.nn.Module], split: Split, *, views: int,
           gen: torch.Generator) -> dict[str, Any]:
    """Token features of every sample from the frozen encoders: ``views`` augmented copies
    of each sample (0: the clean sample only), stacked."""
    n = split["label"].shape[0]
    out: dict[str, Any] = {"tokens": {m: [] for m in encoders}, "masks": {m: [] for m in encoders},
                           "label": []}
    for e in encoders.values():
        e.eval()
    for _ in range(max(views, 1)):
        for idx in torch.arange(n).split(128):
            batch = make_batch(split, idx, list(encoders), augment=views > 0, generator=gen)
            for m, enc in encoders.items():
                tok, mask = enc(batch["x"][m], batch["mask"][m])
                out["tokens"][m].append(tok)
                out["masks"][m].append(mask)
            out["label"].append(batch["label"])
    for m in encoders:  # pad to one length per sensor
        longest = max(t.shape[1] for t in out["tokens"][m])
        out["tokens"][m] = torch.cat([F.pad(t, (0, 0, 0, longest - t.shape[1]))
                                      for t in out["tokens"][m]])
        out["masks"][m] = torch.cat([F.pad(k, (0, longest - k.shape[1]))
                                     for k in out["masks"][m]])
    out["label"] = torch.cat(out["label"])
    return out


def train_head(head: torch.nn.Module, feats: Mapping[str, Any], epochs: int,
               gen: torch.Generator) -> None:
    """Stage 2: a fusion module and classifier on frozen encoder tokens."""
    n, bs = feats["label"].shape[0], 64
    opt, sched = _schedule(head, SETTINGS["head_lr"], epochs * math.ceil(n / bs))
    head.train()
    decision = hasattr(head, "decide")
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(bs):
            tokens = {m: t[idx] for m, t in feats["tokens"].items()}
            masks = {m: k[idx] for m, k in feats["masks"].items()}
            out = head(tokens, masks)
            y = feats["label"][idx]
            loss = (F.nll_loss(out, y) if decision else
                    F.cross_entropy(out, y, label_smoothing=SETTINGS["label_smoothing"]))
            _step(head, opt, sched, loss)


def _present(n: int, sensors: Sequence[str], absent: Sequence[str]) -> dict[str, torch.Tensor]:
    return {m: torch.full((n,), m not in absent) for m in sensors}


@torch.no_grad()
def _eval_model(model: torch.nn.Module, test: Split, sensors: Sequence[str],
                absent: Sequence[str]) -> torch.Tensor:
    model.eval()
    out = []
    for idx in torch.arange(test["label"].shape[0]).split(128):
        batch = make_batch(test, idx, sensors, augment=False)
        out.append(model(batch, _present(idx.numel(), sensors, absent)).log_softmax(-1))
    return torch.cat(out)


@torch.no_grad()
def _eval_head(head: torch.nn.Module, feats: Mapping[str, Any], sensors: Sequence[str],
               absent: Sequence[str]) -> torch.Tensor:
    head.eval()
    n = feats["label"].shape[0]
    return head({m: feats["tokens"][m] for m in sensors}, {m: feats["masks"][m] for m in sensors},
                _present(n, sensors, absent)).log_softmax(-1)


def _accuracy(logp: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logp.argmax(-1) == labels).float().mean())


def run_seed(train: Split, test: Split, seed: int, *, quick: bool, epochs: int,
             head_epochs: int, views: int, log: Any = print,
             models: Sequence[str] | None = None, robust: Sequence[str] = (),
             grid: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train and test every model once (``models``: those and the single-sensor models).
    -> {name: {"clean": acc, "absent": {...}, ...}}; the models in ``robust`` also get a
    ``"robustness"`` entry (:func:`._utd_robust.evaluate` with ``grid``)."""
    specs = select_models(model_specs(quick), models)
    results: dict[str, Any] = {}
    singles: dict[str, torch.nn.Module] = {}
    labels = test["label"]
    patterns: list[tuple[str, ...]] = [(), *_absent_patterns()]
    train_feats: dict[str, Any] | None = None
    test_feats: dict[str, Any] | None = None
    for name, spec in specs.items():
        t0 = time.perf_counter()
        sensors = spec["sensors"]
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        wrapped: torch.nn.Module | None = None
        if spec["kind"] in ("single", "data"):
            model = build_model(spec)
            train_end_to_end(model, train, sensors, epochs, gen)
            logps = {p: _eval_model(model, test, sensors, [m for m in p if m in sensors])
                     for p in patterns}
            if spec["kind"] == "single":
                singles[sensors[0]] = model
        else:
            encoders: dict[str, torch.nn.Module] = {
                m: cast(torch.nn.Module, singles[m].encoder) for m in SENSORS}
            if train_feats is None or test_feats is None:
                t_enc = time.perf_counter()
                train_feats = encode(encoders, train, views=views, gen=gen)
                test_feats = encode(encoders, test, views=0, gen=gen)
                log(f"  seed {seed} encoded {views} augmented views of the training set "
                    f"({time.perf_counter() - t_enc:.0f} s)")
            head: torch.nn.Module
            if spec["kind"] == "product":
                head = ProductHead(sensors, {m: cast(torch.nn.Module, singles[m].head)
                                             for m in sensors})
                with torch.no_grad():
                    logps = {p: _eval_head(head, test_feats, sensors, p) for p in patterns}
                wrapped = EndToEnd({m: encoders[m] for m in sensors}, head)
            else:
                head = (DecisionHead(sensors, {m: cast(torch.nn.Module, singles[m].head)
                                               for m in sensors})
                        if spec["kind"] == "decision" else
                        FusionHead(sensors, spec["fusion"], dropout_p=spec.get("dropout", 0.0),
                                   feature_dropout=SETTINGS["feature_dropout"]))
                train_head(head, train_feats, head_epochs, gen)
                logps = {p: _eval_head(head, test_feats, sensors, [m for m in p if m in sensors])
                         for p in patterns}
                if spec["kind"] == "feature":
                    wrapped = EndToEnd({m: encoders[m] for m in sensors}, head)
        results[name] = {
            "clean": _accuracy(logps[()], labels),
            "absent": {"+".join(p): _accuracy(logps[p], labels) for p in patterns if p},
            "seconds": time.perf_counter() - t0,
            "predictions": logps[()].argmax(-1).tolist(),
        }
        log(f"  seed {seed} {name:<28} acc {results[name]['clean']:.3f}  "
            f"({results[name]['seconds']:.0f} s)")
        if name in robust:
            assert wrapped is not None  # robust_models admits only models that wrap
            t_rob = time.perf_counter()
            rob = evaluate(wrapped, test, grid=grid or GRID, seed=seed)
            rob["seconds"] = time.perf_counter() - t_rob
            results[name]["robustness"] = rob
            log(f"  seed {seed} {name:<28} robustness: {len(rob['rows'])} rows, clean "
                f"{rob['clean']:.3f} ({rob['seconds']:.0f} s)")
    return results


def summarise(per_seed: Sequence[Mapping[str, Any]], seeds: Sequence[int], seconds: float,
              labels: torch.Tensor) -> dict[str, Any]:
    acc: dict[str, Any] = {}
    for name in per_seed[0]:
        runs = [r[name] for r in per_seed]
        acc[name] = mean_std([r["clean"] for r in runs])
        acc[name]["per_seed"] = [r["clean"] for r in runs]
        acc[name]["absent"] = {p: mean_std([r["absent"][p] for r in runs])
                               for p in runs[0]["absent"]}
    fusions = [k for k in acc if k not in SENSORS]
    best = max(fusions, key=lambda k: acc[k]["mean"])
    conf = torch.zeros(27, 27, dtype=torch.long)
    for r in per_seed:
        pred = torch.tensor(r[best]["predictions"])
        conf.index_put_((labels, pred), torch.ones_like(pred), accumulate=True)
    runs = [{n: {k: v for k, v in r[n].items() if k != "predictions"} for n in r}
            for r in per_seed]
    out = {"protocol": "cross-subject", "seeds": list(seeds), "seconds": seconds,
            "runs": runs, "predictions": [{n: r[n]["predictions"] for n in r} for r in per_seed],
            "train_subjects": list(TRAIN_SUBJECTS), "test_subjects": list(TEST_SUBJECTS),
            "settings": dict(SETTINGS), "accuracy": acc, "best_fusion": best,
            "comparisons": comparisons(per_seed), "confusion": conf.tolist(),
            "model_seconds": {k: mean_std([r[k]["seconds"] for r in per_seed])["mean"]
                              for k in acc}}
    robust = summarise_robustness(per_seed)
    if robust:
        out["robustness"] = robust
    return out


def _sensors_of(name: str) -> set[str]:
    specs = model_specs()
    return set(specs[name]["sensors"]) if name in specs else set()


def comparisons(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures the benchmark is read for, each a mean and std over seeds:

    - ``absent``: for each sensor, the best ``ModalityDropout``-trained fusion with that
      sensor absent at test time, against the best model that uses only the remaining
      sensors (single-sensor models, sensor-pair models, and the product of experts of the
      remaining single-sensor models), and the gap (reference - fusion);
    - ``depth_adds``: the best three-sensor fusion minus the best inertial + skeleton model;
    - ``data_level_adds``: the data-level model minus the skeleton-only model.
    """
    names = list(per_seed[0])
    clean = {n: [float(r[n]["clean"]) for r in per_seed] for n in names}

    def mean(v: Sequence[float]) -> float:
        return sum(v) / len(v)

    def diff(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
        return mean_std([x - y for x, y in zip(a, b)])

    out: dict[str, Any] = {"absent": {}}
    dropout = [n for n in names if n.endswith("+dropout")]
    for m in SENSORS if dropout else ():
        rest = set(SENSORS) - {m}
        absent = {n: [float(r[n]["absent"][m]) for r in per_seed] for n in dropout}
        best = max(dropout, key=lambda n: mean(absent[n]))
        refs = {n: clean[n] for n in names if _sensors_of(n) and _sensors_of(n) <= rest}
        if "decision_product" in names:
            refs[f"decision_product without {m}"] = [
                float(r["decision_product"]["absent"][m]) for r in per_seed]
        if not refs:
            continue
        ref = max(refs, key=lambda n: mean(refs[n]))
        out["absent"][m] = {"fusion": best, "fusion_acc": mean_std(absent[best]),
                            "reference": ref, "reference_acc": mean_std(refs[ref]),
                            "gap": diff(refs[ref], absent[best])}
    three = [n for n in names if _sensors_of(n) == set(SENSORS)]
    two = [n for n in names if _sensors_of(n) == {"inertial", "skeleton"}]
    if three and two:
        b3 = max(three, key=lambda n: mean(clean[n]))
        b2 = max(two, key=lambda n: mean(clean[n]))
        out["depth_adds"] = {"with": b3, "without": b2, **diff(clean[b3], clean[b2])}
    if "data_level" in names and "skeleton" in names:
        out["data_level_adds"] = diff(clean["data_level"], clean["skeleton"])
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=os.environ.get("MMFUSE_UTD_MHAD", DEFAULT_DATA_DIR),
                        help="folder with inertial/, skeleton/, depth/ (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="mmfuse-bench-output", help="output folder")
    parser.add_argument("--quick", action="store_true",
                        help="2 training and 2 test subjects, few epochs, fewer models (< 1 min)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs")
    parser.add_argument("--combine", nargs="+", metavar="DIR", default=None,
                        help="combine the results.json of runs with other seeds (e.g. run "
                             "one seed per process) into --out, without training")
    parser.add_argument("--validate", action="store_true",
                        help="settings check on training subjects only (train 1, 3, 5; test 7)")
    parser.add_argument("--models", nargs="+", metavar="MODEL", default=None,
                        help="train and test only these models (and the single-sensor models "
                             "they build on); default: all")
    parser.add_argument("--robustness", nargs="*", metavar="MODEL", default=None,
                        help="also evaluate robustness (sensors absent, noise, time-step "
                             "dropout, FGSM and PGD per sensor) of these fusions end to end; "
                             f"no names: those of {', '.join(ROBUST_DEFAULT)} that train")


def _combine(args: argparse.Namespace) -> dict[str, Any]:
    parts = [json.loads((Path(d) / "results.json").read_text()) for d in args.combine]
    per_seed, seeds = [], []
    for part in parts:
        for run, pred, seed in zip(part["runs"], part["predictions"], part["seeds"]):
            per_seed.append({n: {**v, "predictions": pred[n]} for n, v in run.items()})
            seeds.append(seed)
    labels = torch.tensor(parts[0]["test_labels"])
    result = summarise(per_seed, seeds, sum(p["seconds"] for p in parts), labels)
    result["protocol"] = parts[0]["protocol"]
    result["seconds_per_run"] = [p["seconds"] for p in parts]
    result["test_labels"] = parts[0]["test_labels"]
    return result


def run(args: argparse.Namespace) -> int:
    if getattr(args, "combine", None):
        result = _combine(args)
        return _write(result, Path(args.out))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train_s: tuple[int, ...]
    test_s: tuple[int, ...]
    if args.validate:
        train_s, test_s = (1, 3, 5), (7,)
    elif args.quick:
        train_s, test_s = (1,), (2,)
    else:
        train_s, test_s = TRAIN_SUBJECTS, TEST_SUBJECTS
    epochs = args.epochs or (3 if args.quick else SETTINGS["epochs"])
    head_epochs = 3 if args.quick else SETTINGS["head_epochs"]
    views = 2 if args.quick else SETTINGS["views"]
    workers = 1 if args.quick else max(1, min(2, os.cpu_count() or 1))
    specs = select_models(model_specs(args.quick), getattr(args, "models", None))
    robust = robust_models(specs, getattr(args, "robustness", None))  # both before the read
    train, test = load_splits(args.data_dir, train_s, test_s, workers=workers)
    print(f"UTD-MHAD: {train['label'].numel()} training sequences (subjects {train_s}), "
          f"{test['label'].numel()} test (subjects {test_s}); read in "
          f"{time.perf_counter() - start:.0f} s")
    per_seed = [run_seed(train, test, seed, quick=args.quick, epochs=epochs,
                         head_epochs=head_epochs, views=views, models=list(specs),
                         robust=robust, grid=QUICK_GRID if args.quick else GRID)
                for seed in args.seeds]
    result = summarise(per_seed, args.seeds, time.perf_counter() - start, test["label"])
    result["test_labels"] = test["label"].tolist()
    if args.validate:
        result["protocol"] = "validation (train subjects 1, 3, 5; test subject 7)"
    elif args.quick:
        result["protocol"] = "quick (train subject 1; test subject 2)"
    return _write(result, Path(args.out))


def _write(result: dict[str, Any], out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    from ._utd_report import plot, table
    from ._utd_robust import plot_tables
    from ._utd_robust import table as robust_table

    print(table(result))
    plot(result, out / "utd_mhad.png")
    if result.get("robustness"):
        print("\nRobustness (test accuracy, mean ± std over seeds; noise std and L-inf budgets "
              "in units of each sensor's std):")
        print(robust_table(result["robustness"]))
        scales = next(iter(result["robustness"].values()))["scales"]
        print("sensor std units (over the padded test tensors, padding as zeros): "
              + ", ".join(f"{m} {v:.2f}" for m, v in scales.items()))
        for path in plot_tables(result["robustness"], out, seeds=result["seeds"]):
            print(f"wrote {path}")
    print(f"wrote {out / 'results.json'} and {out / 'utd_mhad.png'} in {result['seconds']:.0f} s")
    return 0
