"""CIFAR-FS few-shot classification (Bertinetto et al. 2019), and the CIFAR-100 pickle reader it shares with FC100."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from bench_plugins.suites._images import FewShotImageSuite, ImagePool, RaggedPool, one_line, str_keys, unpickle_numpy

from bench.errors import DataError

if TYPE_CHECKING:
    import numpy as np

DATA_FOLDER = "data"
SPLITS_FOLDER = Path("splits") / "bertinetto"
FOLDER_FORMAT = "cifarfs-folder-32px-rgb-lanczos-v1"


class CifarPickleSuite(FewShotImageSuite):
    """A 32x32 CIFAR-100 few-shot suite read from MetaOptNet's pickles ``<PICKLE>`` (``{split}`` in train, val, test):
    each a pickled dict with ``data``, uint8 [N, 32, 32, 3], and ``labels``, one integer (a CIFAR-100 class) per image
    (MetaOptNet's data/CIFAR_FS.py and data/FC100.py read them so). Unpickled with the numpy-only unpickler (any other
    global is refused). Classes are the split's distinct labels in sorted order (MetaOptNet's ``labelIds``), each
    class's images in file order; a class may have any number of images (a ``RaggedPool``).

    Defaults of both suites: 5-way 1/5-shot; Conv-4 with 64 filters, the ``ProtoNetEmbedding`` (h_dim=z_dim=64) that
    MetaOptNet runs on CIFAR-FS and FC100 (models/protonet_embedding.py); 15 query images per class in every episode.
    Test: 15, as MetaOptNet's ``--val-query`` and test.py. Meta-train: neither paper fixes a per-class count (R2D2
    splits a batch of 240 images over way x (shot + query), fewshots/data/SetupEpisode.py; TADAM draws 32 query images
    per task, model/tadam.py ``--train_batch_size``; MetaOptNet trains with ``--train-query 6``), so 15, as the
    mini-ImageNet suite (MAML, ProtoNets).
    """

    WAYS_SHOTS = ((5, 1), (5, 5))
    IMAGE_SIZE = 32
    CHANNELS = 3
    FILTERS = 64
    TRAIN_QUERY = 15
    PICKLE: ClassVar[str]
    """The file name of a split's pickle, with ``{split}``."""
    budgets: ClassVar[dict[str, dict[str, int]]] = {  # as mini-ImageNet's
        "smoke": {"meta_train_tasks": 8, "test_episodes": 3},
        "quick": {"meta_train_tasks": 800, "test_episodes": 100},
    }

    def pickle_path(self, root: Path, split: str) -> Path:
        return root / self.PICKLE.format(split=split)

    def looks_like_root(self, path: Path) -> bool:
        return any(self.pickle_path(path, split).is_file() for split in ("train", "val", "test"))

    def load_pool(self, root: Path, split: str) -> ImagePool:
        path = self.pickle_path(root, split)
        if not path.is_file():
            raise DataError(f"{self.name}: {root} has no '{split}' split; expected {path.name}")
        return self.pool_from_pickle(path)

    def pool_from_pickle(self, path: Path) -> RaggedPool:
        """A split pickle's images by class."""
        import numpy as np

        expected = f"a pickled dict with data (uint8 [N, {self.IMAGE_SIZE}, {self.IMAGE_SIZE}, 3]) and labels"
        data = unpickle_numpy(path, self.name, expected)
        if not isinstance(data, dict) or not {"data", "labels"} <= str_keys(data).keys():
            raise DataError(f"{self.name}: {path} is not a CIFAR few-shot pickle; expected {expected}")
        images, labels = str_keys(data)["data"], np.asarray(str_keys(data)["labels"])
        size = (self.IMAGE_SIZE, self.IMAGE_SIZE, self.CHANNELS)
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != size:
            found = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
            raise DataError(f"{self.name}: {path}: data is {found}; expected uint8 [N, {', '.join(map(str, size))}]")
        if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
            raise DataError(f"{self.name}: {path}: labels is {labels.dtype} {list(labels.shape)}; expected one integer "
                            f"per image ({len(images)})")
        return RaggedPool.from_labels(images, self.class_indices(labels))

    @staticmethod
    def class_indices(labels: "np.ndarray") -> "np.ndarray":
        """Each image's class: the rank of its label among the sorted distinct labels."""
        import numpy as np

        return np.unique(labels, return_inverse=True)[1].reshape(-1)


class CIFARFS(CifarPickleSuite):
    """CIFAR-FS: CIFAR-100's 100 classes x 600 images split 64/16/20 (Bertinetto et al. 2019), 32x32 RGB.

    Reads from ``--data-dir`` (``DIR/CIFAR_FS``, ``DIR/cifar100`` or ``DIR``) or $METABENCH_DATA_DIR, per split:
    MetaOptNet's ``CIFAR_FS_{train,val,test}.pickle`` (``CifarPickleSuite``), or else the original CIFAR-FS download
    (R2D2's README; what learn2learn unpacks): ``data/<class>/*.png`` with the class lists
    ``splits/bertinetto/{train,val,test}.txt`` (a class name per line, classes taken in sorted order); those PNGs are
    decoded as RGB (Lanczos-resized to 32x32 only where they are another size) and cached in $METABENCH_CACHE_DIR,
    keyed by every file's path, size and mtime. The class split is the files'; the counts are not enforced (tests use
    tiny copies). ``paper`` profile: no budget of its own, the profile's default applies — Bertinetto et al. train for
    up to 1,200 epochs of 100 episodes with early stopping (scripts/train/conf/fewshots.yaml: ``train.epochs``,
    ``data.train_episodes``, ``train.patience`` 200), not a fixed number of tasks.
    """

    name = "cifarfs"
    ROOT_FOLDER = "CIFAR_FS"
    OTHER_FOLDERS = ("cifar100",)
    PICKLE = "CIFAR_FS_{split}.pickle"
    LAYOUT = ("CIFAR_FS_{train,val,test}.pickle, or data/<class>/*.png with the class lists "
              "splits/bertinetto/{train,val,test}.txt")
    SOURCE = ("CIFAR-FS (Bertinetto et al. 2019), in either form: MetaOptNet's CIFAR_FS_{train,val,test}.pickle "
              "(the CIFAR-FS link of https://github.com/kjunelee/MetaOptNet's README; unzip it), or the original "
              "download linked from https://github.com/bertinetto/r2d2's README (cifar100/data/<class>/*.png with "
              "cifar100/splits/bertinetto/*.txt; learn2learn's mirror: https://zenodo.org/record/7978538/files/"
              "cifar100.zip); unzip it.")

    def looks_like_root(self, path: Path) -> bool:
        return super().looks_like_root(path) or (path / SPLITS_FOLDER).is_dir()

    def load_pool(self, root: Path, split: str) -> ImagePool:
        pickled, listed = self.pickle_path(root, split), root / SPLITS_FOLDER / f"{split}.txt"
        if pickled.is_file():
            return self.pool_from_pickle(pickled)
        if listed.is_file():
            return self.folder_pool(root, split, self.listed_folders(root, listed), FOLDER_FORMAT)
        raise DataError(f"cifarfs: {root} has no '{split}' split; expected {pickled.name}, or "
                        f"{SPLITS_FOLDER / listed.name} with {DATA_FOLDER}/<class>/*.png")

    def listed_folders(self, root: Path, listed: Path) -> list[Path]:
        """The class folders a split file names, sorted by name; DataError for one that does not exist."""
        try:
            lines = listed.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"cifarfs: cannot read {listed}: {one_line(error)}") from None
        folders = {}
        for number, line in enumerate(lines, start=1):
            if line.strip():
                folder = root / DATA_FOLDER / line.strip()
                if not folder.is_dir():
                    raise DataError(f"cifarfs: {listed} line {number} names class {line.strip()!r}, but {folder} "
                                    f"does not exist")
                folders[line.strip()] = folder
        if not folders:
            raise DataError(f"cifarfs: {listed} names no classes")
        return [folders[name] for name in sorted(folders)]
