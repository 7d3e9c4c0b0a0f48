"""ntklab.compare: the paired 2×2 table, the exact McNemar p-value against the binomial sum written
out, the paired standard error against the standard deviation of the differences, and the test's
size under the null by seeded Monte Carlo. (The command on regress runs: tests/test_regress.py.)"""

import math

import numpy as np
import pytest
from ntklab.compare import CompareError, paired_comparison
from tests.helpers import mcnemar_by_hand


def test_the_table_counts_each_image_once():
    a = np.array([1, 1, 0, 0, 1, 0, 1], dtype=bool)
    b = np.array([1, 0, 1, 0, 1, 1, 1], dtype=bool)
    c = paired_comparison(a, b)
    assert (c.both_right, c.only_a, c.only_b, c.neither) == (3, 1, 2, 1)
    assert c.accuracy_a == pytest.approx(4 / 7) and c.accuracy_b == pytest.approx(5 / 7)
    assert c.difference == pytest.approx(1 / 7)


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (3, 3), (0, 10), (10, 0), (1, 5), (8, 14), (40, 61), (100, 100)])
def test_the_p_value_is_the_exact_binomial_tail(only_a, only_b):
    right_a = np.array([True] * only_a + [False] * only_b + [True] * 50 + [False] * 7)
    right_b = np.array([False] * only_a + [True] * only_b + [True] * 50 + [False] * 7)
    c = paired_comparison(right_a, right_b)
    # scipy's binomtest sums the same terms in floating point: agreement to rounding
    assert c.p_value == pytest.approx(mcnemar_by_hand(only_a, only_b), rel=1e-12)
    differences = right_b.astype(float) - right_a.astype(float)
    assert c.standard_error == pytest.approx(differences.std() / math.sqrt(len(differences)), rel=1e-12)


def test_mismatched_vectors_are_refused():
    with pytest.raises(CompareError, match="same length"):
        paired_comparison(np.ones(3, bool), np.ones(4, bool))


@pytest.mark.slow
def test_the_exact_test_keeps_its_size_under_the_null():
    """Two classifiers of the same accuracy (0.8) erring independently on 200 images: the exact test
    rejects at 5% in at most 5% of draws (it is conservative; 0.034–0.041 in four seeds here). With
    4000 draws the rate's standard error is about √(0.04·0.96/4000) = 0.003, so [0.02, 0.06] is 5
    of them either side, while a one-sided p (half the two-sided one) would reject about twice as often."""
    rng = np.random.default_rng(0)
    draws = rng.random((4000, 2, 200)) < 0.8
    rejected = np.mean([paired_comparison(a, b).p_value < 0.05 for a, b in draws])
    assert 0.02 < rejected < 0.06, rejected
