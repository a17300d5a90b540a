"""The tieredImageNet suite on tiny generated data in both layouts: Ren et al.'s PNG pickles and class folders."""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_plugins.suites.tieredimagenet import TieredImageNet
from PIL import Image

from bench.errors import DataError
from bench.testing import SuiteCheck, assert_suite_conforms
from helpers import expect_error, setting

SPLIT_CLASSES = {"train": 6, "val": 5, "test": 5}
LABEL_BASE = {"train": 0, "val": 6, "test": 11}


@pytest.fixture(autouse=True)
def private(private_cache):
    """Decoded-image caches and the data-dir variable stay inside the test session."""


def count(index: int) -> int:
    """Unequal class sizes, 20-22 images: enough for a 5-shot test episode (5 + 15 queries)."""
    return 20 + index % 3


def make_split(split: str, classes: int | None = None, counts=count) -> list[tuple[int, np.ndarray]]:
    """(label, uint8 [84, 84, 3]) pairs of the split, classes interleaved: a class colour, a stripe per image."""
    rng = np.random.default_rng(list(split.encode()))
    items = []
    for c in range(classes or SPLIT_CLASSES[split]):
        colour = rng.integers(0, 200, size=3)
        for j in range(counts(c)):
            image = np.broadcast_to(colour, (84, 84, 3)).astype(np.uint8).copy()
            image[j % 84, :, :] = 255  # one bright row per image
            items.append((LABEL_BASE[split] + c, image))
    order = rng.permutation(len(items))
    return [items[k] for k in order]


DATA = {split: make_split(split) for split in SPLIT_CLASSES}


def png(image: np.ndarray) -> np.ndarray:
    """PNG bytes as the uint8 array cv2.imencode returns (what compress_tiered_imagenet.py pickles)."""
    stream = io.BytesIO()
    Image.fromarray(image).save(stream, format="PNG")
    return np.frombuffer(stream.getvalue(), dtype=np.uint8).reshape(-1, 1)


def write_pickles(root: Path, split: str, items: list[tuple[int, np.ndarray]]) -> None:
    """Ren et al.'s ``{split}_images_png.pkl`` and ``{split}_labels.pkl`` (protocol 2, as their Python 2 code)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{split}_images_png.pkl").open("wb") as stream:
        pickle.dump([png(image) for _, image in items], stream, protocol=2)
    labels = np.array([label for label, _ in items], dtype=np.int32)
    with (root / f"{split}_labels.pkl").open("wb") as stream:
        pickle.dump({"label_specific": labels, "label_general": labels // 3, "label_specific_str": ["n0"] * len(labels),
                     "label_general_str": {0: "things"}}, stream, protocol=2)


def write_folders(root: Path, split: str, items: list[tuple[int, np.ndarray]]) -> None:
    """``{split}/<class>/*.png``, class folders named so that they sort as the labels do."""
    for position, (label, image) in enumerate(items):
        folder = root / split / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{position:06d}.png")


def make_root(root: Path, layout: str, data=DATA) -> Path:
    for split, items in data.items():
        (write_pickles if layout == "pickle" else write_folders)(root, split, items)
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiered")
    return {layout: make_root(base / layout / "tiered-imagenet", layout) for layout in ("pickle", "folders")}


@pytest.mark.parametrize("layout", ["pickle", "folders"])
def test_both_layouts_load_with_classes_sorted_and_unequal(roots, layout):
    suite = TieredImageNet(data_dir=roots[layout].parent)  # DIR/tiered-imagenet
    suite.prepare()
    for split, items in DATA.items():
        pool = suite.pool(split)
        assert suite.num_classes(split) == SPLIT_CLASSES[split]
        for c in range(SPLIT_CLASSES[split]):
            expected = np.stack([image for label, image in items if label == LABEL_BASE[split] + c])  # file order
            assert pool.examples(c) == count(c) and np.array_equal(pool.base_images(c, np.arange(count(c))), expected)


def test_episode_shapes_labels_and_queries(roots):
    suite = TieredImageNet(data_dir=roots["pickle"])
    one_shot, five_shot = setting(suite, "5-way 1-shot"), setting(suite, "5-way 5-shot")
    episode = suite.sample_episode("test", five_shot, seed=0, index=1)
    assert episode.support_x.shape == (25, 3, 84, 84) and episode.query_x.shape == (75, 3, 84, 84)
    assert episode.support_y.tolist() == sorted(list(range(5)) * 5)
    assert episode.query_y.tolist() == sorted(list(range(5)) * 15)
    train = suite.sample_episode("train", one_shot, seed=0, index=1)
    assert train.support_x.shape == (5, 3, 84, 84)
    assert train.query_x.shape == (25, 3, 84, 84)  # 5 queries per class, as Ren et al.
    pool = suite.pool("train")
    for image, label in zip(train.query_x, train.query_y):  # label k's images are class classes[k]'s
        base = int(train.classes[label])
        members = pool.draw(base, np.arange(pool.examples(base)))
        assert any(np.array_equal(image.numpy(), member) for member in members)


def test_layouts_give_identical_episodes_and_same_seed_same_episode(roots):
    pickled, folders = TieredImageNet(data_dir=roots["pickle"]), TieredImageNet(data_dir=roots["folders"])
    one_shot = setting(pickled, "5-way 1-shot")
    for split in SPLIT_CLASSES:
        a = pickled.sample_episode(split, one_shot, seed=1, index=3)
        b = folders.sample_episode(split, one_shot, seed=1, index=3)
        assert all(x.numpy().tobytes() == y.numpy().tobytes() for x, y in zip(a, b)), split
    TieredImageNet._pools.clear()  # read back from the image cache
    again = TieredImageNet(data_dir=roots["pickle"]).sample_episode("test", one_shot, seed=1, index=3)
    assert all(torch.equal(x, y) for x, y in zip(a, again))
    assert not torch.equal(a.support_x, pickled.sample_episode("test", one_shot, seed=2, index=3).support_x)


def test_suite_passes_the_conformance_kit(roots):
    assert_suite_conforms(TieredImageNet(data_dir=roots["pickle"]), SuiteCheck(episodes=3))


def test_folder_images_of_another_size_are_resized(tmp_path):
    root = tmp_path / "big"
    write_folders(root, "val", [(0, np.full((100, 90, 3), 30, np.uint8))] * 3)
    pool = TieredImageNet(data_dir=root).pool("val")
    assert pool.images.shape == (3, 84, 84, 3) and int(pool.images.min()) == int(pool.images.max()) == 30


def test_missing_data_and_files_are_reported(tmp_path):
    expect_error(TieredImageNet(), "suite 'tieredimagenet' needs its data", "DIR/tiered-imagenet/ holds")
    expect_error(TieredImageNet(data_dir=tmp_path), "suite 'tieredimagenet': no data found; expected "
                 "{train,val,test}_images_png.pkl with {train,val,test}_labels.pkl", str(tmp_path / "tiered-imagenet"))
    write_pickles(tmp_path, "train", DATA["train"])
    expect_error(TieredImageNet(data_dir=tmp_path), f"tieredimagenet: {tmp_path} has no 'val' split; expected "
                 "val_images_png.pkl with val_labels.pkl, or val/<class>/*.jpg", split="val")
    (tmp_path / "train_labels.pkl").unlink()
    expect_error(TieredImageNet(data_dir=tmp_path), f"{tmp_path / 'train_images_png.pkl'} has no train_labels.pkl "
                 "beside it", split="train")


def test_corrupt_and_mismatched_files_are_reported(tmp_path):
    root = tmp_path / "corrupt"
    write_pickles(root, "test", DATA["test"])
    path = root / "test_images_png.pkl"
    path.write_bytes(path.read_bytes()[:1000])
    expect_error(TieredImageNet(data_dir=root), f"tieredimagenet: cannot read {path}: ",
                 "expected a pickled list of PNG-encoded images", split="test")

    root = tmp_path / "notpng"
    write_pickles(root, "test", DATA["test"])
    with (root / "test_images_png.pkl").open("wb") as stream:
        pickle.dump([np.zeros(10, np.uint8)] * len(DATA["test"]), stream, protocol=2)
    expect_error(TieredImageNet(data_dir=root), "tieredimagenet: cannot decode image 0 of "
                 f"{root / 'test_images_png.pkl'}: ", split="test")

    root = tmp_path / "mismatch"
    write_pickles(root, "test", DATA["test"][:-1])
    with (root / "test_labels.pkl").open("wb") as stream:
        pickle.dump({"label_specific": np.zeros(len(DATA["test"]), np.int32)}, stream)
    expect_error(TieredImageNet(data_dir=root), f"holds {len(DATA['test']) - 1} images but its labels file "
                 f"{len(DATA['test'])} labels", split="test")

    root = tmp_path / "nolabels"
    write_pickles(root, "test", DATA["test"])
    with (root / "test_labels.pkl").open("wb") as stream:
        pickle.dump({"labels": [0, 1]}, stream)
    expect_error(TieredImageNet(data_dir=root), "is not a tieredImageNet labels file; expected a pickled dict with "
                 "label_specific", split="test")

    root = tmp_path / "badimage"
    write_folders(root, "test", DATA["test"][:6])
    victim = sorted((root / "test").rglob("*.png"))[2]
    victim.write_bytes(b"\x89PNG broken")
    expect_error(TieredImageNet(data_dir=root), f"tieredimagenet: cannot decode {victim}: ", split="test")


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_labels_pickle_is_refused(tmp_path):
    write_pickles(tmp_path, "train", DATA["train"])
    marker = tmp_path / "pwned"
    with (tmp_path / "train_labels.pkl").open("wb") as stream:
        pickle.dump({"label_specific": RunsShell(marker)}, stream)
    expect_error(TieredImageNet(data_dir=tmp_path), f"tieredimagenet: {tmp_path / 'train_labels.pkl'} refers to ",
                 "refused to unpickle", split="train")
    assert not marker.exists()


def test_too_few_classes_or_images_are_reported(tmp_path):
    data = {"val": make_split("val", classes=4), "test": make_split("test", counts=lambda c: 12 if c == 2 else 20)}
    root = make_root(tmp_path / "few", "pickle", data)
    suite = TieredImageNet(data_dir=root)
    with pytest.raises(DataError, match="^suite 'tieredimagenet': split 'val' has 4 classes, fewer than the 5 that "
                                        "5-way 1-shot needs$"):
        suite.sample_episode("val", setting(suite, "5-way 1-shot"), 0, 0)
    with pytest.raises(DataError, match="^suite 'tieredimagenet': split 'test' has 12 images in its smallest class, "
                                        "fewer than the 16 that 5-way 1-shot with 15 queries needs$"):
        suite.sample_episode("test", setting(suite, "5-way 1-shot"), 0, 0)
