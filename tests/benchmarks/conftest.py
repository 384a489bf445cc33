"""The benchmarks are not installed (#20.6): their tests import them from the checkout, as
``python -m benchmarks.X`` run from the repository root does."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
