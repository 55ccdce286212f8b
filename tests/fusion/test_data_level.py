"""DataLevelFusion against per-frame loops (nearest step, numpy interpolation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from mmfuse import ShapeError
from mmfuse.functional.fusion.data_level import align_to_times
from mmfuse.fusion import DataLevelFusion


def _naive_align(spec: torch.Tensor, s_times: torch.Tensor, f_times: torch.Tensor,
                 mode: str) -> torch.Tensor:
    """(B, T, F) by loops: nearest step (earlier on a tie) or numpy's linear interpolation."""
    b, f, _ = spec.shape
    t = f_times.shape[1]
    out = torch.empty(b, t, f, dtype=torch.float64)
    for i in range(b):
        st_ = s_times[i].double().numpy()
        for j in range(t):
            q = float(f_times[i, j])
            if mode == "nearest":
                dist = np.abs(st_ - q)
                k = int(np.flatnonzero(dist == dist.min())[0])
                out[i, j] = spec[i, :, k].double()
            else:
                for c in range(f):
                    out[i, j, c] = float(np.interp(q, st_, spec[i, c].double().numpy()))
    return out


def _inputs(b: int = 3, t: int = 5, s: int = 12, c: int = 2, f: int = 4, h: int = 3, w: int = 2,
            seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    s_times = torch.sort(torch.rand(b, s, generator=gen, dtype=torch.float64), dim=1).values
    f_times = torch.sort(torch.rand(b, t, generator=gen, dtype=torch.float64) * 1.2 - 0.1,
                         dim=1).values  # some frames fall outside the spectrogram's span
    f_times[:, t // 2] = s_times[:, s // 2]  # one frame exactly on a step
    f_times = torch.sort(f_times, dim=1).values
    return {
        "frames": torch.randn(b, t, c, h, w, generator=gen, dtype=torch.float64),
        "frame_times": f_times,
        "spectrogram": torch.randn(b, f, s, generator=gen, dtype=torch.float64),
        "spectrogram_times": s_times,
    }


@pytest.mark.parametrize("align", ["nearest", "linear"])
def test_alignment_matches_loops(align: str) -> None:
    x = _inputs()
    got = align_to_times(x["spectrogram"], x["spectrogram_times"], x["frame_times"], align)
    want = _naive_align(x["spectrogram"], x["spectrogram_times"], x["frame_times"], align)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("align", ["nearest", "linear"])
def test_broadcast_output(align: str) -> None:
    x = _inputs()
    f = DataLevelFusion(2, 4, align=align, dtype=torch.float64)
    out = f(**x)
    assert out.shape == (3, 5, 2 + 4, 3, 2)
    torch.testing.assert_close(out[:, :, :2], x["frames"])  # image channels first, unchanged
    aligned = _naive_align(x["spectrogram"], x["spectrogram_times"], x["frame_times"], align)
    for hh in range(3):
        for ww in range(2):
            torch.testing.assert_close(out[:, :, 2:, hh, ww], aligned)


def test_project_is_a_linear_map_of_the_aligned_spectrogram() -> None:
    x = _inputs()
    f = DataLevelFusion(2, 4, audio="project", audio_channels=3, dtype=torch.float64)
    out = f(**x)
    aligned = _naive_align(x["spectrogram"], x["spectrogram_times"], x["frame_times"], "nearest")
    assert f.proj is not None
    want = aligned @ f.proj.weight.T + f.proj.bias  # (B, T, 3)
    assert out.shape == (3, 5, 5, 3, 2) and f.out_channels == 5
    torch.testing.assert_close(out[:, :, 2:, 1, 0], want)


def test_resize_lays_frequency_along_the_height() -> None:
    x = _inputs(f=3, h=3, w=4)
    f = DataLevelFusion(2, 3, audio="resize", dtype=torch.float64)
    out = f(**x)
    assert out.shape == (3, 5, 3, 3, 4)
    aligned = _naive_align(x["spectrogram"], x["spectrogram_times"], x["frame_times"], "nearest")
    for ww in range(4):  # H == F: the column is the aligned vector itself, repeated along W
        torch.testing.assert_close(out[:, :, 2, :, ww], aligned)
    x6 = _inputs(f=3, h=6, w=1)
    out6 = DataLevelFusion(2, 3, audio="resize", dtype=torch.float64)(**x6)
    col = _naive_align(x6["spectrogram"], x6["spectrogram_times"], x6["frame_times"], "nearest")
    want = F.interpolate(col.reshape(15, 1, 3), size=6, mode="linear", align_corners=False)
    torch.testing.assert_close(out6[:, :, 2, :, 0], want.reshape(3, 5, 6))


def test_document_layout_is_a_permutation() -> None:
    x = _inputs()
    a = DataLevelFusion(2, 4, dtype=torch.float64)(**x)
    b = DataLevelFusion(2, 4, layout="b h w c t", dtype=torch.float64)(**x)
    assert b.shape == (3, 3, 2, 6, 5)
    torch.testing.assert_close(b, a.permute(0, 3, 4, 2, 1))
    merged = DataLevelFusion(2, 4, layout="b (t c) h w", dtype=torch.float64)(**x)
    torch.testing.assert_close(merged, a.reshape(3, 30, 3, 2))


def test_shared_times_equal_per_row_times() -> None:
    x = _inputs()
    shared_f, shared_s = x["frame_times"][0], x["spectrogram_times"][0]
    f = DataLevelFusion(2, 4, align="linear", dtype=torch.float64)
    a = f(x["frames"], shared_f, x["spectrogram"], shared_s)
    b = f(x["frames"], shared_f.expand(3, -1), x["spectrogram"], shared_s.expand(3, -1))
    torch.testing.assert_close(a, b)


def test_frames_outside_the_spectrogram_take_the_edge_steps() -> None:
    spec = torch.arange(3.0).reshape(1, 1, 3)  # values 0, 1, 2 at times 1, 2, 3
    out = DataLevelFusion(1, 1, align="linear")(
        torch.zeros(1, 4, 1, 1, 1), torch.tensor([0.0, 1.5, 2.75, 9.0]), spec,
        torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(out[0, :, 1, 0, 0], torch.tensor([0.0, 0.5, 1.75, 2.0]))


def test_repeated_step_times_are_finite() -> None:
    spec = torch.tensor([[[1.0, 2.0, 3.0]]])
    out = DataLevelFusion(1, 1, align="linear")(
        torch.zeros(1, 2, 1, 1, 1), torch.tensor([1.0, 1.5]), spec, torch.tensor([1.0, 1.0, 2.0]))
    assert torch.isfinite(out).all()


def test_value_errors_and_opt_out() -> None:
    x = _inputs()
    f = DataLevelFusion(2, 4, dtype=torch.float64)
    bad = x["frame_times"].clone()
    bad[1, 3] = -5.0
    with pytest.raises(ValueError, match=r"DataLevelFusion: expected `frame_times` sorted in "
                                         r"increasing time, got .* at row 1, steps 2-3"):
        f(**{**x, "frame_times": bad})
    with pytest.raises(ValueError, match=r"expected `spectrogram_times` sorted"):
        f(**{**x, "spectrogram_times": x["spectrogram_times"].flip(-1)})
    with pytest.raises(ValueError, match=r"expected `frame_times` to overlap `spectrogram_times` "
                                         r"in time, got frames spanning \[10.*at row 0"):
        f(**{**x, "frame_times": x["frame_times"] + 10.0})
    unchecked = DataLevelFusion(2, 4, validate_times=False, dtype=torch.float64)
    assert torch.isfinite(unchecked(**{**x, "frame_times": x["frame_times"] + 10.0})).all()


def test_shape_errors() -> None:
    x = _inputs()
    f = DataLevelFusion(2, 4, dtype=torch.float64)
    with pytest.raises(ShapeError, match=r"batch sizes disagree: expected `spectrogram` of shape "
                                         r"\(B, F, S\) with B=3 like `frames`, got \(2, 4, 12\)"):
        f(**{**x, "spectrogram": x["spectrogram"][:2]})
    with pytest.raises(ShapeError, match=r"expected `frames` of shape \(B, T, C, H, W\) with C=2"):
        f(**{**x, "frames": x["frames"][:, :, :1]})
    with pytest.raises(ShapeError, match=r"expected `spectrogram_times` of shape \(B, T\) with "
                                         r"B=3, T=12, got \(3, 11\)"):
        f(**{**x, "spectrogram_times": x["spectrogram_times"][:, 1:]})
    with pytest.raises(ShapeError, match=r"expected `frame_times` of shape \(B, T\) with B=3"):
        f(**{**x, "frame_times": x["frame_times"][:2]})


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match=r"expected `layout` to be an einops pattern over the "
                                         r"axes b t c h w, e.g. 'b h w c t', got 'b t c h'"):
        DataLevelFusion(3, 4, layout="b t c h")
    with pytest.raises(ValueError, match=r"unknown `audio` 'stack'; expected one of"):
        DataLevelFusion(3, 4, audio="stack")
    with pytest.raises(ValueError, match=r"expected `audio_channels` \(k\) with audio='project'"):
        DataLevelFusion(3, 4, audio="project")
    with pytest.raises(ValueError, match=r"expected `audio_channels` only with audio='project'"):
        DataLevelFusion(3, 4, audio_channels=2)
    with pytest.raises(ValueError, match=r"unknown `align` 'cubic'"):
        DataLevelFusion(3, 4, align="cubic")


@pytest.mark.parametrize("audio", ["broadcast", "resize"])
@pytest.mark.parametrize("align", ["nearest", "linear"])
def test_compile_batch_independence_and_bf16(audio: str, align: str) -> None:
    torch._dynamo.reset()
    x = {k: v.float() for k, v in _inputs().items()}
    f = DataLevelFusion(2, 4, align=align, audio=audio, layout="b h w c t")
    eager = f(**x)
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(**x), eager)
    for i in range(3):
        row = f(**{k: v[i : i + 1] for k, v in x.items()})
        torch.testing.assert_close(row, eager[i : i + 1])
    # bfloat16 data, float32 times (times of bfloat16 would be rounded to a coarse grid)
    half = f(x["frames"].bfloat16(), x["frame_times"], x["spectrogram"].bfloat16(),
             x["spectrogram_times"])
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), eager, atol=0.05, rtol=0.02)


def test_compiled_module_skips_value_checks() -> None:
    """Documented: under torch.compile the timestamp value checks do not run (no graph break)."""
    torch._dynamo.reset()
    x = {k: v.float() for k, v in _inputs().items()}
    compiled = torch.compile(DataLevelFusion(2, 4), backend="eager", fullgraph=True)
    out = compiled(**{**x, "frame_times": x["frame_times"] + 10.0})
    assert torch.isfinite(out).all()


def test_gradcheck_linear_alignment() -> None:
    x = _inputs(b=2, t=3, s=5, f=2)
    spec = x["spectrogram"].requires_grad_()
    frames = x["frames"].requires_grad_()
    f = DataLevelFusion(2, 2, align="linear", audio="resize", dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda fr, sp: f(fr, x["frame_times"], sp, x["spectrogram_times"]), (frames, spec))


@given(b=st.integers(1, 3), t=st.integers(1, 6), s=st.integers(1, 8), f=st.integers(1, 4),
       align=st.sampled_from(["nearest", "linear"]), seed=st.integers(0, 2**16))
def test_property_matches_loops(b: int, t: int, s: int, f: int, align: str, seed: int) -> None:
    x = _inputs(b=b, t=t, s=s, f=f, h=1, w=1, seed=seed)
    out = DataLevelFusion(2, f, align=align, dtype=torch.float64)(**x)
    want = _naive_align(x["spectrogram"], x["spectrogram_times"], x["frame_times"], align)
    torch.testing.assert_close(out[:, :, 2:, 0, 0], want)


def test_layout_with_an_arrow_and_meta_inputs_are_named() -> None:
    from mmfuse.fusion import DataLevelFusion

    with pytest.raises(ValueError, match=r"^DataLevelFusion: expected `layout` to be an einops "
                       r"pattern over the axes b t c h w, e.g. 'b h w c t', got 'b t c h w -> b'\.$"):
        DataLevelFusion(3, 4, layout="b t c h w -> b")
    f = DataLevelFusion(3, 4, audio="project", audio_channels=2)
    frames = torch.randn(2, 3, 3, 4, 4, device="meta")
    times = torch.linspace(0, 1, 3, device="meta")
    with pytest.raises(ValueError, match=r"^DataLevelFusion: expected `frames` of dtype "
                       r"torch.float32 on cpu like the module's parameters, got torch.float32 on meta"):
        f(frames, times, torch.randn(2, 4, 5, device="meta"), torch.linspace(0, 1, 5, device="meta"))
