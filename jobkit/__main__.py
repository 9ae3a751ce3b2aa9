"""``python -m jobkit`` is the ``jobkit`` command line."""

from .cli import main

raise SystemExit(main())
