"""Policy tests: make ``policy_testing`` (the shared helpers) importable from every subfolder."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
