"""The numbers behind every table cell and verdict.

Statistics. A cell's number is the median of every value behind it: one perplexity per pretraining seed, or every
fine-tuning score of every pretraining seed (each run's summary holds its fine-tuning seeds). Its 95% interval is a
percentile bootstrap of that median that resamples pretraining runs, then fine-tuning seeds within each run (a
two-level bootstrap: the pretraining seed is the larger source of variance). A delta's interval resamples both arms
independently.

Verdicts. A claim compares pairs of arms on its primary metric (downstream scores; perplexity for Table 3). Per
pair and metric, with `gain` = how much better arm A is than arm B (sign flipped for perplexity) and its interval:
  "A better than B" (superiority):  reproduced if the interval lies above 0, contradicted if below 0;
  "A not worse than B" (comparable or better, within a margin m): reproduced if the interval lies above -m,
                                     contradicted if it lies below -m;
otherwise inconclusive, and always inconclusive when either arm has fewer than MIN_RUNS finished pretraining
runs (an interval over two runs is their range, not a 95% interval). A claim is contradicted if any pair
contradicts it, reproduced if every pair reproduces it, else inconclusive; "not tested" when the study lacks the
arms. Perplexity rows of downstream claims are shown as supporting evidence and decide only when no downstream
score exists (the verdict then says so).
"""

from __future__ import annotations

import math
import zlib

import numpy as np

N_BOOT = 2000
MARGIN_POINTS = 0.5  # "comparable": within half an accuracy/F1 point (the paper's rows differ by 0.2-0.7 points)
MARGIN_PPL = 0.01  # ... or within 1% of the other arm's perplexity
MIN_RUNS = 3  # below this many finished runs per arm a bootstrap "interval" is just the range: no verdict
REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED = "reproduced", "contradicted", "inconclusive", "not tested"


def bootstrap_medians(groups: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) medians of two-level resamples: groups (runs) with replacement, then values within each group."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not groups:
        return np.full(n_boot, np.nan)
    k = len(groups)
    lens = np.array([len(g) for g in groups])
    m = int(lens.max())
    mat = np.full((k, m), np.nan)
    for i, g in enumerate(groups):
        mat[i, : len(g)] = g
    pick = rng.integers(0, k, size=(n_boot, k))  # (B, k) which run fills each slot
    if m == 1:
        return np.median(mat[pick, 0], axis=1)
    n = lens[pick]  # (B, k) that run's number of values
    within = np.minimum((rng.random((n_boot, k, m)) * n[..., None]).astype(int), m - 1)  # (B, k, m)
    vals = np.where(np.arange(m) < n[..., None], mat[pick[..., None], within], np.nan)
    return np.nanmedian(vals.reshape(n_boot, -1), axis=1)


def interval(boot: np.ndarray) -> tuple[float, float]:
    """Percentile 95% interval; 'inverted_cdf' takes observed values, so an infinite (diverged) one stays inf."""
    finite_or_inf = boot[~np.isnan(boot)]
    if not len(finite_or_inf):
        return math.nan, math.nan
    lo, hi = np.quantile(finite_or_inf, [0.025, 0.975], method="inverted_cdf")
    return float(lo), float(hi)


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """Independent, reproducible draws per (arm, metric)."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def judge(kind: str, lo: float, hi: float, margin: float) -> str:
    if any(math.isnan(x) for x in (lo, hi)):
        return INCONCLUSIVE
    if kind == "superior":
        return REPRODUCED if lo > 0 else CONTRADICTED if hi < 0 else INCONCLUSIVE
    return REPRODUCED if lo > -margin else CONTRADICTED if hi < -margin else INCONCLUSIVE
