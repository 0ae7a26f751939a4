"""Tests for ecominstruct.significance: its scores against scoring.score_task (which uses
the `rouge` algorithm and seqeval themselves), on the data and on resampled data, and the
bootstrap against a normal approximation."""

import math
import random

import numpy as np
import pytest
from conftest import REAL_DATA_DIR

from ecomgpt_jax.ecominstruct import instructions, reader, scoring, significance
from ecomgpt_jax.ecominstruct.scoring import ScoreSpec
from ecomgpt_jax.ecominstruct.significance import BootstrapConfig

KEYS = scoring.SCORE_KEYS
needs_real = pytest.mark.skipif(
    not REAL_DATA_DIR, reason="ECOMGPT_DATA_DIR is not set (real EcomInstruct held-out data)"
)


def assert_scores_equal(got: dict, want: dict):
    for k in KEYS:
        if math.isnan(want[k]):
            assert math.isnan(got[k]), k
        else:
            assert got[k] == pytest.approx(want[k], abs=1e-12), k


def full(stats):
    return {
        k: float(v[0])
        for k, v in significance.weighted_scores(stats, np.ones((1, stats.n))).items()
    }


def random_case(task_type: str, n: int, seed: int):
    """(spec, examples, predictions, golds): answers drawn from small pools, predictions
    equal to the gold 40% of the time, so that hits, misses, empty answers, the cleaning's
    "error" and (NER) entity types only one side has all occur."""
    rng = random.Random(seed)
    examples = None
    if task_type == "NER":
        sentences = ["红色T恤 blue shirt", "blue 红色 cap", "no entity here", "T恤T恤"]
        examples = [{"sentences": rng.choice(sentences)} for _ in range(n)]
        terms = ["红色", "blue", "T恤", "None", "shirt", "红色, blue"]

        def answer(types="CS"):
            lines = [f"{t}: {rng.choice(terms)}" for t in types]
            return "\n".join(rng.sample(lines, rng.randint(0, 2))) or rng.choice(["", "x"])

        golds = [answer() for _ in range(n)]
        wrong = [answer("CSB") for _ in range(n)]
    else:
        words = ["red", "blue", "红色", "T恤", "a.b", "", " ", "."]

        def answer():
            return ", ".join(rng.sample(words, rng.randint(1, 3)))

        golds = [answer() for _ in range(n)]
        wrong = [answer() for _ in range(n)]
    preds = [g if rng.random() < 0.4 else w for g, w in zip(golds, wrong, strict=True)]
    return ScoreSpec(task_type), examples, preds, golds


TYPES = ["CLS", "Extract", "Condition_Extract", "Generate", "NER"]


@pytest.mark.parametrize("task_type", TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_on_the_data_equal_score_task(task_type, seed):
    spec, examples, preds, golds = random_case(task_type, 40, seed)
    stats = significance.task_stats(spec, examples, preds, golds)
    assert_scores_equal(full(stats), scoring.score_task(spec, examples, preds, golds))


@pytest.mark.parametrize("task_type", TYPES)
def test_resampled_scores_equal_score_task_on_the_resampled_examples(task_type):
    """A replicate's weights mean "example i drawn w_i times": scoring that multiset of
    examples with score_task must give the same numbers."""
    spec, examples, preds, golds = random_case(task_type, 30, seed=7)
    stats = significance.task_stats(spec, examples, preds, golds)
    weights = significance.draw_weights("t", 30, BootstrapConfig(samples=5, seed=3))
    # Also: one example alone (NER: most types vanish), half the examples, each twice.
    one, half = np.eye(30)[:1] * 3, (np.arange(30) % 2 == 0)[None] * 1.0
    weights = np.concatenate([weights, one, half, np.full((1, 30), 2.0)])
    got = significance.weighted_scores(stats, weights)
    for b, row in enumerate(weights.astype(int)):
        drawn = np.repeat(np.arange(30), row)
        want = scoring.score_task(
            spec,
            None if examples is None else [examples[i] for i in drawn],
            [preds[i] for i in drawn],
            [golds[i] for i in drawn],
        )
        assert_scores_equal({k: float(v[b]) for k, v in got.items()}, want)


def test_ner_without_any_entity_has_nan_macro_like_seqeval():
    spec = ScoreSpec("NER")
    examples = [{"sentences": "abc"}, {"sentences": "de"}]
    stats = significance.task_stats(spec, examples, ["C: None", ""], ["C: None", "S: None"])
    assert stats.hit.shape == (2, 0)
    scores = full(stats)
    assert math.isnan(scores["macro-f1"]) and scores["micro-f1"] == 0.0
    assert_scores_equal(
        scores, scoring.score_task(spec, examples, ["C: None", ""], ["C: None", "S: None"])
    )


@needs_real
def test_scores_on_the_real_held_out_tasks_equal_score_task():
    rng = random.Random(0)
    for task in reader.discover_tasks(REAL_DATA_DIR).values():
        examples = reader.read_examples(task, "test")[:120]
        golds = [instructions.build_answer(task, e) for e in examples]
        preds = [g if rng.random() < 0.6 else rng.choice(golds) for g in golds]
        stats = significance.task_stats(task, examples, preds, golds)
        assert_scores_equal(full(stats), scoring.score_task(task, examples, preds, golds))


def cls_pair(correct_a, correct_b):
    """TaskStats of two systems on a single-label CLS task, right where correct_* is True."""
    spec = ScoreSpec("CLS")
    golds = ["Food"] * len(correct_a)

    def stats(correct):
        return significance.task_stats(
            spec, None, ["Food" if c else "Price" for c in correct], golds
        )

    return stats(correct_a), stats(correct_b)


def test_identical_systems_differ_by_nothing():
    a, _ = cls_pair([True, False] * 50, [True] * 100)
    result = significance.paired_bootstrap({"t": (a, a)}, BootstrapConfig(samples=200))
    for name in ("t", scoring.AVERAGE_KEY):
        for k in KEYS:
            d = result[name][k]
            assert (d.delta, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0)
            assert d.baseline == d.candidate


def test_interval_and_p_value_agree_with_the_normal_approximation():
    """Accuracy (= micro F1 here) of two paired systems: the bootstrap interval of the
    difference is close to delta +- 1.96 standard errors of the mean paired difference."""
    rng = np.random.default_rng(0)
    n = 600
    correct_a = rng.random(n) < 0.55
    correct_b = np.where(rng.random(n) < 0.8, correct_a, rng.random(n) < 0.75)
    a, b = cls_pair(correct_a, correct_b)
    d = significance.paired_bootstrap({"t": (a, b)}, BootstrapConfig(samples=4000))["t"]["micro-f1"]
    diff = correct_b.astype(float) - correct_a.astype(float)
    se = diff.std(ddof=1) / math.sqrt(n)
    assert d.baseline == pytest.approx(correct_a.mean()) and d.delta == pytest.approx(diff.mean())
    assert d.low == pytest.approx(diff.mean() - 1.96 * se, abs=0.25 * se)
    assert d.high == pytest.approx(diff.mean() + 1.96 * se, abs=0.25 * se)
    z = diff.mean() / se
    normal_p = math.erfc(abs(z) / math.sqrt(2))
    assert d.p_value == pytest.approx(normal_p, abs=0.02 + 0.3 * normal_p)


def test_draws_depend_only_on_the_seed_and_the_task():
    config = BootstrapConfig(samples=50, seed=1)
    w = significance.draw_weights("x", 20, config)
    assert w.shape == (50, 20) and (w.sum(-1) == 20).all() and (w >= 0).all()
    assert (w == significance.draw_weights("x", 20, config)).all()
    assert (w != significance.draw_weights("y", 20, config)).any()
    assert (w != significance.draw_weights("x", 20, BootstrapConfig(samples=50, seed=2))).any()
    x = cls_pair([True, False] * 10, [True] * 20)
    y = cls_pair([False] * 20, [True, True, False, False] * 5)
    alone = significance.paired_bootstrap({"x": x}, config)["x"]
    assert significance.paired_bootstrap({"x": x, "y": y}, config)["x"] == alone


def test_average_is_over_tasks_leaving_nan_out():
    x = cls_pair([True, False] * 10, [True] * 20)  # accuracy 0.5 -> 1.0
    y = cls_pair([False] * 20, [True, True, False, False] * 5)  # 0.0 -> 0.5
    ner = ScoreSpec("NER")
    empty = significance.task_stats(ner, [{"sentences": "ab"}] * 2, ["", ""], ["C: None"] * 2)
    pairs = {"x": x, "y": y, "z": (empty, empty)}
    result = significance.paired_bootstrap(pairs, BootstrapConfig(samples=100))
    assert math.isnan(result["z"]["macro-f1"].delta)
    average = result[scoring.AVERAGE_KEY]
    assert average["macro-f1"].baseline == pytest.approx(0.5 / 2)  # (x 0.5, y 0) / 2
    assert average["macro-f1"].delta == pytest.approx(0.5)
    assert average["micro-f1"].delta == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert average["micro-f1"].low <= average["micro-f1"].delta <= average["micro-f1"].high


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="samples must be at least 1, got 0"):
        BootstrapConfig(samples=0)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 95"):
        BootstrapConfig(confidence=95)
    with pytest.raises(ValueError, match="seed must be 0 or more, got -1"):
        BootstrapConfig(seed=-1)
    a, _ = cls_pair([True] * 3, [True] * 3)
    b, _ = cls_pair([True] * 4, [True] * 4)
    with pytest.raises(ValueError, match="t: 3 baseline vs 4 candidate examples"):
        significance.paired_bootstrap({"t": (a, b)})


def test_the_mark_and_the_p_value_count_the_same_replicates():
    """The interval's ends are order statistics: it excludes 0 exactly when few
    replicates fall on the other side, which the p-value counts (no interpolation
    putting an end just past 0 while p says 0.052)."""
    rng = np.random.default_rng(1)
    for k in range(15, 40):  # replicates at or below 0, of 1000
        deltas = np.concatenate([-rng.random(k), rng.random(1000 - k) + 1e-3])
        d = significance._difference(0.5, 0.6, deltas, 0.95, n=100)
        assert d.excludes_zero == (k < 25) and (d.p_value < 0.05) == (k < 25), k


def test_one_example_has_no_interval():
    a, b = cls_pair([False], [True])
    d = significance.paired_bootstrap({"t": (a, b)}, BootstrapConfig(samples=50))["t"]["micro-f1"]
    assert d.delta == 1.0 and math.isnan(d.low) and math.isnan(d.p_value)
    assert not d.excludes_zero


def test_an_average_over_one_example_has_no_interval():
    """The NER task's macro-F1 is NaN (no entity anywhere): the average of that key is
    the one-example task's alone, so it has no interval either."""
    one = cls_pair([False], [True])
    ner = ScoreSpec("NER")
    empty = significance.task_stats(ner, [{"sentences": "ab"}] * 3, [""] * 3, ["C: None"] * 3)
    pairs = {"one": one, "ner": (empty, empty)}
    average = significance.paired_bootstrap(pairs, BootstrapConfig(samples=50))["average"]
    assert average["macro-f1"].delta == 1.0 and math.isnan(average["macro-f1"].low)
    assert not math.isnan(average["micro-f1"].low)  # the NER task's 3 examples count there
