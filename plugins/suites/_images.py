"""What few-shot image-classification suites share: class pools, N-way K-shot episodes, Conv-4, accuracy, and the
readers of the usual on-disk forms (image folders, numpy-only pickles).

A suite subclass says how to load the images of a split (``load_pool``); episodes, backbone, loss
and metric are the same for all of them.
"""
from __future__ import annotations

import codecs
import dataclasses
import hashlib
import io
import os
import pickle
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bench.api import VARY, Episode, Setting, TaskKind, TaskSuite, VariableEpisodes, episode_rng
from bench.cache import cache_dir
from bench.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn

DATA_DIR_ENV = "METABENCH_DATA_DIR"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""The files an image folder's class folders are read for (case-insensitive); hidden files are skipped."""


def cached_images(name: str, build: Callable[[], "np.ndarray"], fits: Callable[["np.ndarray"], bool]) -> "np.ndarray":
    """The images cached in ``cache_dir()/<name>.npz`` when that file is intact (its checksum holds) and they
    ``fit``; otherwise ``build()``'s, written to the cache for next time. Name the file by a key of everything
    the images come from, so that changed sources get a new file."""
    import numpy as np

    from bench.store import atomic_write_bytes

    path = cache_dir() / f"{name}.npz"
    images = _read_cache(path)
    if images is not None and fits(images):
        return images
    images = build()
    buffer = io.BytesIO()
    np.savez(buffer, images=images, sha256=_checksum(images))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getbuffer())  # a view: no copy of a large split
    except OSError:
        pass  # a read-only cache folder costs speed, not correctness
    return images


def _checksum(images: "np.ndarray") -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()


def _read_cache(path: Path) -> "np.ndarray | None":
    """The cached array, or None when the file is missing, unreadable or fails its checksum."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as cache:
            images, checksum = cache["images"], str(cache["sha256"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return images if _checksum(images) == checksum else None


class ImagePool(ABC):
    """The images of one split, by class. Class ``c`` is base class ``c // rotations`` rotated ``c % rotations``
    quarter turns: with ``rotations=4`` every base class also appears rotated by 90, 180 and 270 degrees, each a
    class of its own."""

    rotations: int

    @property
    @abstractmethod
    def base_classes(self) -> int:
        """How many classes the split holds before rotation."""

    @abstractmethod
    def examples(self, base: int) -> int:
        """How many images base class ``base`` has."""

    @abstractmethod
    def smallest(self) -> int:
        """How many images the class with fewest has."""

    @abstractmethod
    def describe_counts(self) -> str:
        """How many images the classes have, for an error message ("20 images per class")."""

    @abstractmethod
    def base_images(self, base: int, examples: "np.ndarray") -> "np.ndarray":
        """Images ``examples`` (positions 0..examples(base)-1) of base class ``base``, uint8 (N, H, W[, C])."""

    @property
    def num_classes(self) -> int:
        return self.base_classes * self.rotations

    def sample_classes(self, rng: "np.random.Generator", count: int) -> "np.ndarray":
        """``count`` classes of distinct base classes, each at a uniformly drawn rotation: no episode holds two
        rotations of one base class (MAML's data_generator.py: distinct characters, a random rotation each)."""
        bases = rng.choice(self.base_classes, size=count, replace=False)
        if self.rotations == 1:
            return bases
        return bases * self.rotations + rng.integers(self.rotations, size=count)

    def draw(self, class_index: int, examples: "np.ndarray") -> "np.ndarray":
        """Examples of one class as float32 (N, C, H, W) in [0, 1]."""
        import numpy as np

        base, quarter_turns = divmod(class_index, self.rotations)
        images = self.base_images(base, examples)
        if quarter_turns:
            images = np.rot90(images, k=quarter_turns, axes=(1, 2))
        if images.ndim == 3:
            images = images[:, None]
        else:
            images = images.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(images, dtype=np.float32) / 255.0



BUDGETS_84PX: dict[str, dict[str, int]] = {
    "smoke": {"meta_train_tasks": 8, "test_episodes": 3},
    "quick": {"meta_train_tasks": 800, "test_episodes": 100},
}
"""The smoke and quick budgets of the 84x84 RGB suites (mini-ImageNet's, tieredImageNet, CUB): a Conv-4 step on
their images costs several times an Omniglot one."""

@dataclasses.dataclass
class ClassPool(ImagePool):
    """Every class with the same number of images: ``images[base_class, example]`` uint8 (H, W) or (H, W, C)."""

    images: "np.ndarray"
    rotations: int = 1

    @property
    def base_classes(self) -> int:
        return self.images.shape[0]

    def examples(self, base: int) -> int:
        return self.images.shape[1]

    def smallest(self) -> int:
        return self.images.shape[1]

    def describe_counts(self) -> str:
        return f"{self.images.shape[1]} images per class"

    def base_images(self, base: int, examples: "np.ndarray") -> "np.ndarray":
        return self.images[base, examples]


@dataclasses.dataclass
class RaggedPool(ImagePool):
    """Classes with different numbers of images (CUB, tieredImageNet): ``images`` uint8 (N, H, W[, C]) in any order;
    base class ``c``'s images are ``images[members[starts[c]:starts[c + 1]]]``."""

    images: "np.ndarray"
    members: "np.ndarray"
    starts: "np.ndarray"
    rotations: int = 1

    @classmethod
    def from_labels(cls, images: "np.ndarray", labels: "np.ndarray") -> "RaggedPool":
        """A pool of ``images`` whose class ``c`` holds the images labelled ``c`` (0..classes-1), in file order."""
        import numpy as np

        members = np.argsort(labels, kind="stable")
        starts = np.searchsorted(labels[members], np.arange(int(labels.max(initial=-1)) + 2))
        return cls(images, members, starts)

    @classmethod
    def from_counts(cls, images: "np.ndarray", counts: Sequence[int]) -> "RaggedPool":
        """A pool of ``images`` stored class after class, ``counts[c]`` images of class ``c``."""
        import numpy as np

        return cls(images, np.arange(len(images)), np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]))

    @property
    def base_classes(self) -> int:
        return len(self.starts) - 1

    def examples(self, base: int) -> int:
        return int(self.starts[base + 1] - self.starts[base])

    def smallest(self) -> int:
        import numpy as np

        return int(np.diff(self.starts).min()) if self.base_classes else 0

    def describe_counts(self) -> str:
        return f"{self.smallest()} images in its smallest class"

    def base_images(self, base: int, examples: "np.ndarray") -> "np.ndarray":
        return self.images[self.members[self.starts[base] + examples]]


def one_line(error: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(error).split()) or "no details"


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickled ndarray or numpy scalar needs, under numpy 1.x and 2.x module names."""
    import numpy as np

    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray, numeric  # numpy 1.x
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           # protocols 0-2 store raw bytes as _codecs.encode(str, "latin1")
                                           ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global (no code runs)."""

    def __init__(self, stream: Any, path: Path, suite: str) -> None:
        super().__init__(stream, encoding="latin1")  # latin1: also reads Python 2 era caches
        self.path = path
        self.suite = suite
        self.allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise DataError(f"{self.suite}: {self.path} refers to {module}.{name}, which is not a numpy array "
                            f"part; refused to unpickle it (the data set's pickles hold only numpy arrays)") from None


def unpickle_numpy(path: Path, suite: str, expected: str) -> Any:
    """What ``path`` holds, unpickled with numpy globals only; DataError naming the file and ``expected`` (what it
    should hold) when it cannot be read."""
    try:
        with path.open("rb") as stream:
            return NumpyOnlyUnpickler(stream, path, suite).load()
    except DataError:
        raise
    except Exception as error:  # a corrupt pickle raises almost anything: EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"{suite}: cannot read {path}: {type(error).__name__}: {one_line(error)}; "
                        f"expected {expected}") from None


def str_keys(data: dict) -> dict:
    """``data`` with bytes keys decoded as latin1 (a Python 2 pickle read with ``encoding="bytes"`` has them)."""
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in data.items()}


def class_files(folder: Path) -> list[Path]:
    """The image files of one class folder (``IMAGE_SUFFIXES``, not hidden), sorted by name."""
    return sorted((file for file in folder.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES
                   and not file.name.startswith(".") and file.is_file()), key=lambda file: file.name)


def class_folders(folder: Path) -> list[Path]:
    """The class folders of an image-folder split, sorted by name (not hidden)."""
    return sorted((path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")),
                  key=lambda path: path.name)


def source_key(form: str, files: Sequence[Path], root: Path) -> str:
    """A key of decoded images' sources: ``form`` (how they are decoded) and every file's path, size and mtime."""
    digest = hashlib.sha256(f"{form}\n".encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def lanczos(image: "Image.Image", size: int) -> "Image.Image":
    """``image`` Lanczos-resized to size x size where it is another size."""
    from PIL import Image

    return image if image.size == (size, size) else image.resize((size, size), Image.LANCZOS)


def decode_rgb(sources: Sequence["Path | bytes"], size: int, suite: str, *, origin: Path | None = None,
               fit: Callable[["Image.Image", int], "Image.Image"] = lanczos) -> "np.ndarray":
    """Images as uint8 [N, size, size, 3], each decoded with Pillow as RGB and made size x size by ``fit``.
    ``sources``: files, or encoded images (bytes) read from ``origin``; DataError naming one that does not decode."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    decoded = np.empty((len(sources), size, size, 3), dtype=np.uint8)
    for position, source in enumerate(sources):
        try:
            with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
                decoded[position] = np.asarray(fit(image.convert("RGB"), size))
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            where = source if isinstance(source, Path) else f"image {position} of {origin}"
            raise DataError(f"{suite}: cannot decode {where}: {one_line(error)}") from None
    return decoded


def _episode(support: "list[np.ndarray]", query: "list[np.ndarray]", shots: "np.ndarray", queries: int,
             classes: "np.ndarray") -> Episode:
    """An episode of per-class support and query images (class i labelled i), ``shots[i]`` and ``queries`` each."""
    import numpy as np
    import torch

    labels = torch.arange(len(classes))
    return Episode(torch.from_numpy(np.concatenate(support)), labels.repeat_interleave(torch.from_numpy(shots)),
                   torch.from_numpy(np.concatenate(query)), labels.repeat_interleave(queries),
                   torch.from_numpy(classes.astype(np.int64)))


class FewShotImageSuite(TaskSuite):
    """N-way K-shot image classification: the base of the Omniglot, mini-ImageNet, tieredImageNet, CIFAR-FS, FC100
    and CUB suites."""

    kind = TaskKind.CLASSIFICATION
    metric_name = "accuracy"
    lower_is_better = False
    TEST_QUERY: ClassVar[int] = 15
    TRAIN_QUERY: ClassVar[int | None] = None
    """Query images per class of a meta-train or meta-validation episode; None: K, the setting's shots."""
    WAYS_SHOTS: ClassVar[tuple[tuple[int, int], ...]]
    IMAGE_SIZE: ClassVar[int]
    CHANNELS: ClassVar[int]
    FILTERS: ClassVar[int]
    ROOT_FOLDER: ClassVar[str]
    OTHER_FOLDERS: ClassVar[tuple[str, ...]] = ()
    """Other names the data set's folder goes by in the data dir, looked for after ``ROOT_FOLDER``."""
    LAYOUT: ClassVar[str]
    """The files the suite reads, for error messages."""
    SOURCE: ClassVar[str | None] = None
    """Where the data set comes from and what to download (``bench data NAME`` prints it with ``LAYOUT``)."""
    _pools: ClassVar[dict[tuple[str, str], ImagePool]] = {}

    @classmethod
    def data_instructions(cls) -> str | None:
        """``SOURCE``, then where to put it: ``DIR/<ROOT_FOLDER>/`` (or DIR) holding ``LAYOUT``."""
        if cls.SOURCE is None:
            return None
        folders = " or ".join(f"DIR/{folder}/" for folder in (cls.ROOT_FOLDER, *cls.OTHER_FOLDERS))
        return (f"{cls.name}: {cls.SOURCE}\nStage it so that {folders} (or DIR itself) holds {cls.LAYOUT}; "
                f"then run with --data-dir DIR (or set {DATA_DIR_ENV}=DIR).")

    VARIABLE: ClassVar[VariableEpisodes | None] = VariableEpisodes()
    """The sampler of the ``vary`` setting, listed after ``WAYS_SHOTS``' (Meta-Dataset's, with its defaults); None:
    no such setting."""

    def settings(self) -> list[Setting]:
        """``WAYS_SHOTS``' N-way K-shot settings, then ``vary``: Meta-Dataset's variable ways and shots
        (``VARIABLE``), its ``ways``, ``shots`` and ``query`` the sampler's maxima (50 ways, 500 support examples, 10
        queries per class)."""
        fixed = [Setting(f"{ways}-way {shots}-shot", shots=shots, query=self.TEST_QUERY, ways=ways,
                         train_query=shots if self.TRAIN_QUERY is None else self.TRAIN_QUERY)
                 for ways, shots in self.WAYS_SHOTS]
        sampler = self.VARIABLE
        if sampler is None:
            return fixed
        return [*fixed, Setting(VARY, shots=sampler.max_support, query=sampler.max_query, ways=sampler.max_ways,
                                variable=sampler)]

    def data_root(self, folder: str, *others: str) -> Path:
        """``<data dir>/<folder>`` (or ``<data dir>/<other>``) or the data dir itself, from ``--data-dir`` or
        $METABENCH_DATA_DIR."""
        bases = [Path(p) for p in (self.data_dir, os.environ.get(DATA_DIR_ENV)) if p]
        if not bases:
            raise DataError(f"suite '{self.name}' needs its data: pass --data-dir DIR (or set {DATA_DIR_ENV}) "
                            f"where DIR/{folder}/ holds {self.LAYOUT}")
        candidates = [candidate for base in bases for candidate in (*(base / name for name in (folder, *others)), base)]
        for candidate in candidates:
            if self.looks_like_root(candidate):
                return candidate
        looked = ", ".join(str(c) for c in candidates)
        raise DataError(f"suite '{self.name}': no data found; expected {self.LAYOUT} in one of: {looked}")

    @abstractmethod
    def looks_like_root(self, path: Path) -> bool:
        """Whether ``path`` holds this suite's data set."""

    @abstractmethod
    def load_pool(self, root: Path, split: str) -> ImagePool:
        """Read one split's images from ``root``."""

    def folder_pool(self, root: Path, split: str, folders: Sequence[Path], form: str,
                    fit: Callable[["Image.Image", int], "Image.Image"] = lanczos) -> RaggedPool:
        """The images of ``folders`` (one class each, in this order; files by name) decoded by ``decode_rgb`` with
        ``fit`` once, then read from the cache, keyed by ``form`` (how they are decoded) and every file's path, size
        and mtime. DataError for a class folder without images."""
        classes = [class_files(folder) for folder in folders]
        for folder, files in zip(folders, classes):
            if not files:
                raise DataError(f"{self.name}: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files = [file for members in classes for file in members]
        shape = (len(files), self.IMAGE_SIZE, self.IMAGE_SIZE, 3)
        images = cached_images(f"{self.name}-{split}-{source_key(f'{form}|{self.IMAGE_SIZE}', files, root)}",
                               lambda: decode_rgb(files, self.IMAGE_SIZE, self.name, fit=fit),
                               fits=lambda cached: cached.shape == shape)
        return RaggedPool.from_counts(images, [len(members) for members in classes])

    def prepare(self) -> None:
        for split in ("train", "val", "test"):
            self.pool(split)

    def pool(self, split: str) -> ImagePool:
        """One split's images, loaded once per process and data root."""
        root = self.data_root(self.ROOT_FOLDER, *self.OTHER_FOLDERS)
        key = (str(root.resolve()), f"{self.name}:{split}")
        if key not in self._pools:
            self._pools[key] = self.load_pool(root, split)
        return self._pools[key]

    def num_classes(self, split: str) -> int:
        return self.pool(split).num_classes

    def sample_episode(self, split: str, setting: Setting, seed: int, index: int) -> Episode:
        """Episode ``index``: ``setting.ways`` classes of distinct base classes (``ImagePool.sample_classes``), K
        support and the split's queries per class; for a ``variable`` setting, ``variable_episode``'s."""
        if setting.variable is not None:
            return self.variable_episode(split, setting, seed, index)
        return self.fixed_episode(split, setting, seed, index)

    def variable_episode(self, split: str, setting: Setting, seed: int, index: int) -> Episode:
        """Meta-Dataset's episode (``VariableEpisodes``): its ways among the split's base classes (an episode holds
        no two rotations of one), each class at a uniform rotation, its queries per class and class-imbalanced
        support shots; support and query examples distinct, drawn without replacement."""
        import numpy as np

        sampler, pool = setting.variable, self.pool(split)
        assert sampler is not None
        if pool.base_classes < sampler.min_ways:
            raise DataError(f"suite '{self.name}': split '{split}' has {pool.base_classes} classes, fewer than the "
                            f"{sampler.min_ways} that every episode of {setting.name} needs")
        if pool.smallest() < 2:
            raise DataError(f"suite '{self.name}': split '{split}' has {pool.describe_counts()}; {setting.name} "
                            "needs at least 2 images per class (a support and a query image)")
        rng = episode_rng(self.name, split, setting.name, seed, index)
        classes = pool.sample_classes(rng, sampler.ways(rng, pool.base_classes))
        sizes = np.array([pool.examples(int(c) // pool.rotations) for c in classes])
        shots, query = sampler.shots(rng, sizes)
        drawn = [pool.draw(int(c), rng.choice(size, size=k + query, replace=False))
                 for c, size, k in zip(classes, sizes, shots)]
        return _episode([images[:k] for images, k in zip(drawn, shots)],
                        [images[k:] for images, k in zip(drawn, shots)], shots, query, classes)

    def fixed_episode(self, split: str, setting: Setting, seed: int, index: int) -> Episode:
        """An N-way K-shot episode: ``setting.ways`` classes, K support and the split's queries per class."""
        import numpy as np
        import torch

        pool = self.pool(split)
        if pool.base_classes < setting.ways:
            distinct = " (an episode's classes are distinct, not rotations of one)" if pool.rotations > 1 else ""
            raise DataError(f"suite '{self.name}': split '{split}' has {pool.base_classes} classes, "
                            f"fewer than the {setting.ways} that {setting.name} needs{distinct}")
        rng = episode_rng(self.name, split, setting.name, seed, index)
        query = setting.query_for(split)
        per_class = setting.shots + query
        if pool.smallest() < per_class:
            raise DataError(f"suite '{self.name}': split '{split}' has {pool.describe_counts()}, "
                            f"fewer than the {per_class} that {setting.name} with {query} queries needs")
        classes = pool.sample_classes(rng, setting.ways)
        drawn = np.stack([pool.draw(int(c), rng.choice(pool.examples(int(c) // pool.rotations), size=per_class,
                                                       replace=False)) for c in classes])
        support = torch.from_numpy(drawn[:, : setting.shots].reshape(-1, *drawn.shape[2:]))
        query_x = torch.from_numpy(drawn[:, setting.shots :].reshape(-1, *drawn.shape[2:]))
        labels = torch.arange(setting.ways)
        return Episode(support, labels.repeat_interleave(setting.shots), query_x,
                       labels.repeat_interleave(query), torch.from_numpy(classes.astype(np.int64)))

    backbone_names: ClassVar[tuple[str, ...]] = ("conv4", "conv4-32", "conv4-64", "conv4-strided", "resnet12",
                                                 "resnet12-dropblock")
    """``conv4``: the suite's standard Conv-4 (3x3 conv, batch norm, ReLU, 2x2 max-pool, x4; ``FILTERS`` filters, 64 on
    Omniglot, 32 on mini-ImageNet); ``conv4-32``, ``conv4-64``: the same with 32 or 64 filters; ``conv4-strided``:
    MAML's Omniglot network (stride-2 convolutions, no max-pool, ``FILTERS`` filters); ``resnet12``: the
    64-160-320-640 ResNet-12 of MetaOptNet and FEAT; ``resnet12-dropblock``: the same with MetaOptNet's dropout and
    DropBlock in training (for learners that train the embedding without ``vmap``: the metric and head learners,
    finetune). ``bench.nn.backbones`` says where each comes from."""

    def backbone(self, setting: Setting) -> "nn.Module":
        from bench.nn import backbones

        ways, name = setting.ways, self.chosen_backbone()
        builders = {
            "conv4": lambda: backbones.conv4(self.CHANNELS, self.FILTERS, ways, self.IMAGE_SIZE),
            "conv4-32": lambda: backbones.conv4(self.CHANNELS, 32, ways, self.IMAGE_SIZE),
            "conv4-64": lambda: backbones.conv4(self.CHANNELS, 64, ways, self.IMAGE_SIZE),
            "conv4-strided": lambda: backbones.conv4_strided(self.CHANNELS, self.FILTERS, ways),
            "resnet12": lambda: backbones.resnet12(self.CHANNELS, ways, self.IMAGE_SIZE),
            "resnet12-dropblock": lambda: backbones.resnet12(self.CHANNELS, ways, self.IMAGE_SIZE, dropblock=True),
        }
        if name not in builders or name not in self.backbone_names:
            offered = ", ".join(self.backbone_names)
            raise ValueError(f"suite '{self.name}' has no backbone {name!r}; it offers {offered}")
        return builders[name]()

    def loss(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        from torch.nn import functional as F

        return F.cross_entropy(prediction, target)

    def metric(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        return (prediction.argmax(dim=-1) == target).float().mean()
