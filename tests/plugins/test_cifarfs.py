"""The CIFAR-FS suite on tiny generated data in both layouts: MetaOptNet's pickles and R2D2's PNG folders."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_plugins.suites.cifarfs import CIFARFS
from PIL import Image

from bench.errors import DataError
from bench.testing import SuiteCheck, assert_suite_conforms
from helpers import expect_error, setting

SPLIT_LABELS = {"train": [42, 3, 17, 88, 5, 60], "val": [9, 71, 30, 14, 55], "test": [99, 0, 23, 47, 66]}
"""CIFAR-100 class indices of each split, in no order (the suite sorts them)."""
PER_CLASS = 20


@pytest.fixture(autouse=True)
def private(private_cache):
    """Decoded-image caches and the data-dir variable stay inside the test session."""


def make_split(split: str, labels: list[int] | None = None, per_class: int = PER_CLASS) -> tuple[np.ndarray, list[int]]:
    """(uint8 [N, 32, 32, 3], labels) with the classes' images interleaved: a colour per class, noise per image."""
    rng = np.random.default_rng(list(split.encode()))
    labels = [label for label in (labels or SPLIT_LABELS[split]) for _ in range(per_class)]
    colours = {label: rng.integers(0, 200, size=3) for label in set(labels)}
    images = np.stack([colours[label] + rng.integers(0, 50, size=(32, 32, 3)) for label in labels]).astype(np.uint8)
    order = rng.permutation(len(labels))
    return images[order], [labels[k] for k in order]


DATA = {split: make_split(split) for split in SPLIT_LABELS}


def write_pickle(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """MetaOptNet's CIFAR_FS_{split}.pickle: {"data": uint8 [N, 32, 32, 3], "labels": [int]} (protocol 2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        pickle.dump({"data": images, "labels": labels}, stream, protocol=2)


def write_folders(root: Path, split: str, images: np.ndarray, labels: list[int]) -> None:
    """R2D2's layout: data/<class>/*.png and splits/bertinetto/<split>.txt (names sort as the labels do)."""
    names = {label: f"class_{label:03d}" for label in labels}
    for position, (image, label) in enumerate(zip(images, labels)):
        folder = root / "data" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{position:05d}.png")
    (root / "splits" / "bertinetto").mkdir(parents=True, exist_ok=True)
    (root / "splits" / "bertinetto" / f"{split}.txt").write_text("".join(f"{name}\n" for name in names.values()))


def make_root(root: Path, layout: str, data=DATA) -> Path:
    for split, (images, labels) in data.items():
        if layout == "pickle":
            write_pickle(root / f"CIFAR_FS_{split}.pickle", images, labels)
        else:
            write_folders(root, split, images, labels)
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("cifarfs")
    return {"pickle": make_root(base / "pickle" / "CIFAR_FS", "pickle"),
            "folders": make_root(base / "folders" / "cifar100", "folders")}


@pytest.mark.parametrize("layout", ["pickle", "folders"])
def test_both_layouts_load_classes_in_label_order(roots, layout):
    suite = CIFARFS(data_dir=roots[layout].parent)  # DIR/CIFAR_FS or DIR/cifar100
    suite.prepare()
    for split, (images, labels) in DATA.items():
        pool = suite.pool(split)
        assert suite.num_classes(split) == len(SPLIT_LABELS[split])
        for base, label in enumerate(sorted(SPLIT_LABELS[split])):
            expected = images[[k for k, other in enumerate(labels) if other == label]]  # file order within a class
            assert np.array_equal(pool.base_images(base, np.arange(pool.examples(base))), expected)


def test_episodes_have_the_settings_shapes_and_labels(roots):
    suite = CIFARFS(data_dir=roots["pickle"])
    assert [s.name for s in suite.settings()] == ["5-way 1-shot", "5-way 5-shot", "vary"]
    episode = suite.sample_episode("test", setting(suite, "5-way 5-shot"), seed=0, index=0)
    assert episode.support_x.shape == (25, 3, 32, 32) and episode.query_x.shape == (75, 3, 32, 32)
    assert episode.support_y.tolist() == sorted(list(range(5)) * 5)
    assert episode.query_y.tolist() == sorted(list(range(5)) * 15)
    train = suite.sample_episode("train", setting(suite, "5-way 1-shot"), seed=0, index=0)
    assert train.support_x.shape == (5, 3, 32, 32) and train.query_x.shape == (75, 3, 32, 32)
    assert train.classes.max() < 6 and len(set(train.classes.tolist())) == 5
    pool = suite.pool("train")
    for image, label in zip(train.support_x, train.support_y):  # label k's image is one of class classes[k]'s
        base = int(train.classes[label])
        assert any(np.array_equal(image.numpy(), m) for m in pool.draw(base, np.arange(pool.examples(base))))
    assert suite.backbone(setting(suite, "5-way 1-shot"))(train.support_x).shape == (5, 5)


def test_layouts_give_identical_episodes_and_same_seed_same_episode(roots):
    pickled, folders = CIFARFS(data_dir=roots["pickle"]), CIFARFS(data_dir=roots["folders"])
    one_shot = setting(pickled, "5-way 1-shot")
    for split in SPLIT_LABELS:
        a = pickled.sample_episode(split, one_shot, seed=3, index=9)
        b = folders.sample_episode(split, one_shot, seed=3, index=9)
        assert all(x.numpy().tobytes() == y.numpy().tobytes() for x, y in zip(a, b)), split
    CIFARFS._pools.clear()
    again = CIFARFS(data_dir=roots["folders"]).sample_episode("test", one_shot, seed=3, index=9)  # from the cache
    assert all(torch.equal(x, y) for x, y in zip(a, again))
    assert not torch.equal(a.query_x, pickled.sample_episode("test", one_shot, seed=3, index=10).query_x)


def test_suite_passes_the_conformance_kit(roots):
    assert_suite_conforms(CIFARFS(data_dir=roots["pickle"]), SuiteCheck(episodes=3))


def test_missing_data_is_reported(tmp_path):
    expect_error(CIFARFS(), "suite 'cifarfs' needs its data", "DIR/CIFAR_FS/ holds CIFAR_FS_{train,val,test}.pickle")
    expect_error(CIFARFS(data_dir=tmp_path), "suite 'cifarfs': no data found", str(tmp_path / "CIFAR_FS"),
                 str(tmp_path / "cifar100"))
    write_pickle(tmp_path / "CIFAR_FS_train.pickle", *DATA["train"])
    expect_error(CIFARFS(data_dir=tmp_path), f"cifarfs: {tmp_path} has no 'val' split; expected CIFAR_FS_val.pickle, "
                 "or splits/bertinetto/val.txt with data/<class>/*.png", split="val")
    root = make_root(tmp_path / "r2d2", "folders", {"val": DATA["val"]})
    with (root / "splits" / "bertinetto" / "val.txt").open("a") as stream:
        stream.write("\nclass_missing\n")
    expect_error(CIFARFS(data_dir=root), f"cifarfs: {root / 'splits/bertinetto/val.txt'} line 7 names class "
                 f"'class_missing', but {root / 'data' / 'class_missing'} does not exist", split="val")


def test_corrupt_and_malformed_pickles_are_reported(tmp_path):
    good = tmp_path / "good.pickle"
    write_pickle(good, *DATA["test"])
    path = tmp_path / "CIFAR_FS_test.pickle"
    path.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    expect_error(CIFARFS(data_dir=tmp_path), f"cifarfs: cannot read {path}: ", "expected a pickled dict with data",
                 split="test")
    images, labels = DATA["test"]
    cases = [
        ({"images": images}, ("is not a CIFAR few-shot pickle; expected a pickled dict with data "
                              "(uint8 [N, 32, 32, 3]) and labels")),
        ({"data": images[:, :16], "labels": labels}, "data is uint8 [100, 16, 32, 3]; expected uint8 [N, 32, 32, 3]"),
        ({"data": images, "labels": labels[:-1]}, "labels is int64 [99]; expected one integer per image (100)"),
    ]
    for number, (content, message) in enumerate(cases):
        folder = tmp_path / f"case{number}"
        folder.mkdir()
        with (folder / "CIFAR_FS_test.pickle").open("wb") as stream:
            pickle.dump(content, stream)
        expect_error(CIFARFS(data_dir=folder), str(folder / "CIFAR_FS_test.pickle"), message, split="test")
    root = make_root(tmp_path / "png", "folders", {"test": DATA["test"]})
    victim = sorted((root / "data").rglob("*.png"))[4]
    victim.write_bytes(b"\x89PNG broken")
    expect_error(CIFARFS(data_dir=root), f"cifarfs: cannot decode {victim}: ", split="test")


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "CIFAR_FS_train.pickle"
    with path.open("wb") as stream:
        pickle.dump({"data": RunsShell(marker), "labels": [0]}, stream)
    expect_error(CIFARFS(data_dir=tmp_path), f"cifarfs: {path} refers to ", "refused to unpickle", split="train")
    assert not marker.exists()


def test_too_few_classes_or_images_are_reported(tmp_path):
    root = make_root(tmp_path, "pickle", {"val": make_split("val", labels=[1, 2, 3, 4]),
                                          "test": make_split("test", per_class=12)})
    suite = CIFARFS(data_dir=root)
    with pytest.raises(DataError, match="^suite 'cifarfs': split 'val' has 4 classes, fewer than the 5 that 5-way "
                                        "1-shot needs$"):
        suite.sample_episode("val", setting(suite, "5-way 1-shot"), 0, 0)
    with pytest.raises(DataError, match="^suite 'cifarfs': split 'test' has 12 images in its smallest class, fewer "
                                        "than the 16 that 5-way 1-shot with 15 queries needs$"):
        suite.sample_episode("test", setting(suite, "5-way 1-shot"), 0, 0)
