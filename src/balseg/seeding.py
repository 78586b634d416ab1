"""Every random number of a run, derived from the run's seed through a named stream.

A run killed at any point and resumed must end with the labels of an uninterrupted run,
and N processes must make the choices of one; so no random choice may depend on what ran
before it. Each choice draws from its own stream, keyed by the run seed, the stream's tag
and the choice's coordinates (cycle, image, step, ...): ``SeedSequence([seed, tag, *key])``.

Tags are distinct and every stream has a fixed key length, so no two streams can produce
the same number. (Before this module, tags were bare integers written in five places: the
MC-dropout and random-score seed of image i at cycle c was ``[seed, c, i]``, the same
number as the training seed of cycle i when c = 3 and as the initial pixels' seed of image
i when c = 0; the oracle's was ``[seed, query id]``.) The streams cycle 0 uses (initial
pixels, model initialisation, training) kept their numbers, so a bench's stored cycle 0
stays valid.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

SEEDING_VERSION = 2
"""1: the bare tags before this module (commit 50fcfcc and earlier); 2: named streams (MC
dropout, random scores and oracle mistakes changed; cycle 0 did not). A run records
nothing of it: a run resumed by another version makes its remaining choices with that
version's streams."""


class Stream(IntEnum):
    """The random streams of a run; the value is the tag (never reuse or renumber one)."""

    INITIAL_PIXELS = 0  # key: (image index,)     the random pixels of cycle 0
    TRAIN = 3  # key: (cycle,)                    a cycle's training seed (below)
    SELECT = 4  # key: (cycle, image index)       pixelpick / power selection draws
    MC_DROPOUT = 5  # key: (cycle, image index)   dropout masks of one image's MC samples
    RANDOM_SCORE = 7  # key: (cycle, image index) the 'random' strategy's scores
    ORACLE_ERROR = 8  # key: (query id,)          a simulated annotator's mistakes
    PREDICT_MC = 10  # key: (image index,)        dropout masks of `balseg predict`


class TrainStream(IntEnum):
    """Sub-streams of one cycle's training, keyed by the cycle's training seed."""

    BATCHES = 1  # key: ()                        epoch-wise shuffled batches
    AUGMENT = 2  # key: (step, position)          one sample's augmentation
    DROPOUT = 6  # key: (step, position)          one sample's dropout masks
    STRONG = 9  # key: (step, position)           one sample's strong view (consistency)


_KEY_LENGTH = {
    Stream.INITIAL_PIXELS: 1, Stream.TRAIN: 1, Stream.SELECT: 2, Stream.MC_DROPOUT: 2,
    Stream.RANDOM_SCORE: 2, Stream.ORACLE_ERROR: 1, Stream.PREDICT_MC: 1,
    TrainStream.BATCHES: 0, TrainStream.AUGMENT: 2, TrainStream.DROPOUT: 2,
    TrainStream.STRONG: 2,
}


def _entropy(seed: int, stream: Stream | TrainStream, key: tuple[int, ...]) -> list[int]:
    want = _KEY_LENGTH[stream]
    if len(key) != want:
        raise TypeError(f"stream {stream.name} takes {want} key part(s), got {len(key)}")
    if isinstance(seed, bool) or int(seed) < 0:
        raise ValueError(f"a seed must be an integer >= 0, got {seed!r}")
    return [int(seed), int(stream), *(int(k) for k in key)]


def model_init_seed(seed: int) -> int:
    """``torch.manual_seed`` of a fresh model's random weights (the decoder and head; the
    encoder's come from its pretrained file). The run seed itself, as before streams
    existed: cycle 0 (initial pixels, model, training) is the same in both versions, so
    earlier runs' first cycles stay valid."""
    return int(seed)


def seed_for(seed: int, stream: Stream | TrainStream, *key: int) -> int:
    """A 32-bit seed for one choice (for ``torch.Generator().manual_seed``)."""
    return int(np.random.SeedSequence(_entropy(seed, stream, key)).generate_state(1)[0])


def rng_for(seed: int, stream: Stream | TrainStream, *key: int) -> np.random.Generator:
    """A NumPy generator for one choice."""
    return np.random.default_rng(np.random.SeedSequence(_entropy(seed, stream, key)))


def torch_generator(seed: int, stream: Stream | TrainStream, *key: int):  # -> torch.Generator
    """A CPU ``torch.Generator`` for one choice (torch imported on use: this module is light)."""
    import torch

    return torch.Generator().manual_seed(seed_for(seed, stream, *key))
