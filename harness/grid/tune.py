"""Optuna tuning of nuisance settings per arm (google-research tuning playbook: tune what is not compared).

One Optuna study per arm, named `<study folder>/<arm>`, in SQLite by default or any Optuna storage URL (PostgreSQL
for many nodes). Studies are created by `grid run` before any worker starts: two processes creating one fresh
SQLite study at the same moment fail. Pruning is keyed on the global step (the stock Lightning callback reports
per epoch, which never prunes a one-epoch pretraining run). The best trial's values are then used for every seed.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as L
import optuna

from harness.grid.experiment import Arm, Experiment

EDGE = 0.05  # a best value within 5% of its range (log range for log spaces) of a bound is "at the edge"


def study_name(exp: Experiment, arm: Arm) -> str:
    return f"{exp.folder}/{arm.name}"


def _study(exp: Experiment, arm: Arm, storage: str, create: bool) -> optuna.Study:
    kwargs = dict(
        study_name=study_name(exp, arm), storage=storage,
        sampler=optuna.samplers.TPESampler(seed=sum(map(ord, arm.name)), n_startup_trials=max(exp.tune.trials // 2, 2)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    if create:
        return optuna.create_study(direction="minimize", load_if_exists=True, **kwargs)
    return optuna.load_study(**kwargs)


def create_studies(exp: Experiment, storage: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for arm in exp.arms:
        _study(exp, arm, storage, create=True)


def ask(exp: Experiment, arm: Arm, storage: str) -> tuple[optuna.Study, optuna.Trial, dict[str, Any]]:
    study = _study(exp, arm, storage, create=False)
    trial = study.ask()
    params = {key: trial.suggest_float(key, float(s["low"]), float(s["high"]), log=bool(s.get("log")))
              for key, s in exp.nuisance.items()}
    return study, trial, params


def fail_stale(exp: Experiment, arm: Arm, storage: str, number: int) -> None:
    """A trial whose worker died is marked failed; its cell then asks for a fresh trial."""
    study = _study(exp, arm, storage, create=False)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.number == number:
            study.tell(number, state=optuna.trial.TrialState.FAIL)


def best(exp: Experiment, arm: Arm, storage: str) -> dict:
    """The best complete trial's values, how many trials ran, and whether a value sits at the edge of its range."""
    study = _study(exp, arm, storage, create=False)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    if not complete:
        return {"params": None, "value": None, "trials": states, "at_edge": {}}
    top = min(complete, key=lambda t: t.value)
    edge = {}
    for key, s in exp.nuisance.items():
        lo, hi, v = float(s["low"]), float(s["high"]), float(top.params[key])
        if s.get("log"):
            lo, hi, v = math.log(lo), math.log(hi), math.log(v)
        edge[key] = min(v - lo, hi - v) <= EDGE * (hi - lo)
    return {"params": top.params, "value": top.value, "trials": states, "at_edge": edge}


class PruneOnStep(L.Callback):
    """Reports validation perplexity at each validation, keyed on the global step, and prunes poor trials."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        last = next((cb.last_val for cb in trainer.callbacks if hasattr(cb, "last_val")), {})
        ppl = last.get("val/ppl")
        if ppl is None or last.get("step") != trainer.global_step:
            return
        self.trial.report(ppl if math.isfinite(ppl) else float("inf"), step=trainer.global_step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {trainer.global_step} (val ppl {ppl:.2f})")
