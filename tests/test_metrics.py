"""STS-B's correlations (harness.finetune.metrics): scipy's Pearson and Spearman on a 0-100 scale, 0 for a constant
prediction. The expected values below are the ones the earlier hand-written formulas (np.corrcoef; Pearson of
pandas' average ranks) gave: scipy's agree with them to 3e-14 on these and on random arrays with and without ties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from harness.finetune.metrics import pearson, regression_metrics, spearman


@pytest.mark.parametrize(
    "x, y, expected_pearson, expected_spearman",
    [
        # centred x = [-2..2], y - 6.6 = [-1.6, -0.6, 0.4, 1.4, 0.4]: r = 6 / sqrt(10 * 5.2); ranks of y with a tie,
        # [1, 2, 3.5, 5, 3.5]: rho = 8 / sqrt(10 * 9.5)
        ([1, 2, 3, 4, 5], [5, 6, 7, 8, 7], 100 * 6 / math.sqrt(52), 100 * 8 / math.sqrt(95)),
        ([1, 2, 3], [2, 4, 6], 100.0, 100.0),
        ([1, 2, 3, 4], [8, 4, 2, 1], -100 * 11.5 / math.sqrt(5 * 28.75), -100.0),  # monotone, not linear
        # STS-B-like scores with ties on both sides: rho = 12 / 17 exactly
        ([0.5, 2.5, 1.0, 4.0, 3.3, 3.3], [1, 1, 2, 3, 5, 8], 58.8686028467867, 100 * 12 / 17),
    ],
)
def test_correlations_keep_their_values(x, y, expected_pearson, expected_spearman):
    assert pearson(np.array(x), np.array(y)) == pytest.approx(expected_pearson, abs=1e-9)
    assert spearman(np.array(x), np.array(y)) == pytest.approx(expected_spearman, abs=1e-9)


def test_constant_prediction_scores_0_without_a_warning():
    """A fine-tune that predicts one value (the majority class) has no correlation: 0, not scipy's nan and warning."""
    gold = np.array([1.0, 2.0, 3.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert regression_metrics(np.full(4, 2.5), gold) == {"pearson": 0.0, "spearman": 0.0}
        assert pearson(gold, np.zeros(4)) == spearman(gold, np.zeros(4)) == 0.0
