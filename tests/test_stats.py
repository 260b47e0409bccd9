"""mean ± s.e.m. against hand-computed values."""

import math

from wsss.metrics.stats import format_mean_sem, mean_sem


def test_mean_sem_hand_computed():
    # values 0.50, 0.52, 0.54: mean 0.52, sample std 0.02, s.e.m. 0.02 / sqrt(3)
    m, s, n = mean_sem([0.50, 0.52, 0.54])
    assert n == 3 and math.isclose(m, 0.52) and math.isclose(s, 0.02 / math.sqrt(3))
    assert format_mean_sem((m, s, n)) == "52.0 ± 1.2"


def test_mean_sem_skips_missing_and_single_value_has_no_spread():
    m, s, n = mean_sem([0.3, float("nan"), None])
    assert (m, n) == (0.3, 1) and math.isnan(s)
    assert format_mean_sem((m, s, n)) == "30.0"
    assert format_mean_sem(mean_sem([])) == "–"


def test_format_pct():
    from wsss.metrics.stats import format_pct

    assert format_pct(0.5234) == "52.3" and format_pct(None) == "–" and format_pct(float("nan")) == "–"


def test_signed_differences_keep_their_sign():
    # paired differences −0.02, +0.04, +0.07: mean +0.03, sample std sqrt(0.0021) ≈ 0.0458
    m, s, n = mean_sem([-0.02, 0.04, 0.07])
    assert format_mean_sem((m, s, n), signed=True) == "+3.0 ± 2.6"
    assert format_mean_sem(mean_sem([-0.031]), signed=True) == "-3.1"
    assert format_mean_sem(mean_sem([0.031])) == "3.1"
