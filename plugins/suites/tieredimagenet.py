"""tieredImageNet few-shot classification (Ren et al. 2018) in its authors' split."""
from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from bench_plugins.suites._images import (
    BUDGETS_84PX,
    FewShotImageSuite,
    RaggedPool,
    cached_images,
    class_folders,
    decode_rgb,
    one_line,
    source_key,
    str_keys,
    unpickle_numpy,
)

from bench.api import Setting
from bench.errors import DataError

if TYPE_CHECKING:
    import numpy as np

PNG_PICKLE = "{split}_images_png.pkl"
IMAGES_NPZ = "{split}_images.npz"
LABELS_PICKLE = "{split}_labels.pkl"
LABEL_KEY = "label_specific"
NPZ_IMAGES_KEY = "images"
NPZ_LABEL_KEY = "labels"
PICKLE_FORMAT = "tieredimagenet-png-pickle-rgb-v1"
NPZ_FORMAT = "tieredimagenet-npz-bgr-to-rgb-v1"
FOLDER_FORMAT = "tieredimagenet-folder-84px-rgb-lanczos-v1"


class TieredImageNet(FewShotImageSuite):
    """tieredImageNet: 608 ImageNet classes in 34 categories; 5-way 1/5-shot, 84x84 RGB; Conv-4 (64 filters).

    Reads one of three forms from ``--data-dir`` (``DIR/tiered-imagenet`` or ``DIR``) or $METABENCH_DATA_DIR, checked
    per split in this order (the originals before the copies made from them):

    1. the files of Ren et al.'s tarball (few-shot-ssl-public's README; learn2learn downloads the same):
       ``{train,val,test}_images_png.pkl``, each a pickled list of PNG-encoded 84x84 images (uint8 arrays of the PNG
       bytes, written by fewshot/data/compress_tiered_imagenet.py), and ``{split}_labels.pkl``, a pickled dict whose
       ``label_specific`` holds each image's class (fewshot/data/tiered_imagenet.py, ``read_cache``). Both are
       unpickled with the numpy-only unpickler (any other global is refused) and the PNGs decoded with Pillow as RGB
       (the PNGs hold RGB: OpenCV's imencode turns its BGR arrays back);
    2. the files of MetaOptNet's download (its README's tieredImageNet link): ``{train,val,test}_images.npz``, whose
       ``images`` is uint8 [N, 84, 84, 3], and ``{split}_labels.pkl``, a pickled dict whose ``labels`` lists each
       image's class (MetaOptNet's data/tiered_imagenet.py). The npz is read with ``allow_pickle=False``, the labels
       with the numpy-only unpickler. The arrays are taken as BGR and turned to RGB; not checked on the real files
       (not at hand). For BGR: the file is what Ren et al.'s loader writes beside the PNG pickle (``read_cache``
       calls fewshot/data/compress_tiered_imagenet.py's ``decompress``: ``cv2.imdecode``, which returns BGR, then
       ``np.savez(path, images=images)``), and few-shot-meta-baseline (yinboc), which links the same download,
       reverses the channels after loading (datasets/tiered_imagenet.py: ``data[:, :, :, ::-1]``). Against it,
       MetaOptNet hands the arrays to PIL unchanged and normalises with ``mean_pix`` [120.40, 115.59, 104.54]
       (R > G > B, as ImageNet's RGB means), but those numbers are its data/mini_imagenet.py's verbatim, so they
       were not measured on these arrays;
    3. ``{train,val,test}/<class>/*.jpg`` (or .png); each image decoded as RGB and Lanczos-resized to 84x84 where
       it is another size (Ren et al. resized with OpenCV's bicubic, so raw ImageNet images give slightly different
       pixels from the tarball's).

    Whichever form, the decoded split is cached in $METABENCH_CACHE_DIR, keyed by the source files' paths, sizes and
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
              "{train,val,test}_images.npz with {train,val,test}_labels.pkl (MetaOptNet's), "
              "or {train,val,test}/<class>/*.jpg")
    SOURCE = ("tieredImageNet (Ren et al. 2018): the tarball linked from "
              "https://github.com/renmengye/few-shot-ssl-public (tiered-imagenet.tar, 12.9 GB; learn2learn's mirror: "
              "https://zenodo.org/record/7978538, files tiered-imagenet-{train,val,test}_{images_png,labels}.pkl, "
              "renamed without the 'tiered-imagenet-' prefix); untar it. Or MetaOptNet's copy, the tieredImageNet "
              "link in the README of https://github.com/kjunelee/MetaOptNet ({train,val,test}_images.npz and "
              "{train,val,test}_labels.pkl). Or class folders {train,val,test}/<class>/ of the split's ImageNet "
              "images.")
    budgets: ClassVar[dict[str, dict[str, int]]] = BUDGETS_84PX

    @classmethod
    def budget(cls, profile: str, setting: Setting) -> dict[str, int]:
        """``paper``: Ren et al.'s 200,000 training steps of one episode each (tiered_imagenet_config.py,
        ``max_train_steps``; run_exp.py's ``train`` takes one ``next_batch()`` episode per step), both settings."""
        if profile == "paper":
            return {"meta_train_tasks": 200_000}
        return super().budget(profile, setting)

    def looks_like_root(self, path: Path) -> bool:
        return any(any((path / form.format(split=split)).is_file() for form in (PNG_PICKLE, IMAGES_NPZ))
                   or (path / split).is_dir() for split in ("train", "val", "test"))

    def load_pool(self, root: Path, split: str) -> RaggedPool:
        pickled, labels = root / PNG_PICKLE.format(split=split), root / LABELS_PICKLE.format(split=split)
        npz, folder = root / IMAGES_NPZ.format(split=split), root / split
        for images, read in ((pickled, self.pool_from_pickles), (npz, self.pool_from_npz)):
            if images.is_file():
                if not labels.is_file():
                    raise DataError(f"tieredimagenet: {images} has no {labels.name} beside it (each image's class)")
                return read(root, split, images, labels)
        if folder.is_dir():
            folders = class_folders(folder)
            if not folders:
                raise DataError(f"tieredimagenet: {folder} holds no class folders; expected {split}/<class>/*.jpg")
            return self.folder_pool(root, split, folders, FOLDER_FORMAT)
        raise DataError(f"tieredimagenet: {root} has no '{split}' split; expected {pickled.name} with {labels.name}, "
                        f"{npz.name} with {labels.name}, or {split}/<class>/*.jpg")

    def pool_from_pickles(self, root: Path, split: str, pickled: Path, labels_path: Path) -> RaggedPool:
        """Ren et al.'s form of the split: classes the sorted distinct labels, each class's images in file order."""
        labels = self.read_labels(labels_path, LABEL_KEY)
        return self.labelled_pool(root, split, [pickled, labels_path], PICKLE_FORMAT, labels,
                                  lambda: self.decode_pickle(pickled, len(labels)))

    def pool_from_npz(self, root: Path, split: str, npz: Path, labels_path: Path) -> RaggedPool:
        """MetaOptNet's form of the split: classes the sorted distinct labels, each class's images in file order."""
        labels = self.read_labels(labels_path, NPZ_LABEL_KEY)
        return self.labelled_pool(root, split, [npz, labels_path], NPZ_FORMAT, labels,
                                  lambda: self.read_npz(npz, len(labels)))

    def labelled_pool(self, root: Path, split: str, sources: list[Path], form: str, labels: "np.ndarray",
                      build: Callable[[], "np.ndarray"]) -> RaggedPool:
        """A pool of one image per label: ``build()``'s images once, then read from the cache keyed by ``form``
        and ``sources``."""
        import numpy as np

        shape = (len(labels), self.IMAGE_SIZE, self.IMAGE_SIZE, self.CHANNELS)
        images = cached_images(f"tieredimagenet-{split}-{source_key(form, sources, root)}", build,
                               fits=lambda cached: cached.shape == shape)
        return RaggedPool.from_labels(images, np.unique(labels, return_inverse=True)[1].reshape(-1))

    def read_labels(self, path: Path, key: str) -> "np.ndarray":
        """``key`` of a labels pickle: one integer per image."""
        import numpy as np

        expected = f"a pickled dict with {key}"
        data = unpickle_numpy(path, self.name, expected)
        if not isinstance(data, dict) or key not in str_keys(data):
            raise DataError(f"tieredimagenet: {path} is not a tieredImageNet labels file; expected {expected}")
        labels = np.asarray(str_keys(data)[key])
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.size == 0:
            raise DataError(f"tieredimagenet: {path}: {key} is {labels.dtype} {list(labels.shape)}; "
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

    def read_npz(self, path: Path, count: int) -> "np.ndarray":
        """``images`` of an ``_images.npz`` (BGR) as uint8 [count, 84, 84, 3] RGB; nothing in it is unpickled."""
        import numpy as np

        size = self.IMAGE_SIZE
        expected = f"an npz archive whose {NPZ_IMAGES_KEY} is uint8 [N, {size}, {size}, 3], without pickled objects"
        if not zipfile.is_zipfile(path):
            raise DataError(f"tieredimagenet: {path} is not a zip archive (truncated, or not an npz); "
                            f"expected {expected}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = archive.files
                images = archive[NPZ_IMAGES_KEY] if NPZ_IMAGES_KEY in names else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # an object array: ValueError
            raise DataError(f"tieredimagenet: cannot read {path}: {type(error).__name__}: {one_line(error)}; "
                            f"expected {expected}") from None
        if images is None:
            raise DataError(f"tieredimagenet: {path} has no {NPZ_IMAGES_KEY} array (it holds "
                            f"{', '.join(names) or 'none'}); expected {expected}")
        if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
            raise DataError(f"tieredimagenet: {path}: {NPZ_IMAGES_KEY} is {images.dtype} {list(images.shape)}; "
                            f"expected {expected}")
        if len(images) != count:
            raise DataError(f"tieredimagenet: {path} holds {len(images)} images but its labels file {count} labels")
        for chunk in np.array_split(images, max(1, len(images) // 4096)):  # BGR to RGB in place: no second copy
            chunk[...] = chunk[..., ::-1]
        return images
