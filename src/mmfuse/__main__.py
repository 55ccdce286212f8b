"""``python -m mmfuse``: the same as the ``mmfuse`` command."""

from .cli import main

raise SystemExit(main())
