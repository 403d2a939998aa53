"""The plan of a grid: per arm, what its training amounts to in tokens, optimizer steps and epochs, computed before
anything is recorded with the data module's own logic (`PretrainDataModule.setup` and its step plans).

`grid run` prints it, writes it into study.json ("plan": arm -> figures) and refuses, in one line with exit 2:
  - a masking study (a static arm compared with a dynamic one) whose static arm is planned at no more epochs than its
    data.static_masks: the epoch key of static masking is epoch % static_masks and that of dynamic masking the epoch,
    so over the first static_masks epochs both arms see the very same masks and the comparison cannot show anything;
  - a file whose stated epochs (`epochs:` of the scale, one per arm) are off the computed ones by more than TOLERANCE;
  - a tuning budget (tune.tokens) that some arm's whole run does not reach (the budget would not be equal across arms).

Each arm is planned with its first seed: the seed moves only the NSP pairing and how a token-budget step is grouped,
which change the steps per epoch by well under 1% (demo corpus, SEGMENT-PAIR+NSP at 16 x 128 tokens: 6,855 to 6,876
steps per epoch over seeds 0-2; FULL-SENTENCES and DOC-SENTENCES: none).
"""

from __future__ import annotations

import json

import numpy as np

from harness.config import Config
from harness.errors import UserError
from harness.grid.experiment import Experiment

# Stated epochs may be this far (relative) off the computed ones: a statement rounded to two significant figures is
# at most 5% off, and the seed moves steps per epoch by < 1%, while any change of design that matters (steps, batch,
# data size, sequence length) moves the epochs by far more.
TOLERANCE = 0.05
_MASK_FIELDS = ("masking", "static_masks", "mask_prob", "random_token_prob", "leave_unmasked_prob")  # not in plans


def grid_plan(exp: Experiment) -> dict[str, dict]:
    """Arm -> its planned figures (see `arm_plan`), checked against the file; raises UserError when refused."""
    cfgs = {arm.name: exp.config(arm, exp.seeds[0], "runs") for arm in exp.arms}
    modules: dict[str, object] = {}  # arms that differ only in masking or steps share their examples and step plans
    plan = {}
    for name, cfg in cfgs.items():
        key = json.dumps([{k: v for k, v in cfg.to_dict()["data"].items() if k not in _MASK_FIELDS},
                          cfg.optim.batch_size, cfg.train.seed], sort_keys=True)
        if key not in modules:
            modules[key] = _data_module(cfg)
        plan[name] = arm_plan(cfg, modules[key], exp.tune.tokens)
    _check(exp, cfgs, plan)
    return plan


def _data_module(cfg: Config):
    from harness.data.datamodule import PretrainDataModule
    from harness.data.pipeline import prepare

    data = PretrainDataModule(prepare(cfg.data), cfg.data, cfg.optim, cfg.train.seed, num_workers=0)
    data.setup()  # no trainer: one rank, the global step plan
    return data


def arm_plan(cfg: Config, data, tune_tokens: int = 0) -> dict:
    """Tokens per optimizer step (the mean over the first epoch's steps, special tokens counted, padding not, as
    `train/tokens` counts them), optimizer steps, tokens in all, steps per epoch, epochs over the arm's training data,
    the tokens of that data, and with a tuning budget the step at which a trial reaches it."""
    lengths = data.train_examples.lengths
    steps = data.train_sampler.steps()  # epoch 0
    per_step = float(lengths[np.concatenate(steps)].sum()) / len(steps)
    max_steps = cfg.optim.max_steps
    out = {"seed": cfg.train.seed, "tokens_per_step": round(per_step, 1), "steps": max_steps,
           "tokens": int(round(per_step * max_steps)), "steps_per_epoch": len(steps),
           "epochs": max_steps / len(steps), "train_tokens": int(lengths.sum())}
    if tune_tokens:
        out["trial_steps"] = _steps_to(data, tune_tokens, max_steps)
    return out


def _steps_to(data, tokens: int, max_steps: int) -> int | None:
    """The optimizer step after which the run has seen `tokens` tokens, from the data module's own step plans (exact
    for the planned seed); None when the whole run sees fewer."""
    lengths, sampler = data.train_examples.lengths, data.train_sampler
    seen, step, epoch = 0, 0, 0
    try:
        while step < max_steps:
            sampler.set_epoch(epoch)
            for s in sampler.steps()[: max_steps - step]:
                seen += int(lengths[s].sum())
                step += 1
                if seen >= tokens:
                    return step
            epoch += 1
        return None
    finally:
        sampler.set_epoch(0)  # the module is shared by arms that plan epoch 0 next


def _check(exp: Experiment, cfgs: dict[str, Config], plan: dict[str, dict]) -> None:
    where = f"{exp.path}: scales.{exp.scale}"
    if {"static", "dynamic"} <= {c.data.masking for c in cfgs.values()}:
        for name, cfg in cfgs.items():
            epochs, masks = plan[name]["epochs"], cfg.data.static_masks
            if cfg.data.masking == "static" and epochs <= masks:
                raise UserError(f"{where}: arm {name} is planned at {epochs:.3g} epochs, but static and dynamic masks "
                                f"coincide over the first data.static_masks={masks} epochs; train more steps or on "
                                f"less data (data.data_tokens) so that each static mask is seen again")
    if exp.epochs is not None:
        for (name, p), stated in zip(plan.items(), exp.epochs):
            if abs(stated - p["epochs"]) > TOLERANCE * p["epochs"]:
                raise UserError(f"{where}.epochs: arm {name} is stated at {stated:g} epochs, but its plan gives "
                                f"{p['epochs']:.3g} ({p['steps']} steps of {p['steps_per_epoch']} per epoch; tolerance "
                                f"{TOLERANCE:.0%}); state the computed figure or change the design")
    for name, p in plan.items():
        if exp.tune.tokens and p["trial_steps"] is None:
            raise UserError(f"{where}.tune.tokens: expected at most every arm's planned tokens, but arm {name} sees "
                            f"~{p['tokens']:,} in all, fewer than {exp.tune.tokens:,}")


def plan_table(exp: Experiment, plan: dict[str, dict]) -> str:
    """The plan as a small table for the terminal."""
    stated = exp.epochs or (None,) * len(plan)
    tune = bool(exp.tune.tokens)
    width = max(len("arm"), *map(len, plan))
    head = (f"{'arm':{width}}  {'tokens/step':>11}  {'steps':>8}  {'tokens':>14}  {'steps/epoch':>11}  {'epochs':>9}  "
            f"{'stated':>7}" + (f"  {'trial steps':>11}" if tune else ""))
    lines = [f"plan of {exp.folder} (seed {exp.seeds[0]}; epochs = steps / steps per epoch of the arm's data):", head]
    for (name, p), s in zip(plan.items(), stated):
        lines.append(f"{name:{width}}  {p['tokens_per_step']:>11,.1f}  {p['steps']:>8,}  {p['tokens']:>14,}  "
                     f"{p['steps_per_epoch']:>11,}  {p['epochs']:>9.4g}  {'-' if s is None else f'{s:g}':>7}"
                     + (f"  {p['trial_steps'] or '-':>11}" if tune else ""))
    return "\n".join(lines)
