"""CUB-200-2011 few-shot classification (Wah et al. 2011) in the class split of Chen et al. (2019)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from bench_plugins.suites._images import BUDGETS_84PX, FewShotImageSuite, RaggedPool, class_folders

from bench.api import Setting
from bench.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

IMAGES_FOLDER = "images"
CACHE_FORMAT = "cub-chen-bilinear-scale115-centercrop-v1"


def chen_split(count: int) -> dict[str, list[int]]:
    """The class indices (of the class folders sorted by name) of each split, by Chen et al.'s rule
    (CloserLookFewShot, filelists/CUB/write_CUB_filelist.py): class i is a base (meta-train) class if i % 2 == 0,
    a validation class if i % 4 == 1, a novel (meta-test) class if i % 4 == 3."""
    return {"train": [i for i in range(count) if i % 2 == 0], "val": [i for i in range(count) if i % 4 == 1],
            "test": [i for i in range(count) if i % 4 == 3]}


def chen_resize(image: "Image.Image", size: int) -> "Image.Image":
    """Chen et al.'s test-time transform (data/datamgr.py, ``TransformLoader`` without augmentation): ``Scale`` to
    int(size x 1.15) square, bilinear (torchvision's default on a PIL image), then ``CenterCrop(size)``."""
    from PIL import Image

    scaled = int(size * 1.15)
    offset = round((scaled - size) / 2.0)  # torchvision's center_crop
    return image.resize((scaled, scaled), Image.BILINEAR).crop((offset, offset, offset + size, offset + size))


class CUB(FewShotImageSuite):
    """CUB-200-2011: 200 bird species, 11,788 images (41-60 per class); 5-way 1/5-shot, 84x84 RGB; Conv-4 (64 filters).

    Reads the official tarball's tree ``CUB_200_2011/images/<NNN.Class_name>/*.jpg`` from ``--data-dir``
    (``DIR/CUB_200_2011`` or ``DIR``) or $METABENCH_DATA_DIR. Split of Chen et al. (2019, "A Closer Look at
    Few-shot Classification"; CloserLookFewShot's filelists/CUB/write_CUB_filelist.py): the class folders sorted by
    name, class i to meta-train if i % 2 == 0, meta-val if i % 4 == 1, meta-test if i % 4 == 3, so 100/50/50 classes;
    a partial copy is split by the same rule. Classes keep their unequal image counts (a ``RaggedPool``); an episode
    draws its images without replacement within each class. Images are decoded as RGB and made 84x84 as Chen et al.'s
    test transform does (``chen_resize``: bilinear to 96x96, centre crop 84; no augmentation and no mean/std
    normalisation, as the other suites); within a class, files are taken in name order (Chen's script shuffles them,
    which sampling makes irrelevant). The decoded split is cached in $METABENCH_CACHE_DIR, keyed by every image's path,
    size and mtime. Conv-4 with 64 filters: Chen et al.'s ``Conv4`` (backbone.py, ``ConvNet``: 64 channels per
    block). Meta-train and meta-val episodes carry 16 query images per class (train.py: ``n_query = max(1,
    int(16 * test_n_way / train_n_way))``, 16 for 5-way), test episodes 15 (test.py: ``n_query = 15``).
    """

    name = "cub"
    ROOT_FOLDER = "CUB_200_2011"
    WAYS_SHOTS = ((5, 1), (5, 5))
    IMAGE_SIZE = 84
    CHANNELS = 3
    FILTERS = 64
    TRAIN_QUERY = 16
    LAYOUT = "images/<NNN.Class_name>/*.jpg (the class folders of CUB_200_2011.tgz)"
    SOURCE = ("CUB-200-2011 (Wah et al. 2011): CUB_200_2011.tgz from Caltech (CloserLookFewShot's "
              "filelists/CUB/download_CUB.sh fetches http://www.vision.caltech.edu/visipedia-data/CUB-200-2011/"
              "CUB_200_2011.tgz; learn2learn's mirror: https://zenodo.org/record/8000562/files/CUB_200_2011.tgz); "
              "untar it.")
    budgets: ClassVar[dict[str, dict[str, int]]] = BUDGETS_84PX

    @classmethod
    def budget(cls, profile: str, setting: Setting) -> dict[str, int]:
        """``paper``: Chen et al.'s meta-learning runs (train.py: ``stop_epoch`` 600 for 1-shot, 400 for 5-shot;
        data/datamgr.py: ``SetDataManager``'s 100 episodes per epoch), 60,000 and 40,000 tasks. Their MAML runs
        ``n_task`` (4) times as many epochs, one update per 4 tasks (train.py): a learner's ``paper_budget`` says so."""
        if profile == "paper":
            return {"meta_train_tasks": (600 if setting.shots == 1 else 400) * 100}
        return super().budget(profile, setting)

    def looks_like_root(self, path: Path) -> bool:
        return (path / IMAGES_FOLDER).is_dir()

    def load_pool(self, root: Path, split: str) -> RaggedPool:
        folders = class_folders(root / IMAGES_FOLDER)
        if not folders:
            raise DataError(f"cub: {root / IMAGES_FOLDER} holds no class folders; expected {self.LAYOUT}")
        chosen = [folders[index] for index in chen_split(len(folders))[split]]
        return self.folder_pool(root, split, chosen, CACHE_FORMAT, fit=chen_resize)
