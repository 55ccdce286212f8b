"""``python -m mmfuse``: the same as the ``mmfuse`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
