"""Every code block of README.md and docs/*.md runs.

Python blocks run as written, a page's blocks in order in one namespace (as a reader follows the
page), in a temporary folder. What a block needs from outside the library is provided as the
reader would have it: ``clip.mp4``/``clip.wav`` files next to it; where the page uses live
devices (camera 0, the default microphone), which test machines lack, the same loaders read
those files instead; and packages that are not mmfuse dependencies (``torchvision``, a local
``sentence-transformers`` model) are replaced by small stand-ins of the same interface when
they are not installed.

Shell blocks: ``pip install`` names only extras that exist, every script exists, and every
``--flag`` a command passes is one its ``--help`` lists (running them here would take minutes;
``.ci/run`` runs ``mmfuse demo`` itself).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:python|mmfuse|pip)\b")


def blocks(page: Path, *langs: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(page.read_text()) if m.group(1) in langs]


def shell_blocks(page: Path) -> list[str]:
    """Blocks marked bash/sh, and unmarked blocks made only of commands."""
    out = blocks(page, "bash", "sh", "shell", "console")
    for code in blocks(page, ""):
        lines = [line for line in code.splitlines() if line.strip()]
        if lines and all(COMMAND.match(line) for line in lines):
            out.append(code)
    return out


PY_PAGES = [p for p in PAGES if blocks(p, "python")]
SHELL_PAGES = [p for p in PAGES if shell_blocks(p)]


def test_the_pages_have_blocks() -> None:
    assert blocks(README, "python")
    assert len(PY_PAGES) >= 8 and len(SHELL_PAGES) >= 4


# -- what the blocks need from outside the library ----------------------------------------------
def _write_media(folder: Path) -> None:
    """``clip.mp4``: 2 s of 10 fps 160 x 120 video; ``clip.wav``: 2 s of a 16 kHz tone."""
    cv2 = pytest.importorskip("cv2")
    sf = pytest.importorskip("soundfile")
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0,
                             (160, 120))
    for i in range(20):
        writer.write(np.full((120, 160, 3), 10 * i, np.uint8))
    writer.release()
    t = np.arange(32000) / 16000
    sf.write(str(folder / "clip.wav"), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)


def _files_for_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Camera 0 and the default microphone read clip.mp4 and clip.wav."""
    import mmfuse.perception as perception

    camera_cls, audio_cls = perception.CameraLoader, perception.AudioFileLoader

    def camera(source: object, **kw: object) -> object:
        return camera_cls("clip.mp4" if isinstance(source, int) else source, **kw)  # type: ignore[arg-type]

    def microphone(device: object = None, *, sample_rate: int = 16000, block_size: int = 1600,
                   **kw: object) -> object:
        assert sample_rate == 16000  # what clip.wav holds
        return audio_cls("clip.wav", block_size=block_size)

    monkeypatch.setattr(perception, "CameraLoader", camera)
    monkeypatch.setattr(perception, "MicrophoneLoader", microphone)


class _SentenceModel(nn.Module):
    """Stands in for a sentence-transformers model (384-d embeddings from byte counts)."""

    def __init__(self, name: str, device: str | None = None, **kw: object) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 384)

    def encode(self, texts: list[str], convert_to_tensor: bool = False) -> torch.Tensor:
        return self.proj(torch.tensor([[len(t), t.count(" "), 1.0] for t in texts]))


def _stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    # a SentenceTransformer that loads "/path/to/..." (the page's placeholder for a local model)
    fake = types.ModuleType("sentence_transformers")
    fake.SentenceTransformer = _SentenceModel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake)
    if importlib.util.find_spec("torchvision") is None:
        models = types.ModuleType("torchvision.models")

        def resnet18(weights: object = None) -> nn.Module:
            net = nn.Sequential(nn.Conv2d(3, 512, 7, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            net.fc = nn.Linear(512, 1000)  # type: ignore[assignment]
            return net

        models.resnet18 = resnet18  # type: ignore[attr-defined]
        tv = types.ModuleType("torchvision")
        tv.models = models  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "torchvision", tv)
        monkeypatch.setitem(sys.modules, "torchvision.models", models)


@pytest.mark.parametrize("page", PY_PAGES, ids=[p.name for p in PY_PAGES])
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # blocks may write files
    code = "\n".join(blocks(page, "python"))
    if "clip.mp4" in code or "CameraLoader(0" in code:
        _write_media(tmp_path)
        _files_for_devices(monkeypatch)
    _stand_ins(monkeypatch)
    namespace: dict[str, object] = {"__name__": "docs"}
    for i, block in enumerate(blocks(page, "python")):
        exec(compile(block, f"{page.name}, python block {i}", "exec"), namespace)


# -- shell blocks ---------------------------------------------------------------------------------
def _commands() -> list[tuple[str, list[str]]]:
    out = []
    for page in SHELL_PAGES:
        for code in shell_blocks(page):
            for line in code.splitlines():
                line = line.split("  #", 1)[0].strip()
                for command in filter(None, (c.strip() for c in line.split("&&"))):
                    words = shlex.split(command)
                    while words and re.match(r"^[A-Z_]+=", words[0]):  # env assignments
                        words = words[1:]
                    out.append((page.name, words))
    return out


COMMANDS = _commands()


def test_pip_installs_name_existing_extras() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^(\w+) = ", section, flags=re.M))
    assert {"vision", "audio", "api", "demo", "all"} <= extras
    named = [m for _, words in COMMANDS if words[:2] == ["pip", "install"]
             for w in words[2:] for m in re.findall(r"\[([\w,]+)\]", w)]
    assert named
    for group in named:
        assert set(group.split(",")) <= extras, group


def _runnable() -> list[tuple[str, list[str]]]:
    keep, seen = [], set()
    for page, words in COMMANDS:
        if words[0] == "pip" or words[:3] == ["python", "-m", "pytest"]:
            continue  # checked above / the test suite itself
        if words[0] == "mmfuse":
            words = [sys.executable, "-m", "mmfuse", *words[1:]]
        elif words[:3] == ["python", "-m", "mmfuse"]:
            words = [sys.executable, *words[1:]]
        else:
            assert words[0] == "python", words
            words = [sys.executable, *words[1:]]
        if tuple(words) not in seen:  # the same command on several pages is checked once
            seen.add(tuple(words))
            keep.append((page, words))
    return keep


RUNNABLE = _runnable()


@pytest.mark.slow  # each --help imports torch
@pytest.mark.parametrize(("page", "words"), RUNNABLE,
                         ids=[f"{p}:{' '.join(w[1:3])}" for p, w in RUNNABLE])
def test_commands_exist_and_take_their_flags(page: str, words: list[str]) -> None:
    script = words[1]
    if script != "-m":
        assert (ROOT / script).is_file(), f"{page}: {script} does not exist"
    # the command up to its subcommand, then --help
    head = words[:2]
    if script == "-m":  # the module and its subcommands (``mmfuse bench utd-mhad``)
        end = 3
        while end < len(words) and not words[end].startswith("-"):
            end += 1
        head = words[:end]
    r = subprocess.run([*head, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in (w.split("=", 1)[0] for w in words if w.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", r.stdout), f"{page}: {flag} not in {head} --help"
