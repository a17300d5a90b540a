"""A test-only cross-domain target for Omniglot models: the UCI handwritten digits that scikit-learn ships."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bench_plugins.suites._images import ClassPool, FewShotImageSuite

from bench.errors import DataError

if TYPE_CHECKING:
    import numpy as np

SOURCE_LEVELS = 16
"""The digits' grey levels run 0..16 (4x4 blocks of a 32x32 bitmap counted, UCI's optdigits preprocessing)."""


def upsampled_digits(size: int) -> "np.ndarray":
    """scikit-learn's 1,797 digits as uint8 ``[digit, example, size, size]``, ink bright as Omniglot's strokes,
    Lanczos-resized from 8x8; every digit keeps its first ``min count`` (174) examples in the data set's order, so
    that the classes are equally large."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / SOURCE_LEVELS)).astype(np.uint8)
    per_class = min(int((digits.target == digit).sum()) for digit in range(10))
    pool = np.empty((10, per_class, size, size), dtype=np.uint8)
    for digit in range(10):
        for example, image in enumerate(images[digits.target == digit][:per_class]):
            pool[digit, example] = np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))
    return pool


class Digits(FewShotImageSuite):
    """UCI handwritten digits as scikit-learn ships them, upsampled to 28x28: test-only, for Omniglot → digits.

    Alpaydin & Kaynak 1998, scikit-learn's ``load_digits``: 5-way episodes in Omniglot's 28x28 greyscale, a real
    cross-domain test for models meta-trained on Omniglot (``bench run --suites omniglot --test-suites digits``).
    Test split only (10 classes, 174 images each);
    settings 5-way 1-shot and 5-way 5-shot with 15 queries per class, as Omniglot's; its Conv-4 is Omniglot's, for
    the conformance kit (a cross-domain cell uses the model meta-trained on the other suite)."""

    name = "digits"
    test_only = True
    in_all = False
    requires = ("sklearn",)
    install_hint = "pip install scikit-learn"
    WAYS_SHOTS = ((5, 1), (5, 5))
    IMAGE_SIZE = 28
    CHANNELS = 1
    FILTERS = 64
    ROOT_FOLDER = ""
    LAYOUT = "nothing: scikit-learn ships the images"

    def looks_like_root(self, path: Path) -> bool:
        """No data folder: the images come with scikit-learn."""
        return False

    def load_pool(self, root: Path | None, split: str) -> ClassPool:
        return ClassPool(upsampled_digits(self.IMAGE_SIZE))

    def pool(self, split: str) -> ClassPool:
        """The test split's images (built once per process); another split is refused: the suite is test-only."""
        if split != "test":
            raise DataError(f"suite '{self.name}' is test-only: it has no '{split}' split (use it with --test-suites)")
        key = ("scikit-learn", f"{self.name}:{split}")
        if key not in self._pools:
            self._pools[key] = self.load_pool(None, split)
        return self._pools[key]

    def prepare(self) -> None:
        self.pool("test")
