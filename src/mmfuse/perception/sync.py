"""Window several loaders onto one timeline, in the layout DataLevelFusion takes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._checks import check_choice, check_positive
from .sample import Loader

__all__ = ["SyncWindow", "Synchronizer"]


class SyncWindow(NamedTuple):
    """One window of every stream, batched with B = 1.

    Attributes:
        start, end: The window ``[start, end)`` in :func:`clock` seconds.
        data: Per stream: frames (1, T, C, H, W) (any per-sample shape S: (1, T, *S)); audio
            (1, F, S) after a transform such as :class:`LogMelSpectrogram` (of the channel mean),
            or the raw waveform (1, C, N) without one.
        times: Per stream, (1, T) / (1, S) / (1, N) float64 clock seconds of each step: grid
            times for frames, frame centres for spectrograms, sample times for waveforms.
    """

    start: float
    end: float
    data: dict[str, Tensor]
    times: dict[str, Tensor]


class _Frames:
    def __init__(self, name: str, rate: float) -> None:
        self.name = name
        self.rate = rate
        self.items: deque[tuple[float, Tensor]] = deque()

    def push(self, t: float, x: Any) -> None:
        if not isinstance(x, Tensor):
            try:
                x = torch.as_tensor(x, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise TypeError(
                    f"Synchronizer: expected stream {self.name!r} to give tensors or numbers, got "
                    f"{type(x).__name__} (give ApiLoader a `parse` callable that returns a tensor)."
                ) from exc
        self.items.append((t, x))

    def first_time(self) -> float:
        return self.items[0][0]

    def reach(self) -> float:
        return self.items[-1][0] if self.items else -float("inf")

    def covers(self, end: float) -> bool:
        return self.reach() > -float("inf") and self.reach() >= end

    def take(self, grid: Tensor, mode: str) -> Tensor:
        times = torch.tensor([t for t, _ in self.items], dtype=torch.float64)  # (K,)
        frames = torch.stack([x for _, x in self.items])  # (K, *S)
        right = torch.searchsorted(times, grid).clamp(max=len(times) - 1)  # first frame >= grid
        left = (right - 1).clamp(min=0)
        if mode == "nearest":
            pick = torch.where((grid - times[left]).abs() <= (times[right] - grid).abs(), left, right)
            return frames[pick]  # (T, *S)
        span = (times[right] - times[left]).clamp(min=1e-12)
        w = ((grid - times[left]) / span).clamp(0.0, 1.0)  # (T,)
        w = w.view(-1, *([1] * (frames.dim() - 1)))
        a, b = frames[left].double(), frames[right].double()
        out = a + (b - a) * w
        if frames.is_floating_point():
            return out.to(frames.dtype)
        return out.round().to(frames.dtype)

    def trim(self, before: float) -> None:
        # keep the last frame before `before` for nearest/linear at the next window's start
        while len(self.items) > 1 and self.items[1][0] <= before:
            self.items.popleft()


class _Audio:
    def __init__(self) -> None:
        self.rate = 0
        self.start: float | None = None
        self.buf: Tensor | None = None  # (C, N)
        self.gap_samples = 0

    def push(self, t: float, x: Tensor, meta: Mapping[str, Any]) -> None:
        self.rate = int(meta["sample_rate"])
        if self.buf is None or self.start is None:
            self.start, self.buf = t, x
            return
        expected = self.start + self.buf.shape[-1] / self.rate
        gap = round((t - expected) * self.rate)
        if gap > max(1, x.shape[-1] // 2):  # samples lost upstream (an overflow): fill with zeros
            self.gap_samples += gap
            self.buf = torch.cat([self.buf, self.buf.new_zeros(self.buf.shape[0], gap)], dim=-1)
        self.buf = torch.cat([self.buf, x], dim=-1)

    def first_time(self) -> float:
        return float("inf") if self.start is None else self.start

    def reach(self) -> float:
        if self.buf is None or self.start is None:
            return -float("inf")
        return self.start + self.buf.shape[-1] / self.rate

    def covers(self, end: float) -> bool:
        return self.reach() > -float("inf") and self.reach() >= end

    def take(self, start: float, length: int) -> Tensor:
        if self.buf is None or self.start is None:
            raise RuntimeError("Synchronizer: audio stream has no samples yet.")
        i0 = round((start - self.start) * self.rate)
        if i0 < 0:  # the window starts before the first sample: silence until then
            lead = self.buf.new_zeros(self.buf.shape[0], min(-i0, length))
            out = torch.cat([lead, self.buf[:, : length - lead.shape[-1]]], dim=-1)
        else:
            out = self.buf[:, i0:i0 + length]
        if out.shape[-1] < length:  # rounding at the very end: pad by repeating the edge
            out = torch.nn.functional.pad(out, (0, length - out.shape[-1]), mode="replicate")
        return out  # (C, length)

    def trim(self, before: float) -> None:
        if self.buf is None or self.start is None:
            return
        drop = max(0, min(self.buf.shape[-1], round((before - self.start) * self.rate)))
        self.buf = self.buf[:, drop:]
        self.start += drop / self.rate


class Synchronizer:
    """Window several loaders onto one timeline: frames on a regular grid, audio as spectrograms.

    Windows are ``[start + k * hop, start + k * hop + window)`` on :func:`clock`. For each
    window the synchroniser reads every loader until its samples cover the window, then:

    - frame streams (``loader.kind`` ``"frames"`` or ``"values"``) are sampled on the grid
      ``start + i / rate``, i < T = round(window * rate), taking the nearest frame or
      interpolating linearly between the two around each grid time (uint8 rounded back);
    - audio streams (``"audio"``) are cut to exactly round(window * sample_rate) samples;
      blocks missing upstream (overflows) are filled with zeros and counted in
      :attr:`gap_samples`. With a transform (e.g. :class:`LogMelSpectrogram`) the channel mean
      goes through it and the times are its frame centres (``transform.frame_times`` if it has
      one).

    With an explicit ``start`` before a stream's first sample, grid times before its first
    frame take that frame and audio before its first sample is zeros.

    Loaders are read in turn, always the one whose samples reach least far, so the bounded
    buffers of live loaders keep draining. Memory stays bounded: samples before the next window
    are dropped. The first window starts
    at ``start``, by default the latest first timestamp among the streams (when all have data).
    Iteration ends when any loader ends, and then every loader is closed, as on an error or
    :meth:`close` (or leaving ``with``). If the consumer is slower than real time, live loaders'
    bounded buffers overflow (counted by each loader) while the windows keep following the
    timeline: lost audio becomes zeros, and frames are the nearest still buffered.

    Args:
        loaders: Stream name -> loader.
        window: Window length in seconds.
        hop: Seconds between window starts (default ``window``: back to back).
        rates: Grid rate (Hz) per frame stream; defaults to the loader's ``fps`` attribute.
        mode: ``"nearest"`` or ``"linear"``.
        transforms: Stream name -> callable applied to that stream's window (audio: (N,) mono
            waveform; frames: (T, C, H, W)).
        start: Clock time of the first window.

    Example:
        >>> sync = Synchronizer({"video": cam, "audio": mic}, window=1.0,  # doctest: +SKIP
        ...                     rates={"video": 8}, transforms={"audio": LogMelSpectrogram(16000)})
        >>> for w in sync:  # doctest: +SKIP
        ...     w.data["video"].shape, w.data["audio"].shape  # (1, 8, 3, H, W), (1, 64, 101)
    """

    def __init__(
        self,
        loaders: Mapping[str, Loader],
        *,
        window: float,
        hop: float | None = None,
        rates: Mapping[str, float] | None = None,
        mode: str = "nearest",
        transforms: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
        start: float | None = None,
    ) -> None:
        if not isinstance(loaders, Mapping) or not loaders:
            raise ValueError(f"Synchronizer: expected `loaders` to be a non-empty mapping, got {loaders!r}.")
        check_positive(window, owner=self, arg="window")
        if hop is not None:
            check_positive(hop, owner=self, arg="hop")
        check_choice(mode, ("nearest", "linear"), owner=self, arg="mode")
        rates = dict(rates or {})
        transforms = dict(transforms or {})
        for name in [*rates, *transforms]:
            if name not in loaders:
                raise ValueError(f"Synchronizer: `rates`/`transforms` name {name!r} is not a stream; streams are {list(loaders)}.")
        self.loaders = dict(loaders)
        self.window = float(window)
        self.hop = float(hop if hop is not None else window)
        self.mode = mode
        self.transforms = transforms
        self._streams: dict[str, _Frames | _Audio] = {}
        for name, loader in self.loaders.items():
            if getattr(loader, "kind", "values") == "audio":
                self._streams[name] = _Audio()
                continue
            rate = rates.get(name, getattr(loader, "fps", None))
            if rate is None:
                raise ValueError(
                    f"Synchronizer: frame stream {name!r} needs a grid rate: pass rates={{{name!r}: hz}}."
                )
            check_positive(rate, owner=self, arg=f"rates[{name!r}]")
            self._streams[name] = _Frames(name, float(rate))
        self.start = start
        self._k = 0
        self._done = False

    @property
    def gap_samples(self) -> dict[str, int]:
        """Audio samples filled with zeros per audio stream (lost upstream)."""
        return {n: s.gap_samples for n, s in self._streams.items() if isinstance(s, _Audio)}

    def _pull(self, name: str) -> None:
        sample = next(self.loaders[name])  # StopIteration ends the synchroniser
        stream = self._streams[name]
        if isinstance(stream, _Audio):
            stream.push(float(sample.timestamp), sample.data, sample.meta)
        else:
            stream.push(float(sample.timestamp), sample.data)

    def _fill(self, end: float) -> None:
        # always read the stream that lags most, so live sources' bounded buffers keep draining
        while True:
            behind = [(s.reach(), name) for name, s in self._streams.items() if not s.covers(end)]
            if not behind:
                return
            self._pull(min(behind)[1])

    def __iter__(self) -> Iterator[SyncWindow]:
        return self

    def __next__(self) -> SyncWindow:
        if self._done:
            raise StopIteration
        try:
            return self._next()
        except BaseException:  # a loader ended or failed: release every loader
            self.close()
            raise

    def _next(self) -> SyncWindow:
        if self.start is None:
            for name, stream in self._streams.items():
                if stream.reach() == -float("inf"):  # no sample yet
                    self._pull(name)
            self.start = max(s.first_time() for s in self._streams.values())
        ws = self.start + self._k * self.hop
        we = ws + self.window
        self._fill(we)
        data: dict[str, Tensor] = {}
        times: dict[str, Tensor] = {}
        for name, stream in self._streams.items():
            fn = self.transforms.get(name)
            if isinstance(stream, _Frames):
                count = max(1, round(self.window * stream.rate))
                grid = ws + torch.arange(count, dtype=torch.float64) / stream.rate  # (T,)
                x = stream.take(grid, self.mode)  # (T, *S)
                data[name] = (fn(x) if fn is not None else x).unsqueeze(0)
                times[name] = grid.unsqueeze(0)
            else:
                n = max(1, round(self.window * stream.rate))
                wave = stream.take(ws, n)  # (C, N)
                if fn is None:
                    data[name] = wave.unsqueeze(0)  # (1, C, N)
                    t = ws + torch.arange(n, dtype=torch.float64) / stream.rate
                else:
                    spec = fn(wave.mean(0))  # (F, S)
                    data[name] = spec.unsqueeze(0)
                    frame_times = getattr(fn, "frame_times", None)
                    if callable(frame_times):
                        t = frame_times(ws, spec.shape[-1])
                    else:
                        t = ws + torch.arange(spec.shape[-1], dtype=torch.float64) * (
                            self.window / spec.shape[-1])
                times[name] = t.unsqueeze(0)
        self._k += 1
        nxt = self.start + self._k * self.hop
        for stream in self._streams.values():
            stream.trim(nxt)
        return SyncWindow(ws, we, data, times)

    def close(self) -> None:
        """Close every loader."""
        self._done = True
        errors = []
        for loader in self.loaders.values():
            try:
                loader.close()
            except Exception as exc:  # close the rest, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Synchronizer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
