"""``python -m rankbias``: the CLI, also from a source tree (``PYTHONPATH=src``) with no install."""

from rankbias.cli import main

raise SystemExit(main())
