"""The fast per-episode generators give numpy's ``default_rng`` streams exactly: the episodes of every run stay what
they were (episode fingerprints, pairing across runs)."""
from __future__ import annotations

import random

import numpy as np
from bench_plugins.suites.sinusoid import Sinusoid

from bench.api import episode_rng, episode_rngs
from bench.seeding import generators


def test_every_stream_is_default_rngs():
    rng = random.Random(0)
    entropies = [(rng.randrange(3), rng.getrandbits(128)) for _ in range(3000)]
    entropies += [(0, 0), (1, 5), (2, 2**96 - 1), (0, 2**96), (2, 2**128 - 1)]  # fewer hash words; extremes
    for entropy, generator in zip(entropies, generators(entropies), strict=True):
        expected = np.random.default_rng(list(entropy))
        assert np.array_equal(generator.uniform(size=7), expected.uniform(size=7)), entropy
        assert generator.integers(2**62) == expected.integers(2**62), entropy


def test_sinusoid_batches_are_the_episodes_drawn_one_generator_at_a_time():
    suite = Sinusoid()
    setting = suite.settings()[1]
    batch = suite.sample_batch("train", setting, 3, range(40, 90))
    for row, index in enumerate(range(40, 90)):
        rng = episode_rng("sinusoid", "train", setting.name, 3, index)
        amplitude, phase = rng.uniform(*Sinusoid.AMPLITUDE), rng.uniform(*Sinusoid.PHASE)
        x = rng.uniform(*Sinusoid.INPUT, size=(2 * setting.shots, 1))
        assert np.array_equal(batch.support_x[row].numpy(), x[: setting.shots].astype(np.float32))
        assert np.array_equal(batch.query_y[row].numpy(),
                              (amplitude * np.sin(x[setting.shots:] - phase)).astype(np.float32))
    assert len(list(episode_rngs("sinusoid", "test", setting.name, 0, range(5)))) == 5
