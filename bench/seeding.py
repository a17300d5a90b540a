"""numpy's ``default_rng(entropy)`` for many episodes at once: the same streams, a fraction of the cost.

``numpy.random.default_rng([split, hash])`` spends ~40 us per episode hashing its entropy (``SeedSequence``) and
seeding a ``PCG64``; the draws of a sinusoid episode take ~8 us. Here the ``SeedSequence`` hashing runs vectorised
over a batch of episodes (numpy's documented algorithm, uint32 arithmetic), PCG64's seeding is two 128-bit steps in
Python integers, and one generator is re-positioned per episode by setting its state. Tests compare every stream
with ``default_rng``'s.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

INIT_A, MULT_A, INIT_B, MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
MIX_MULT_L, MIX_MULT_R, XSHIFT = 0xCA01F9DD, 0x4973F715, 16
POOL_SIZE = 4
PCG_MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645
MASK_128 = (1 << 128) - 1
WORDS = 5
"""Entropy words of an episode: its split's number (one word) and a 128-bit hash (four, unless its top word is 0)."""


class _Hash:
    """``SeedSequence``'s running hash constant, one per episode, and its ``hashmix``."""

    def __init__(self, init: int, episodes: int) -> None:
        self.const = np.full(episodes, init, dtype=np.uint32)

    def mix(self, value: np.ndarray, multiplier: int) -> np.ndarray:
        value = value ^ self.const
        self.const = self.const * np.uint32(multiplier)
        value = value * self.const
        return value ^ (value >> np.uint32(XSHIFT))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result = np.uint32(MIX_MULT_L) * x - np.uint32(MIX_MULT_R) * y
    return result ^ (result >> np.uint32(XSHIFT))


def _pool(entropy: np.ndarray) -> list[np.ndarray]:
    """``SeedSequence.pool`` of each row of ``entropy`` (episodes x ``WORDS`` uint32 words)."""
    hashing = _Hash(INIT_A, entropy.shape[0])
    pool = [hashing.mix(entropy[:, i], MULT_A) for i in range(POOL_SIZE)]
    for source in range(POOL_SIZE):
        for target in range(POOL_SIZE):
            if source != target:
                pool[target] = _mix(pool[target], hashing.mix(pool[source], MULT_A))
    for source in range(POOL_SIZE, entropy.shape[1]):
        for target in range(POOL_SIZE):
            pool[target] = _mix(pool[target], hashing.mix(entropy[:, source], MULT_A))
    return pool


def _pcg64_states(entropy: np.ndarray) -> list[tuple[int, int]]:
    """PCG64's (state, increment) after seeding from ``SeedSequence(row).generate_state(4, uint64)``, per row."""
    pool = _pool(entropy)
    hashing = _Hash(INIT_B, entropy.shape[0])
    words = np.stack([hashing.mix(pool[i % POOL_SIZE], MULT_B) for i in range(8)], axis=1).astype(np.uint64)
    seeds = (words[:, 0::2] | (words[:, 1::2] << np.uint64(32))).tolist()
    states = []
    for high, low, inc_high, inc_low in seeds:
        increment = (((inc_high << 64) | inc_low) << 1 | 1) & MASK_128
        state = increment  # state 0, one step: 0 * multiplier + increment
        state = (state + ((high << 64) | low)) & MASK_128
        states.append(((state * PCG_MULTIPLIER + increment) & MASK_128, increment))
    return states


def generators(entropies: Sequence[tuple[int, int]]) -> Iterator[np.random.Generator]:
    """For each ``(word, hash)`` entropy (a word below 2**32, a 128-bit hash), a generator on the stream of
    ``numpy.random.default_rng([word, hash])``. One generator is re-positioned for each: use it before asking for
    the next."""
    regular = [word < 2**32 and hash_ >> 96 != 0 for word, hash_ in entropies]
    rows = [[word, *((hash_ >> (32 * i)) & 0xFFFFFFFF for i in range(4))]
            for (word, hash_), ok in zip(entropies, regular) if ok]
    states = iter(_pcg64_states(np.array(rows, dtype=np.uint32).reshape(-1, WORDS)))
    bit_generator = np.random.PCG64(0)
    generator = np.random.Generator(bit_generator)
    for (word, hash_), ok in zip(entropies, regular):
        if not ok:  # a hash whose top word is 0 has fewer entropy words (once in 4 billion): numpy's own path
            yield np.random.default_rng([word, hash_])
            continue
        state, increment = next(states)
        bit_generator.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": increment},
                               "has_uint32": 0, "uinteger": 0}
        yield generator
