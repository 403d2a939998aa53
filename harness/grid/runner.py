"""The grid runner: cells from an experiment file, workers that claim and run them, local or SLURM backends.

`grid run` validates the file and plans each arm's tokens, steps and epochs (harness.grid.plan; nothing is recorded
when either is refused), writes runs/<study>-<scale>/study.json, adds the cells to the SQLite store, creates the Optuna
studies, then starts workers: in this process (1 worker), as local subprocesses (`--workers N`, one cell each at a
time, GPUs split between them), or as a SLURM job array through submitit. Every worker runs the same loop, so a crashed
or pre-empted worker only costs its current cell's progress since the last checkpoint: the cell goes back to pending
and resumes there. A cell that raised is recorded as failed and the grid goes on; `grid run` then names the failed
cells and where they logged, and exits 1 (CellsFailed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import yaml
from tqdm import tqdm

from harness.config import Config, flatten, with_overrides
from harness.errors import UserError
from harness.files import read_json, write_json
from harness.grid.experiment import Arm, Experiment, config_hash, load_experiment
from harness.grid.provenance import provenance
from harness.grid.store import CellStore, worker_id

POLL_S = 2.0


def study_dir(exp: Experiment, runs_dir: str) -> Path:
    return Path(runs_dir) / exp.folder


def _cell(exp: Experiment, arm: Arm, seed: int, kind: str, cfg: Config, trial_slot: int | None = None) -> dict:
    cid = config_hash(cfg) if trial_slot is None else f"{config_hash(cfg)}-t{trial_slot}"
    run_dir = Path(cfg.train.runs_dir) / cfg.train.study / cfg.train.arm / f"seed_{cfg.train.seed}"
    return {"cell_id": cid, "study": exp.folder, "arm": arm.name, "seed": seed, "kind": kind,
            "run_dir": str(run_dir), "config": cfg.to_dict()}


def tune_cells(exp: Experiment, runs_dir: str, plan: dict[str, dict]) -> list[dict]:
    """One cell per trial slot; the trial's values are asked from Optuna when a worker starts it. A trial keeps its
    arm's schedule and stops at the step where it reaches the token budget (the plan's trial_steps)."""
    cells = []
    for arm in exp.arms:
        for k in range(exp.tune.trials):
            extra = {"train.arm": f"{arm.name}/tune/trial_{k}"}
            if exp.tune.tokens:
                extra["train.stop_at_step"] = plan[arm.name]["trial_steps"]
            cells.append(_cell(exp, arm, exp.seeds[0], "tune", exp.config(arm, exp.seeds[0], runs_dir, None, extra), k))
    return cells


def run_cells(exp: Experiment, arm: Arm, runs_dir: str, params: dict | None) -> list[dict]:
    return [_cell(exp, arm, seed, "run", exp.config(arm, seed, runs_dir, params)) for seed in exp.seeds]


def _make_run_cells(exp: Experiment, store: CellStore, runs_dir: str, storage: str):
    """Called inside the claim transaction when nothing is pending: seed runs for arms whose tuning is over."""

    def make(db) -> list[dict]:
        if not (exp.tune.trials and exp.nuisance):
            return []  # no tuning: every run cell was recorded up front
        from harness.grid import tune

        new = []
        done_arms = store.best()
        for arm in exp.arms:
            if arm.name in done_arms:
                continue
            open_tune = db.execute("SELECT COUNT(*) FROM cells WHERE arm = ? AND kind = 'tune' AND status IN "
                                   "('pending', 'running')", (arm.name,)).fetchone()[0]
            if open_tune:
                continue
            result = tune.best(exp, arm, storage)
            store.set_best(db, arm.name, result)
            new += run_cells(exp, arm, runs_dir, result["params"])
        return new

    return make


class Heartbeat:
    """Renews the cell's lease in a background thread while it runs."""

    def __init__(self, store_path: Path, cell_id: str, worker: str):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(store_path, cell_id, worker), daemon=True)

    def _beat(self, store_path: Path, cell_id: str, worker: str) -> None:
        store = CellStore(store_path)
        while not self.stop.wait(10.0):
            store.renew(cell_id, worker)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _write_cell_json(exp: Experiment, cell: dict, cfg: Config, nuisance: dict, tuning: dict) -> None:
    arm = next(a for a in exp.arms if a.name == cell["arm"])
    flat = flatten(cfg.to_dict())
    nuisance_keys = [*(nuisance or exp.nuisance)] or ["optim.peak_lr"]  # the LR is recorded even when not tuned
    info = {
        "study": exp.study, "table": exp.table, "arm": cell["arm"], "seed": cell["seed"], "scale": exp.scale,
        "kind": cell["kind"], "cell_id": cell["cell_id"], "scientific": arm.scientific,
        "nuisance": {k: flat[k] for k in nuisance_keys},
        "fixed": {k: v for k, v in flat.items() if k not in arm.scientific and k not in nuisance_keys
                  and k.split(".")[0] != "train"},
        "tuning": tuning,
        "provenance": {**provenance(), "config_hash": config_hash(cfg)},
    }
    write_json(Path(cell["run_dir"]) / "cell.json", info)


def run_one(exp: Experiment, store: CellStore, cell: dict, storage: str, worker: str,
            data_dir: str | None = None) -> str:
    """Run a claimed cell to the end; returns its final status. data_dir: the official task files for fine-tuning
    (`grid run --data-dir`; None: each task's stand-in, else n/a offline)."""
    from harness.pretrain import pretrain

    cfg = with_overrides(cell["config"])
    arm = next(a for a in exp.arms if a.name == cell["arm"])
    if cell["kind"] == "tune":
        from harness.grid import tune  # Optuna only where a study tunes: the GPU check's machine has none

        if cell["trial"] is not None:  # a previous worker died mid-trial: start this slot over with a new trial
            tune.fail_stale(exp, arm, storage, cell["trial"])
            shutil.rmtree(cell["run_dir"], ignore_errors=True)
        study, trial, params = tune.ask(exp, arm, storage)
        store.set_trial(cell["cell_id"], trial.number)
        cfg = with_overrides(cell["config"], [f"{k}={v!r}" for k, v in params.items()])
        _write_cell_json(exp, cell, cfg, params, {})
        try:
            result = pretrain(cfg, callbacks=(tune.PruneOnStep(trial),))
        except tune.optuna.TrialPruned:
            study.tell(trial, state=tune.optuna.trial.TrialState.PRUNED)
            return "pruned"
        value = result.get("final_valid_ppl")
        if result["status"] == "diverged" or value is None:
            study.tell(trial, state=tune.optuna.trial.TrialState.FAIL)
            return "diverged"
        study.tell(trial, value)
        return "finished"
    best = store.best().get(cell["arm"])
    tuning = {}
    if best is not None:
        tuning = {k: {**exp.nuisance[k], "best": (best["params"] or {}).get(k), "trials": best["trials"],
                      "at_edge": best["at_edge"].get(k)} for k in exp.nuisance}
    _write_cell_json(exp, cell, cfg, best and best["params"] or {}, tuning)
    result = pretrain(cfg) if cfg.train.devices == 1 else _pretrain_ddp(cfg, Path(cell["run_dir"]))
    if result["status"] == "finished" and exp.finetune_tasks:
        from harness.finetune.runner import finetune

        # One arm per encoder shape is also fine-tuned from random weights: the score pretraining has to beat.
        inits = ("pretrained", "random") if cell["arm"] in exp.random_init_baselines.values() else ("pretrained",)
        for task in exp.finetune_tasks:
            for init in inits:
                finetune(Path(cell["run_dir"]), task, data_dir, exp.finetune_protocol, init=init)
    return result["status"]


def _pretrain_ddp(cfg: Config, run_dir: Path) -> dict:
    """A multi-device cell runs as its own `python -m harness pretrain`: Lightning's DDP launcher re-runs the
    command line for every rank, which must not be a grid worker."""
    config = run_dir / "cell_config.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    subprocess.run([sys.executable, "-m", "harness", "pretrain", "--config", str(config)], check=True)
    return json.loads((run_dir / "result.json").read_text())


def work(folder: Path) -> int:
    """The worker loop: claim, run, record, until no cell is left. Returns the number of cells this worker ran."""
    info = read_json(folder / "study.json")
    if info is None:
        raise UserError(f"{folder}: no readable study.json here; expected a study folder made by `grid run`")
    exp = load_experiment(folder / "experiment.yaml", info["scale"]).with_run_overrides(info.get("run_overrides", {}))
    runs_dir = str(folder.parent)
    storage = info["optuna_storage"]
    store = CellStore(folder / "grid.sqlite")
    me = worker_id()
    make_more = _make_run_cells(exp, store, runs_dir, storage)
    ran = 0
    while True:
        cell = store.claim(me, make_more)
        if cell is None:
            if store.counts()["running"]:
                time.sleep(POLL_S)  # another worker's cell may unlock more (an arm's last tuning trial)
                continue
            break
        c = store.counts()
        print(f"[grid {exp.folder}] {cell['kind']} {cell['arm']} seed {cell['seed']} (attempt {cell['attempts']}; "
              f"{c['finished'] + c['diverged'] + c['pruned']} done, {c['failed']} failed, {c['pending']} pending)",
              flush=True)
        status, error = "failed", None
        with Heartbeat(store.path, cell["cell_id"], me):
            try:
                status = run_one(exp, store, cell, storage, me, info.get("data_dir"))
            except UserError as e:
                error = str(e)
                print(f"[grid {exp.folder}] {cell['kind']} {cell['arm']} seed {cell['seed']} failed: {error}",
                      file=sys.stderr, flush=True)
            except Exception as e:  # the grid goes on; the cell records why it failed
                error = f"{type(e).__name__}: {e}"
                traceback.print_exc()
        store.finish(cell["cell_id"], me, status, error)
        ran += 1
    return ran


def prepare_study(exp: Experiment, runs_dir: str, optuna_storage: str | None, data_dir: str | None = None) -> Path:
    """Plan the study, then record it and its cells (idempotent: a second `grid run` keeps what is done)."""
    from harness.grid.plan import grid_plan, plan_table

    plan = grid_plan(exp)  # refuses a design that cannot show its factor before anything is recorded
    print(plan_table(exp, plan), flush=True)
    folder = study_dir(exp, runs_dir)
    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna_storage or f"sqlite:///{(folder / 'optuna.sqlite').resolve()}"
    shutil.copyfile(exp.path, folder / "experiment.yaml")
    info = {**exp.study_json(), "plan": plan, "optuna_storage": storage, "data_dir": data_dir}  # workers read it
    write_json(folder / "study.json", info)
    store = CellStore(folder / "grid.sqlite")
    if exp.tune.trials and exp.nuisance:
        from harness.grid import tune

        tune.create_studies(exp, storage)  # before any worker starts
        store.add(tune_cells(exp, runs_dir, plan))
    else:
        store.add([c for arm in exp.arms for c in run_cells(exp, arm, runs_dir, None)])
    return folder


def _progress(folder: Path, procs: list) -> None:
    store = CellStore(folder / "grid.sqlite")
    bar = tqdm(desc=f"grid {folder.name}", unit="cell", dynamic_ncols=True)
    t0 = time.time()
    while any(p.poll() is None for p in procs) if procs else False:
        c = store.counts()
        done = c["finished"] + c["diverged"] + c["pruned"] + c["failed"]
        bar.total = sum(c.values())
        bar.n = done
        eta = (time.time() - t0) / done * (bar.total - done) if done else float("nan")
        bar.set_postfix(running=c["running"], failed=c["failed"], eta_min=f"{eta / 60:.1f}")
        time.sleep(POLL_S)
    bar.close()


def launch_local(folder: Path, workers: int, devices_per_worker: int) -> dict[str, str]:
    """Run the workers to the end; returns where each logged, by worker id as the store records it."""
    if workers == 1:
        work(folder)
        return {worker_id(): "above, on this terminal"}
    import torch

    gpus = torch.cuda.device_count()
    procs, logs = [], folder / "logs"
    logs.mkdir(exist_ok=True)
    for i in range(workers):
        env = dict(os.environ)
        if gpus:  # one cell per GPU (or per group of GPUs, for DDP inside a cell)
            ids = range(i * devices_per_worker, (i + 1) * devices_per_worker)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g % gpus) for g in ids)
        else:  # share the CPU cores instead of oversubscribing them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        log = open(logs / f"worker_{i}.log", "a")
        procs.append(subprocess.Popen([sys.executable, "-m", "harness", "grid", "worker", str(folder)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
    _progress(folder, procs)
    if any(p.wait() for p in procs):
        print(f"some workers exited with an error; see {logs}/", file=sys.stderr)
    return {worker_id(p.pid): str(logs / f"worker_{i}.log") for i, p in enumerate(procs)}


def launch_submitit(folder: Path, workers: int, cluster: str | None, slurm: dict) -> None:
    """A job array of workers; each re-queues itself on pre-emption (submitit's checkpoint hook)."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=cluster)
    executor.update_parameters(**slurm)
    if cluster != "local":
        executor.update_parameters(slurm_array_parallelism=workers)
    jobs = executor.map_array(SubmititWorker(), [folder] * workers)
    print(f"submitted {len(jobs)} worker(s): {jobs[0].job_id.split('_')[0]}; `python -m harness grid status {folder}`")
    if cluster == "local":
        for job in jobs:
            job.result()


class SubmititWorker:
    """Picklable worker for submitit; `checkpoint` makes SLURM pre-emption requeue the worker, which resumes."""

    def __call__(self, folder: Path) -> int:
        return work(folder)

    def checkpoint(self, folder: Path):
        import submitit

        return submitit.helpers.DelayedSubmission(SubmititWorker(), folder)


def status_table(folder: Path) -> str:
    if not (folder / "grid.sqlite").is_file():
        raise UserError(f"{folder}: no grid.sqlite here; expected a study folder made by `grid run`")
    store = CellStore(folder / "grid.sqlite")
    rows = store.rows()
    lines = [f"{'kind':5} {'arm':32} {'seed':>4} {'status':9} {'tries':>5} {'minutes':>7}  error"]
    for r in rows:
        minutes = f"{r['seconds'] / 60:.1f}" if r["seconds"] else ""
        lines.append(f"{r['kind']:5} {r['arm']:32} {r['seed']:>4} {r['status']:9} {r['attempts']:>5} {minutes:>7}  "
                     f"{(r['error'] or '')[:80]}")
    c = store.counts()
    lines.append(", ".join(f"{k} {v}" for k, v in c.items() if v))
    return "\n".join(lines)


def check_data_dir(exp: Experiment, data_dir: str | None) -> str | None:
    """`grid run --data-dir` as every cell's fine-tuning gets it: an absolute folder (workers may start elsewhere)
    holding each fine-tuning task's official files; a UserError naming what is missing, before anything is
    recorded. "hf" (HF datasets' cache) passes as it is; None (the offline stand-ins) only when every task has one:
    a grid whose fine-tuning could only read "n/a offline" is refused."""
    if data_dir == "hf":
        return data_dir
    from harness.finetune.tasks import check_files, get_task

    if data_dir is None:
        for name in exp.finetune_tasks:
            task = get_task(name)
            if task.standin is None:
                raise UserError(f"{exp.path}: finetune.tasks: {name} has no offline stand-in; give --data-dir DIR "
                                f"with {' and '.join(task.files)} (or --data-dir hf), or drop {name} at this scale")
        return None
    if not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir}: not a folder")
    folder = Path(data_dir).resolve()
    for task in exp.finetune_tasks:
        check_files(get_task(task), folder)  # a stand-in task (rt_sentiment) needs no files
    return str(folder)


def run_grid(path: str, scale: str, runs_dir: str = "runs", backend: str = "local", workers: int = 1,
             devices_per_worker: int = 1, optuna_storage: str | None = None, slurm: dict | None = None,
             data_dir: str | None = None, wandb: str | None = None) -> Path:
    """wandb: every cell's train.wandb (offline | online | disabled); None keeps the configs' own."""
    exp = load_experiment(path, scale)  # fails before anything is recorded
    if wandb is not None:
        exp = exp.with_run_overrides({"train.wandb": wandb})
    data_dir = check_data_dir(exp, data_dir)
    folder = prepare_study(exp, runs_dir, optuna_storage, data_dir)
    if backend == "local":
        logs = launch_local(folder, workers, devices_per_worker)
    else:
        launch_submitit(folder, workers, "local" if backend == "submitit-local" else "slurm", slurm or {})
        logs = {}
    print(status_table(folder))
    if backend != "slurm":  # the local backends waited for every cell; SLURM's array is still running
        other = (f"{folder / 'submitit'}/" if backend == "submitit-local"
                 else f"an earlier `grid run`: its terminal, or {folder / 'logs'}/ with --workers > 1")
        raise_if_failed(folder, logs, other)
    return folder


class CellsFailed(Exception):
    """`grid run` ran, but cells failed: the CLI prints the message and exits 1 (exit 2 is bad input)."""


def raise_if_failed(folder: Path, logs: dict[str, str], other: str) -> None:
    """CellsFailed naming every failed cell (kind, arm, seed), its recorded error and where its worker logged
    (`logs`: worker id -> log; `other` for a worker not in it: under submitit, or in an earlier `grid run`)."""
    failed = [r for r in CellStore(folder / "grid.sqlite").rows() if r["status"] == "failed"]
    if not failed:
        return
    lines = [f"{len(failed)} cell(s) failed in {folder} (`python -m harness grid status {folder}` lists every cell):"]
    for r in failed:
        error = (r["error"] or "no error recorded").strip().splitlines()[0][:200]
        lines.append(f"  {r['kind']} {r['arm']} seed {r['seed']}: {error} [log: {logs.get(r['worker'], other)}]")
    raise CellsFailed("\n".join(lines))


def load_slurm_options(text: str | None) -> dict:
    """`--slurm 'partition=gpu,gpus_per_node=8,timeout_min=600'` → submitit parameters."""
    out = {}
    for item in (text or "").split(","):
        if item.strip():
            key, sep, value = item.partition("=")
            if not sep:
                raise UserError(f"--slurm: expected key=value items, got {item!r}")
            out[key.strip()] = yaml.safe_load(value)
    return out
