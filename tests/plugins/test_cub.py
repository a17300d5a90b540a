"""The CUB suite on a tiny generated CUB_200_2011/images tree: Chen et al.'s split, unequal class sizes, episodes and
errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bench_plugins.suites.cub import CUB, chen_resize, chen_split
from PIL import Image

from bench.errors import DataError
from bench.testing import SuiteCheck, assert_suite_conforms
from helpers import setting

CLASSES = 20
SPECIES = ("Albatross", "Auklet", "Blackbird", "Bunting", "Cardinal")


def class_name(index: int) -> str:
    return f"{index + 1:03d}.{SPECIES[index % len(SPECIES)]}_{index}"


def count(index: int) -> int:
    """Unequal class sizes, 21-24 images: enough for a 5-shot meta-train episode (5 + 16 queries)."""
    return 21 + index % 4


def colour(index: int, image: int) -> np.ndarray:
    """A uniform colour per image, (12 x class, 120, 40) brightened by the image's number: red minus green names the
    class, the brightness (what JPEG keeps best) the image."""
    return np.array([12 * index + image, 120 + image, 40 + image], dtype=np.uint8)


def write_tree(root: Path, classes: int = CLASSES, counts=count) -> Path:
    """CUB_200_2011/images/<NNN.Name>/*.jpg, 8x8 JPEGs (resized to 84x84 on load), folders made in shuffled order."""
    images = root / "CUB_200_2011" / "images"
    for index in np.random.default_rng(0).permutation(classes):
        folder = images / class_name(int(index))
        folder.mkdir(parents=True)
        for image in range(counts(int(index))):
            pixels = np.broadcast_to(colour(int(index), image), (8, 8, 3))
            Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{class_name(int(index))}_{image:04d}.jpg",
                                                               quality=95)
    return root


def class_of(image: torch.Tensor) -> int:
    """The generated class of a decoded image (channel-first, in [0, 1]) from its red minus green."""
    red, green = (image[channel].mean().item() * 255 for channel in (0, 1))
    return round((red - green + 120) / 12)


@pytest.fixture(autouse=True)
def private(private_cache):
    """Decoded-image caches and the data-dir variable stay inside the test session."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("cub"))


def expect_error(suite: CUB, *fragments: str, split: str | None = None, episode: str | None = None) -> None:
    with pytest.raises(DataError) as caught:
        if episode:
            suite.sample_episode(split, setting(suite, episode), 0, 0)
        else:
            suite.pool(split) if split else suite.prepare()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_chens_rule_by_hand():
    """CloserLookFewShot's write_CUB_filelist.py: base if i % 2 == 0, val if i % 4 == 1, novel if i % 4 == 3."""
    assert chen_split(12) == {"train": [0, 2, 4, 6, 8, 10], "val": [1, 5, 9], "test": [3, 7, 11]}
    full = chen_split(200)
    assert {split: len(indices) for split, indices in full.items()} == {"train": 100, "val": 50, "test": 50}
    assert full["val"][:4] == [1, 5, 9, 13] and full["test"][-3:] == [191, 195, 199]
    assert sorted(full["train"] + full["val"] + full["test"]) == list(range(200))


def test_resize_is_chens_test_transform():
    """torchvision's Resize([96, 96]) then CenterCrop(84), Chen et al.'s data/datamgr.py without augmentation."""
    from torchvision import transforms

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (53, 37, 3), dtype=np.uint8))
    reference = transforms.Compose([transforms.Resize([96, 96]), transforms.CenterCrop(84)])(image)
    assert np.array_equal(np.asarray(chen_resize(image, 84)), np.asarray(reference))


def test_split_follows_chens_rule_with_unequal_classes(data):
    suite = CUB(data_dir=data)  # DIR/CUB_200_2011
    suite.prepare()
    expected = {  # generated class indices (1-based folder numbers 001..020, minus one), by hand
        "train": [0, 2, 4, 6, 8, 10, 12, 14, 16, 18],
        "val": [1, 5, 9, 13, 17],
        "test": [3, 7, 11, 15, 19],
    }
    for split, classes in expected.items():
        pool = suite.pool(split)
        assert suite.num_classes(split) == len(classes)
        assert [pool.examples(base) for base in range(pool.base_classes)] == [count(c) for c in classes]
        for base, generated in enumerate(classes):
            drawn = pool.draw(base, np.arange(pool.examples(base)))
            assert drawn.shape == (count(generated), 3, 84, 84) and drawn.dtype == np.float32
            assert {class_of(torch.from_numpy(image)) for image in drawn} == {generated}


def test_episodes_have_the_settings_shapes_and_true_labels(data):
    suite = CUB(data_dir=data)
    one_shot, five_shot = setting(suite, "5-way 1-shot"), setting(suite, "5-way 5-shot")
    episode = suite.sample_episode("test", one_shot, seed=0, index=2)
    assert episode.support_x.shape == (5, 3, 84, 84) and episode.query_x.shape == (75, 3, 84, 84)
    assert episode.support_y.tolist() == list(range(5)) and episode.query_y.tolist() == sorted(list(range(5)) * 15)
    train = suite.sample_episode("train", five_shot, seed=0, index=2)
    assert train.support_x.shape == (25, 3, 84, 84) and train.query_x.shape == (80, 3, 84, 84)  # 16 queries, as Chen
    test_classes = [3, 7, 11, 15, 19]
    for split, item, classes in (("test", episode, test_classes), ("train", train, list(range(0, 20, 2)))):
        for inputs, labels in ((item.support_x, item.support_y), (item.query_x, item.query_y)):
            for image, label in zip(inputs, labels):  # label k's images are class classes[k]'s
                assert class_of(image) == classes[int(item.classes[label])], split
    images = {image.numpy().tobytes() for image in train.query_x}
    assert len(images) == 80  # drawn without replacement within each class


def test_same_seed_same_episode_after_a_reload(data):
    one_shot = setting(CUB(), "5-way 1-shot")
    first = CUB(data_dir=data).sample_episode("val", one_shot, seed=4, index=7)
    CUB._pools.clear()  # read back from the image cache
    again = CUB(data_dir=data).sample_episode("val", one_shot, seed=4, index=7)
    assert all(a.numpy().tobytes() == b.numpy().tobytes() for a, b in zip(first, again))
    other = CUB(data_dir=data).sample_episode("val", one_shot, seed=4, index=8)
    assert not torch.equal(first.support_x, other.support_x)


def test_suite_passes_the_conformance_kit(data):
    assert_suite_conforms(CUB(data_dir=data / "CUB_200_2011"), SuiteCheck(episodes=3))


def test_paper_budgets_are_chens():
    suite = CUB()
    assert [CUB.budget("paper", s)["meta_train_tasks"] for s in suite.settings()[:2]] == [60_000, 40_000]


def test_missing_data_is_reported(tmp_path):
    expect_error(CUB(), "suite 'cub' needs its data: pass --data-dir DIR", "DIR/CUB_200_2011/ holds images/<NNN.")
    expect_error(CUB(data_dir=tmp_path), "suite 'cub': no data found; expected images/<NNN.Class_name>/*.jpg",
                 str(tmp_path / "CUB_200_2011"))
    (tmp_path / "images").mkdir()
    expect_error(CUB(data_dir=tmp_path), f"cub: {tmp_path / 'images'} holds no class folders", split="train")


def test_bad_images_are_reported(tmp_path):
    root = write_tree(tmp_path / "corrupt", classes=6, counts=lambda index: 3) / "CUB_200_2011"
    victim = sorted((root / "images" / class_name(2)).iterdir())[1]
    victim.write_bytes(b"\xff\xd8 not really a JPEG")
    expect_error(CUB(data_dir=root), f"cub: cannot decode {victim}: ", split="train")

    root = write_tree(tmp_path / "empty", classes=6, counts=lambda index: 0 if index == 4 else 3) / "CUB_200_2011"
    expect_error(CUB(data_dir=root), f"cub: {root / 'images' / class_name(4)} holds no images (.jpg, .jpeg, .png)",
                 split="train")


def test_too_few_classes_or_images_are_reported(tmp_path):
    root = write_tree(tmp_path / "few", classes=6, counts=lambda index: 2 if index == 2 else 21)
    expect_error(CUB(data_dir=root), "suite 'cub': split 'val' has 2 classes, fewer than the 5 that 5-way 1-shot needs",
                 split="val", episode="5-way 1-shot")
    expect_error(CUB(data_dir=root), "suite 'cub': split 'train' has 3 classes, fewer than the 5", split="train",
                 episode="5-way 1-shot")

    root = write_tree(tmp_path / "small", classes=20, counts=lambda index: 16 if index == 6 else 21)
    expect_error(CUB(data_dir=root), "suite 'cub': split 'train' has 16 images in its smallest class, fewer than "
                 "the 17 that 5-way 1-shot with 16 queries needs", split="train", episode="5-way 1-shot")
