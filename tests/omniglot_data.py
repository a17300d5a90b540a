"""Staging the six real Omniglot alphabets shipped in tests/data/omniglot as the standard PNG tree."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ARRAYS = Path(__file__).parent / "data" / "omniglot" / "six-alphabets.npz"
SIDE = 105


def stage(destination: Path) -> Path:
    """Write ``destination/omniglot/<split>/<Alphabet>/characterNN/NNNN_DD.png`` for the 162 shipped characters
    (110 meta-train, 10 meta-val and 42 meta-test after the suite's split, x 4 rotations each); return that root."""
    root = destination / "omniglot"
    with np.load(ARRAYS) as arrays:
        images = np.unpackbits(arrays["images"], axis=-1, count=SIDE).astype(bool)
        characters = arrays["characters"]
    for drawings, name in zip(images, characters):
        character_id, split, alphabet, number = str(name).split(" ")
        folder = root / split / alphabet / f"character{number}"
        folder.mkdir(parents=True, exist_ok=True)
        for drawer, image in enumerate(drawings, start=1):
            Image.fromarray(image).save(folder / f"{character_id}_{drawer:02d}.png", optimize=True)
    return root
