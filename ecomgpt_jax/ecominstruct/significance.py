"""Is one model better than another? Paired bootstrap over the held-out examples.

The paper's held-out tasks have about 500 test examples each, so a difference of a point
or two between two models (two checkpoints, two mixtures: the paper's ablations) can be
noise. :func:`paired_bootstrap` says how much: each replicate draws example positions with
replacement, the same positions for both systems, and recomputes every score exactly as
:func:`scoring.score_task` does, on that draw; the spread of candidate - baseline over the
replicates gives a percentile confidence interval and a two-sided p-value. The average
over tasks draws every task independently within a replicate (a stratified bootstrap),
since the tasks are fixed and only their examples are samples.

A replicate must not re-run ROUGE or seqeval, so each task is reduced once to
per-example statistics (:class:`TaskStats`: ROUGE values, and matched / predicted / gold
counts per F1 item type) from which every score is a weighted sum; a replicate is a
vector of draw counts per example. With all counts 1 the scores equal score_task's
(tests check it against score_task and seqeval).

Per-task p-values are not corrected for testing twelve tasks at once.

Pure Python and NumPy: no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from ecomgpt_jax.ecominstruct import reader, scoring

KEYS = scoring.SCORE_KEYS


@dataclasses.dataclass(frozen=True)
class TaskStats:
    """Per-example statistics of one system on one task; n examples, T item types.

    Attributes:
      ner: True when F1 is seqeval's over entity types (NER), False for set F1.
      rouge, rouge_cjk: float [n], per-example ROUGE-L F (paper's, and CJK-aware).
      hit, pred, gold: float [n, T], matched, predicted and gold items of each example:
        for NER, entities of each type (T = types seen in golds or predictions, may be
        0); for set F1, items of the example's sets (T = 1).
    """

    ner: bool
    rouge: np.ndarray
    rouge_cjk: np.ndarray
    hit: np.ndarray
    pred: np.ndarray
    gold: np.ndarray

    @property
    def n(self) -> int:
        return len(self.rouge)


def _entity_counts(
    tags_gold: Sequence[list[str]], tags_pred: Sequence[list[str]]
) -> tuple[np.ndarray, ...]:
    """[n, T] hit / pred / gold entity counts per type, entities as seqeval's default
    (conlleval-compatible) mode finds them, one sentence at a time."""
    from seqeval.metrics.sequence_labeling import get_entities  # scoring-only dependency

    gold = [set(get_entities(t)) for t in tags_gold]
    pred = [set(get_entities(t)) for t in tags_pred]
    types = sorted({e[0] for ents in (*gold, *pred) for e in ents})
    column = {t: k for k, t in enumerate(types)}
    counts = np.zeros((3, len(gold), len(types)))
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        for which, ents in enumerate((g & p, p, g)):
            for e in ents:
                counts[which, i, column[e[0]]] += 1
    return counts[0], counts[1], counts[2]


def task_stats(
    task: reader.TaskInfo | scoring.ScoreSpec,
    examples: Sequence[Mapping] | None,
    predictions: Sequence[str],
    golds: Sequence[str],
) -> TaskStats:
    """Per-example statistics of one system's predictions (arguments as score_task's)."""
    preds, golds = scoring.cleaned(task, examples, predictions, golds)
    rouge = np.array([scoring.rouge_l_paper(p, g) for p, g in zip(preds, golds, strict=True)])
    rouge_cjk = np.array(scoring.rouge_l_cjk(preds, golds))
    if task.type == "NER":
        sentences = [e["sentences"] for e in examples]
        tags = (
            scoring.answer_tags(sentences, answers, task.label_sep) for answers in (golds, preds)
        )
        hit, pred, gold = _entity_counts(*tags)
        return TaskStats(True, rouge, rouge_cjk, hit, pred, gold)
    rows = []
    for p, g in zip(preds, golds, strict=True):
        p_items, g_items = (scoring.f1_items(task.type, task.label_sep, t) for t in (p, g))
        rows.append((len(p_items & g_items), len(p_items), len(g_items)))
    counts = np.array(rows, dtype=np.float64)  # [n, 3]
    hit, pred, gold = counts[:, 0:1], counts[:, 1:2], counts[:, 2:3]  # [n, 1] each
    return TaskStats(False, rouge, rouge_cjk, hit, pred, gold)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (the contract's and seqeval's zero division)."""
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def _f1(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    return _ratio(2 * p * r, p + r)


def weighted_scores(stats: TaskStats, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every score of `stats` on resampled data.

    Args:
      stats: one system's TaskStats (n examples).
      weights: float [B, n], how many times each example counts in each of B replicates
        (all ones: the data itself; a bootstrap draw sums to n, other sums also work).

    Returns:
      dict score key -> float [B] (NER macro-f1 NaN where no entity type occurs).
    """
    n = weights.sum(-1)
    out = {"rouge-l-f1": weights @ stats.rouge / n, "rouge-l-f1-cjk": weights @ stats.rouge_cjk / n}
    hit, pred, gold = (weights @ a for a in (stats.hit, stats.pred, stats.gold))  # [B, T]
    out["micro-f1"] = _f1(_ratio(hit.sum(-1), pred.sum(-1)), _ratio(hit.sum(-1), gold.sum(-1)))
    if stats.ner:
        f1 = _f1(_ratio(hit, pred), _ratio(hit, gold))  # [B, T]
        present = (pred + gold) > 0  # seqeval's report lists types seen in either
        count = present.sum(-1)
        out["macro-f1"] = np.where(count > 0, (f1 * present).sum(-1) / np.maximum(count, 1), np.nan)
    else:
        # Per-example precision and recall; both are 0 when either set is empty (5.3),
        # since then nothing matches.
        p_i = _ratio(stats.hit[:, 0], stats.pred[:, 0])
        r_i = _ratio(stats.hit[:, 0], stats.gold[:, 0])
        out["macro-f1"] = _f1(weights @ p_i / n, weights @ r_i / n)
    return out


@dataclasses.dataclass(frozen=True)
class Difference:
    """candidate - baseline for one score; values in [0, 1] units (NaN: undefined).

    Attributes:
      baseline, candidate: the scores on the data itself. delta: candidate - baseline.
      low, high: the percentile confidence interval of delta over the replicates (NaN
        for a task of one example: there is nothing to resample).
      p_value: two-sided: twice the smaller share of replicates on either side of 0
        (each share counted as (k + 1) / (B + 1), so never 0), capped at 1.
    """

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies on one side of 0 (False without an interval)."""
        return bool(self.low > 0 or self.high < 0)

    baseline: float
    candidate: float
    delta: float
    low: float
    high: float
    p_value: float


def _difference(full_a, full_b, deltas: np.ndarray, confidence: float, n: int) -> Difference:
    """n: the examples drawn from (fewer than 2: every draw is the data; no interval)."""
    deltas = deltas[~np.isnan(deltas)]
    nan = float("nan")
    if np.isnan(full_a) or np.isnan(full_b) or not len(deltas):
        return Difference(float(full_a), float(full_b), nan, nan, nan, nan)
    if n < 2:
        return Difference(float(full_a), float(full_b), float(full_b - full_a), nan, nan, nan)
    # Order statistics, the same number in from each end (no interpolation): the
    # interval excludes 0 when fewer than that many replicates fall on the other side,
    # which is what the p-value counts. (The epsilon: 1000 * 0.025 is 25.000000000000004.)
    ordered = np.sort(deltas)
    rank = max(math.ceil((1 - confidence) / 2 * len(ordered) - 1e-9), 1)
    low, high = ordered[rank - 1], ordered[len(ordered) - rank]
    side = min(np.sum(deltas <= 0), np.sum(deltas >= 0))
    p_value = min(1.0, 2 * (side + 1) / (len(deltas) + 1))
    return Difference(
        float(full_a), float(full_b), float(full_b - full_a), float(low), float(high), p_value
    )


@dataclasses.dataclass(frozen=True)
class BootstrapConfig:
    """samples: replicates B; seed: their seed (each task's draws depend only on the seed
    and the task's name); confidence: the interval's coverage."""

    samples: int = 1000
    seed: int = 0
    confidence: float = 0.95

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.seed < 0:
            raise ValueError(f"seed must be 0 or more, got {self.seed}")


def _nanmean(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 leaving NaN out; NaN (silently) where every value is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice"
        return np.nanmean(x, axis=0)


def draw_weights(name: str, n: int, config: BootstrapConfig) -> np.ndarray:
    """float [B, n]: each replicate's draw count per example (n draws with replacement)."""
    rng = np.random.default_rng([config.seed, zlib.crc32(name.encode("utf-8"))])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=config.samples).astype(np.float64)


def paired_bootstrap(
    pairs: Mapping[str, tuple[TaskStats, TaskStats]], config: BootstrapConfig = BootstrapConfig()
) -> dict[str, dict[str, Difference]]:
    """Compare two systems task by task and on the average over tasks.

    Args:
      pairs: task name -> (baseline, candidate) TaskStats over the same n examples, in
        the same order.
      config: replicates, seed and confidence.

    Returns:
      dict task name -> {score key: Difference}, in `pairs`' order, then
      ``scoring.AVERAGE_KEY`` -> {score key: Difference} for the unweighted mean over
      tasks (NaN task scores left out, as in scoring.average_scores).
    """
    out: dict[str, dict[str, Difference]] = {}
    full: dict[str, list] = {k: [] for k in KEYS}  # per task: (baseline, candidate)
    drawn: dict[str, list] = {k: [] for k in KEYS}  # per task: ([B], [B])
    for name, (base, cand) in pairs.items():
        if base.n != cand.n:
            raise ValueError(f"{name}: {base.n} baseline vs {cand.n} candidate examples")
        weights = draw_weights(name, base.n, config)
        ones = np.ones((1, base.n))
        a, b = weighted_scores(base, weights), weighted_scores(cand, weights)
        a_full, b_full = weighted_scores(base, ones), weighted_scores(cand, ones)
        out[name] = {}
        for k in KEYS:
            out[name][k] = _difference(
                a_full[k][0], b_full[k][0], b[k] - a[k], config.confidence, base.n
            )
            full[k].append((a_full[k][0], b_full[k][0]))
            drawn[k].append((a[k], b[k]))
    if not pairs:
        return out
    average = {}
    for k in KEYS:
        a_full, b_full = _nanmean(np.array(full[k]))
        a = _nanmean(np.stack([x for x, _ in drawn[k]]))
        b = _nanmean(np.stack([y for _, y in drawn[k]]))
        # The largest task the average of this key takes in (NaN ones are left out):
        # if it has one example, every replicate is the data.
        n = max(
            (base.n for (base, _), ab in zip(pairs.values(), full[k], strict=True)
             if not np.isnan(ab).any()),
            default=0,
        )  # fmt: skip
        average[k] = _difference(a_full, b_full, b - a, config.confidence, n)
    out[scoring.AVERAGE_KEY] = average
    return out
