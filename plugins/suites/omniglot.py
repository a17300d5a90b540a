"""Omniglot few-shot classification (Lake et al. 2015) in the protocol of MAML and matching networks."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from bench_plugins.suites._images import ClassPool, FewShotImageSuite, cached_images

from bench.api import Setting
from bench.errors import DataError

if TYPE_CHECKING:
    import numpy as np

URL_ENV = "METABENCH_OMNIGLOT_URL"
OFFICIAL_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
PARTS = ("images_background", "images_evaluation")
ZIP_MD5 = {"images_background": "68d2efa1b9178cc56df9314c21c6e718", "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811"}
CACHE_FORMAT = "omniglot-28px-lanczos-inverted-v1"


def character_folders(root: Path) -> list[Path]:
    """Every ``<part>/<Alphabet>/characterNN`` folder, in a fixed (sorted) order."""
    return sorted(folder for part in PARTS if (root / part).is_dir()
                  for folder in (root / part).glob("*/*") if folder.is_dir())


def fingerprint(folders: list[Path], root: Path) -> str:
    """A key of the source files: every PNG's path, size and modification time."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for folder in folders:
        for png in sorted(folder.glob("*.png")):
            stat = png.stat()
            digest.update(f"{png.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode(folders: list[Path], size: int) -> "np.ndarray":
    """All drawings as uint8 [character, drawing, size, size], strokes bright (1 - ink), Lanczos-resized."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    characters = []
    for folder in folders:
        pngs = sorted(folder.glob("*.png"))
        if not pngs:
            raise DataError(f"omniglot: {folder} holds no PNG drawings")
        if characters and len(pngs) != len(characters[0]):
            raise DataError(f"omniglot: {folder} holds {len(pngs)} drawings; the others hold {len(characters[0])}")
        drawings = []
        for png in pngs:
            try:
                with Image.open(png) as image:
                    drawings.append(np.asarray(image.convert("L").resize((size, size), Image.LANCZOS)))
            except (OSError, UnidentifiedImageError, SyntaxError) as error:
                raise DataError(f"omniglot: cannot decode {png}: {error}") from None
        characters.append(drawings)
    return 255 - np.asarray(characters, dtype=np.uint8)


class Omniglot(FewShotImageSuite):
    """Omniglot: 1,623 handwritten characters x 4 rotations, 28x28; 5/20-way 1/5-shot; Conv-4 (64 filters).

    Reads the standard tree ``ROOT/images_background/<Alphabet>/characterNN/*.png`` (and
    ``images_evaluation``), from ``--data-dir`` (``DIR/omniglot`` or ``DIR``) or $METABENCH_DATA_DIR.
    Split sizes of MAML and matching networks: all characters, sorted by path, shuffled with numpy seed 1;
    the first 1,100 for meta-training, the next 100 for meta-validation (together the standard 1,200),
    the remaining 423 for meta-testing (MAML's code shuffles ``os.listdir`` order with Python's
    ``random.seed(1)``, so its exact characters cannot be reproduced). Each character rotated by
    0/90/180/270 degrees gives four classes (``num_classes``, what ``Episode.classes`` indexes); an
    episode holds distinct characters, each at a uniformly drawn rotation, as MAML's data_generator.py
    samples them. With fewer characters on disk (a partial copy) the same fractions apply. Meta-train
    and meta-val tasks carry K query images per class (MAML's main.py: ``DataGenerator(update_batch_size*2)``),
    test tasks 15 (MAML's code tests with K too). The decoded 28x28 images are cached in
    $METABENCH_CACHE_DIR (default ~/.cache/metabench), keyed by every PNG's path, size and mtime,
    verified by a checksum on load and rebuilt when missing, stale or corrupt.
    """

    name = "omniglot"
    ROOT_FOLDER = "omniglot"
    WAYS_SHOTS = ((5, 1), (5, 5), (20, 1), (20, 5))
    IMAGE_SIZE = 28
    CHANNELS = 1
    FILTERS = 64
    SPLIT_SEED = 1
    STANDARD = {"train": 1100, "val": 100}
    TOTAL_CHARACTERS = 1623
    budgets: ClassVar[dict[str, dict[str, int]]] = {
        "smoke": {"meta_train_tasks": 64, "test_episodes": 5},
        # 100 MAML iterations of 32 tasks: about 3 minutes for maml 5-way 1-shot on a 2-core CPU
        "quick": {"meta_train_tasks": 3_200, "test_episodes": 200},
    }

    @classmethod
    def budget(cls, profile: str, setting: Setting) -> dict[str, int]:
        """``paper``: MAML's 60,000 iterations (cbfinn/maml main.py's usage lines) at its meta-batch of the setting,
        32 tasks for 5-way and 16 for 20-way."""
        if profile == "paper":
            return {"meta_train_tasks": 60_000 * (32 if setting.ways == 5 else 16)}
        return super().budget(profile, setting)

    LAYOUT = "images_background/<Alphabet>/characterNN/*.png (and images_evaluation/...)"
    SOURCE = (f"Omniglot (Lake et al. 2015): images_background.zip and images_evaluation.zip from {OFFICIAL_URL}/; "
              "unzip both.")

    def looks_like_root(self, path: Path) -> bool:
        return any((path / part).is_dir() for part in PARTS)

    def all_images(self, root: Path) -> "np.ndarray":
        """Every character's drawings, decoded once and then read from the cache."""
        folders = character_folders(root)
        if not folders:
            raise DataError(f"omniglot: {root} has no character folders; expected {self.LAYOUT}")
        return cached_images(f"omniglot-{fingerprint(folders, root)[:24]}", lambda: decode(folders, self.IMAGE_SIZE),
                             fits=lambda images: images.shape[0] == len(folders))

    def split_indices(self, count: int) -> dict[str, "np.ndarray"]:
        import numpy as np

        order = np.random.default_rng(self.SPLIT_SEED).permutation(count)
        scale = count / self.TOTAL_CHARACTERS
        train = round(self.STANDARD["train"] * scale)
        val = round(self.STANDARD["val"] * scale)
        return {"train": order[:train], "val": order[train : train + val], "test": order[train + val :]}

    _decoded: ClassVar[dict[str, "np.ndarray"]] = {}

    def load_pool(self, root: Path, split: str) -> ClassPool:
        key = str(root.resolve())
        if key not in self._decoded:  # the three splits share one decode (or cache read) per root
            self._decoded[key] = self.all_images(root)
        images = self._decoded[key]
        indices = self.split_indices(images.shape[0])[split]
        return ClassPool(images[indices], rotations=4)

    @classmethod
    def download(cls, target: Path) -> None:
        """Fetch the official zips (MD5-verified) and unpack them into ``target/omniglot``."""
        from http.client import (
            HTTPException,  # e.g. IncompleteRead: a connection cut mid-transfer
        )

        base = os.environ.get(URL_ENV, OFFICIAL_URL).rstrip("/")
        destination = target / cls.ROOT_FOLDER
        destination.mkdir(parents=True, exist_ok=True)
        for part in PARTS:
            url = f"{base}/{part}.zip"
            with tempfile.TemporaryDirectory() as scratch:
                archive = Path(scratch) / f"{part}.zip"
                try:
                    with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as stream:
                        shutil.copyfileobj(response, stream)
                except (urllib.error.URLError, HTTPException, OSError) as error:
                    raise DataError(f"omniglot: cannot download {url}: {getattr(error, 'reason', error)}. "
                                    f"Without internet, copy the standard tree into {destination} "
                                    f"({cls.LAYOUT})") from None
                md5 = hashlib.md5(archive.read_bytes()).hexdigest()
                if md5 != ZIP_MD5[part]:
                    raise DataError(f"omniglot: {url} has MD5 {md5}, expected {ZIP_MD5[part]}; not unpacked")
                with zipfile.ZipFile(archive) as zipped:
                    zipped.extractall(destination)
