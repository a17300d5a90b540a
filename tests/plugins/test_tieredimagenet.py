"""The tieredImageNet suite on tiny generated data in its three layouts: Ren et al.'s PNG pickles, MetaOptNet's npz
and class folders."""
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


def bgr(image: np.ndarray) -> np.ndarray:
    """``image`` with its channels reversed: what cv2.imdecode returns for the PNG of an RGB image."""
    return image[..., ::-1]


def write_npz(root: Path, split: str, items: list[tuple[int, np.ndarray]]) -> None:
    """MetaOptNet's ``{split}_images.npz`` (``images``: uint8 [N, 84, 84, 3] BGR, as Ren et al.'s ``decompress``
    writes it) and ``{split}_labels.pkl`` (``labels``: a list of ints)."""
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"{split}_images.npz", images=np.stack([bgr(image) for _, image in items]))
    with (root / f"{split}_labels.pkl").open("wb") as stream:
        pickle.dump({"labels": [label for label, _ in items]}, stream, protocol=2)


def write_folders(root: Path, split: str, items: list[tuple[int, np.ndarray]]) -> None:
    """``{split}/<class>/*.png``, class folders named so that they sort as the labels do."""
    for position, (label, image) in enumerate(items):
        folder = root / split / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{position:06d}.png")


WRITERS = {"pickle": write_pickles, "npz": write_npz, "folders": write_folders}


def make_root(root: Path, layout: str, data=DATA) -> Path:
    for split, items in data.items():
        WRITERS[layout](root, split, items)
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiered")
    return {layout: make_root(base / layout / "tiered-imagenet", layout) for layout in WRITERS}


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_every_layout_loads_rgb_with_classes_sorted_and_unequal(roots, layout):
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
    pickled = TieredImageNet(data_dir=roots["pickle"])
    others = [TieredImageNet(data_dir=roots[layout]) for layout in ("npz", "folders")]
    one_shot = setting(pickled, "5-way 1-shot")
    for split in SPLIT_CLASSES:
        a = pickled.sample_episode(split, one_shot, seed=1, index=3)
        for other in others:
            b = other.sample_episode(split, one_shot, seed=1, index=3)
            assert all(x.numpy().tobytes() == y.numpy().tobytes() for x, y in zip(a, b)), (split, other.data_dir)
    TieredImageNet._pools.clear()  # read back from the image cache
    again = TieredImageNet(data_dir=roots["pickle"]).sample_episode("test", one_shot, seed=1, index=3)
    assert all(torch.equal(x, y) for x, y in zip(a, again))
    assert not torch.equal(a.support_x, pickled.sample_episode("test", one_shot, seed=2, index=3).support_x)


@pytest.mark.parametrize("layout", ["pickle", "npz"])
def test_suite_passes_the_conformance_kit(roots, layout):
    assert_suite_conforms(TieredImageNet(data_dir=roots[layout]), SuiteCheck(episodes=3))


def test_npz_episodes_hold_its_pixels_in_rgb_order(tmp_path):
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, size=(5, 6, 84, 84, 3), dtype=np.uint8)  # 5 classes x 6 random images
    write_npz(tmp_path, "val", [(100 + c, rgb[c, j]) for j in range(6) for c in range(5)])
    suite = TieredImageNet(data_dir=tmp_path)
    for index in range(3):
        episode = suite.sample_episode("val", setting(suite, "5-way 1-shot"), seed=0, index=index)
        for images, labels in ((episode.support_x, episode.support_y), (episode.query_x, episode.query_y)):
            for image, label in zip(images, labels):
                pixels = np.rint(image.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
                assert any(np.array_equal(pixels, source) for source in rgb[int(episode.classes[label])])
    TieredImageNet._pools.clear()  # read back from the image cache: still RGB
    pool = TieredImageNet(data_dir=tmp_path).pool("val")
    assert np.array_equal(pool.base_images(2, np.arange(6)), rgb[2])


def test_npz_beside_the_png_pickle_is_not_read(tmp_path):
    write_pickles(tmp_path, "val", DATA["val"])
    (tmp_path / "val_images.npz").write_bytes(b"Ren et al.'s read_cache writes its decompressed copy here")
    assert TieredImageNet(data_dir=tmp_path).num_classes("val") == SPLIT_CLASSES["val"]


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
                 "val_images_png.pkl with val_labels.pkl, val_images.npz with val_labels.pkl, or val/<class>/*.jpg",
                 split="val")
    (tmp_path / "train_labels.pkl").unlink()
    expect_error(TieredImageNet(data_dir=tmp_path), f"{tmp_path / 'train_images_png.pkl'} has no train_labels.pkl "
                 "beside it", split="train")
    write_npz(tmp_path / "npz", "test", DATA["test"])
    (tmp_path / "npz" / "test_labels.pkl").unlink()
    expect_error(TieredImageNet(data_dir=tmp_path / "npz"), f"{tmp_path / 'npz' / 'test_images.npz'} has no "
                 "test_labels.pkl beside it", split="test")


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


NPZ_EXPECTED = "expected an npz archive whose images is uint8 [N, 84, 84, 3], without pickled objects"


def npz_root(tmp_path: Path, name: str, **arrays: np.ndarray) -> Path:
    """A root whose test split is MetaOptNet's form of ``DATA["test"]``, its npz holding ``arrays`` if given."""
    root = tmp_path / name
    write_npz(root, "test", DATA["test"])
    if arrays:
        np.savez(root / "test_images.npz", **arrays)
    return root


def test_bad_npz_files_are_reported(tmp_path):
    images = np.stack([bgr(image) for _, image in DATA["test"]])
    root = npz_root(tmp_path, "truncated")
    path = root / "test_images.npz"
    path.write_bytes(path.read_bytes()[:5000])
    expect_error(TieredImageNet(data_dir=root), f"tieredimagenet: {path} is not a zip archive (truncated, or not an "
                 f"npz); {NPZ_EXPECTED}", split="test")

    root = npz_root(tmp_path, "corrupt")
    path = root / "test_images.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one pixel byte: the member's CRC no longer holds
    path.write_bytes(bytes(data))
    expect_error(TieredImageNet(data_dir=root), f"tieredimagenet: cannot read {path}: BadZipFile: ", NPZ_EXPECTED,
                 split="test")

    root = npz_root(tmp_path, "nokey", pictures=images)
    expect_error(TieredImageNet(data_dir=root), f"tieredimagenet: {root / 'test_images.npz'} has no images array "
                 f"(it holds pictures); {NPZ_EXPECTED}", split="test")

    root = npz_root(tmp_path, "shape", images=images[:, :32, :32])
    expect_error(TieredImageNet(data_dir=root), f"tieredimagenet: {root / 'test_images.npz'}: images is uint8 "
                 f"[{len(images)}, 32, 32, 3]; {NPZ_EXPECTED}", split="test")

    root = npz_root(tmp_path, "dtype", images=images.astype(np.float32))
    expect_error(TieredImageNet(data_dir=root), f"tieredimagenet: {root / 'test_images.npz'}: images is float32 "
                 f"[{len(images)}, 84, 84, 3]; {NPZ_EXPECTED}", split="test")

    objects = np.empty(len(images), dtype=object)
    objects[:] = list(images)
    root = npz_root(tmp_path, "objects", images=objects)
    expect_error(TieredImageNet(data_dir=root), f"tieredimagenet: cannot read {root / 'test_images.npz'}: "
                 "ValueError: Object arrays cannot be loaded when allow_pickle=False; " + NPZ_EXPECTED, split="test")

    root = npz_root(tmp_path, "count", images=images[:-1])
    expect_error(TieredImageNet(data_dir=root), f"tieredimagenet: {root / 'test_images.npz'} holds {len(images) - 1} "
                 f"images but its labels file {len(images)} labels", split="test")

    root = npz_root(tmp_path, "renlabels")  # Ren et al.'s labels file beside MetaOptNet's images
    write_pickles(tmp_path / "ren", "test", DATA["test"])
    (root / "test_labels.pkl").write_bytes((tmp_path / "ren" / "test_labels.pkl").read_bytes())
    expect_error(TieredImageNet(data_dir=root), f"tieredimagenet: {root / 'test_labels.pkl'} is not a tieredImageNet "
                 "labels file; expected a pickled dict with labels", split="test")


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


@pytest.mark.parametrize("layout", ["pickle", "npz"])
def test_too_few_classes_or_images_are_reported(tmp_path, layout):
    data = {"val": make_split("val", classes=4), "test": make_split("test", counts=lambda c: 12 if c == 2 else 20)}
    root = make_root(tmp_path / "few", layout, data)
    suite = TieredImageNet(data_dir=root)
    with pytest.raises(DataError, match="^suite 'tieredimagenet': split 'val' has 4 classes, fewer than the 5 that "
                                        "5-way 1-shot needs$"):
        suite.sample_episode("val", setting(suite, "5-way 1-shot"), 0, 0)
    with pytest.raises(DataError, match="^suite 'tieredimagenet': split 'test' has 12 images in its smallest class, "
                                        "fewer than the 16 that 5-way 1-shot with 15 queries needs$"):
        suite.sample_episode("test", setting(suite, "5-way 1-shot"), 0, 0)
