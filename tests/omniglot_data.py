"""Staging real Omniglot alphabets from ../shared/data/omniglot for the tests (never committed here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SHARED_OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
# 162 characters: 110 meta-train, 10 meta-val and 42 meta-test after the split (x 4 rotations each).
ALPHABETS = ("Latin", "Greek", "Korean", "Braille", "Angelic", "Atlantean")


def stage(destination: Path, alphabets: tuple[str, ...] = ALPHABETS) -> Path:
    """Rebuild the standard PNG tree of ``alphabets`` under ``destination/omniglot``; return that root."""
    if not (SHARED_OMNIGLOT / "stage.py").exists():
        pytest.skip(f"real Omniglot arrays not found in {SHARED_OMNIGLOT}")
    root = destination / "omniglot"
    subprocess.run([sys.executable, str(SHARED_OMNIGLOT / "stage.py"), str(SHARED_OMNIGLOT), str(root), *alphabets],
                   check=True)
    return root
