"""The statistics behind every table cell and verdict, stated here once.

Units. A pretraining seed is the unit: arms share their seeds (init, data order, masks), so a run of arm A and the
run of arm B with the same seed are a pair. A run's downstream score is the mean over its fine-tuning seeds, so the
two sources of variance are taken together, as MultiBERTs' multi-bootstrap resamples them together (Sellam et al.
2021); few-seed reporting follows rliable (Agarwal et al. 2021): say what the seeds can and cannot show. A diverged run
counts as the worst possible result: perplexity +inf, downstream score -inf (it was never fine-tuned). It is never
dropped from a comparison; only the signal check (below) leaves it out, since that asks what the runs that trained
learned.

A table cell: the median over runs and their range [min, max]. The range of n runs covers the median of the
population of runs with probability 1 - 2 * 0.5^n (75% at n = 3, 94% at n = 5): it is printed as the range it is,
never as a 95% interval.

A comparison (claim "A better than B", or "A not worse than B within a margin m"): d_s = the gain of A over B on
seed s (score difference; for perplexity, B's minus A's, so a positive gain is always "A better").
  - Every d_s finite: the paired t-interval mean(d) +- t(n-1) sd(d) / sqrt(n), exact under normal noise and
    conservative under heavier symmetric tails (tests/test_verdict_simulation.py measures both).
  - A run diverged (an infinite d_s; both arms diverged on a seed: a tie, d_s = 0): the order-statistic (sign-test)
    interval [d_(k), d_(n+1-k)] for the median of d, whose level 1 - 2 P(Binomial(n, 1/2) < k) needs no
    assumption about the noise. Below 6 seeds no k reaches 95% (n = 5: 93.8%, n = 3: 75%): no interval, so the
    comparison is inconclusive and the table says why.
  - boundary b = 0 (superiority) or -m (non-inferiority). Reproduced: the 95% interval lies above b. Contradicted:
    the interval lies below b at the Holm-adjusted level (next paragraph). Else inconclusive, printed with the
    number of seeds that would resolve it at the observed mean and spread, and which way: toward reproduced where
    the mean gain lies above b, toward contradicted where below.
  - Inconclusive because of a diverged run (no interval at the printed level, or a rank interval that reaches
    +-inf): printed with the least number of paired seeds at which a rank interval could leave out the j diverged
    runs that stand against the heading (A alone diverged, d_s = -inf, toward reproduced; B alone, +inf, toward
    contradicted), with no more diverging: the least n with 1 - 2 P(Binomial(n, 1/2) <= j) reaching the level
    (`rank_seeds`; j = 0: 6 seeds at 95%, j = 1: 9). A necessary count, not a promise: the finite gains must then
    clear b too. Never "no signal": the diverged run is evidence about the comparison, not about whether the arms
    learned.
  - Every interval is printed with its own level (a sign interval's is 96.9-99.2%, not 95%), or as "no interval"
    with the reason.

A claim. Its comparisons are every compared pair of rows on every metric of the paper's headline kind (downstream
scores; perplexity for Table 3, or where a study has no downstream scores). Reproduced when every comparison is
(an intersection-union test: no adjustment needed). Contradicted when any is, judged at the Holm-adjusted level
1 - 0.05 / k for k comparisons (for "any", Holm's first step; so a claim of 10 comparisons is not contradicted by
one that crosses at 95%).

No signal. A comparison means nothing between arms that did not learn. Whether an arm learned is asked of its
finished runs: a diverged run trained nothing to show, so the check leaves it out and says so beside its bound ("2 of 3
runs finished, 1 diverged"; a run whose score is not finite, every fine-tuning seed diverged, is left out of that
task's check alike); in the comparisons it still counts as the worst result (above). Each check is a one-sided 95% t
bound on the mean of the finished runs' values (`signal_bound`; at least MIN_RUNS of them):
  - downstream, each task: the per-seed gain over the arm's own encoder from random weights (the random-init baseline
    of its shape; where that is degenerate, below, the strictest sound one of another shape) must have a lower bound
    above 0;
  - perplexity, each yardstick: the per-run ratio to its unigram perplexity (the no-context reference) must have an
    upper bound below RATIO_SIGNAL (computed on log ratios).
Signal belongs to the arm, from every piece of evidence (`arm_signal`): it shows signal when any of its checks clears,
and then its comparisons count on every metric. Where none clears and a check has a single finished run (no bound: one
run has no spread), whether it learned is not known and its comparisons are inconclusive, with that reason. Else it
shows no signal: every check had its finished runs and none cleared, or it had none to ask (no run finished; or no
task with a sound baseline and no yardstick reference recorded). One-sided, because a check asks one question, "did it
learn?", at 5% error each; an arm that learned nothing clears one of its c checks with probability at most c x 5%
(less, as they share runs), and then its comparisons are judged by the intervals above, at their printed levels.

A degenerate baseline. A random-init baseline that does not itself beat the task's majority class (a constant
prediction, recorded with every fine-tuning summary) certifies nothing: an encoder stuck there is beaten by any arm that
moved at all. Degenerate: its per-seed scores minus the majority-class score have no lower bound above 0 (the bound
above; an encoder at the majority class on every seed has a bound of exactly 0). The check then uses the other encoder
shapes' baselines for that task that are not degenerate (the highest median of them: the strictest). Where there is
none, the task certifies no arm either way: the table marks it, and its comparisons count between arms that show
signal elsewhere. So does a baseline with no majority-class score to check it against (a summary written before it
was recorded).

Two yardsticks (Table 2). The long-window yardstick is FULL-SENTENCES' own kind of input, so a Table 2 perplexity
claim is also judged on the short-context yardstick (the same text, a sentence at a time), each yardstick by the rules
above on its own (Holm across the claim's comparisons on that yardstick). Equal verdicts stand; where they differ the
claim is "format-dependent", and the table prints both verdicts and intervals (signal is the arm's, so both yardsticks
read "no signal" or neither).

Precedence: not tested (the study lacks the arms) > fewer than MIN_RUNS paired runs > no signal > an arm not known to
have learned (inconclusive) > the interval rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as sp

LEVEL = 0.95  # every printed interval's level; the simulation test checks the coverage it has
MARGIN_POINTS = 0.5  # "comparable": within half an accuracy/F1 point (the paper's rows differ by 0.2-0.7 points)
MARGIN_PPL = 0.01  # ... or within 1% of the other arm's perplexity
MIN_RUNS = 2  # paired runs below which there is no interval at all (a t-interval needs a spread)
RATIO_SIGNAL = 0.9  # ppl / unigram ppl below this shows an arm learned (one of its signal checks)
MAX_SEEDS = 10_000  # "seeds needed" beyond this is printed as more than it
REPRODUCED, CONTRADICTED, INCONCLUSIVE, NO_SIGNAL, NOT_TESTED, FORMAT_DEPENDENT = (
    "reproduced", "contradicted", "inconclusive", "no signal", "not tested", "format-dependent")


@dataclass(frozen=True)
class Interval:
    """A two-sided interval for the gain; `method` says which rule made it, `level` the coverage it has."""

    estimate: float  # mean (t) or median (rank) of the gains
    lo: float
    hi: float
    level: float
    method: str  # "paired t", "sign (order statistics)", or "none: <why>"
    n: int
    sd: float  # spread of the gains (nan when a run diverged)

    @property
    def exists(self) -> bool:
        return not math.isnan(self.lo)


@lru_cache(maxsize=4096)
def _t(level: float, df: int) -> float:
    """The two-sided t quantile for `level` with `df` degrees of freedom."""
    return float(sp.t.ppf(0.5 + level / 2, df))


def _none(d: np.ndarray, why: str) -> Interval:
    finite = d[np.isfinite(d)]
    est = float(np.median(d)) if len(d) else math.nan
    return Interval(est, math.nan, math.nan, math.nan, f"none: {why}", len(d),
                    float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan)


def sign_level(n: int, k: int) -> float:
    """Coverage of [d_(k), d_(n+1-k)] for the median of n continuous values."""
    return 1.0 - 2.0 * float(sp.binom.cdf(k - 1, n, 0.5))


def paired_interval(d: np.ndarray, level: float = LEVEL) -> Interval:
    """The interval for the gain from per-seed paired gains `d` (see the module docstring)."""
    d = np.asarray(d, dtype=float)
    d = d[~np.isnan(d)]
    n = len(d)
    if n < MIN_RUNS:
        return _none(d, f"n = {n}, fewer than {MIN_RUNS} paired runs")
    if np.isfinite(d).all():
        mean, sd = float(d.mean()), float(d.std(ddof=1))
        half = _t(level, n - 1) * sd / math.sqrt(n)
        return Interval(mean, mean - half, mean + half, level, "paired t", n, sd)
    ks = [k for k in range(1, n // 2 + 1) if sign_level(n, k) >= level]
    if not ks:
        return _none(d, f"n = {n} with a diverged run: a rank interval reaches at most {sign_level(n, 1):.1%}, "
                        f"not {level:.0%}")
    k = max(ks)
    s = np.sort(d)
    return Interval(float(np.median(d)), float(s[k - 1]), float(s[n - k]), sign_level(n, k),
                    "sign (order statistics)", n, math.nan)


def holm_level(k: int) -> float:
    """The level at which one of k comparisons is judged for "any contradicts" (Holm's first step)."""
    return 1.0 - (1.0 - LEVEL) / max(k, 1)


def judge(d: np.ndarray, boundary: float, k: int = 1) -> tuple[str, Interval]:
    """Verdict of one comparison among k of its claim, and the 95% interval it rests on."""
    shown = paired_interval(d)
    if not shown.exists:
        return INCONCLUSIVE, shown
    if shown.lo > boundary:
        return REPRODUCED, shown
    strict = paired_interval(d, holm_level(k))
    if strict.exists and strict.hi < boundary:
        return CONTRADICTED, shown
    return INCONCLUSIVE, shown


def combine(verdicts: list[str]) -> str:
    """A claim from its comparisons' verdicts (already judged at the claim's Holm level)."""
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return CONTRADICTED if CONTRADICTED in verdicts else INCONCLUSIVE


def seeds_to_resolve(iv: Interval, boundary: float, k: int = 1) -> int | None:
    """Paired seeds at which an inconclusive t-interval of the same mean and spread would clear the boundary
    (None: not a t-interval, or the mean sits on the boundary; MAX_SEEDS + 1: more than MAX_SEEDS)."""
    if iv.method != "paired t" or iv.estimate == boundary:
        return None
    gap = abs(iv.estimate - boundary)
    level = LEVEL if iv.estimate > boundary else holm_level(k)
    if iv.sd == 0:
        return MIN_RUNS

    def resolves(n: int) -> bool:  # the half-width falls with n (t quantile and 1 / sqrt(n) both do): bisect
        return _t(level, n - 1) * iv.sd / math.sqrt(n) < gap

    if not resolves(MAX_SEEDS):
        return MAX_SEEDS + 1
    lo, hi = MIN_RUNS - 1, MAX_SEEDS  # resolves(hi); not resolves(lo) or lo below MIN_RUNS
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if resolves(mid) else (mid, hi)
    return hi


def heading(iv: Interval, boundary: float) -> str:
    """Which verdict more seeds at this mean would lead to: reproduced above the boundary, contradicted below."""
    return REPRODUCED if iv.estimate > boundary else CONTRADICTED


def rank_seeds(d: np.ndarray, boundary: float, k: int = 1) -> tuple[int | None, int]:
    """(paired seeds at which a rank interval could leave out the j diverged runs standing against the heading, if no
    more diverged; j) (see the module docstring). None where the median gain sits on the boundary, MAX_SEEDS + 1
    beyond it."""
    d = np.asarray(d, dtype=float)
    d = d[~np.isnan(d)]
    estimate = float(np.median(d))
    if estimate == boundary:
        return None, 0
    against, level = (np.isneginf(d), LEVEL) if estimate > boundary else (np.isposinf(d), holm_level(k))
    j = int(against.sum())
    for n in range(max(2 * (j + 1), MIN_RUNS), MAX_SEEDS + 1):  # [d_(j+1), d_(n-j)] needs j + 1 <= n / 2
        if sign_level(n, j + 1) >= level:
            return n, j
    return MAX_SEEDS + 1, j


@dataclass(frozen=True)
class Bound:
    """A one-sided bound for the mean of an arm's finished runs (the signal check): `value` nan where there is none (inf
    for a ratio, `ratio_upper`)."""

    value: float
    level: float
    method: str  # "t bound on the mean" or "none: <why>"
    n: int  # finished runs: the values it rests on
    diverged: int  # runs left out: a value that is not finite

    @property
    def exists(self) -> bool:
        return not math.isnan(self.level)

    @property
    def runs(self) -> str:
        """'3 runs', or '2 of 3 runs finished, 1 diverged'."""
        if not self.diverged:
            return f"{self.n} run{'s' * (self.n != 1)}"
        return f"{self.n} of {self.n + self.diverged} runs finished, {self.diverged} diverged"


def signal_bound(x: np.ndarray, side: str, level: float = LEVEL) -> Bound:
    """One-sided `level` bound ("lower" or "upper") for the mean of the finite values of `x` (the finished runs'), by
    t; the others are counted as diverged (see the module docstring)."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    finished = x[np.isfinite(x)]
    n, diverged = len(finished), len(x) - len(finished)
    if n < MIN_RUNS:
        return Bound(math.nan, math.nan, f"none: fewer than {MIN_RUNS} finished runs", n, diverged)
    half = _t(2 * level - 1, n - 1) * float(finished.std(ddof=1)) / math.sqrt(n)  # two-sided 2L-1 quantile is L's
    mean = float(finished.mean())
    return Bound(mean - half if side == "lower" else mean + half, level, "t bound on the mean", n, diverged)


def arm_signal(checks: list[tuple[Bound, bool]]) -> str | None:
    """An arm's signal from every check it has, each a bound and whether it clears its threshold: None (signal) where
    any clears; else INCONCLUSIVE where a check has a single finished run to ask; else NO_SIGNAL (so with no check)."""
    if any(cleared for _, cleared in checks):
        return None
    return INCONCLUSIVE if any(0 < b.n < MIN_RUNS for b, _ in checks) else NO_SIGNAL


def above_baseline(d: np.ndarray) -> bool:
    """Whether per-seed gains `d` over a baseline show a learned gain: their lower bound lies above 0. Also how a
    random-init baseline is checked against the majority class (d = its scores minus the majority-class score)."""
    b = signal_bound(d, "lower")
    return b.value > 0  # nan (no bound) compares False


def ratio_upper(log_ratios: np.ndarray) -> Bound:
    """Upper bound of an arm's ppl / unigram ppl: `signal_bound` of its per-run log ratios, exponentiated (inf where
    there is no bound)."""
    b = signal_bound(log_ratios, "upper")
    return Bound(math.exp(b.value) if not math.isnan(b.value) else math.inf, b.level, b.method, b.n, b.diverged)


def range_level(n: int) -> float:
    """Coverage of the range [min, max] of n runs for the median of runs."""
    return sign_level(n, 1) if n >= 2 else math.nan
