"""Online statistics: tail scores that mean the same at every size, baselines, rhythm, bucket counts."""

import copy
import doctest
import pickle

import pytest

from smsstream.detection import stats
from smsstream.detection.stats import (
    BucketRing, BucketWindow, DailyProfile, DecayedCount, ShareBaseline, binomial_tail_score, poisson_tail_score,
)

HOUR = 3_600_000
DAY = 24 * HOUR


def test_docstring_examples_hold():
    result = doctest.testmod(stats)
    assert result.attempted > 0 and result.failed == 0


def test_three_of_thirty_is_noise_but_three_hundred_of_three_thousand_is_not():
    small = binomial_tail_score(3, 30, 0.05)
    big = binomial_tail_score(300, 3000, 0.05)
    assert small < 1 < 6 < big


def test_tail_scores_are_zero_at_or_below_expectation_and_grow_with_the_count():
    assert binomial_tail_score(5, 100, 0.05) == 0 and poisson_tail_score(10, 10) == 0
    assert binomial_tail_score(10, 100, 0.05) < binomial_tail_score(20, 100, 0.05)
    assert poisson_tail_score(20, 10) < poisson_tail_score(40, 10)
    assert binomial_tail_score(1, 1, 0.0) == stats.MAX_SCORE


def test_decayed_count_halves_each_half_life():
    c = DecayedCount().update(0, 8.0, HOUR)
    assert c.get(2 * HOUR, HOUR) == pytest.approx(2.0)


def test_share_baseline_learns_the_usual_share_and_keeps_anomalies_out():
    b = ShareBaseline()
    for minute in range(600):
        b.learn(minute * 60_000, 100, 1, 72 * HOUR)
    assert b.get(0.05, 100) == pytest.approx(0.01, abs=0.001)
    for minute in range(600, 660):
        assert not b.hold(minute * 60_000, 100, 50, 72 * HOUR, 6 * HOUR)
    assert b.get(0.05, 100) == pytest.approx(0.01, abs=0.001)


def test_share_baseline_takes_a_lasting_shift_as_the_new_normal():
    b = ShareBaseline()
    for minute in range(600):
        b.learn(minute * 60_000, 100, 1, 72 * HOUR)
    accepted = [b.hold(m * 60_000, 100, 10, 72 * HOUR, 6 * HOUR) for m in range(600, 600 + 7 * 60)]
    assert any(accepted)
    assert b.get(0.05, 100) > 0.03


def test_daily_profile_makes_a_nine_oclock_campaign_normal_but_not_three_in_the_morning():
    p = DailyProfile()
    for day in range(5):
        for hour in range(24):
            count = 3000 if hour == 9 else 20
            for minute in range(60):
                p.update(day * DAY + hour * HOUR + minute * 60_000, count / 60)
    p.update(5 * DAY, 0)
    assert p.expected(5 * DAY + 9 * HOUR) == pytest.approx(3000, rel=0.05)
    assert p.expected(5 * DAY + 3 * HOUR) == pytest.approx(20, rel=0.05)
    assert all(p.expected(5 * DAY + hour * HOUR) is not None for hour in range(24))


def test_daily_profile_does_not_know_an_hour_it_has_never_seen():
    p = DailyProfile().update(10 * HOUR, 5)
    assert p.expected(3 * HOUR) is None


def test_daily_profile_keeps_abnormal_hours_out():
    p = DailyProfile()
    for day in range(3):
        p.update(day * DAY + 3 * HOUR, 10)
    p.update(3 * DAY + 3 * HOUR, 5000, learn=False)
    p.update(3 * DAY + 4 * HOUR, 0)
    assert p.expected(4 * DAY + 3 * HOUR) < 20


def test_bucket_window_sums_trailing_windows():
    w = BucketWindow()
    for minute in range(100):
        w.add(minute * 60_000, 1, minute % 2)
    sums = w.sums(100 * 60_000, (60_000, 10 * 60_000, 60 * 60_000))
    assert sums == [[1, 1], [10, 5], [60, 30]]
    w.prune(50 * 60_000)
    assert w.rows[0][0] == 50 * 60_000


def test_bucket_ring_sums_trailing_windows_and_forgets_what_fell_out():
    r = BucketRing(2)
    for idx in range(100):
        r.add(idx, 1, idx % 2)
    assert r.sums(100, (1, 10, 60)) == [[1, 1], [10, 5], [60, 30]]
    assert r.sums(95, (10,)) == [[10, 5]]
    r.add(300, 1, 1)
    assert r.sums(301, (60,)) == [[1, 1]]
    assert r.get(299) == [0, 0] and r.get(300) == [1, 1]


def _window() -> BucketWindow:
    w = BucketWindow()
    w.add(0, 3, 1)
    w.add(60_000, 2, 0)
    return w


def _ring() -> BucketRing:
    r = BucketRing(2)
    r.add(5, 3, 1)
    r.add(7, 2, 2)
    return r


EXAMPLES = [
    DecayedCount().update(5, 2.0),
    ShareBaseline().learn(60_000, 10, 1, HOUR),
    DailyProfile().update(HOUR, 4).update(2 * HOUR, 5),
    _window(),
    _ring(),
]


@pytest.mark.parametrize("stat", EXAMPLES, ids=lambda s: type(s).__name__)
def test_every_statistic_survives_pickling_and_copying(stat):
    assert pickle.loads(pickle.dumps(stat)) == stat
    assert copy.deepcopy(stat) == stat
    assert stat != type(stat)(), "the example should hold data, or equality proves nothing"


def test_every_statistic_class_is_covered_by_the_pickling_test():
    classes = {obj for obj in vars(stats).values() if isinstance(obj, type) and obj.__module__ == stats.__name__}
    assert classes == {type(s) for s in EXAMPLES}
