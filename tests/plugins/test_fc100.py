"""The FC100 suite on tiny generated FC100_{split}.pickle files (the CIFAR-FS pickle reader, FC100's names)."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_plugins.suites.fc100 import FC100

from bench.errors import DataError
from bench.testing import SuiteCheck, assert_suite_conforms

SPLIT_LABELS = {"train": [4, 30, 55, 72, 95, 1], "val": [3, 42, 43, 88, 97], "test": [0, 51, 53, 57, 83]}
PER_CLASS = 20


@pytest.fixture(autouse=True)
def private(private_cache):
    """The data-dir variable stays inside the test."""


def write_split(root: Path, split: str, labels: list[int], per_class: int = PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """FC100_{split}.pickle with shuffled images of a colour per class; returns what it wrote."""
    rng = np.random.default_rng(list(split.encode()))
    flat = np.repeat(labels, per_class)[rng.permutation(len(labels) * per_class)]
    images = (rng.integers(0, 200, size=(max(labels) + 1, 1, 1, 3))[flat] + rng.integers(0, 50, (len(flat), 32, 32, 3)))
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"FC100_{split}.pickle").open("wb") as stream:
        pickle.dump({"data": images.astype(np.uint8), "labels": flat.tolist()}, stream, protocol=2)
    return images.astype(np.uint8), flat


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fc100") / "FC100"
    for split, labels in SPLIT_LABELS.items():
        write_split(root, split, labels)
    return root


def test_loads_the_pickles_with_classes_in_label_order(root, tmp_path):
    images, labels = write_split(tmp_path, "val", SPLIT_LABELS["val"])
    pool = FC100(data_dir=tmp_path).pool("val")
    assert pool.base_classes == 5
    for base, label in enumerate(sorted(SPLIT_LABELS["val"])):
        assert np.array_equal(pool.base_images(base, np.arange(pool.examples(base))), images[labels == label])
    suite = FC100(data_dir=root.parent)  # DIR/FC100
    suite.prepare()
    assert {split: suite.num_classes(split) for split in SPLIT_LABELS} == {"train": 6, "val": 5, "test": 5}


def test_episodes_shapes_labels_and_purity(root):
    suite = FC100(data_dir=root)
    one_shot, five_shot, _ = suite.settings()
    episode = suite.sample_episode("test", one_shot, seed=0, index=5)
    assert episode.support_x.shape == (5, 3, 32, 32) and episode.query_x.shape == (75, 3, 32, 32)
    assert episode.support_y.tolist() == list(range(5)) and episode.query_y.tolist() == sorted(list(range(5)) * 15)
    assert suite.sample_episode("train", five_shot, seed=0, index=5).query_x.shape == (75, 3, 32, 32)
    again = FC100(data_dir=root).sample_episode("test", one_shot, seed=0, index=5)
    assert all(torch.equal(a, b) for a, b in zip(episode, again))
    assert not torch.equal(episode.support_x, suite.sample_episode("test", one_shot, seed=1, index=5).support_x)


def test_suite_passes_the_conformance_kit(root):
    assert_suite_conforms(FC100(data_dir=root), SuiteCheck(episodes=3))


def test_paper_budget_is_tadams():
    assert [FC100.budget("paper", s) for s in FC100().settings()[:2]] == [{"meta_train_tasks": 60_000}] * 2


def test_bad_input_is_reported(tmp_path):
    expected = f"suite 'fc100': no data found; expected FC100_{{train,val,test}}.pickle in one of: {tmp_path / 'FC100'}"
    with pytest.raises(DataError, match=re.escape(f"{expected}, {tmp_path}")):
        FC100(data_dir=tmp_path).prepare()
    write_split(tmp_path, "train", SPLIT_LABELS["train"])
    with pytest.raises(DataError, match=re.escape(f"fc100: {tmp_path} has no 'test' split; expected FC100_test.pickle")
                       + "$"):
        FC100(data_dir=tmp_path).pool("test")
    (tmp_path / "FC100_test.pickle").write_bytes(b"\x80\x02}q\x00")  # a pickle cut short
    with pytest.raises(DataError, match=re.escape(f"fc100: cannot read {tmp_path / 'FC100_test.pickle'}: ")):
        FC100(data_dir=tmp_path).pool("test")
    write_split(tmp_path, "val", [1, 2, 3, 4])
    suite = FC100(data_dir=tmp_path)
    with pytest.raises(DataError, match="^suite 'fc100': split 'val' has 4 classes, fewer than the 5 that 5-way 1-shot "
                                        "needs$"):
        suite.sample_episode("val", suite.settings()[0], 0, 0)
