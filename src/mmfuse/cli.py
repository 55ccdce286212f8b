"""The ``mmfuse`` command: ``mmfuse info``, ``mmfuse demo``, ``mmfuse bench utd-mhad``."""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
from collections.abc import Sequence

from . import demo

__all__ = ["main"]

_OPTIONAL = {
    "vision": ["cv2"],
    "audio": ["soundfile", "sounddevice"],
    "api": ["httpx"],
    "demo": ["sklearn", "matplotlib", "tqdm"],
}


def _info(_: argparse.Namespace) -> int:
    import torch

    import mmfuse

    print(f"mmfuse {mmfuse.__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cuda {'available: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}")
    for extra, modules in _OPTIONAL.items():
        have = [m for m in modules if importlib.util.find_spec(m) is not None]
        state = "installed" if len(have) == len(modules) else f'missing {sorted(set(modules) - set(have))}: pip install "mmfuse[{extra}]"'
        print(f"extra {extra:<7} {state}")
    return 0


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfuse", description="Multimodal fusion and alignment for PyTorch.")
    parser.add_argument("--version", action="version", version=f"mmfuse {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, devices and installed extras")
    info.set_defaults(func=_info)
    demo_parser = sub.add_parser(
        "demo", help="train and fuse an audio-visual digits task (CPU, no download)",
        description=demo.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(func=lambda args: demo.run(args, demo_parser))
    bench = sub.add_parser("bench", help="benchmarks on real data sets")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    utd = bench_sub.add_parser(
        "utd-mhad", help="every fusion level on UTD-MHAD (depth, skeleton, inertial)",
        description=_utd_description(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _utd_arguments(utd)
    utd.set_defaults(func=_bench_utd)
    return parser


def _utd_description() -> str:
    from .bench import utd_mhad

    return utd_mhad.DESCRIPTION or ""


def _utd_arguments(parser: argparse.ArgumentParser) -> None:
    from .bench import utd_mhad

    utd_mhad.add_arguments(parser)


def _bench_utd(args: argparse.Namespace) -> int:
    from .bench import utd_mhad

    return utd_mhad.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
