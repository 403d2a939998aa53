"""The verdict rule (analysis.stats) on thousands of synthetic studies with known effects.

Each study: n pretraining seeds, two arms sharing each seed's draw (pairing), independent noise per arm at the demo's
measured seed spread, true gain of A over B in {-2m, -m, 0, +m, +2m} for margin m. Noise kinds: normal (the rule's
own assumption), heavy tails (Student t with 3 degrees of freedom, scaled to the same variance), and normal with 5%
of runs diverging (scored -inf). A claim is either "A better than B" (boundary 0) or "A not worse than B" (boundary
-m). Checked, at the worst true gain for each: false "reproduced" (true gain at or below the boundary) and false
"contradicted" (true gain at or above it) each <= 5%, also for a claim of two comparisons.

Coverage: each interval the rule prints is checked against what it is an interval for, at the level it prints: a
paired t-interval (95%) against the true mean gain, a sign interval (where a run diverged: its own level, 96.9-99.2%
at 6-10 seeds) against the true median of the per-seed gains, which divergences move slightly off the mean (a seed
where both arms diverged is a tie, 0). The mean coverage must lie within 3 points of the mean printed level. Below 6
seeds a study with a divergence prints no interval at all; the intervals of the others (all t) are still checked.

Whole studies (issue 34): the same noise written as run folders (study.json, result.json, fine-tuning summaries) and
read back by analysis.make_table, so the signal check and the claims' precedence are in it too. Every arm learned
(downstream LEARNED points above its encoder from random weights, ppl / unigram RATIO), each run diverging with
probability DIVERGE, at 3 and 5 seeds: Table 2 (downstream claims, perplexity supporting) and Table 1 on perplexity
alone, every true gain at its claim's boundary (doc_not_worse_than_full one margin above it). Checked: "no signal"
in at most 1% of the claims (the arms learned), false "reproduced" and false "contradicted" each <= 5%.

`pytest -s` prints both tables.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from scipy import optimize
from scipy import stats as sp
from test_verdict_cases import DIVERGED, MASKING, write_study

from analysis.stats import CONTRADICTED, NO_SIGNAL, NOT_TESTED, REPRODUCED, combine, judge
from analysis.tables import make_table

MARGIN = 0.5  # analysis.stats.MARGIN_POINTS
SPREAD = 0.7  # per-arm seed sd of the demo's downstream scores (measured: 0.2-1.5 points)
SHARED = 1.0  # per-seed component both arms share (init, data order): cancels in the paired gain
DIVERGE = 0.05  # share of runs that diverge, per arm, in the "diverge" kind
STUDIES = 1000
EFFECTS = (-2, -1, 0, 1, 2)  # in margins
BOUNDARIES = {"superior": 0.0, "noninferior": -MARGIN}
CASES = [("normal", n, 1) for n in (3, 5)] + [("t3", n, 1) for n in (3, 5)] + [("normal", n, 2) for n in (3, 5)] + \
    [("diverge", n, 1) for n in (3, 5, 6, 8, 10)]


def _noise(rng: np.random.Generator, kind: str, shape: tuple) -> np.ndarray:
    if kind == "t3":
        return SPREAD * rng.standard_t(3, shape) / np.sqrt(3.0)  # t3 has variance 3
    return SPREAD * rng.standard_normal(shape)


def _gains(rng: np.random.Generator, kind: str, n: int, effect: float, k: int = 1) -> np.ndarray:
    """(STUDIES, k, n) paired gains of A over B for k comparisons of one claim."""
    shared = SHARED * rng.standard_normal((STUDIES, k, n))
    a = effect + shared + _noise(rng, kind, (STUDIES, k, n))
    b = shared + _noise(rng, kind, (STUDIES, k, n))
    if kind == "diverge":
        a[rng.random(a.shape) < DIVERGE] = -np.inf
        b[rng.random(b.shape) < DIVERGE] = -np.inf
    with np.errstate(invalid="ignore"):
        d = a - b
    d[np.isneginf(a) & np.isneginf(b)] = 0.0  # both diverged on this seed: a tie between two worst results
    return d


def true_median(kind: str, effect: float) -> float:
    """The median of one seed's gain d: normal(effect, SPREAD * sqrt 2) with no divergence; with divergences, d is
    -inf (A alone diverged), +inf (B alone) or 0 (both) with their probabilities, else that normal."""
    if kind != "diverge":
        return effect
    p = DIVERGE
    sd = SPREAD * math.sqrt(2)

    def cdf(x: float, at_zero: bool) -> float:  # P(d <= x), with the atom at 0 counted when at_zero
        return p * (1 - p) + (1 - p) ** 2 * sp.norm.cdf((x - effect) / sd) + (p * p if at_zero else 0.0)

    if cdf(0.0, False) <= 0.5 <= cdf(0.0, True):
        return 0.0
    return float(optimize.brentq(lambda x: cdf(x, x >= 0) - 0.5, effect - 5 * sd, effect + 5 * sd))


def simulate(kind: str, n: int, k: int = 1) -> dict:
    """The worst false-verdict rates over the true gains where they are false, and the printed intervals' coverage
    beside their mean printed level."""
    rng = np.random.default_rng([n, k, len(kind)])
    false_rep, false_con, covered, levels = [], [], [], []
    for claim, boundary in BOUNDARIES.items():
        for e in EFFECTS:
            effect = e * MARGIN
            median = true_median(kind, effect)
            verdicts = []
            for study in _gains(rng, kind, n, effect, k):
                judged = [judge(d, boundary, k) for d in study]
                verdicts.append(combine([v for v, _ in judged]))
                if claim == "superior":  # the interval does not depend on the claim
                    for _, iv in judged:
                        if iv.exists:
                            target = effect if iv.method == "paired t" else median
                            covered.append(iv.lo <= target <= iv.hi)
                            levels.append(iv.level)
            if effect <= boundary:
                false_rep.append(np.mean([v == REPRODUCED for v in verdicts]))
            if effect >= boundary:
                false_con.append(np.mean([v == CONTRADICTED for v in verdicts]))
    return {"false_reproduced": max(false_rep), "false_contradicted": max(false_con),
            "covered": float(np.mean(covered)) if covered else math.nan,
            "level": float(np.mean(levels)) if levels else math.nan, "share_with_interval": len(covered) / (
                len(EFFECTS) * STUDIES * k)}


def test_false_verdicts_at_most_5_percent_and_coverage_as_printed():
    """Every case of CASES: false reproduced and false contradicted <= 5%; where intervals are printed, their coverage
    within 3 points of the level they print. k = 2: a claim of two comparisons (Holm) is not contradicted more often
    than one of one."""
    rows = [(kind, n, k, simulate(kind, n, k)) for kind, n, k in CASES]
    print(f"\n{'noise':8} {'n':>3} {'k':>2} {'divergence':>10} {'false repr.':>11} {'false contr.':>12} "
          f"{'intervals':>9} {'coverage':>8} {'printed level':>13}")
    for kind, n, k, r in rows:
        print(f"{'normal' if kind == 'diverge' else kind:8} {n:3d} {k:2d} {DIVERGE if kind == 'diverge' else 0:10.0%} "
              f"{r['false_reproduced']:11.2%} {r['false_contradicted']:12.2%} {r['share_with_interval']:9.0%} "
              f"{r['covered']:8.2%} {r['level']:13.2%}")
    for kind, n, k, r in rows:
        case = f"{kind} n={n} k={k}"
        assert r["false_reproduced"] <= 0.05, case
        assert r["false_contradicted"] <= 0.05, case
        assert abs(r["covered"] - r["level"]) <= 0.03, case
        if kind == "diverge" and n < 6:
            assert r["share_with_interval"] < 1, case  # a study with a divergence has no interval below 6 seeds
    assert {(kind, n) for kind, n, _, r in rows if kind == "diverge" and r["share_with_interval"] == 1} >= \
        {("diverge", 6), ("diverge", 8), ("diverge", 10)}  # at 6+ seeds every study prints an interval


def test_power_grows_with_seeds():
    """A sanity check that the rule is not vacuous: a true gain of 2 margins is found more often with more seeds."""
    rng = np.random.default_rng(0)
    power = {n: np.mean([judge(d, 0.0)[0] == REPRODUCED for d in _gains(rng, "normal", n, 2 * MARGIN)[:, 0]])
             for n in (3, 10)}
    assert power[10] > max(0.6, power[3]), power


# ---- whole studies through make_table --------------------------------------------------------------------------

FORGED = 60  # studies per scenario (0.1-0.2 CPU-seconds each to write and read back, most of it file system)
LEARNED = 10.0  # every arm's downstream score above its encoder from random weights, in points
RANDOM_INIT = 60.0  # the encoders from random weights, in points (the majority class: 50)
RATIO, PPL_SPREAD, PPL_SHARED = 0.45, 0.01, 0.02  # ppl / unigram of every arm; per-arm and shared log-ppl sd per seed
TABLE2 = {"seg": {"data.input_format": "segment_pair_nsp"}, "sent": {"data.input_format": "sentence_pair_nsp"},
          "full": {"data.input_format": "full_sentences"}, "doc": {"data.input_format": "doc_sentences"}}
# True gains at the boundary of each claim: downstream points (Table 2: FULL and DOC one margin below SEGMENT-PAIR,
# SENTENCE-PAIR equal to it) or relative perplexity (Table 1: dynamic 1% above static, the margin)
AT_BOUNDARY = {2: {"seg": 0.0, "sent": 0.0, "full": -MARGIN, "doc": -MARGIN}, 1: {"static": 0.0, "dynamic": 0.01}}
ABOVE_BOUNDARY = {"doc_not_worse_than_full"}  # DOC vs FULL: gain 0, one margin above -m; the others on it


def forge(root: Path, table: int, n: int, rng: np.random.Generator) -> Path:
    """One study in the run-folder format: Table 2 with one fine-tuning task (a random-init baseline per encoder
    shape) or Table 1 with perplexity only; each run diverges with probability DIVERGE."""
    effect, seeds = AT_BOUNDARY[table], list(range(n))
    arms = TABLE2 if table == 2 else MASKING
    shared, ppl_shared = SHARED * rng.standard_normal(n), PPL_SHARED * rng.standard_normal(n)
    scores, random_init = None, None
    if table == 2:
        scores = {a: list(RANDOM_INIT + LEARNED + effect[a] + shared + SPREAD * rng.standard_normal(n)) for a in arms}
        random_init = {a: list(RANDOM_INIT + SPREAD * rng.standard_normal(n)) for a in ("seg", "full")}
        ppl = {a: 100.0 * RATIO * np.exp(ppl_shared + PPL_SPREAD * rng.standard_normal(n)) for a in arms}
    else:
        ppl = {a: 100.0 * RATIO * (1 + effect[a]) * np.exp(ppl_shared + PPL_SPREAD * rng.standard_normal(n))
               for a in arms}
    ppl = {a: [DIVERGED if rng.random() < DIVERGE else float(v) for v in values] for a, values in ppl.items()}
    return write_study(root, table, arms, seeds, ppl, scores=scores, random_init=random_init)


def simulate_studies(root: Path, table: int, n: int) -> dict:
    """Over FORGED studies: the share of claims reading "no signal", and the worst false-verdict rates over the
    claims (reproduced: the claims on their boundary; contradicted: all, each at or above it)."""
    rng = np.random.default_rng([34, table, n])
    by_claim: dict[str, list[str]] = {}
    for i in range(FORGED):
        folder = forge(root / f"t{table}-n{n}-{i}", table, n, rng)
        for claim, verdict in make_table(folder).verdicts.set_index("claim")["verdict"].items():
            if verdict != NOT_TESTED:
                by_claim.setdefault(claim, []).append(verdict)
        shutil.rmtree(folder.parent)
    share = {claim: {v: np.mean([x == v for x in got]) for v in (NO_SIGNAL, REPRODUCED, CONTRADICTED)}
             for claim, got in by_claim.items()}
    return {"no_signal": float(np.mean([x == NO_SIGNAL for got in by_claim.values() for x in got])),
            "false_reproduced": max(s[REPRODUCED] for c, s in share.items() if c not in ABOVE_BOUNDARY),
            "false_contradicted": max(s[CONTRADICTED] for s in share.values()), "claims": sorted(by_claim)}


def test_whole_studies_where_every_arm_learned_read_no_signal_at_most_1_percent(tmp_path):
    """Issue 34: at 3 and 5 seeds a diverged run (5% of runs) made its arm "no signal" in 23-48% of these claims,
    although every arm learned (the order-statistic bound needed every run of 5); the signal check now asks the
    finished runs. False verdicts stay <= 5%."""
    rows = [(table, n, simulate_studies(tmp_path, table, n)) for table in (2, 1) for n in (3, 5)]
    print(f"\n{'table':5} {'n':>3} {'divergence':>10} {'studies':>7} {'no signal':>9} {'false repr.':>11} "
          f"{'false contr.':>12}  claims")
    for table, n, r in rows:
        print(f"{table:5d} {n:3d} {DIVERGE:10.0%} {FORGED:7d} {r['no_signal']:9.2%} {r['false_reproduced']:11.2%} "
              f"{r['false_contradicted']:12.2%}  {', '.join(r['claims'])}")
    for table, n, r in rows:
        case = f"Table {table} n={n}"
        assert r["no_signal"] <= 0.01, case
        assert r["false_reproduced"] <= 0.05, case
        assert r["false_contradicted"] <= 0.05, case
