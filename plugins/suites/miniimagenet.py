"""mini-ImageNet few-shot classification (Vinyals et al. 2016) in the split of Ravi & Larochelle (2017)."""
from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from bench_plugins.suites._images import (
    BUDGETS_84PX,
    ClassPool,
    FewShotImageSuite,
    cached_images,
    decode_rgb,
    one_line,
    unpickle_numpy,
)

from bench.api import Setting
from bench.errors import DataError

if TYPE_CHECKING:
    import numpy as np

PICKLE_NAMES = {"train": "mini-imagenet-cache-train.pkl", "val": "mini-imagenet-cache-validation.pkl",
                "test": "mini-imagenet-cache-test.pkl"}
CSV_NAMES = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
CSV_HEADER = ["filename", "label"]
IMAGES_FOLDER = "images"
CACHE_FORMAT = "miniimagenet-84px-rgb-lanczos-v1"


def read_pickle(path: Path) -> dict:
    """A ``{"image_data": ..., "class_dict": ...}`` cache, unpickled with numpy globals only."""
    expected = "a pickled dict with image_data and class_dict"
    data = unpickle_numpy(path, "miniimagenet", expected)
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= data.keys():
        raise DataError(f"miniimagenet: {path} is not a mini-ImageNet cache; expected {expected}")
    return data


def _same_count(counts: dict[str, int], source: Path, what: str) -> int:
    """The images per class (the most common count); DataError naming a class that differs."""
    expected = Counter(counts.values()).most_common(1)[0][0]
    for name, count in counts.items():
        if count != expected:
            raise DataError(f"miniimagenet: class {name} in {source} has {count} {what}; the other classes have "
                            f"{expected} (every class needs the same number)")
    return expected


class MiniImageNet(FewShotImageSuite):
    """mini-ImageNet: 100 ImageNet classes x 600 images, 84x84 RGB; 5-way 1/5-shot; Conv-4 (32 filters).

    Reads either layout from ``--data-dir`` (``DIR/miniimagenet`` or ``DIR``) or $METABENCH_DATA_DIR,
    checked per split in this order:

    1. the pickle caches learn2learn and others use, ``mini-imagenet-cache-{train,validation,test}.pkl``,
       each a dict ``{"image_data": uint8 [N, 84, 84, 3], "class_dict": {class: [indices]}}``. They are
       unpickled with a restricted unpickler that allows only the numpy array globals, so a tampered
       file cannot run code: any other global is refused with an error;
    2. ``images/`` with the Ravi & Larochelle split files ``train.csv``, ``val.csv``, ``test.csv``
       (header ``filename,label``); each image is decoded with Pillow as RGB and Lanczos-resized to
       84x84 where needed. The decoded split is cached in $METABENCH_CACHE_DIR (default
       ~/.cache/metabench), keyed by the CSV and every image's path, size and mtime, verified by a
       checksum on load and rebuilt when missing, stale or corrupt.

    Split (Ravi & Larochelle): 64 meta-train, 16 meta-validation and 20 meta-test classes, 600 images
    each; classes are sorted by name, and every class of a split must have the same number of
    images. Meta-train and meta-val tasks carry 15 query images per class (``TRAIN_QUERY``: MAML's main.py
    trains on ``DataGenerator(update_batch_size+15)``; CAVIA's ``--k_query`` and ProtoNets' mini-ImageNet
    episodes are 15 too), test tasks 15 (MAML's code tests with K; 15 is what the rest of the field
    reports). No copy of mini-ImageNet exists where this suite was written: the loader is tested on tiny
    generated data sets in both layouts.
    """

    name = "miniimagenet"
    ROOT_FOLDER = "miniimagenet"
    WAYS_SHOTS = ((5, 1), (5, 5))
    IMAGE_SIZE = 84
    CHANNELS = 3
    FILTERS = 32
    TRAIN_QUERY = 15
    budgets: ClassVar[dict[str, dict[str, int]]] = BUDGETS_84PX

    @classmethod
    def budget(cls, profile: str, setting: Setting) -> dict[str, int]:
        """``paper``: MAML's 60,000 iterations (cbfinn/maml main.py's usage lines) at the paper's meta-batch of the
        setting, 4 tasks for 1-shot and 2 for 5-shot (appendix A.1)."""
        if profile == "paper":
            return {"meta_train_tasks": 60_000 * (4 if setting.shots == 1 else 2)}
        return super().budget(profile, setting)

    LAYOUT = ("mini-imagenet-cache-{train,validation,test}.pkl, or images/ with the split files "
              "train.csv, val.csv, test.csv")
    SOURCE = ("mini-ImageNet (Vinyals et al. 2016) in Ravi & Larochelle's split, in either form: the pickle caches "
              "mini-imagenet-cache-{train,validation,test}.pkl that learn2learn downloads "
              "(https://zenodo.org/record/7978538), or the 60,000 images in images/ with Ravi & Larochelle's "
              "train.csv, val.csv and test.csv (https://github.com/twitter/meta-learning-lstm, data/miniImagenet/).")

    def looks_like_root(self, path: Path) -> bool:
        return any((path / name).is_file() for name in (*PICKLE_NAMES.values(), *CSV_NAMES.values()))

    def load_pool(self, root: Path, split: str) -> ClassPool:
        pickled, listed = root / PICKLE_NAMES[split], root / CSV_NAMES[split]
        if pickled.is_file():
            images = self.images_from_pickle(pickled)
        elif listed.is_file():
            images = self.images_from_csv(root, listed)
        else:
            raise DataError(f"miniimagenet: {root} has no '{split}' split; expected {pickled.name}, "
                            f"or {listed.name} with {IMAGES_FOLDER}/")
        return ClassPool(images, rotations=1)

    def images_from_pickle(self, path: Path) -> "np.ndarray":
        """uint8 [class, image, 84, 84, 3], classes sorted by name, images in class_dict order."""
        import numpy as np

        data = read_pickle(path)
        images, class_dict = data["image_data"], data["class_dict"]
        size = (self.IMAGE_SIZE, self.IMAGE_SIZE, self.CHANNELS)
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != size:
            found = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
            raise DataError(f"miniimagenet: {path}: image_data is {found}; "
                            f"expected uint8 [N, {', '.join(map(str, size))}]")
        if not isinstance(class_dict, dict) or not class_dict:
            raise DataError(f"miniimagenet: {path}: class_dict is empty or not a dict; expected {{class: [indices]}}")
        names = sorted(class_dict, key=str)
        indices = {}
        for name in names:
            try:
                index = np.asarray(class_dict[name], dtype=np.int64).reshape(-1)
            except (TypeError, ValueError):
                raise DataError(f"miniimagenet: {path}: class {name} lists no integer indices") from None
            if index.size and (index.min() < 0 or index.max() >= len(images)):
                raise DataError(f"miniimagenet: {path}: class {name} indexes past image_data's {len(images)} images")
            indices[name] = index
        count = _same_count({name: len(index) for name, index in indices.items()}, path, "images")
        if count == 0:
            raise DataError(f"miniimagenet: {path}: the classes list no images")
        return images[np.stack([indices[name] for name in names])]

    def images_from_csv(self, root: Path, path: Path) -> "np.ndarray":
        """uint8 [class, image, 84, 84, 3] decoded from ``images/``, classes sorted by name, CSV order within."""
        classes = self.read_split_csv(root, path)
        files = [file for name in sorted(classes) for file in classes[name]]
        digest = hashlib.sha256(f"{CACHE_FORMAT}|{self.IMAGE_SIZE}\n".encode())
        digest.update(path.read_bytes())
        for file in files:
            stat = file.stat()
            digest.update(f"{file.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        shape = (len(classes), len(files) // len(classes), self.IMAGE_SIZE, self.IMAGE_SIZE, self.CHANNELS)
        return cached_images(f"miniimagenet-{path.stem}-{digest.hexdigest()[:24]}",
                             lambda: self.decode(files).reshape(shape), fits=lambda images: images.shape == shape)

    def read_split_csv(self, root: Path, path: Path) -> dict[str, list[Path]]:
        """Each class's image files, in CSV order; DataError for a bad header, row or missing file."""
        classes: dict[str, list[Path]] = {}
        try:
            with path.open(newline="", encoding="utf-8") as stream:
                rows = list(csv.reader(stream))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise DataError(f"miniimagenet: cannot read {path}: {one_line(error)}") from None
        if not rows or [cell.strip() for cell in rows[0]] != CSV_HEADER:
            raise DataError(f"miniimagenet: {path} does not start with the header '{','.join(CSV_HEADER)}'")
        for line, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DataError(f"miniimagenet: {path} line {line}: expected 'filename,label', got {','.join(row)!r}")
            file = root / IMAGES_FOLDER / row[0].strip()
            if not file.is_file():
                raise DataError(f"miniimagenet: {path} line {line} names {file}, which does not exist")
            classes.setdefault(row[1].strip(), []).append(file)
        if not classes:
            raise DataError(f"miniimagenet: {path} lists no images")
        _same_count({name: len(files) for name, files in classes.items()}, path, "images")
        return classes

    def decode(self, files: list[Path]) -> "np.ndarray":
        """The images as uint8 [N, 84, 84, 3]: RGB, Lanczos-resized where they are another size."""
        return decode_rgb(files, self.IMAGE_SIZE, self.name)
