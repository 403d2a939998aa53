"""Experiment files (`experiments/*.yaml`, one per paper table) → validated arms and cells.

A file names its base config, the *scientific* factors it compares (one arm per value, or per tuple of `linked`
values; the first arm is the table's reference row), the *nuisance* settings tuned per arm with their search space,
the *fixed* ones, and per-scale settings (smoke / demo / paper), among them the epochs each arm is planned to train
for (`epochs:`, one per arm, checked against the plan `grid run` computes: harness.grid.plan). Everything is validated
before anything is recorded: a bad file is one line, exit 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import Config, load_config, read_yaml
from harness.errors import UserError

TOP_KEYS = {"study", "table", "description", "base", "scientific", "linked", "nuisance", "fixed", "finetune", "scales",
            "single_arm"}
SCALE_KEYS = {"base", "overrides", "seeds", "scientific", "linked", "tune", "finetune", "why", "epochs"}
TUNE_KEYS = {"trials", "tokens"}
RANGE_KEYS = {"low", "high", "log"}
FINETUNE_KEYS = {"tasks", "protocol"}
TABLES = (1, 2, 3, 4)  # RoBERTa's ablation tables (§4.1-4.4); analysis.paper.TABLES holds their rows
RUN_OVERRIDES = ("train.num_workers", "train.wandb")  # settings that do not change a cell's result (`config_hash`)


@dataclass(frozen=True)
class Arm:
    name: str
    scientific: dict[str, Any]  # factor key -> value compared in this arm


@dataclass(frozen=True)
class Tune:
    trials: int = 0  # Optuna trials per arm (0 = use the base config's nuisance values as they are)
    # Tokens per trial, equal across arms: a trial runs its arm's own schedule (max_steps, warmup) and stops after
    # the optimizer step that reaches them (train.stop_at_step), never on a shortened schedule (0 = the whole run).
    tokens: int = 0


@dataclass(frozen=True)
class Experiment:
    path: Path
    study: str
    table: int
    scale: str
    base: Path
    arms: tuple[Arm, ...]  # the first is the reference row that deltas are taken against
    nuisance: dict[str, dict]  # key -> {"low", "high", "log"}
    fixed: dict[str, Any]
    overrides: dict[str, Any]  # the scale's own settings (model size, steps, ...)
    seeds: tuple[int, ...]
    tune: Tune
    finetune_tasks: tuple[str, ...]
    finetune_protocol: str
    epochs: tuple[float, ...] | None  # planned epochs per arm as the file states them (None: not stated)
    # Set by `grid run`, not by the file, for every cell and applied last: settings that change no result
    # (`--wandb disabled` -> {"train.wandb": "disabled"}); recorded in study.json for the workers.
    run_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        """runs/<folder>: one per (study, scale), so smoke results never mix with demo ones."""
        return f"{self.study}-{self.scale}"

    @property
    def reference_arm(self) -> str:
        """The arm deltas are taken against (the first)."""
        return self.arms[0].name

    @property
    def random_init_baselines(self) -> dict[str, str]:
        """Arm -> the arm whose encoder the grid also fine-tunes from random weights as its no-pretraining baseline:
        the first arm of its encoder shape. A random init depends only on the shape (model settings, tokenizer, NSP's
        segment embeddings), so arms that share one share the baseline; Table 2's NSP and no-NSP arms get one each."""
        first: dict[str, str] = {}
        out = {}
        for arm in self.arms:
            cfg = self.config(arm, self.seeds[0], "runs")
            d = cfg.data
            shape = json.dumps([cfg.to_dict()["model"], d.nsp, d.corpus, *d.tokenizer_settings], sort_keys=True)
            out[arm.name] = first.setdefault(shape, arm.name)
        return out

    def config(self, arm: Arm, seed: int, runs_dir: str, nuisance: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> Config:
        """The resolved config of one cell: base < fixed < scale overrides < arm < tuned nuisance < extra."""
        values = {**self.fixed, **self.overrides, **arm.scientific, **(nuisance or {}), "train.study": self.folder,
                  "train.arm": arm.name, "train.seed": seed, "train.runs_dir": runs_dir, **(extra or {}),
                  **self.run_overrides}
        return load_config(self.base, [f"{k}={_yaml(v)}" for k, v in values.items()])

    def with_run_overrides(self, values: dict[str, Any]) -> Experiment:
        """This experiment with `values` applied to every cell; only settings outside the cell's identity
        (`config_hash`) are allowed, so a grid resumed with other ones keeps its finished cells."""
        for key in values:
            if key not in RUN_OVERRIDES:
                raise UserError(f"{key}: not a per-run setting; expected one of {sorted(RUN_OVERRIDES)}")
        exp = dataclasses.replace(self, run_overrides={**self.run_overrides, **values})
        _validate(exp)
        return exp

    def study_json(self) -> dict:
        return {
            "study": self.study, "table": self.table, "scale": self.scale, "experiment_file": str(self.path),
            "arms": [{"name": a.name, "scientific": a.scientific} for a in self.arms],
            "reference_arm": self.reference_arm, "random_init_baseline": self.random_init_baselines,
            "seeds": list(self.seeds),
            "scientific": sorted({k for a in self.arms for k in a.scientific}),
            "nuisance": self.nuisance if self.tune.trials else {},
            "fixed": {**self.fixed, **self.overrides},
            "tune": {"trials": self.tune.trials, "tokens": self.tune.tokens},
            "finetune": {"tasks": list(self.finetune_tasks), "protocol": self.finetune_protocol},
            "run_overrides": self.run_overrides,
        }


ADDED_LATER = {"splitter": "punkt", "tokenizer_sample_mb": 256.0}  # data settings added after studies had run


def config_hash(cfg: Config) -> str:
    d = cfg.to_dict()
    outside = {"train.runs_dir", *RUN_OVERRIDES}  # where a cell runs and how it logs are not what it computes
    d["train"] = {k: v for k, v in d["train"].items() if f"train.{k}" not in outside}
    for key, default in ADDED_LATER.items():  # at its default, the cells of studies run before keep their ids
        if d["data"][key] == default:
            del d["data"][key]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _yaml(value: Any) -> str:
    """A value as an override string (JSON is valid YAML flow syntax)."""
    return value if isinstance(value, str) else json.dumps(value)


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping, got {value!r}")
    return value


def _check(ok: bool, where: str, expected: str, value: Any) -> None:
    if not ok:
        raise UserError(f"{where}: expected {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true/false are not numbers here


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unknown(d: dict, allowed: set, where: str) -> None:
    for key in d:
        if key not in allowed:
            raise UserError(f"{where}{key}: unknown key; expected one of {sorted(allowed)}")


def _arm_name(values: dict[str, Any]) -> str:
    if len(values) == 1:
        (key, value), = values.items()
        return str(value) if isinstance(value, str) else f"{key.split('.')[-1]}={value}"
    return "-".join(f"{k.split('.')[-1]}={v}" for k, v in values.items())


def _arms(scientific: dict, linked: dict, where: str, single_arm: bool = False) -> list[Arm]:
    """The arms, one per combination of the scientific factors' values (times the linked tuples). A factor of one
    value compares nothing, and a one-arm "comparison" would run and record cells all the same: refused, unless the
    file says `single_arm: true` (a grid of one cell per seed, as the runner's own tests use)."""
    arms: list[dict] = [{}]
    for key, values in scientific.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}scientific.{key}: expected a non-empty list of values, got {values!r}")
        if len(values) < 2 and not single_arm:
            raise UserError(f"{where}scientific.{key}: a comparison needs at least two arms, got one value {values!r} "
                            f"(a setting that is not compared goes under fixed)")
        arms = [{**a, key: v} for a in arms for v in values]
    if linked:
        lengths = {key: len(v) if isinstance(v, list) else -1 for key, v in linked.items()}
        if min(lengths.values()) < 1 or len(set(lengths.values())) != 1:
            raise UserError(f"{where}linked: expected lists of one equal length, got lengths {lengths}")
        n = next(iter(lengths.values()))
        if n < 2 and not single_arm:
            raise UserError(f"{where}linked: a comparison needs at least two arms, got lists of one value "
                            f"(a setting that is not compared goes under fixed)")
        arms = [{**a, **{k: linked[k][i] for k in linked}} for a in arms for i in range(n)]
    if arms == [{}]:
        raise UserError(f"{where}scientific: expected at least one compared factor")
    # Name arms by the fewest leading factors that tell them apart (Table 3: batch_size=256, not the whole triple).
    keys = list(arms[0])
    for k in range(1, len(keys) + 1):
        names = [_arm_name({key: a[key] for key in keys[:k]}) for a in arms]
        if len(set(names)) == len(names):
            break
    return [Arm(name, a) for name, a in zip(names, arms)]


def load_experiment(path: str | Path, scale: str) -> Experiment:
    path = Path(path)
    raw = read_yaml(path, "experiment file")
    _unknown(raw, TOP_KEYS, f"{path}: ")
    for key in ("study", "table", "base", "scales"):
        if key not in raw:
            raise UserError(f"{path}: {key}: missing; every experiment file names its study, table, base and scales")
    study, table = raw["study"], raw["table"]
    _check(isinstance(study, str) and study.strip() != "" and "/" not in study, f"{path}: study",
           "a non-empty name without '/' (it names the study's run folder)", study)
    _check(_is_int(table) and table in TABLES, f"{path}: table", f"one of the paper's tables {list(TABLES)}", table)
    _check(isinstance(raw.get("description", ""), str), f"{path}: description", "a string", raw.get("description"))
    scales = _mapping(raw["scales"], f"{path}: scales")
    if scale not in scales:
        raise UserError(f"{path}: scales.{scale}: this file defines no scale {scale!r}; it has {sorted(scales)}")
    s = _mapping(scales[scale], f"{path}: scales.{scale}")
    where = f"{path}: scales.{scale}."
    _unknown(s, SCALE_KEYS, where)
    _check(isinstance(s.get("why", ""), str), f"{where}why", "a string", s.get("why"))
    for key, value in (("base", raw["base"]), (f"scales.{scale}.base", s.get("base", ""))):
        _check(isinstance(value, str), f"{path}: {key}", "a config file path", value)
    tune_raw = _mapping(s.get("tune"), f"{where}tune")
    _unknown(tune_raw, TUNE_KEYS, f"{where}tune.")
    for key, value in tune_raw.items():
        _check(_is_int(value) and value >= 0, f"{where}tune.{key}", "an integer >= 0", value)
    nuisance = _mapping(raw.get("nuisance"), f"{path}: nuisance")
    for key, space in nuisance.items():
        space = _mapping(space, f"{path}: nuisance.{key}")
        _unknown(space, RANGE_KEYS, f"{path}: nuisance.{key}.")
        _check(_is_number(space.get("low")) and _is_number(space.get("high")) and space["low"] < space["high"],
               f"{path}: nuisance.{key}", "numbers low < high", space)
        _check(isinstance(space.get("log", False), bool), f"{path}: nuisance.{key}.log", "true or false",
               space.get("log"))
    finetune_tasks, finetune_protocol = _finetune(raw, s, path, scale)
    seeds = s.get("seeds", [0])
    _check(isinstance(seeds, list) and seeds and all(_is_int(x) for x in seeds) and len(set(seeds)) == len(seeds),
           f"{where}seeds", "a non-empty list of distinct integers", seeds)
    base = Path(s.get("base", raw["base"]))
    single_arm = raw.get("single_arm", False)
    _check(isinstance(single_arm, bool), f"{path}: single_arm", "true or false", single_arm)
    arms = _arms(_mapping(s.get("scientific", raw.get("scientific")), f"{where}scientific"),
                 _mapping(s.get("linked", raw.get("linked")), f"{where}linked"), f"{path}: ", single_arm)
    exp = Experiment(
        path=path, study=study, table=table, scale=scale, base=base, arms=tuple(arms),
        nuisance=nuisance,
        fixed=_mapping(raw.get("fixed"), f"{path}: fixed"), overrides=_mapping(s.get("overrides"), f"{where}overrides"),
        seeds=tuple(seeds), tune=Tune(**tune_raw),
        finetune_tasks=finetune_tasks, finetune_protocol=finetune_protocol,
        epochs=_epochs(s.get("epochs"), arms, f"{where}epochs"),
    )
    _validate(exp)
    return exp


def _finetune(raw: dict, s: dict, path: Path, scale: str) -> tuple[tuple[str, ...], str]:
    """The fine-tuning tasks and protocol (the scale's section over the file's), resolved against the task registry
    and configs/finetune.yaml now, so an unknown name fails before any cell pretrains. The protocol defaults to the
    scale's name; it must exist when there are tasks to fine-tune or when the file names it."""
    where, values = {}, {}
    for prefix, section in ((f"{path}: finetune", raw.get("finetune")),
                            (f"{path}: scales.{scale}.finetune", s.get("finetune"))):
        section = _mapping(section, prefix)
        _unknown(section, FINETUNE_KEYS, f"{prefix}.")
        for key, value in section.items():
            where[key], values[key] = f"{prefix}.{key}", value
    tasks = values.get("tasks", [])
    _check(isinstance(tasks, list) and all(isinstance(t, str) for t in tasks) and len(set(tasks)) == len(tasks),
           where.get("tasks", ""), "a list of distinct task names", tasks)
    protocol = values.get("protocol", scale)
    _check(isinstance(protocol, str), where.get("protocol", ""), "a protocol name from configs/finetune.yaml",
           protocol)
    if not tasks and "protocol" not in values:
        return (), protocol  # nothing fine-tunes: the default protocol is never used
    from harness.finetune.protocol import PROTOCOLS_FILE, load_protocols
    from harness.finetune.tasks import TASKS

    for task in tasks:
        if task not in TASKS:
            raise UserError(f"{where['tasks']}: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    protocols = load_protocols()
    if protocol not in protocols:
        named = where.get("protocol", f"{path}: scales.{scale}.finetune.protocol (not set: the scale's name)")
        raise UserError(f"{named}: unknown protocol {protocol!r}; expected one of {sorted(protocols)} "
                        f"(in {PROTOCOLS_FILE.name})")
    return tuple(tasks), protocol


def _epochs(value: Any, arms: list[Arm], where: str) -> tuple[float, ...] | None:
    """The planned epochs per arm as stated: one positive number per arm, in the order of the arms."""
    if value is None:
        return None
    names = [a.name for a in arms]
    if not (isinstance(value, list) and len(value) == len(arms)
            and all(_is_number(v) and v > 0 for v in value)):
        raise UserError(f"{where}: expected one positive number per arm, in the order {names}, got {value!r}")
    return tuple(float(v) for v in value)


def _validate(exp: Experiment) -> None:
    """Resolve every cell's config once, so a wrong key, type or combination fails before anything runs."""
    if len({a.name for a in exp.arms}) != len(exp.arms):
        raise UserError(f"{exp.path}: scientific: two arms get the same name; give distinct values")
    for arm in exp.arms:
        mid = {k: (v["low"] * v["high"]) ** 0.5 if v.get("log") else (v["low"] + v["high"]) / 2
               for k, v in exp.nuisance.items()}
        try:
            exp.config(arm, exp.seeds[0], "runs", mid)
        except UserError as e:
            raise UserError(f"{exp.path}: arm {arm.name}: {e}") from None
    if exp.tune.tokens and not exp.tune.trials:
        raise UserError(f"{exp.path}: scales.{exp.scale}.tune.tokens: a trial budget without trials; set "
                        f"tune.trials > 0 or drop tune.tokens")
