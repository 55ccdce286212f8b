"""Data-level fusion: video frames and an audio spectrogram aligned on time, in one tensor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import einops
import torch
from torch import Tensor, nn

from .._checks import check_choice, check_inputs, check_same_device, check_size, check_tensor
from .._precision import outside_autocast
from ..errors import ShapeError
from ..functional.fusion.data_level import (
    ALIGN_MODES,
    _to_grid,
    align_to_times,
    spectrogram_to_grid,
    time_order_violations,
    time_overlap,
)

__all__ = ["DataLevelFusion"]

_AUDIO_MODES = ("broadcast", "project", "resize")


class DataLevelFusion(nn.Module):
    """Fuse raw video frames and an audio spectrogram into one tensor, aligned on time.

    The source document's data-level fusion: each video frame's pixels are joined with the
    spectrogram at that frame's time, giving one tensor over (time, channels, height, width)
    in a layout of the caller's choice (the document's ``"b h w c t"`` included).

    Every dimension mismatch has a rule:

    - **time**: the spectrogram (S steps, its own step times) is sampled at the T frame times,
      ``align="nearest"`` (the closest step) or ``"linear"`` (interpolated). Frames before the
      first or after the last step take that step (no extrapolation).
    - **space**: the F frequency values reach the H x W grid by ``audio="broadcast"`` (F constant
      channels), ``"project"`` (a learned linear map to ``audio_channels`` channels, then
      broadcast) or ``"resize"`` (the F values stretched along the height, repeated along the
      width: one channel).
    - **channels**: the audio channels are appended after the C image channels, so the output
      has ``out_channels = C + F`` (broadcast), ``C + audio_channels`` (project) or ``C + 1``
      (resize).

    Time validation: with ``validate_times=True`` (the default) the forward also checks the
    timestamps' *values*: each row sorted in time, and the frames' span overlapping the
    spectrogram's. Unlike the shape checks this reads tensor values (a device sync), so it runs
    in eager mode only; under ``torch.compile`` it is skipped (no graph break). Pass
    ``validate_times=False`` to skip it in eager mode too. Keep timestamps in float32 or float64
    even when the data is bfloat16 (whose 8-bit mantissa would round them); alignment runs in at
    least float32.

    Args:
        channels: Image channels C of the frames.
        freq_bins: Frequency bins F of the spectrogram.
        align: ``"nearest"`` or ``"linear"``.
        audio: ``"broadcast"``, ``"project"`` or ``"resize"``.
        audio_channels: Output channels k of the learned projection (``audio="project"`` only).
        layout: einops output pattern over the axes ``b t c h w``, e.g. ``"b h w c t"`` or
            ``"b (t c) h w"`` (default ``"b t c h w"``).
        validate_times: Check timestamp values in eager mode (see above).

    Shape:
        - frames: (B, T, C, H, W)
        - frame_times: (B, T) or (T,) seconds, non-decreasing
        - spectrogram: (B, F, S)
        - spectrogram_times: (B, S) or (S,) seconds, non-decreasing
        - output: (B, T, C', H, W) rearranged to ``layout``, C' = ``out_channels``

    Example:
        >>> f = DataLevelFusion(3, 8, layout="b h w c t")
        >>> frames, spec = torch.rand(2, 5, 3, 4, 4), torch.randn(2, 8, 20)
        >>> f(frames, torch.arange(5) * 0.2, spec, torch.arange(20) * 0.05).shape
        torch.Size([2, 4, 4, 11, 5])
    """

    def __init__(
        self,
        channels: int,
        freq_bins: int,
        *,
        align: str = "nearest",
        audio: str = "broadcast",
        audio_channels: int | None = None,
        layout: str = "b t c h w",
        validate_times: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        check_size(channels, owner=self, arg="channels")
        check_size(freq_bins, owner=self, arg="freq_bins")
        check_choice(align, ALIGN_MODES, owner=self, arg="align")
        check_choice(audio, _AUDIO_MODES, owner=self, arg="audio")
        if audio == "project":
            if audio_channels is None:
                raise ValueError(
                    "DataLevelFusion: expected `audio_channels` (k) with audio='project', got None."
                )
            check_size(audio_channels, owner=self, arg="audio_channels")
        elif audio_channels is not None:
            raise ValueError(
                f"DataLevelFusion: expected `audio_channels` only with audio='project', got "
                f"audio_channels={audio_channels!r} with audio={audio!r}."
            )
        try:
            if not isinstance(layout, str) or "->" in layout:  # only the output side is taken
                raise TypeError(layout)
            einops.rearrange(torch.empty(1, 2, 3, 4, 5), f"b t c h w -> {layout}")
        except (einops.EinopsError, TypeError, ValueError) as exc:
            raise ValueError(
                f"DataLevelFusion: expected `layout` to be an einops pattern over the axes "
                f"b t c h w, e.g. 'b h w c t', got {layout!r}."
            ) from exc
        self.channels, self.freq_bins = int(channels), int(freq_bins)
        self.align, self.audio, self.layout = align, audio, layout
        self.validate_times = validate_times
        k = {"broadcast": self.freq_bins, "project": audio_channels, "resize": 1}[audio]
        self.audio_channels = int(k)  # type: ignore[arg-type]
        self.out_channels = self.channels + self.audio_channels
        self.proj = nn.Linear(self.freq_bins, self.audio_channels, **dd) if audio == "project" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.proj is not None:
            self.proj.reset_parameters()

    def _check_times(self, times: object, arg: str, batch: int, steps: int) -> Tensor:
        if isinstance(times, Tensor) and times.dim() == 1:
            check_tensor(times, "T", owner=self, arg=arg, T=steps)
            return times.expand(batch, steps)
        check_tensor(times, "B T", owner=self, arg=arg, B=batch, T=steps)
        return cast(Tensor, times)  # check_tensor has raised for anything else

    def _check_time_values(self, frame_times: Tensor, spec_times: Tensor) -> None:
        for arg, t in (("frame_times", frame_times), ("spectrogram_times", spec_times)):
            bad = time_order_violations(t)
            if bool(bad.any()):
                row, step = (int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"DataLevelFusion: expected `{arg}` sorted in increasing time, got "
                    f"{float(t[row, step]):g} then {float(t[row, step + 1]):g} at row {row}, "
                    f"steps {step}-{step + 1}."
                )
        ok = time_overlap(frame_times, spec_times)
        if frame_times.shape[0] > 0 and not bool(ok.all()):
            row = int((~ok).nonzero()[0, 0])
            raise ValueError(
                f"DataLevelFusion: expected `frame_times` to overlap `spectrogram_times` in time, "
                f"got frames spanning [{float(frame_times[row, 0]):g}, "
                f"{float(frame_times[row, -1]):g}] s and a spectrogram spanning "
                f"[{float(spec_times[row, 0]):g}, {float(spec_times[row, -1]):g}] s at row {row}."
            )

    def forward(
        self, frames: Tensor, frame_times: Tensor, spectrogram: Tensor, spectrogram_times: Tensor
    ) -> Tensor:
        sizes = check_tensor(frames, "B T C H W", owner=self, arg="frames", C=self.channels)
        batch, steps, height, width = sizes["B"], sizes["T"], sizes["H"], sizes["W"]
        if isinstance(spectrogram, Tensor) and spectrogram.dim() == 3 and (
            spectrogram.shape[0] != batch
        ):
            raise ShapeError(
                f"DataLevelFusion: batch sizes disagree: expected `spectrogram` of shape "
                f"(B, F, S) with B={batch} like `frames`, got {tuple(spectrogram.shape)}."
            )
        spec_sizes = check_tensor(spectrogram, "B F S", owner=self, arg="spectrogram", B=batch,
                                  F=self.freq_bins)
        if spec_sizes["S"] == 0 or steps == 0:
            raise ShapeError(
                f"DataLevelFusion: expected at least one time step in `frames` and "
                f"`spectrogram`, got T={steps} and S={spec_sizes['S']}."
            )
        f_times = self._check_times(frame_times, "frame_times", batch, steps)
        s_times = self._check_times(spectrogram_times, "spectrogram_times", batch, spec_sizes["S"])
        for arg, t in (("frame_times", f_times), ("spectrogram_times", s_times)):
            if not t.is_floating_point():
                raise TypeError(
                    f"DataLevelFusion: expected `{arg}` to be a floating-point tensor of seconds, "
                    f"got {t.dtype}."
                )
        check_same_device({"frames": frames, "spectrogram": spectrogram, "frame_times": f_times,
                           "spectrogram_times": s_times}, owner=self)
        # the projection needs the frames' dtype; a meta tensor has no times to read
        check_inputs(self, {"frames": frames}, dtype=self.proj is not None)
        if self.validate_times and not torch.compiler.is_compiling() and (
            f_times.device.type != "meta"
        ):
            self._check_time_values(f_times, s_times)
        # data, not features: laid out outside autocast, in the frames' dtype (conventions.md)
        with outside_autocast(frames.device):
            aligned = align_to_times(spectrogram.to(frames.dtype), s_times, f_times, self.align)
        if self.proj is not None:  # (B, T, F) -> (B, T, k): a matmul, under autocast if it is on
            aligned = self.proj(aligned).to(frames.dtype)
        mode = "resize" if self.audio == "resize" else "broadcast"
        if height == 0 or width == 0:
            spectrogram_to_grid(aligned, height, width, mode)  # raises: an empty image grid
        with outside_autocast(frames.device):
            # unchecked form: the sizes may be traced tensors (TorchScript-based ONNX export)
            grid = _to_grid(aligned, height, width, mode)  # (B, T, k, H, W)
            fused = torch.cat([frames, grid], dim=2)  # (B, T, C + k, H, W)
        return einops.rearrange(fused, f"b t c h w -> {self.layout}")

    if TYPE_CHECKING:  # calls are typed as forward (nn.Module's __call__ returns Any)
        __call__ = forward

    def extra_repr(self) -> str:
        extra = f", audio_channels={self.audio_channels}" if self.audio == "project" else ""
        return (f"channels={self.channels}, freq_bins={self.freq_bins}, align={self.align!r}, "
                f"audio={self.audio!r}{extra}, layout={self.layout!r}")
