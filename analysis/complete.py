"""A table is made only from a complete study: every arm x seed finished as its cell says, every expected
fine-tuning summary present. Otherwise IncompleteStudyError names each run folder or summary: a half-empty table
would read as a result."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from analysis.load import RESULT_STATUSES, Study, StudyError


class IncompleteStudyError(StudyError):
    """An expected run, arm or fine-tuning summary is missing or unfinished; the message lists every one."""


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


def _missing_random_init(study: Study, runs) -> list[str]:
    """A baseline arm's random-init summary that some of its runs have and another lacks: that seed would leave the
    random-init check unseen (the grid fine-tunes the baseline from random weights whatever its pretraining did)."""
    out = []
    for arm in dict.fromkeys((study.meta.get("random_init_baseline") or {}).values()):
        arm_runs = runs[(runs["arm"] == arm) & runs["status"].isin(RESULT_STATUSES)].to_dict("records")
        for task in study.tasks:
            paths = [Path(r["run_dir"]) / "finetune-random-init" / task / "summary.json" for r in arm_runs]
            if any(p.is_file() for p in paths):
                out += [f"{p}: missing (random-init baseline, task {task!r}, arm {arm!r})" for p in paths
                        if not p.is_file()]
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
        if run["status"] in RESULT_STATUSES or run["arm"] in missing_arms:
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
    problems += _missing_random_init(study, runs)
    if problems:
        n_runs = len(study.arms) * len(study.seeds)
        raise IncompleteStudyError(
            f"{study.dir} (Table {study.table}): incomplete; the table needs every arm x seed "
            f"({len(study.arms)} arms x {len(study.seeds)} seeds = {n_runs} runs) finished and fine-tuned:\n  "
            + "\n  ".join(problems))
