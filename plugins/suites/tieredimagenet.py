"""tieredImageNet few-shot classification (Ren et al. 2018) in its authors' split."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from bench_plugins.suites._images import (
    BUDGETS_84PX,
    FewShotImageSuite,
    RaggedPool,
    cached_images,
    class_folders,
    decode_rgb,
    source_key,
    str_keys,
    unpickle_numpy,
)

from bench.api import Setting
from bench.errors import DataError

if TYPE_CHECKING:
    import numpy as np

PNG_PICKLE = "{split}_images_png.pkl"
LABELS_PICKLE = "{split}_labels.pkl"
LABEL_KEY = "label_specific"
PICKLE_FORMAT = "tieredimagenet-png-pickle-rgb-v1"
FOLDER_FORMAT = "tieredimagenet-folder-84px-rgb-lanczos-v1"


class TieredImageNet(FewShotImageSuite):
    """tieredImageNet: 608 ImageNet classes in 34 categories; 5-way 1/5-shot, 84x84 RGB; Conv-4 (64 filters).

    Reads either form from ``--data-dir`` (``DIR/tiered-imagenet`` or ``DIR``) or $METABENCH_DATA_DIR, checked per
    split in this order:

    1. the files of Ren et al.'s tarball (few-shot-ssl-public's README; learn2learn downloads the same):
       ``{train,val,test}_images_png.pkl``, each a pickled list of PNG-encoded 84x84 images (uint8 arrays of the PNG
       bytes, written by fewshot/data/compress_tiered_imagenet.py), and ``{split}_labels.pkl``, a pickled dict whose
       ``label_specific`` holds each image's class (fewshot/data/tiered_imagenet.py, ``read_cache``). Both are
       unpickled with the numpy-only unpickler (any other global is refused) and the PNGs decoded with Pillow as RGB
       (the PNGs hold RGB: OpenCV's imencode turns its BGR arrays back);
    2. ``{train,val,test}/<class>/*.jpg`` (or .png); each image decoded as RGB and Lanczos-resized to 84x84 where
       it is another size (Ren et al. resized with OpenCV's bicubic, so raw ImageNet images give slightly different
       pixels from the tarball's).

    Either way the decoded split is cached in $METABENCH_CACHE_DIR, keyed by the source files' paths, sizes and
    mtimes. Split (Ren et al.): 351 meta-train / 97 meta-val / 160 meta-test classes from 20 / 6 / 8 categories;
    classes are the distinct labels (or folders) in sorted order and keep their unequal image counts (a
    ``RaggedPool``). Episodes draw classes uniformly from the split, as Ren et al.'s do by default
    (fewshot/data/refinement_dataset.py, ``next(within_category=False)``): the categories only make the split.
    Conv-4 with 64 filters: Ren et al.'s (fewshot/configs/tiered_imagenet_config.py, ``BasicConfig``: ``filter_size``
    [3, 3, 3, 64] + [3, 3, 64, 64] x 3). Meta-train and meta-val episodes carry 5 query images per
    class (run_exp.py: ``num_test = 5`` for tiered-imagenet unless given); test episodes 15 as every suite here (Ren
    et al.'s README tests with ``--num_test 20``; MetaOptNet's test.py with 15).
    """

    name = "tieredimagenet"
    ROOT_FOLDER = "tiered-imagenet"
    WAYS_SHOTS = ((5, 1), (5, 5))
    IMAGE_SIZE = 84
    CHANNELS = 3
    FILTERS = 64
    TRAIN_QUERY = 5
    LAYOUT = ("{train,val,test}_images_png.pkl with {train,val,test}_labels.pkl (Ren et al.'s tarball), "
              "or {train,val,test}/<class>/*.jpg")
    SOURCE = ("tieredImageNet (Ren et al. 2018): the tarball linked from "
              "https://github.com/renmengye/few-shot-ssl-public (tiered-imagenet.tar, 12.9 GB; learn2learn's mirror: "
              "https://zenodo.org/record/7978538, files tiered-imagenet-{train,val,test}_{images_png,labels}.pkl, "
              "renamed without the 'tiered-imagenet-' prefix); untar it. Or class folders {train,val,test}/<class>/ "
              "of the split's ImageNet images.")
    budgets: ClassVar[dict[str, dict[str, int]]] = BUDGETS_84PX

    @classmethod
    def budget(cls, profile: str, setting: Setting) -> dict[str, int]:
        """``paper``: Ren et al.'s 200,000 training steps of one episode each (tiered_imagenet_config.py,
        ``max_train_steps``; run_exp.py's ``train`` takes one ``next_batch()`` episode per step), both settings."""
        if profile == "paper":
            return {"meta_train_tasks": 200_000}
        return super().budget(profile, setting)

    def looks_like_root(self, path: Path) -> bool:
        return any((path / PNG_PICKLE.format(split=split)).is_file() or (path / split).is_dir()
                   for split in ("train", "val", "test"))

    def load_pool(self, root: Path, split: str) -> RaggedPool:
        pickled, labels = root / PNG_PICKLE.format(split=split), root / LABELS_PICKLE.format(split=split)
        folder = root / split
        if pickled.is_file():
            if not labels.is_file():
                raise DataError(f"tieredimagenet: {pickled} has no {labels.name} beside it (each image's class)")
            return self.pool_from_pickles(root, split, pickled, labels)
        if folder.is_dir():
            folders = class_folders(folder)
            if not folders:
                raise DataError(f"tieredimagenet: {folder} holds no class folders; expected {split}/<class>/*.jpg")
            return self.folder_pool(root, split, folders, FOLDER_FORMAT)
        raise DataError(f"tieredimagenet: {root} has no '{split}' split; expected {pickled.name} with {labels.name}, "
                        f"or {split}/<class>/*.jpg")

    def pool_from_pickles(self, root: Path, split: str, pickled: Path, labels_path: Path) -> RaggedPool:
        """The split's images, classes the sorted distinct labels, each class's images in file order."""
        import numpy as np

        labels = self.read_labels(labels_path)
        shape = (len(labels), self.IMAGE_SIZE, self.IMAGE_SIZE, self.CHANNELS)
        images = cached_images(f"tieredimagenet-{split}-{source_key(PICKLE_FORMAT, [pickled, labels_path], root)}",
                               lambda: self.decode_pickle(pickled, len(labels)),
                               fits=lambda cached: cached.shape == shape)
        return RaggedPool.from_labels(images, np.unique(labels, return_inverse=True)[1].reshape(-1))

    def read_labels(self, path: Path) -> "np.ndarray":
        """``label_specific`` of a labels pickle: one integer per image."""
        import numpy as np

        expected = f"a pickled dict with {LABEL_KEY}"
        data = unpickle_numpy(path, self.name, expected)
        if not isinstance(data, dict) or LABEL_KEY not in str_keys(data):
            raise DataError(f"tieredimagenet: {path} is not a tieredImageNet labels file; expected {expected}")
        labels = np.asarray(str_keys(data)[LABEL_KEY])
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.size == 0:
            raise DataError(f"tieredimagenet: {path}: {LABEL_KEY} is {labels.dtype} {list(labels.shape)}; "
                            f"expected one integer per image")
        return labels

    def decode_pickle(self, path: Path, count: int) -> "np.ndarray":
        """The PNGs of an ``_images_png.pkl`` as uint8 [count, 84, 84, 3]."""
        import numpy as np

        expected = "a pickled list of PNG-encoded images"
        encoded = unpickle_numpy(path, self.name, expected)
        if not isinstance(encoded, (list, tuple)) or not all(isinstance(item, (bytes, np.ndarray)) for item in encoded):
            raise DataError(f"tieredimagenet: {path} is not a tieredImageNet image file; expected {expected}")
        if len(encoded) != count:
            raise DataError(f"tieredimagenet: {path} holds {len(encoded)} images but its labels file {count} labels")
        sources = [item if isinstance(item, bytes) else np.ascontiguousarray(item).tobytes() for item in encoded]
        return decode_rgb(sources, self.IMAGE_SIZE, self.name, origin=path)
