"""UTD-MHAD: depth video, 20-joint skeleton and wrist/thigh inertial sensor, 27 actions.

Chen, Jafari and Kehtarnavaz, "UTD-MHAD: A Multimodal Dataset for Human Action Recognition
Utilizing a Depth Camera and a Wearable Inertial Sensor", IEEE ICIP 2015. The files are read
from a folder the user gives (``inertial/``, ``skeleton/``, ``depth/`` of MATLAB ``.mat``
files); nothing is downloaded or copied.

Time stamps. The inertial sensor samples at 50 Hz. The Kinect streams (skeleton and depth,
the same frames) are nominally 30 Hz, but in the released files a sequence's Kinect frames
span the same interval as its inertial samples: over all 861 sequences the inertial stream
has 2.6 times as many samples as the Kinect streams (std 0.17), so the frames are about
19 Hz apart, and the right wrist's speed in the skeleton correlates best with the gyroscope's
magnitude when the Kinect frames are spread over the inertial recording (median best rate
18 Hz, offset 0.0 s). ``kinect_times="span"`` (the default) therefore stamps frame ``k`` of
``T_k`` at ``k * (T_i / 50) / T_k`` seconds; ``kinect_times="nominal"`` stamps it at
``k / 30``. Tests pin the correlation finding on real files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .._optional import require

__all__ = [
    "ACTIONS",
    "JOINTS",
    "KNOWN_ABSENT",
    "SKELETON_EDGES",
    "TEST_SUBJECTS",
    "TRAIN_SUBJECTS",
    "UTDMHAD",
    "UTDMHADError",
    "collate_utd_mhad",
    "skeleton_adjacency",
]

MODALITIES = ("inertial", "skeleton", "depth")
INERTIAL_RATE = 50.0
KINECT_NOMINAL_RATE = 30.0
TRAIN_SUBJECTS = (1, 3, 5, 7)
TEST_SUBJECTS = (2, 4, 6, 8)
#: Sequences missing from the upstream release: (action, subject, trial).
KNOWN_ABSENT = frozenset({(8, 1, 4), (23, 6, 4), (27, 8, 4)})

ACTIONS = (
    "right arm swipe to the left", "right arm swipe to the right", "right hand wave",
    "two hand front clap", "right arm throw", "cross arms in the chest", "basketball shoot",
    "right hand draw x", "right hand draw circle (clockwise)",
    "right hand draw circle (counter clockwise)", "draw triangle", "bowling (right hand)",
    "front boxing", "baseball swing from right", "tennis right hand forehand swing",
    "arm curl (two arms)", "tennis serve", "two hand push", "right hand knock on door",
    "right hand catch an object", "right hand pick up and throw", "jogging in place",
    "walking in place", "sit to stand", "stand to sit", "forward lunge (left foot forward)",
    "squat (two arms stretch out)",
)
JOINTS = (
    "head", "shoulder_center", "spine", "hip_center", "left_shoulder", "left_elbow",
    "left_wrist", "left_hand", "right_shoulder", "right_elbow", "right_wrist", "right_hand",
    "left_hip", "left_knee", "left_ankle", "left_foot", "right_hip", "right_knee",
    "right_ankle", "right_foot",
)
#: The Kinect v1 body as 19 bones between 0-based joint indices (see ``JOINTS``).
SKELETON_EDGES = (
    (0, 1), (1, 2), (2, 3), (1, 4), (4, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (10, 11),
    (3, 12), (12, 13), (13, 14), (14, 15), (3, 16), (16, 17), (17, 18), (18, 19),
)
_VARIABLE = {"inertial": "d_iner", "skeleton": "d_skel", "depth": "d_depth"}
_NAME = re.compile(r"^a(\d+)_s(\d+)_t(\d+)_(inertial|skeleton|depth)\.mat$")


class UTDMHADError(ValueError):
    """A UTD-MHAD file is missing, unreadable or not of the documented layout."""


def skeleton_adjacency(*, self_loops: bool = True) -> Tensor:
    """The (20, 20) bool adjacency of the Kinect body (symmetric), for graph attention."""
    adj = torch.zeros(len(JOINTS), len(JOINTS), dtype=torch.bool)
    for i, j in SKELETON_EDGES:
        adj[i, j] = adj[j, i] = True
    if self_loops:
        adj.fill_diagonal_(True)
    return adj


def _int_tuple(values: Iterable[int] | None, default: Sequence[int], lo: int, hi: int,
               arg: str) -> tuple[int, ...]:
    if values is None:
        return tuple(default)
    out = tuple(values)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"UTDMHAD: expected `{arg}` to hold ints in [{lo}, {hi}], got {v!r}.")
    if not out:
        raise ValueError(f"UTDMHAD: expected `{arg}` to name at least one, got none.")
    return tuple(sorted(set(out)))


class UTDMHAD(Dataset[dict[str, Any]]):
    """The UTD-MHAD sequences of the chosen subjects, as a torch ``Dataset``.

    Each item is a dict::

        {"streams": {"inertial": (T_i, 6), "skeleton": (T_k, 20, 3), "depth": (T_k, H, W)},
         "times":   {m: (T_m,) seconds from the first sample},
         "label": int (action - 1, in [0, 27)), "action": int, "subject": int, "trial": int}

    holding only the requested ``modalities``. Inertial rows are accelerometer x, y, z (g)
    then gyroscope x, y, z (deg/s); skeleton coordinates are metres; depth is metres
    (0 = no reading), downsampled by area averaging to ``depth_size`` when given. Use
    :func:`collate_utd_mhad` in a ``DataLoader`` to pad a batch and get token masks.

    Args:
        root: Folder holding ``inertial/``, ``skeleton/`` and ``depth/``.
        subjects: Subjects to include (1-8); default all. The cross-subject protocol trains
            on ``TRAIN_SUBJECTS`` (1, 3, 5, 7: 431 sequences) and tests on ``TEST_SUBJECTS``
            (2, 4, 6, 8: 430 sequences).
        modalities: Any of ``"inertial"``, ``"skeleton"``, ``"depth"``.
        actions: Actions to include (1-27); default all.
        depth_size: ``(H, W)`` to downsample each depth frame to, or None for 240 x 320.
        kinect_times: ``"span"`` or ``"nominal"`` time stamps of the Kinect frames (see the
            module docstring).
        preload: Read every file in the constructor (and keep the tensors) instead of on
            each ``__getitem__``.

    Raises:
        FileNotFoundError: a sequence's file is missing (naming it), beyond the three
            sequences absent upstream (``KNOWN_ABSENT``), or ``root`` is not a folder.
        UTDMHADError: a file cannot be read or is not of the documented layout (naming it).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        subjects: Iterable[int] | None = None,
        modalities: Sequence[str] = MODALITIES,
        actions: Iterable[int] | None = None,
        depth_size: tuple[int, int] | None = None,
        kinect_times: str = "span",
        preload: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"UTDMHAD: no data folder at {str(self.root)!r}.")
        if isinstance(modalities, str) or not modalities:
            raise ValueError(
                f"UTDMHAD: expected `modalities` to be a non-empty sequence of {MODALITIES}, "
                f"got {modalities!r}.")
        for m in modalities:
            if m not in MODALITIES:
                raise ValueError(f"UTDMHAD: unknown modality {m!r}; expected one of {MODALITIES}.")
        if kinect_times not in ("span", "nominal"):
            raise ValueError(
                f"UTDMHAD: expected `kinect_times` to be 'span' or 'nominal', got {kinect_times!r}.")
        if depth_size is not None and (
            len(depth_size) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in depth_size)
        ):
            raise ValueError(
                f"UTDMHAD: expected `depth_size` to be (H, W) positive ints, got {depth_size!r}.")
        self._sio = require("scipy.io", feature="mmfuse.data.UTDMHAD")
        self.modalities = tuple(dict.fromkeys(modalities))
        self.subjects = _int_tuple(subjects, range(1, 9), 1, 8, "subjects")
        self.actions = _int_tuple(actions, range(1, 28), 1, 27, "actions")
        self.depth_size = depth_size
        self.kinect_times = kinect_times
        self.index = [
            (a, s, t)
            for a in self.actions for s in self.subjects for t in range(1, 5)
            if (a, s, t) not in KNOWN_ABSENT
        ]
        for key in self.index:
            for m in self._file_modalities():
                path = self._path(m, key)
                if not path.is_file():
                    raise FileNotFoundError(f"UTDMHAD: missing file {str(path)!r}.")
        self._cache: list[dict[str, Any]] | None = None
        if preload:
            self._cache = [self._load(key) for key in self.index]

    def _file_modalities(self) -> tuple[str, ...]:
        # Kinect frame times need the inertial length; skeleton gives the depth frame count.
        need = set(self.modalities)
        if self.kinect_times == "span" and need & {"skeleton", "depth"}:
            need.add("inertial")
        return tuple(m for m in MODALITIES if m in need)

    def _path(self, modality: str, key: tuple[int, int, int]) -> Path:
        a, s, t = key
        return self.root / modality / f"a{a}_s{s}_t{t}_{modality}.mat"

    def _read(self, modality: str, key: tuple[int, int, int]) -> Any:
        path = self._path(modality, key)
        var = _VARIABLE[modality]
        try:
            value = self._sio.loadmat(str(path), variable_names=[var]).get(var)
        except FileNotFoundError:
            raise FileNotFoundError(f"UTDMHAD: missing file {str(path)!r}.") from None
        except Exception as exc:  # scipy raises several types for damaged files
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UTDMHADError(f"UTDMHAD: cannot read {str(path)!r}: {msg}") from None
        rank = {"inertial": 2, "skeleton": 3, "depth": 3}[modality]
        if value is None or getattr(value, "ndim", 0) != rank or value.shape[-1] == 0 or (
            modality == "inertial" and value.shape[1] != 6
        ) or (modality == "skeleton" and value.shape[:2] != (20, 3)):
            got = "no variable" if value is None else f"shape {tuple(value.shape)}"
            want = {"inertial": "(T, 6)", "skeleton": "(20, 3, T)", "depth": "(H, W, T)"}[modality]
            raise UTDMHADError(
                f"UTDMHAD: expected {var!r} of shape {want} in {str(path)!r}, got {got}.")
        return value

    def _load(self, key: tuple[int, int, int]) -> dict[str, Any]:
        a, s, t = key
        raw = {m: self._read(m, key) for m in self._file_modalities() if m != "depth" or
               "depth" in self.modalities}
        streams: dict[str, Tensor] = {}
        times: dict[str, Tensor] = {}
        duration = (raw["inertial"].shape[0] / INERTIAL_RATE
                    if self.kinect_times == "span" and "inertial" in raw else None)
        for m in self.modalities:
            if m == "depth":
                x = _depth_frames(raw[m], self.depth_size)  # (T, H, W) metres
            else:
                x = torch.from_numpy(raw[m].astype("float32"))
            if m == "skeleton":
                x = x.permute(2, 0, 1).contiguous()  # (T, 20, 3)
            n = x.shape[0]
            if m == "inertial":
                times[m] = torch.arange(n, dtype=torch.float64) / INERTIAL_RATE
            elif duration is not None:  # kinect_times="span" (the inertial file was read)
                times[m] = torch.arange(n, dtype=torch.float64) * (duration / n)
            else:
                times[m] = torch.arange(n, dtype=torch.float64) / KINECT_NOMINAL_RATE
            streams[m] = x
        return {"streams": streams, "times": times, "label": a - 1, "action": a,
                "subject": s, "trial": t}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._cache is not None:
            return self._cache[i]
        return self._load(self.index[i])

    def extra_repr(self) -> str:
        return (f"subjects={self.subjects}, modalities={self.modalities}, "
                f"depth_size={self.depth_size}, kinect_times={self.kinect_times!r}")

    def __repr__(self) -> str:
        return f"UTDMHAD(root={str(self.root)!r}, {self.extra_repr()}, n={len(self)})"


def _depth_frames(raw: Any, size: tuple[int, int] | None) -> Tensor:
    """(H, W, T) millimetres -> (T, h, w) metres, area-averaged to ``size``."""
    frames = raw.T  # (T, W, H), contiguous for the Fortran-ordered arrays scipy returns
    h, w = raw.shape[:2]
    if size is not None and h % size[0] == 0 and w % size[1] == 0:
        sh, sw = size
        pooled = frames.reshape(-1, sw, w // sw, sh, h // sh).astype("float32").mean((2, 4))
        return torch.from_numpy(pooled / 1000.0).transpose(1, 2).contiguous()
    x = torch.from_numpy(frames.astype("float32")).transpose(1, 2)  # (T, H, W)
    if size is not None:
        x = F.adaptive_avg_pool2d(x[:, None], size)[:, 0]
    return (x / 1000.0).contiguous()


def collate_utd_mhad(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pad a list of :class:`UTDMHAD` items to the batch's longest stream, per modality.

    Returns ``{"streams": {m: (B, T_max, ...)}, "times": {m: (B, T_max)}, "masks":
    {m: (B, T_max) bool, True = a real sample (keep)}, "label": (B,) long, "action",
    "subject", "trial": (B,) long}``. Padded steps are zeros and their times repeat the
    stream's last time stamp (so times stay non-decreasing for alignment).
    """
    if not samples:
        raise ValueError("collate_utd_mhad: expected at least one sample, got none.")
    names = list(samples[0]["streams"])
    out: dict[str, Any] = {"streams": {}, "times": {}, "masks": {}}
    for m in names:
        xs = [s["streams"][m] for s in samples]
        ts = [s["times"][m] for s in samples]
        longest = max(x.shape[0] for x in xs)
        batch = xs[0].new_zeros((len(xs), longest, *xs[0].shape[1:]))
        times = ts[0].new_zeros((len(xs), longest))
        mask = torch.zeros(len(xs), longest, dtype=torch.bool)
        for i, (x, t) in enumerate(zip(xs, ts)):
            n = x.shape[0]
            batch[i, :n] = x
            times[i, :n] = t
            times[i, n:] = t[-1]
            mask[i, :n] = True
        out["streams"][m], out["times"][m], out["masks"][m] = batch, times, mask
    for key in ("label", "action", "subject", "trial"):
        out[key] = torch.tensor([int(s[key]) for s in samples], dtype=torch.long)
    return out
