"""The A/B statistics (registry/ab_stats.py): known effects are detected, null effects are not — and over
many seeds the false-positive rate stays near the nominal α."""
import math
import random

import pytest

from nlweb_local.registry.ab_stats import (bootstrap_difference, compare, mean_interval, proportion,
                                           two_proportion_z)


def thumbs(rng: random.Random, n: int, p_up: float) -> list[float]:
    return [1.0 if rng.random() < p_up else 0.0 for _ in range(n)]


def test_two_proportion_z_matches_a_hand_computed_value():
    # 60/100 vs 45/100: pooled p 0.525, se sqrt(.525*.475*.02) = 0.07062, z = -0.15/0.07062 = -2.124
    z, p = two_proportion_z(60, 100, 45, 100)
    assert z == pytest.approx(-2.124, abs=1e-3)
    assert p == pytest.approx(0.0337, abs=1e-3)
    assert two_proportion_z(0, 0, 1, 1) == (0.0, 1.0)


def test_wilson_interval_stays_inside_zero_one_and_holds_the_share():
    for s, n in ((0, 10), (10, 10), (3, 7), (500, 1000)):
        i = proportion(s, n)
        assert 0.0 <= i.low <= i.mean <= i.high <= 1.0
    assert math.isnan(proportion(0, 0).mean)


def test_mean_interval_narrows_with_more_samples():
    rng = random.Random(1)
    small = mean_interval([rng.gauss(1, 1) for _ in range(20)])
    large = mean_interval([rng.gauss(1, 1) for _ in range(2000)])
    assert (large.high - large.low) < (small.high - small.low) / 5
    assert large.low < 1.0 < large.high


def test_quality_detects_a_known_effect():
    rng = random.Random(7)
    v = compare("quality", {"v3": thumbs(rng, 800, 0.55), "v4": thumbs(rng, 800, 0.70)}, min_samples=100)
    (c,) = v.comparisons
    assert c.decision == "better" and c.p_value < 0.05 and c.low > 0
    assert "v4 better than v3" in v.summary
    assert v.variants["v4"].mean > v.variants["v3"].mean


def test_quality_worse_variant_is_called_worse():
    rng = random.Random(8)
    v = compare("quality", {"v3": thumbs(rng, 800, 0.70), "v4": thumbs(rng, 800, 0.55)})
    assert v.comparisons[0].decision == "worse"
    assert v.summary.startswith("v3 better than v4")


def test_star_ratings_count_four_and_five_as_positive():
    v = compare("quality", {"a": [1.0, 0.75, 0.5, 0.0], "b": [0.25, 0.25, 0.25, 0.25]}, min_samples=1)
    assert v.variants["a"].mean == 0.5 and v.variants["b"].mean == 0.0


def test_too_few_samples_gives_no_verdict_even_with_a_big_effect():
    v = compare("quality", {"v3": [0.0] * 30, "v4": [1.0] * 30}, min_samples=100)
    assert v.comparisons[0].decision == "too few samples"
    assert "too few samples" in v.summary and "--min-samples 100" in v.summary


def test_latency_bootstrap_detects_a_slower_variant_as_worse():
    rng = random.Random(3)
    fast = [rng.lognormvariate(0.0, 0.5) for _ in range(300)]
    slow = [rng.lognormvariate(0.2, 0.5) for _ in range(300)]
    v = compare("latency", {"v3": fast, "v4": slow}, min_samples=100, resamples=1000)
    c = v.comparisons[0]
    assert c.decision == "worse" and c.low > 0
    assert compare("latency", {"v3": slow, "v4": fast}, resamples=1000).comparisons[0].decision == "better"


def test_bootstrap_is_reproducible_for_a_seed():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0]
    assert bootstrap_difference(a, b, seed=5) == bootstrap_difference(a, b, seed=5)
    assert bootstrap_difference(a, b, seed=5)[0] == pytest.approx(1.0)


def test_three_variants_are_each_compared_with_the_control():
    rng = random.Random(11)
    v = compare("quality", {"a": thumbs(rng, 1000, 0.5), "b": thumbs(rng, 1000, 0.5), "c": thumbs(rng, 1000, 0.65)})
    assert [c.variant for c in v.comparisons] == ["b", "c"]
    assert v.comparisons[1].decision == "better"


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="quality, latency, cost"):
        compare("vibes", {"a": [1.0]})


ALPHA = 0.05
SEEDS = 200


def test_z_test_false_positive_rate_on_a_null_effect_is_near_alpha():
    """200 experiments where both variants have the same true thumbs-up rate: the share of them that
    declares a winner must stay near α (binomial sd at 200 runs ≈ 1.5 points: allow 0.01..0.10)."""
    false = 0
    for seed in range(SEEDS):
        rng = random.Random(seed)
        v = compare("quality", {"v3": thumbs(rng, 400, 0.6), "v4": thumbs(rng, 400, 0.6)}, alpha=ALPHA)
        false += v.comparisons[0].decision in ("better", "worse")
    rate = false / SEEDS
    print(f"z-test false-positive rate over {SEEDS} null experiments: {rate:.3f} (alpha {ALPHA})")
    assert 0.01 <= rate <= 0.10


def test_z_test_power_on_a_known_effect_is_high():
    hits = sum(compare("quality", {"v3": thumbs(random.Random(s), 600, 0.55),
                                   "v4": thumbs(random.Random(10_000 + s), 600, 0.70)}).comparisons[0].decision
               == "better" for s in range(SEEDS))
    print(f"z-test power (0.55 -> 0.70, n=600 per arm) over {SEEDS} experiments: {hits / SEEDS:.3f}")
    assert hits / SEEDS >= 0.95


def test_bootstrap_false_positive_rate_on_a_null_effect_is_near_alpha():
    false = 0
    for seed in range(SEEDS):
        rng = random.Random(seed)
        a = [rng.lognormvariate(0.0, 0.6) for _ in range(100)]
        b = [rng.lognormvariate(0.0, 0.6) for _ in range(100)]
        v = compare("latency", {"v3": a, "v4": b}, alpha=ALPHA, resamples=400, seed=seed, min_samples=50)
        false += v.comparisons[0].decision in ("better", "worse")
    rate = false / SEEDS
    print(f"bootstrap false-positive rate over {SEEDS} null experiments: {rate:.3f} (alpha {ALPHA})")
    assert 0.01 <= rate <= 0.10
