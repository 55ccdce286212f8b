"""UTD-MHAD: every fusion level on a real benchmark (depth, skeleton, inertial sensor).

The same code as ``mmfuse bench utd-mhad``: trains single-sensor models, data-level fusion
(inertial samples aligned onto the Kinect frame times), feature-level fusions with and without
``ModalityDropout``, sensor-pair models and decision-level fusion on the cross-subject protocol
(subjects 1, 3, 5, 7 train; 2, 4, 6, 8 test), and tests each with every sensor and every pair
of sensors absent. Reads the data from ``--data-dir`` (by default ``<repo>/../shared/data/utd-mhad``).

    python examples/utd_mhad.py --seeds 0 1 2 --out utd-out   # the full benchmark
    python examples/utd_mhad.py --quick --seeds 0              # < 1 minute
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmfuse.bench import utd_mhad

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utd-mhad"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=utd_mhad.DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    utd_mhad.add_arguments(parser)
    parser.set_defaults(data_dir=str(DEFAULT_DATA_DIR))
    return utd_mhad.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
