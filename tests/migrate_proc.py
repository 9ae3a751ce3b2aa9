"""The ``jobkit`` command line with the test-only revisions (tests/migrations/versions) added.

Usage: python migrate_proc.py [--wait-for FILE] JOBKIT-ARGS...

``--wait-for FILE``: after importing jobkit, write FILE.ready.PID and wait until FILE exists, so that several
processes reach the database at the same moment.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import jobkit.schema
from jobkit.cli import main

EXTRA = str(Path(__file__).resolve().parent / "migrations" / "versions")

if __name__ == "__main__":
    jobkit.schema.VERSION_LOCATIONS = (*jobkit.schema.VERSION_LOCATIONS, EXTRA)
    args = sys.argv[1:]
    if args[:1] == ["--wait-for"]:
        go, args = args[1], args[2:]
        Path(f"{go}.ready.{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.005)
    sys.exit(main(args))
