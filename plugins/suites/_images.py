"""What few-shot image-classification suites share: class pools, N-way K-shot episodes, Conv-4, accuracy.

A suite subclass says how to load the images of a split (``load_pool``); episodes, backbone, loss
and metric are the same for all of them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from bench.api import Episode, Setting, TaskKind, TaskSuite, episode_rng
from bench.cache import cache_dir
from bench.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

DATA_DIR_ENV = "METABENCH_DATA_DIR"


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


@dataclasses.dataclass
class ClassPool:
    """The images of one split: ``images[base_class, example]`` uint8 (H, W) or (H, W, C).

    With ``rotations=4`` every base class also appears rotated by 90, 180 and 270 degrees, each a
    class of its own (class ``c`` is base class ``c // 4`` rotated ``c % 4`` quarter turns).
    """

    images: "np.ndarray"
    rotations: int = 1

    @property
    def base_classes(self) -> int:
        return self.images.shape[0]

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
        images = self.images[base, examples]
        if quarter_turns:
            images = np.rot90(images, k=quarter_turns, axes=(1, 2))
        if images.ndim == 3:
            images = images[:, None]
        else:
            images = images.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(images, dtype=np.float32) / 255.0


class FewShotImageSuite(TaskSuite):
    """N-way K-shot image classification: the base of the Omniglot and mini-ImageNet suites."""

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
    LAYOUT: ClassVar[str]
    """The files the suite reads, for error messages."""
    _pools: ClassVar[dict[tuple[str, str], ClassPool]] = {}

    def settings(self) -> list[Setting]:
        return [Setting(f"{ways}-way {shots}-shot", shots=shots, query=self.TEST_QUERY, ways=ways,
                        train_query=shots if self.TRAIN_QUERY is None else self.TRAIN_QUERY)
                for ways, shots in self.WAYS_SHOTS]

    def data_root(self, folder: str) -> Path:
        """``<data dir>/<folder>`` or the data dir itself, from ``--data-dir`` or $METABENCH_DATA_DIR."""
        bases = [Path(p) for p in (self.data_dir, os.environ.get(DATA_DIR_ENV)) if p]
        if not bases:
            raise DataError(f"suite '{self.name}' needs its data: pass --data-dir DIR (or set {DATA_DIR_ENV}) "
                            f"where DIR/{folder}/ holds {self.LAYOUT}")
        candidates = [candidate for base in bases for candidate in (base / folder, base)]
        for candidate in candidates:
            if self.looks_like_root(candidate):
                return candidate
        looked = ", ".join(str(c) for c in candidates)
        raise DataError(f"suite '{self.name}': no data found; expected {self.LAYOUT} in one of: {looked}")

    @abstractmethod
    def looks_like_root(self, path: Path) -> bool:
        """Whether ``path`` holds this suite's data set."""

    @abstractmethod
    def load_pool(self, root: Path, split: str) -> ClassPool:
        """Read one split's images from ``root``."""

    def prepare(self) -> None:
        for split in ("train", "val", "test"):
            self.pool(split)

    def pool(self, split: str) -> ClassPool:
        """One split's images, loaded once per process and data root."""
        root = self.data_root(self.ROOT_FOLDER)
        key = (str(root.resolve()), f"{self.name}:{split}")
        if key not in self._pools:
            self._pools[key] = self.load_pool(root, split)
        return self._pools[key]

    def num_classes(self, split: str) -> int:
        return self.pool(split).num_classes

    def sample_episode(self, split: str, setting: Setting, seed: int, index: int) -> Episode:
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
        available = pool.images.shape[1]
        if available < per_class:
            raise DataError(f"suite '{self.name}': split '{split}' has {available} images per class, "
                            f"fewer than the {per_class} that {setting.name} with {query} queries needs")
        classes = pool.sample_classes(rng, setting.ways)
        drawn = np.stack([pool.draw(int(c), rng.choice(available, size=per_class, replace=False)) for c in classes])
        support = torch.from_numpy(drawn[:, : setting.shots].reshape(-1, *drawn.shape[2:]))
        query_x = torch.from_numpy(drawn[:, setting.shots :].reshape(-1, *drawn.shape[2:]))
        labels = torch.arange(setting.ways)
        return Episode(support, labels.repeat_interleave(setting.shots), query_x,
                       labels.repeat_interleave(query), torch.from_numpy(classes.astype(np.int64)))

    def backbone(self, setting: Setting) -> "nn.Module":
        from bench.nn.backbones import conv4

        return conv4(self.CHANNELS, self.FILTERS, setting.ways, self.IMAGE_SIZE)

    def loss(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        from torch.nn import functional as F

        return F.cross_entropy(prediction, target)

    def metric(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        return (prediction.argmax(dim=-1) == target).float().mean()
