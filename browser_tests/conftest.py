"""The browser tier's helpers live beside its tests (browser_tests/lab.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
