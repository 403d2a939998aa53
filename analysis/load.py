"""Run folders (and the grid's SQLite) -> one tidy DataFrame: a row per run x metric.

The directory tree is the data format (STYLE item 7):
  runs/<study>/study.json                       arms, seeds, scientific / nuisance / fixed settings
  runs/<study>/grid.sqlite                      the grid's cell status (optional here)
  runs/<study>/<arm>/seed_<k>/cell.json         factor values, tuned nuisance values, provenance
  runs/<study>/<arm>/seed_<k>/result.json       written last, only once the run finished or diverged
  runs/<study>/<arm>/seed_<k>/metrics.csv       the learning curve
  runs/<study>/<arm>/seed_<k>/finetune/<task>/summary.json

Loading never fails on a missing or unfinished run: it gets a row whose `status` says so, and the table functions
(analysis.tables) refuse to print a table over it. A corrupt one fails at once, one line naming the file (and the
field): a file that is not UTF-8, JSON or YAML, a result.json that is not an object, a finished one without its
yardstick perplexity (it would drop out of the comparisons). Nothing here imports training code, so it works on a
laptop over results copied from a cluster.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis.paper import HIGHER_IS_BETTER, PPL

RESULT_STATUSES = ("finished", "diverged")  # a result.json with either is a complete run (harness.pretrain's own list;
# analysis never imports harness)
PRETRAIN_SOURCE = "held-out pretraining split"
OWN_PPL = "own_ppl"  # perplexity on the held-out split in the arm's own input format (PPL is the yardstick's)
SHORT_PPL = "short_ppl"  # perplexity on the short-context yardstick: the yardstick's text, one sentence at a time
NA_OFFLINE = "n/a offline"
# What the yardstick depends on (harness.data.yardstick.DEPENDS_ON's list, kept equal by a test; analysis never imports
# harness): text, tokenizer and split, window length and mask rate. Arms that differ in one were scored on different
# yardsticks, and their perplexities do not compare.
YARDSTICK_KEYS = ("data.corpus", "data.tokenizer", "data.vocab_size", "data.lowercase", "data.tokenizer_path",
                  "data.valid_fraction", "data.max_seq_len", "data.splitter", "data.tokenizer_sample_mb")
REQUIRED_RESULT = ("final_yardstick_ppl",)  # a finished run's result.json fields that no comparison can do without
UNIGRAM = "yardstick_unigram_ppl"  # result.json's no-context reference: one value per study
BIGRAM = "yardstick_bigram_ppl"  # ... its local-context reference (the left-bigram count model); older runs lack it
SHORT_UNIGRAM = "short_yardstick_unigram_ppl"  # ... and the short-context yardstick's
# metrics.csv column -> curve column; any may be missing (older runs, train-only or val-only rows)
CURVE_COLUMNS = {"train/loss": "train_loss", "train/mlm_ppl": "train_ppl", "train/lr": "lr",
                 "train/tokens": "tokens", "train/tokens_per_s": "tokens_per_s", "train/mfu": "mfu",
                 "val/loss": "val_loss", "val/ppl": "val_own_ppl", "val/nsp_acc": "val_nsp_acc",
                 "val/yardstick_ppl": "val_ppl", "val/short_yardstick_ppl": "val_short_ppl"}


class StudyError(Exception):
    """A results folder the analysis cannot use: the message names the folder or file and what is wrong."""


def _text(path: Path) -> str:
    """A file's text; StudyError naming the file and the byte offset where it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StudyError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def read_json(path: Path) -> dict | None:
    """A JSON object (study.json, cell.json, result.json, summary.json); None when the file is absent. Anything else
    (not UTF-8, not JSON, JSON that is not an object) is a StudyError naming the file."""
    try:
        text = _text(path)
    except FileNotFoundError:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise StudyError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise StudyError(f"{path}: expected a JSON object of fields, got {type(value).__name__} {value!r:.60}")
    return value


def read_config(path: Path) -> dict[str, Any]:
    """A run's config.yaml, flattened to section.field keys; {} when absent. Not UTF-8, not YAML, or not a mapping of
    sections: a StudyError naming the file (and the line), in one line."""
    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StudyError(f"{path}: not valid YAML ({getattr(e, 'problem', None) or type(e).__name__}{where})") \
            from None
    if doc is not None and not isinstance(doc, dict):
        raise StudyError(f"{path}: expected a mapping of config sections, got {type(doc).__name__} {doc!r:.60}")
    return flatten(doc or {})


def flatten(nested: dict, prefix: str = "") -> dict[str, Any]:
    """{'data': {'masking': 'static'}} -> {'data.masking': 'static'}, at any depth. harness.config.flatten does the
    same for a Config's two levels; this one stays here because analysis never imports harness (a test guards it)."""
    out: dict[str, Any] = {}
    for key, value in (nested or {}).items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def grid_cells(study_dir: Path) -> pd.DataFrame:
    """The grid's `cells` table (empty when there is no grid.sqlite). Opened read-only, so it neither locks a
    running grid nor needs write access to copied results."""
    path = Path(study_dir) / "grid.sqlite"
    cols = ["cell_id", "study", "arm", "seed", "kind", "status", "attempts", "worker", "lease_until", "started",
            "finished", "error", "run_dir"]
    if not path.is_file():
        return pd.DataFrame(columns=cols)
    last_error: Exception | None = None
    for mode in ("mode=ro", "immutable=1"):  # immutable: a read-only copy whose WAL side files cannot be made
        try:
            with sqlite3.connect(f"file:{path.resolve()}?{mode}", uri=True) as con:
                return pd.read_sql_query("SELECT * FROM cells", con)
        except (sqlite3.Error, pd.errors.DatabaseError) as e:
            last_error = e
    raise StudyError(f"{path}: cannot read the grid's cells table ({last_error})")


@dataclass
class Study:
    """One study folder, loaded: study.json plus a row per expected run (arms x seeds) and per run folder found."""

    dir: Path
    meta: dict
    runs: pd.DataFrame
    """One row per run: arm, seed, run_dir, status, grid status, result fields, factor values, provenance."""
    problems: list[str] = field(default_factory=list)
    """Things found on disk that study.json does not declare (extra arms or seeds)."""

    @property
    def name(self) -> str:
        return self.meta.get("study", self.dir.name)

    @property
    def table(self) -> int | None:
        return self.meta.get("table")

    @property
    def arms(self) -> list[str]:
        return [a["name"] for a in self.meta.get("arms", [])]

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.meta.get("seeds", [])]

    @property
    def tasks(self) -> list[str]:
        return list((self.meta.get("finetune") or {}).get("tasks", []))

    @cached_property
    def tidy(self) -> pd.DataFrame:
        return tidy_frame(self)

    @cached_property
    def curves(self) -> pd.DataFrame:
        return load_curves(self)


def load_study(study_dir: str | Path) -> Study:
    """Read runs/<study>/ (study.json, grid.sqlite, every run folder) into a Study."""
    study_dir = Path(study_dir)
    meta = read_json(study_dir / "study.json")
    if meta is None:
        raise StudyError(f"{study_dir}: no study.json; expected a study folder runs/<study>/ written by the grid")
    for key in ("arms", "seeds"):
        if not meta.get(key):
            raise StudyError(f"{study_dir / 'study.json'}: '{key}' is missing or empty")
    cells = grid_cells(study_dir)
    if "kind" in cells:
        cells = cells[cells["kind"].fillna("run") == "run"]
    cells = cells.astype(object).where(cells.notna(), None)  # SQL NULL -> None, never NaN
    by_cell = {(str(r["arm"]), int(r["seed"])): r for r in cells.to_dict("records")}

    expected = [(a["name"], int(s)) for a in meta["arms"] for s in meta["seeds"]]
    found = sorted((p.parent.name, int(p.name.removeprefix("seed_"))) for p in study_dir.glob("*/seed_*")
                   if p.is_dir() and p.name.removeprefix("seed_").isdigit())
    extra = [k for k in found if k not in set(expected)]
    problems = [f"{study_dir / arm / f'seed_{seed}'}: not declared in study.json (ignored by the tables)"
                for arm, seed in extra]
    arm_meta = {a["name"]: a for a in meta["arms"]}
    rows = [_run_row(study_dir, meta, arm_meta.get(arm, {}), arm, seed, by_cell.get((arm, seed)),
                     expected=(arm, seed) not in extra)
            for arm, seed in [*expected, *extra]]
    study = Study(study_dir, meta, pd.DataFrame(rows), problems)
    check_one_yardstick(study)
    return study


def check_one_yardstick(study: Study) -> None:
    """Refuse (StudyError, one line) a study whose arms were scored on different yardsticks: a setting in
    YARDSTICK_KEYS that differs between arms, or a reference (unigram, left bigram) that does: each is one value per
    study. A run that lacks a reference (made before it was recorded) is not compared on it."""
    runs = study.runs[study.runs["expected"]].to_dict("records")
    values: dict[str, dict[Any, list[str]]] = {}  # key -> value -> the arms that have it
    for run in runs:
        for key in YARDSTICK_KEYS:
            if key in run["config"]:
                values.setdefault(key, {}).setdefault(json.dumps(run["config"][key]), []).append(run["arm"])
        for key in (UNIGRAM, BIGRAM, SHORT_UNIGRAM):
            u = _float(run["result"].get(key))
            if math.isfinite(u):  # nearest 1e-6 relative: the same counts and positions give the same float
                values.setdefault(key, {}).setdefault(f"{u:.6e}", []).append(run["arm"])
    for key, by_value in values.items():
        if len(by_value) > 1:
            seen = "; ".join(f"{v} in {', '.join(dict.fromkeys(arms))}" for v, arms in by_value.items())
            raise StudyError(f"{study.dir}: the arms were scored on different yardsticks, {key} is {seen}; "
                             f"perplexities compare only on one (analysis.load.YARDSTICK_KEYS)")


def _run_row(study_dir: Path, meta: dict, arm_meta: dict, arm: str, seed: int, cell: dict | None,
             expected: bool) -> dict:
    run_dir = study_dir / arm / f"seed_{seed}"
    result = read_json(run_dir / "result.json")
    cell_json = read_json(run_dir / "cell.json") or {}
    config = read_config(run_dir / "config.yaml")
    detail = None
    if cell_json.get("kind", "run") != "run":  # a tuning trial's folder is not the arm's result, whatever it holds
        status, detail, result = "unfinished", f"holds a {cell_json['kind']!r} cell, not a run (cell.json)", None
    elif result is not None and result.get("status") in RESULT_STATUSES:
        status = result["status"]
        check_result(run_dir / "result.json", result)
    elif result is not None:
        status, detail = "unfinished", f"result.json has status {result.get('status')!r}"
    elif run_dir.is_dir():
        status, detail = "unfinished", "no result.json"
    else:
        status, detail = "missing", "no run folder"
    provenance = cell_json.get("provenance") or {}
    tuning = cell_json.get("tuning") or {}
    return {
        "study": meta.get("study", study_dir.name), "table": meta.get("table"), "scale": meta.get("scale"),
        "arm": arm, "seed": seed, "run_dir": str(run_dir), "expected": expected, "status": status,
        "status_detail": detail,
        "grid_status": (cell or {}).get("status"), "attempts": (cell or {}).get("attempts"),
        "grid_error": (cell or {}).get("error"),
        "result": result or {}, "config": config,
        # cell.json is the run's own record; the arm in study.json stands in while the grid has not written it
        "scientific": cell_json.get("scientific") or arm_meta.get("scientific") or {},
        "nuisance": cell_json.get("nuisance") or {},
        "fixed": cell_json.get("fixed") or meta.get("fixed") or {},
        "tuning": tuning,
        "at_edge": sorted(k for k, t in tuning.items() if _at_edge(t)),
        "git_commit": provenance.get("git_commit"), "config_hash": provenance.get("config_hash"),
        "packages": json.dumps(provenance.get("packages") or {}, sort_keys=True),
    }


def check_result(path: Path, result: dict) -> None:
    """A finished run's result.json holds the fields its row in every comparison rests on (REQUIRED_RESULT): one
    missing or null is a StudyError naming the file and the field, never a run dropped from the comparisons."""
    if result["status"] != "finished":  # a diverged run has no perplexity: it counts as the worst
        return
    for key in REQUIRED_RESULT:
        if result.get(key) is None:
            what = "missing" if key not in result else "null"
            raise StudyError(f"{path}: '{key}' is {what} in a result with status 'finished'; without it the run "
                             f"would drop out of every comparison (rerun the cell, or restore the file)")


def _at_edge(t: dict) -> bool:
    """The tuner's own verdict when it gave one; else whether the best value lies in the outer 5% of the range."""
    if "at_edge" in t:
        return bool(t["at_edge"])
    try:
        low, high, best = float(t["low"]), float(t["high"]), float(t["best"])
    except (KeyError, TypeError, ValueError):
        return False
    if t.get("log") and low > 0 and best > 0:
        low, high, best = math.log(low), math.log(high), math.log(best)
    return high > low and not 0.05 <= (best - low) / (high - low) <= 0.95


def _float(x: Any) -> float:
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def tidy_frame(study: Study) -> pd.DataFrame:
    """A row per run x metric: ppl (the yardstick's), own_ppl, short_ppl (the short-context yardstick's; 'no
    yardstick' for runs made before it), valid_loss, valid_nsp_acc (pretraining) and one per fine-tuning task.

    value: the run's number (for a task, the mean over its fine-tuning seeds: one number per pretraining seed for
    the paired statistics); values: every number behind it. A diverged run's perplexity is +inf and its downstream
    scores -inf (it is never fine-tuned): worse than any finished run, so medians and verdicts count it. A fine-tuning
    seed with a non-finite score (its fine-tuning diverged) counts the same way: the run's mean is then -inf.
    majority_score: the task's majority-class score on its dev set (a constant prediction), as the summary records it.
    status: the run's; metric_status: 'ok', 'missing' (an expected summary is absent), 'n/a offline', 'diverged',
    'no yardstick' (short_ppl of a run made before the short yardstick existed; a finished run without the yardstick's
    ppl is refused at load)."""
    rows = []
    for run in study.runs.to_dict("records"):
        base = {k: run[k] for k in ("study", "table", "scale", "arm", "seed", "run_dir", "expected", "status",
                                    "status_detail", "grid_status", "attempts", "grid_error", "git_commit",
                                    "config_hash", "packages")}
        res = run["result"]
        base.update({k: res.get(k) for k in ("steps", "tokens_seen", "train_time_s", "wall_time_s",
                                             "diverged_at_step", "epochs", "steps_per_epoch",
                                             UNIGRAM, BIGRAM, SHORT_UNIGRAM)})
        base["tuned_at_edge"] = ",".join(run["at_edge"])
        for prefix in ("scientific", "nuisance", "fixed"):
            base.update({f"{prefix}.{k}": v for k, v in run[prefix].items()})

        def add(metric: str, value: float, values: list[float], base: dict = base, **kw: Any) -> None:
            rows.append({**base, "metric": metric, "task": kw.pop("task", None), "value": value,
                         "values": values, "n_values": len(values), "min": min(values, default=math.nan),
                         "max": max(values, default=math.nan),
                         "higher_is_better": HIGHER_IS_BETTER.get(metric, True), **kw})

        if run["status"] not in RESULT_STATUSES:
            add(PPL, math.nan, [], metric_status=run["status"], data_source=PRETRAIN_SOURCE)
            continue
        diverged = run["status"] == "diverged"
        for metric, key in ((PPL, "final_yardstick_ppl"), (OWN_PPL, "final_valid_ppl"),
                            (SHORT_PPL, "final_short_yardstick_ppl")):
            ppl = _float(res.get(key))
            if diverged or math.isinf(ppl):
                add(metric, math.inf, [math.inf], metric_status="ok", data_source=PRETRAIN_SOURCE,
                    higher_is_better=False)
            elif math.isnan(ppl):
                add(metric, ppl, [], metric_status="no yardstick", data_source=PRETRAIN_SOURCE, higher_is_better=False)
            else:
                add(metric, ppl, [ppl], metric_status="ok", data_source=PRETRAIN_SOURCE, higher_is_better=False)
        add("valid_loss", _float(res.get("final_valid_loss")), [], metric_status="ok", data_source=PRETRAIN_SOURCE,
            higher_is_better=False)
        if res.get("final_valid_nsp_acc") is not None:
            acc = _float(res["final_valid_nsp_acc"])
            add("valid_nsp_acc", acc, [acc], metric_status="ok", data_source=PRETRAIN_SOURCE)
        run_dir = Path(run["run_dir"])
        tasks = dict.fromkeys([*study.tasks, *sorted(p.parent.name for p in run_dir.glob("finetune/*/summary.json"))])
        if diverged:  # never fine-tuned: the worst score there is, counted, not dropped
            for task in tasks:
                add(f"finetune/{task}", -math.inf, [], task=task, metric_status="diverged", data_source=None)
            continue
        for task in tasks:
            path = run_dir / "finetune" / task / "summary.json"
            summary = read_json(path)
            if summary is None:
                add(f"finetune/{task}", math.nan, [], task=task, metric_status="missing", summary_path=str(path))
                continue
            values = [_float(v) for v in summary.get("values") or []]
            source = summary.get("data_source") or "unknown"
            na = summary.get("median") is None
            add(f"finetune/{task}", _run_score(values) if not na else math.nan, values, task=task,
                metric_status=NA_OFFLINE if na else "ok", data_source=source, protocol=summary.get("protocol"),
                protocol_settings=summary.get("protocol_settings"),
                task_metric=summary.get("metric"), summary_path=str(path),
                majority_score=_float(summary.get("majority_score")), ft_lr_on_edge=summary.get("lr_on_edge"),
                ft_n_diverged=summary.get("n_diverged"))
    return pd.DataFrame(rows)


def _run_score(values: list[float]) -> float:
    """A run's downstream number: the mean over its fine-tuning seeds; -inf, the worst, when one of them has no finite
    score (never dropped); nan when there are none."""
    if not values:
        return math.nan
    return float(np.mean(values)) if all(math.isfinite(v) for v in values) else -math.inf


def load_runs(path: str | Path) -> pd.DataFrame:
    """The tidy frame of one study folder, or of every study under a runs folder (concatenated)."""
    path = Path(path)
    if (path / "study.json").is_file():
        return load_study(path).tidy
    frames = [load_study(p.parent).tidy for p in sorted(path.glob("*/study.json"))]
    if not frames:
        raise StudyError(f"{path}: no study folders (runs/<study>/study.json) found")
    return pd.concat(frames, ignore_index=True)


def find_studies(runs_dir: str | Path, table: int | None = None) -> list[Path]:
    """Study folders under runs_dir, optionally only those for one paper table."""
    out = []
    for p in sorted(Path(runs_dir).glob("*/study.json")):
        meta = read_json(p) or {}
        if table is None or meta.get("table") == table:
            out.append(p.parent)
    return out


def read_metrics_csv(path: Path) -> pd.DataFrame:
    """One run's metrics.csv with canonical column names: step, tokens, train_loss, val_ppl, ... (missing columns
    are NaN). Validation rows get the tokens seen at their step, interpolated from the train rows."""
    raw = pd.read_csv(path)
    if "step" not in raw:
        raise StudyError(f"{path}: no 'step' column")
    df = pd.DataFrame({"step": pd.to_numeric(raw["step"], errors="coerce")})
    for src, dst in CURVE_COLUMNS.items():
        df[dst] = pd.to_numeric(raw[src], errors="coerce") if src in raw else np.nan
    train = df.dropna(subset=["tokens"]).groupby("step")["tokens"].last()
    steps = np.concatenate([[0.0], train.index.to_numpy(float)])
    tokens = np.concatenate([[0.0], train.to_numpy(float)])
    if len(train):  # extrapolate past the last train row at the last rate (a final validation after it)
        df["tokens"] = df["tokens"].fillna(pd.Series(_interp(df["step"].to_numpy(float), steps, tokens),
                                                     index=df.index))
    return df


def _interp(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    out = np.interp(x, xp, fp)
    if len(xp) > 1 and xp[-1] > xp[0]:
        rate = (fp[-1] - fp[0]) / (xp[-1] - xp[0])
        out = np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * rate, out)
    return out


def random_init_scores(study: Study, arm: str, task: str) -> dict[int, float]:
    """Seed -> the mean fine-tuning score of `arm`'s encoder from random weights (no pretraining), for each run folder
    that has them (runs/<study>/<arm>/seed_<k>/finetune-random-init/<task>/summary.json; the grid writes them for
    the first arm of each encoder shape, whether its pretraining finished or diverged). A fine-tuning seed without a
    finite score counts as the worst, as in tidy_frame. Empty when none exist."""
    out = {}
    for run in study.runs[(study.runs["arm"] == arm) & study.runs["expected"]].to_dict("records"):
        summary = read_json(Path(run["run_dir"]) / "finetune-random-init" / task / "summary.json")
        values = [_float(v) for v in (summary or {}).get("values") or []]
        if values:
            out[int(run["seed"])] = _run_score(values)
    return out


def load_curves(study: Study) -> pd.DataFrame:
    """Every run's learning curve with arm and seed: a row per (run, logged step). Runs without metrics.csv are
    skipped (the tables report them)."""
    frames = []
    for run in study.runs.to_dict("records"):
        path = Path(run["run_dir"]) / "metrics.csv"
        if path.is_file() and path.stat().st_size:
            df = read_metrics_csv(path)
            df.insert(0, "seed", run["seed"])
            df.insert(0, "arm", run["arm"])
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["arm", "seed", "step", *CURVE_COLUMNS.values()])
    return pd.concat(frames, ignore_index=True)


def runs_dir_from_env(default: str = "runs") -> Path:
    """The results folder for notebooks: $RUNS_DIR, else `runs/` of the repository holding the current folder
    (Jupyter started in analysis/notebooks/ finds the repository's runs/)."""
    if os.environ.get("RUNS_DIR"):
        return Path(os.environ["RUNS_DIR"]).expanduser()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "analysis").is_dir():
            return folder / default
    return Path(default)
