"""Seeded random streams for the data sets.

Every random draw of a data set comes from ``stream_rng(seed, stream)``: a NumPy ``Generator``
seeded by the pair (seed, stream) through ``SeedSequence``. One stream per purpose keeps the
draws independent of each other, so that, say, the test points do not change when ``n_train``
does, and the same arguments give the same numbers on every machine. (Digits is the exception to the
first: one pool, split by one shuffle, its test points are the shuffle's next after the train points.)
"""

from __future__ import annotations

import numpy as np

# Stream numbers: fixed forever, since changing one changes every data set drawn from it.
TRAIN = 1      # train inputs (or the train sample of a real data set)
TEST = 2       # test inputs (or the test sample of a real data set)
BETA = 3       # the direction β of the polynomial target
NOISE = 4      # label noise on the train targets
SPLIT = 5      # the shuffle that splits a small real data set (digits) into train and test


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    """An independent NumPy generator for ``stream`` under the user's ``seed`` (both ints >= 0)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))
