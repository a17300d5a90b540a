"""The mini-ImageNet suite on tiny generated data sets, in both on-disk layouts (pickle caches, images + CSV)."""
from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_plugins.suites.miniimagenet import MiniImageNet
from PIL import Image

from bench.cli import main
from bench.testing import SuiteCheck, assert_suite_conforms
from helpers import expect_error, setting

SPLIT_CLASSES = {"train": 6, "val": 5, "test": 5}
PER_CLASS = 21
PICKLES = {"train": "mini-imagenet-cache-train.pkl", "val": "mini-imagenet-cache-validation.pkl",
           "test": "mini-imagenet-cache-test.pkl"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Decoded-image caches and the data-dir variable stay inside the test."""
    monkeypatch.setenv("METABENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("METABENCH_DATA_DIR", raising=False)


def make_split(split: str, classes: int | None = None, per_class: int = PER_CLASS) -> dict[str, np.ndarray]:
    """Class name -> uint8 [per_class, 84, 84, 3]: a class colour and stripe pattern plus per-image noise."""
    rng = np.random.default_rng(list(split.encode()))
    data = {}
    for c in range(classes or SPLIT_CLASSES[split]):
        colour = rng.integers(0, 256, size=3)
        stripes = (np.arange(84) // (3 + c) % 2 * 60)[None, :, None]
        noise = rng.integers(0, 40, size=(per_class, 84, 84, 3))
        data[f"n{split[:2]}{c:06d}"] = ((colour + stripes + noise) % 256).astype(np.uint8)
    return data


DATA = {split: make_split(split) for split in SPLIT_CLASSES}


def write_pickle(path: Path, classes: dict[str, np.ndarray], protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    """A learn2learn-style cache; images stored shuffled, class_dict in unsorted order."""
    names = list(classes)[::-1]
    flat = [(name, j) for name in names for j in range(len(classes[name]))]
    order = np.random.default_rng(0).permutation(len(flat))
    image_data = np.stack([classes[flat[k][0]][flat[k][1]] for k in order])
    position = {flat[k]: i for i, k in enumerate(order)}
    class_dict = {name: [position[(name, j)] for j in range(len(classes[name]))] for name in names}
    with path.open("wb") as stream:
        pickle.dump({"image_data": image_data, "class_dict": class_dict}, stream, protocol=protocol)


def write_csv(root: Path, split: str, classes: dict[str, np.ndarray], transform=None) -> None:
    """PNGs in images/ and a Ravi-style split file, rows of different classes interleaved."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for name, images in classes.items():
        for j, array in enumerate(images):
            filename = f"{name}{j:08d}.png"
            image = Image.fromarray(array)
            (transform(image) if transform else image).save(root / "images" / filename)
            rows.append((j, name, filename))
    with (root / f"{split}.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["filename", "label"])
        writer.writerows((filename, name) for _, name, filename in sorted(rows))


def make_root(root: Path, layout: str, data: dict[str, dict[str, np.ndarray]] = DATA) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, classes in data.items():
        if layout == "pickle":
            write_pickle(root / PICKLES[split], classes)
        else:
            write_csv(root, split, classes)
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("mini")
    return {layout: make_root(base / layout / "miniimagenet", layout) for layout in ("pickle", "csv")}


def test_suite_passes_the_conformance_kit(roots):
    assert_suite_conforms(MiniImageNet(data_dir=roots["pickle"].parent), SuiteCheck(episodes=5))


@pytest.mark.parametrize("layout", ["pickle", "csv"])
def test_both_layouts_load(roots, layout):
    suite = MiniImageNet(data_dir=roots[layout].parent)  # DIR/miniimagenet
    suite.prepare()
    assert [s.name for s in suite.settings()] == ["5-way 1-shot", "5-way 5-shot", "vary"]
    for split, count in SPLIT_CLASSES.items():
        assert suite.num_classes(split) == count
        expected = np.stack([DATA[split][name] for name in sorted(DATA[split])])
        assert np.array_equal(suite.pool(split).images, expected)  # sorted classes, file order within
    episode = suite.sample_episode("test", setting(suite, "5-way 1-shot"), seed=0, index=3)
    assert episode.support_x.shape == (5, 3, 84, 84) and episode.query_x.shape == (75, 3, 84, 84)
    assert episode.support_x.dtype == torch.float32 and 0 <= episode.support_x.min() and episode.query_x.max() <= 1
    assert episode.support_y.tolist() == list(range(5))
    assert episode.query_y.tolist() == [c for c in range(5) for _ in range(15)]
    assert sorted(episode.classes.tolist()) == sorted(set(episode.classes.tolist())) and episode.classes.max() < 5
    train = suite.sample_episode("train", setting(suite, "5-way 5-shot"), seed=0, index=0)
    assert train.support_x.shape == (25, 3, 84, 84) and train.query_x.shape == (75, 3, 84, 84)  # 15 per class
    assert suite.sample_episode("val", setting(suite, "5-way 1-shot"), seed=0, index=0).query_x.shape == (75, 3, 84, 84)
    assert train.classes.shape == (5,) and train.classes.max() < 6
    # the label-k images really are class classes[k]'s images (channel-first, scaled to [0, 1])
    pool = suite.pool("train").images
    for image, label in zip(train.support_x, train.support_y):
        base = pool[int(train.classes[label])]
        assert any(torch.equal(image, torch.from_numpy(b.transpose(2, 0, 1).astype(np.float32) / 255)) for b in base)


def test_layouts_give_identical_episodes(roots):
    pickled, listed = MiniImageNet(data_dir=roots["pickle"]), MiniImageNet(data_dir=roots["csv"])
    for split in SPLIT_CLASSES:
        for name in ("5-way 1-shot", "5-way 5-shot"):
            if split != "train" and name == "5-way 5-shot":
                continue  # 5 + 15 queries fit in 21 images; checked once is enough
            for index in (0, 7):
                a = pickled.sample_episode(split, setting(pickled, name), seed=1, index=index)
                b = listed.sample_episode(split, setting(listed, name), seed=1, index=index)
                assert all(torch.equal(x, y) for x, y in zip(a, b)), (split, name, index)


def test_episodes_are_pure(roots):
    suite = MiniImageNet(data_dir=roots["pickle"])
    one_shot = setting(suite, "5-way 1-shot")
    a = suite.sample_episode("val", one_shot, seed=2, index=5)
    b = MiniImageNet(data_dir=roots["pickle"]).sample_episode("val", one_shot, seed=2, index=5)
    assert all(x.numpy().tobytes() == y.numpy().tobytes() for x, y in zip(a, b))
    for other in (suite.sample_episode("val", one_shot, seed=2, index=6),
                  suite.sample_episode("val", one_shot, seed=3, index=5),
                  suite.sample_episode("test", one_shot, seed=2, index=5)):
        assert not torch.equal(a.support_x, other.support_x)


def test_csv_images_are_converted_and_resized(tmp_path):
    data = {"train": make_split("train", classes=5, per_class=6)}
    root = tmp_path / "data"
    write_csv(root, "train", data["train"], transform=lambda image: image.convert("RGBA").resize((100, 90)))
    pool = MiniImageNet(data_dir=root).pool("train")
    assert pool.images.shape == (5, 6, 84, 84, 3) and pool.images.dtype == np.uint8
    # the cache is written and read back on the next load
    assert len(list((tmp_path / "cache").glob("miniimagenet-train-*.npz"))) == 1
    MiniImageNet._pools.clear()
    assert np.array_equal(MiniImageNet(data_dir=root).pool("train").images, pool.images)


def test_image_cache_is_read_back_and_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    """The suites' one cache helper: built once, then read; a write that fails (here: the disk, at fsync)
    costs only the cache, the images are still returned and no temporary file stays behind."""
    from bench_plugins.suites._images import cached_images

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    builds = []

    def build():
        builds.append(1)
        return images

    def failing_fsync(descriptor):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr("bench.store.os.fsync", failing_fsync)
        assert np.array_equal(cached_images("toy", build, fits=lambda cached: True), images)
    assert list((tmp_path / "cache").iterdir()) == []
    assert np.array_equal(cached_images("toy", build, fits=lambda cached: True), images) and len(builds) == 2
    assert [path.name for path in (tmp_path / "cache").iterdir()] == ["toy.npz"]
    assert np.array_equal(cached_images("toy", build, fits=lambda cached: True), images) and len(builds) == 2
    assert np.array_equal(cached_images("toy", build, fits=lambda cached: cached.shape == (9,)), images)
    assert len(builds) == 3  # a cached array that does not fit is rebuilt


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_protocols_load(tmp_path, protocol):
    write_pickle(tmp_path / PICKLES["train"], DATA["train"], protocol=protocol)
    assert MiniImageNet(data_dir=tmp_path).pool("train").images.shape == (6, PER_CLASS, 84, 84, 3)


def test_missing_data_is_reported(tmp_path):
    expect_error(MiniImageNet(), "suite 'miniimagenet' needs its data: pass --data-dir DIR",
                 "DIR/miniimagenet/ holds mini-imagenet-cache-{train,validation,test}.pkl")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(MiniImageNet(data_dir=empty), "no data found; expected mini-imagenet-cache-", f"{empty / 'miniimagenet'}")
    write_pickle(tmp_path / PICKLES["train"], DATA["train"])
    write_pickle(tmp_path / PICKLES["val"], DATA["val"])
    expect_error(MiniImageNet(data_dir=tmp_path), f"{tmp_path} has no 'test' split; expected mini-imagenet-cache-test.pkl, "
                 "or test.csv with images/", split="test")


def test_corrupt_pickles_are_reported(tmp_path):
    good = tmp_path / "good.pkl"
    write_pickle(good, DATA["test"])
    path = tmp_path / PICKLES["test"]
    path.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    expect_error(MiniImageNet(data_dir=tmp_path), f"cannot read {path}: ", "expected a pickled dict", split="test")
    path.write_bytes(b"this is not a pickle")
    expect_error(MiniImageNet(data_dir=tmp_path), f"cannot read {path}", split="test")
    cases = [
        ([1, 2, 3], "is not a mini-ImageNet cache"),
        ({"image_data": np.zeros((3, 32, 32, 3), np.uint8), "class_dict": {"a": [0]}},
         "image_data is uint8 [3, 32, 32, 3]; expected uint8 [N, 84, 84, 3]"),
        ({"image_data": np.zeros((3, 84, 84, 3), np.uint8), "class_dict": {"a": [0], "b": [7]}},
         "class b indexes past image_data's 3 images"),
    ]
    for number, (content, message) in enumerate(cases):
        folder = tmp_path / f"case{number}"
        folder.mkdir()
        with (folder / PICKLES["test"]).open("wb") as stream:
            pickle.dump(content, stream)
        expect_error(MiniImageNet(data_dir=folder), f"{folder / PICKLES['test']}", message, split="test")


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class LoadsAnything:
    def __reduce__(self):
        return np.load, ("/nonexistent.npy", None, True)


@pytest.mark.parametrize("payload", ["os.system", "numpy.load", "nested"])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = {"os.system": RunsShell(marker), "numpy.load": LoadsAnything(),
            "nested": np.array([RunsShell(marker)], dtype=object)}[payload]
    path = tmp_path / PICKLES["train"]
    with path.open("wb") as stream:
        pickle.dump({"image_data": evil, "class_dict": {"a": [0]}}, stream)
    message = expect_error(MiniImageNet(data_dir=tmp_path), f"miniimagenet: {path} refers to ", "refused to unpickle",
                           split="train")
    assert ("numpy.load" if payload == "numpy.load" else "system") in message
    assert not marker.exists()


def test_bad_csv_layouts_are_reported(tmp_path):
    classes = make_split("val", classes=5, per_class=4)
    missing = make_root(tmp_path / "missing", "csv", {"val": classes})
    victim = sorted((missing / "images").iterdir())[2]
    victim.unlink()
    expect_error(MiniImageNet(data_dir=missing), f"{missing / 'val.csv'} line ", f"names {victim}, which does not exist",
                 split="val")

    broken = make_root(tmp_path / "broken", "csv", {"val": classes})
    victim = sorted((broken / "images").iterdir())[5]
    victim.write_bytes(b"\x89PNG not really")
    expect_error(MiniImageNet(data_dir=broken), f"miniimagenet: cannot decode {victim}: ", split="val")

    header = make_root(tmp_path / "header", "csv", {"val": classes})
    (header / "val.csv").write_text("image,class\n" + "\n".join((header / "val.csv").read_text().splitlines()[1:]))
    expect_error(MiniImageNet(data_dir=header), f"{header / 'val.csv'} does not start with the header 'filename,label'",
                 split="val")


@pytest.mark.parametrize("layout", ["pickle", "csv"])
def test_unequal_class_sizes_are_reported(tmp_path, layout):
    classes = make_split("test", classes=5, per_class=4)
    name = sorted(classes)[3]
    classes[name] = classes[name][:3]
    root = make_root(tmp_path / layout, layout, {"test": classes})
    source = root / (PICKLES["test"] if layout == "pickle" else "test.csv")
    expect_error(MiniImageNet(data_dir=root), f"class {name} in {source} has 3 images; the other classes have 4",
                 split="test")


def test_cli_smoke_run(roots, tmp_path, capsys):
    status = main(["run", "--suites", "miniimagenet", "--learners", "maml,finetune", "--data-dir",
                   str(roots["pickle"].parent), "--profile", "smoke", "--tasks", "4", "--episodes", "2", "--steps", "1",
                   "--shots", "1", "--set", "maml.inner_steps=1", "--out", str(tmp_path / "run"), "--no-progress"])
    stdout, stderr = capsys.readouterr()
    assert status == 0, stderr
    assert "accuracy" in stdout and "miniimagenet" in stdout, stdout
    assert "maml" in stdout and "finetune" in stdout
    assert main(["run", "--suites", "miniimagenet", "--learners", "maml", "--data-dir", str(tmp_path / "nowhere"),
                 "--profile", "smoke", "--out", str(tmp_path / "run2"), "--no-progress"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("error:") == 1 and "suite 'miniimagenet': no data found" in stderr
