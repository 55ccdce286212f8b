"""paired_mixup and time_jitter: determinism with a generator, one draw for every modality,
label mixing, presence and masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfuse import ModalityError, ShapeError
from mmfuse.functional import paired_mixup, time_jitter


def inputs(batch: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(batch, 3, 4, 4, generator=g),
            "audio": torch.randn(batch, 5, 7, generator=g),
            "text": torch.randn(batch, 9, generator=g)}


def test_mixup_is_deterministic_with_a_generator() -> None:
    x, y = inputs(), torch.tensor([0, 1, 2, 0, 1, 2])
    a = paired_mixup(x, y, num_classes=3, generator=torch.Generator().manual_seed(5))
    b = paired_mixup(x, y, num_classes=3, generator=torch.Generator().manual_seed(5))
    c = paired_mixup(x, y, num_classes=3, generator=torch.Generator().manual_seed(6))
    for m in x:
        assert torch.equal(a.inputs[m], b.inputs[m])
    assert torch.equal(a.labels, b.labels) and torch.equal(a.perm, b.perm)
    assert not torch.equal(a.inputs["text"], c.inputs["text"])


@pytest.mark.parametrize("per_sample", [False, True])
def test_one_lambda_and_permutation_for_every_modality_and_the_labels(per_sample: bool) -> None:
    x, y = inputs(), torch.tensor([0, 1, 2, 0, 1, 2])
    out = paired_mixup(x, y, alpha=1.0, num_classes=3, per_sample=per_sample,
                       generator=torch.Generator().manual_seed(1))
    assert sorted(out.perm.tolist()) == list(range(6))
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all())
    if per_sample:
        assert out.lam.unique().numel() > 1
    else:
        assert out.lam.unique().numel() == 1
    # each modality, written out per sample: the same lam_i and partner perm_i for all
    for i in range(6):
        lam, j = float(out.lam[i]), int(out.perm[i])
        for m in x:
            torch.testing.assert_close(out.inputs[m][i], lam * x[m][i] + (1 - lam) * x[m][j])
        want = lam * F.one_hot(y[i], 3).float() + (1 - lam) * F.one_hot(y[j], 3).float()
        torch.testing.assert_close(out.labels[i], want)
    torch.testing.assert_close(out.labels.sum(1), torch.ones(6))


def test_soft_labels_mix_as_given_and_index_labels_need_num_classes() -> None:
    x = inputs(4)
    soft = torch.softmax(torch.randn(4, 5), -1)
    out = paired_mixup(x, soft, generator=torch.Generator().manual_seed(0))
    lam = out.lam[:, None]
    torch.testing.assert_close(out.labels, lam * soft + (1 - lam) * soft[out.perm])
    with pytest.raises(ValueError, match=r"paired_mixup: expected `num_classes` with \(B,\) "
                                         r"class-index labels, got None"):
        paired_mixup(x, torch.tensor([0, 1, 1, 0]))
    with pytest.raises(ShapeError, match=r"paired_mixup: batch sizes disagree in `inputs`: "
                                         r"expected `inputs\['audio'\]`"):
        paired_mixup({**x, "audio": x["audio"][:3]}, soft)


def test_mixup_presence_and_masks() -> None:
    x = {"video": torch.randn(4, 6, 2), "audio": torch.randn(4, 3)}
    x["video"][0, 4:] = float("nan")  # masked tokens: never mixed in
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, :] = False
    present = {"audio": torch.tensor([True, False, True, True])}
    out = paired_mixup(x, torch.tensor([0, 1, 0, 1]), num_classes=2, present=present,
                       masks={"video": mask}, generator=torch.Generator().manual_seed(3))
    perm = out.perm
    assert torch.equal(out.present["audio"], present["audio"] & present["audio"][perm])
    assert torch.equal(out.masks["video"], mask | mask[perm])
    valid = out.masks["video"]
    assert torch.isfinite(out.inputs["video"][valid]).all()
    with pytest.raises(ModalityError, match=r"paired_mixup: unknown modality \['depth'\] in "
                                            r"`masks`"):
        paired_mixup(x, torch.tensor([0, 1, 0, 1]), num_classes=2,
                     masks={"depth": torch.ones(4, 2, dtype=torch.bool)})


def streams(batch: int = 3):
    """One linear signal, value = time, sampled at 50 Hz (video frames) and 125 Hz (audio
    steps, time on the last dim of a (B, F, S) spectrogram)."""
    tv = torch.arange(20, dtype=torch.float64) / 50
    ta = torch.arange(48, dtype=torch.float64) / 125
    video = tv[None, :, None].expand(batch, 20, 2).clone()  # (B, T, 2)
    audio = ta[None, None, :].expand(batch, 4, 48).clone()  # (B, F, S)
    return {"video": video, "audio": audio}, {"video": tv, "audio": ta}


def test_jitter_is_deterministic_and_identity_without_jitter() -> None:
    x, t = streams()
    kw = {"max_shift": 0.05, "max_stretch": 0.2, "time_dims": {"audio": 2}}
    a = time_jitter(x, t, generator=torch.Generator().manual_seed(0), **kw)
    b = time_jitter(x, t, generator=torch.Generator().manual_seed(0), **kw)
    assert all(torch.equal(a.streams[m], b.streams[m]) for m in x)
    assert torch.equal(a.shift, b.shift) and torch.equal(a.stretch, b.stretch)
    same = time_jitter(x, t, time_dims={"audio": 2})
    for m in x:
        torch.testing.assert_close(same.streams[m], x[m])
        assert bool(same.masks[m].all())


def test_jitter_is_the_same_warp_in_every_stream() -> None:
    """value = time: after the warp every valid step of every stream reads
    (t - shift) / stretch with that sample's shift and stretch, whatever its rate."""
    x, t = streams(4)
    out = time_jitter(x, t, max_shift=0.06, max_stretch=0.25, time_dims={"audio": 2},
                      generator=torch.Generator().manual_seed(2))
    assert out.shift.abs().max() <= 0.06 and ((out.stretch - 1).abs() <= 0.25).all()
    assert out.shift.unique().numel() == 4  # drawn per sample
    for i in range(4):
        s, r = float(out.shift[i]), float(out.stretch[i])
        v_ok, a_ok = out.masks["video"][i], out.masks["audio"][i]
        torch.testing.assert_close(out.streams["video"][i, v_ok, 0], (t["video"][v_ok] - s) / r)
        torch.testing.assert_close(out.streams["audio"][i, 0, a_ok], (t["audio"][a_ok] - s) / r)
        # steps mapped outside the clip are masked and zero
        src = (t["audio"] - s) / r
        outside = (src < 0) | (src > t["audio"][-1])
        assert torch.equal(~a_ok, outside)
        assert bool((out.streams["audio"][i, :, outside] == 0).all())


def test_jitter_masks_propagate() -> None:
    x, t = streams(2)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[:, 10] = False
    x["video"][:, 10] = float("nan")
    out = time_jitter({"video": x["video"]}, {"video": t["video"]}, max_shift=0.013,
                      masks={"video": mask}, generator=torch.Generator().manual_seed(0))
    valid = out.masks["video"]
    assert torch.isfinite(out.streams["video"]).all()
    assert (~valid).sum(1).min() >= 2  # the masked step taints its two interpolated neighbours
    with pytest.raises(ModalityError, match=r"time_jitter: expected `times` to name exactly the "
                                            r"streams \['video'\], got \[\]"):
        time_jitter({"video": x["video"]}, {})
    with pytest.raises(ShapeError, match=r"time_jitter: expected `times\['video'\]` of shape "
                                         r"\(T,\) with T=20, got \(19,\)"):
        time_jitter({"video": x["video"]}, {"video": t["video"][:19]})
    with pytest.raises(ValueError, match=r"time_jitter: expected `max_stretch` in \[0, 1\), "
                                         r"got 1.5"):
        time_jitter({"video": x["video"]}, {"video": t["video"]}, max_stretch=1.5)
