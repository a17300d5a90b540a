"""Query points per split, as the reference code draws them: K in meta-training and meta-validation on sinusoid and
Omniglot (MAML's main.py: ``DataGenerator(update_batch_size*2)``), 15 per class on mini-ImageNet (MAML's
``DataGenerator(update_batch_size+15)``; CAVIA and ProtoNets use 15 too); test tasks carry the suite's own count."""
from __future__ import annotations

import pytest
from bench_plugins.suites.miniimagenet import MiniImageNet
from bench_plugins.suites.omniglot import Omniglot
from bench_plugins.suites.sinusoid import Sinusoid

from bench.api import SPLITS, Setting


def test_train_query_defaults_to_the_test_query_and_applies_to_meta_train_and_meta_val():
    plain = Setting("K=5", shots=5, query=50)
    assert [plain.query_for(split) for split in SPLITS] == [50, 50, 50]
    split = Setting("K=5", shots=5, query=50, train_query=5)
    assert [split.query_for(name) for name in SPLITS] == [5, 5, 50]


@pytest.mark.parametrize(
    ("suite", "expected"),
    [(Sinusoid(), {"K=5": (5, 100), "K=10": (10, 100), "K=20": (20, 100)}),
     (Omniglot(), {"5-way 1-shot": (1, 15), "5-way 5-shot": (5, 15),
                   "20-way 1-shot": (1, 15), "20-way 5-shot": (5, 15), "vary": (10, 10)}),  # vary: at most
     (MiniImageNet(), {"5-way 1-shot": (15, 15), "5-way 5-shot": (15, 15), "vary": (10, 10)})],
    ids=lambda value: getattr(value, "name", ""),
)
def test_each_suite_pins_its_query_counts_per_split(suite, expected):
    """(meta-train and meta-val, test) query points per setting: per class for classification, per task otherwise."""
    counts = {setting.name: tuple(setting.query_for(split) for split in SPLITS) for setting in suite.settings()}
    assert counts == {name: (train, train, test) for name, (train, test) in expected.items()}


def test_sinusoid_episodes_carry_the_counts_of_their_split():
    suite = Sinusoid()
    setting = suite.settings()[1]
    shapes = {split: tuple(suite.sample_batch(split, setting, 0, range(3)).query_x.shape) for split in SPLITS}
    assert shapes == {"train": (3, 10, 1), "val": (3, 10, 1), "test": (3, Sinusoid.TEST_QUERY, 1)}
