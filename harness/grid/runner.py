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
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import yaml
from tqdm import tqdm

from harness.cluster import check_slurm, submitit_executor
from harness.config import Config, flatten, with_overrides
from harness.errors import UserError
from harness.files import read_json, write_json, zip_damage
from harness.grid.experiment import Arm, Experiment, config_hash, load_experiment
from harness.grid.provenance import provenance
from harness.grid.store import CellStore, worker_id

POLL_S = 2.0


def study_dir(exp: Experiment, runs_dir: str) -> Path:
    return Path(runs_dir) / exp.folder


def open_store(folder: Path, read_only: bool = False) -> CellStore:
    """The study's cell store as study.json names it ("store": a PostgreSQL URL, `grid run --store`; absent: SQLite
    in the folder, the embedded default), so `grid status`, every worker and `grid run` open the one it chose.
    read_only (`grid status`, `--restart-cell`'s checks): a study.json that is there must be readable, and a SQLite
    store must exist; nothing is created."""
    info = read_json(folder / "study.json")
    if read_only and info is None and (folder / "study.json").exists():
        raise UserError(f"{folder / 'study.json'}: not valid JSON (a study folder `grid run` did not finish "
                        f"writing?); run `grid run` on its experiment again")
    url = (info or {}).get("store")
    if url:
        return CellStore(url, schema=folder.name)
    return CellStore(folder / "grid.sqlite", read_only=read_only)


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

    def __init__(self, store: CellStore, cell_id: str, worker: str):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(store, cell_id, worker), daemon=True)

    def _beat(self, store: CellStore, cell_id: str, worker: str) -> None:
        store = store.reopen()  # its own connection: this thread's
        while not self.stop.wait(10.0):
            store.renew(cell_id, worker)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=15.0)  # a renewal waiting on a locked store must not hold up a stopping worker


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
    from harness.grid.stopping import stop_at_step
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
            result = pretrain(cfg, callbacks=(tune.PruneOnStep(trial), stop_at_step(Path(cell["run_dir"]))))
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
    if cfg.train.devices == 1:  # stops at the end of its optimizer step on SIGTERM/SIGINT (harness.grid.stopping)
        result = pretrain(cfg, callbacks=(stop_at_step(Path(cell["run_dir"])),))
    else:
        result = _pretrain_ddp(cfg, Path(cell["run_dir"]))
    if exp.finetune_tasks:
        from harness.finetune.runner import finetune

        # One arm per encoder shape is also fine-tuned from random weights: the score pretraining has to beat. It
        # needs nothing the pretraining made (config and tokenizer are written first), so a diverged run's seed keeps
        # its baseline; only the diverged run itself is not fine-tuned (the analysis counts it as the worst score).
        baseline = ("random",) if cell["arm"] in exp.random_init_baselines.values() else ()
        inits = (("pretrained",) if result["status"] == "finished" else ()) + baseline
        for task in exp.finetune_tasks:
            for init in inits:
                finetune(Path(cell["run_dir"]), task, data_dir, exp.finetune_protocol, init=init)
    return result["status"]


def _pretrain_ddp(cfg: Config, run_dir: Path) -> dict:
    """A multi-device cell runs as its own `python -m harness pretrain`: Lightning's DDP launcher re-runs the
    command line for every rank, which must not be a grid worker."""
    config = run_dir / "cell_config.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    # A session of its own: a terminal's Ctrl+C reaches it only through this worker, and a kill of its process
    # group reaches every rank (harness.grid.stopping).
    cmd = [sys.executable, "-m", "harness", "pretrain", "--config", str(config)]
    proc = subprocess.Popen(cmd, env=_without_slurm(os.environ), start_new_session=True)
    try:
        code = proc.wait()
    except BaseException:  # the worker is stopping: rank 0 gets SIGTERM (Lightning forwards it), then the group a kill
        from harness.grid.stopping import CHILD_GRACE_S, stop_processes

        stop_processes([proc], signal.SIGTERM, CHILD_GRACE_S)
        raise
    if code:
        raise subprocess.CalledProcessError(code, cmd)
    return json.loads((run_dir / "result.json").read_text())


def _without_slurm(env: os._Environ | dict) -> dict:
    """The DDP cell's environment without SLURM_*. Under SLURM a worker is one array task (one task per node), and
    Lightning, seeing SLURM_NTASKS, would take its ranks to be SLURM tasks and reject devices=N against ntasks=1.
    Giving the worker N tasks instead would run N worker loops, each claiming its own cell; `srun -n N` from inside
    the task would need the array to request N tasks all the same. Without SLURM_* the cell launches its own ranks on
    this node, as under the local backend (same command, same ranks, same loss curve); they stay inside the task, so
    scancel and requeue still stop them, and CUDA_VISIBLE_DEVICES (SLURM's GPUs for the task) passes through."""
    return {k: v for k, v in env.items() if not k.startswith("SLURM_")}


def work(folder: Path) -> int:
    """The worker loop: claim, run, record, until no cell is left. Returns the number of cells this worker ran."""
    info = read_json(folder / "study.json")
    if info is None:
        raise UserError(f"{folder}: no readable study.json here; expected a study folder made by `grid run`")
    exp = load_experiment(folder / "experiment.yaml", info["scale"]).with_run_overrides(info.get("run_overrides", {}))
    runs_dir = str(folder.parent)
    storage = info["optuna_storage"]
    store = open_store(folder)
    me = worker_id()
    make_more = _make_run_cells(exp, store, runs_dir, storage)
    ran = 0
    try:
        while True:
            cell = store.claim(me, make_more)
            if cell is None:
                if store.counts()["running"]:
                    time.sleep(POLL_S)  # another worker's cell may unlock more (an arm's last tuning trial)
                    continue
                break
            _run_claimed(exp, store, cell, storage, me, info.get("data_dir"))
            ran += 1
    except BaseException as e:  # a stop signal (harness.grid.stopping), or anything else that ends this process
        _hand_back(exp, store, me, e)
        raise
    return ran


def _run_claimed(exp: Experiment, store: CellStore, cell: dict, storage: str, me: str, data_dir: str | None) -> None:
    """Run one claimed cell under its lease heartbeat and record how it ended; a cell that raised is failed."""
    c = store.counts()
    print(f"[grid {exp.folder}] {cell['kind']} {cell['arm']} seed {cell['seed']} (attempt {cell['attempts']}; "
          f"{c['finished'] + c['diverged'] + c['pruned']} done, {c['failed']} failed, {c['pending']} pending)",
          flush=True)
    status, error = "failed", None
    with Heartbeat(store, cell["cell_id"], me):
        try:
            status = run_one(exp, store, cell, storage, me, data_dir)
        except UserError as e:
            error = str(e)
            print(f"[grid {exp.folder}] {cell['kind']} {cell['arm']} seed {cell['seed']} failed: {error}",
                  file=sys.stderr, flush=True)
        except Exception as e:  # the grid goes on; the cell records why it failed
            error = f"{type(e).__name__}: {e}"
            traceback.print_exc()
    store.finish(cell["cell_id"], me, status, error)


def _hand_back(exp: Experiment, store: CellStore, me: str, exc: BaseException) -> None:
    """The worker is ending before its cell did: the cell goes back to pending now, not after its lease runs out
    (the heartbeat has stopped with the `with` block). A stop signal is re-raised as Interrupted (exit 128 + signal)."""
    from harness.grid.stopping import interrupted_by

    try:
        n = store.release([me])
    except Exception:  # noqa: BLE001 - the store itself may be what failed; the lease then runs out as before
        n = 0
    stop = interrupted_by(exc)
    if stop is not None:
        print(f"[grid {exp.folder}] {stop}: {n} cell(s) of this worker pending again", file=sys.stderr, flush=True)
        raise stop from None


def prepare_study(exp: Experiment, runs_dir: str, optuna_storage: str | None, data_dir: str | None = None,
                  store_url: str | None = None) -> Path:
    """Plan the study, then record it and its cells (idempotent: a second `grid run` keeps what is done). store_url:
    the cell store (`--store`, a PostgreSQL URL for many nodes; None: SQLite in the study folder), recorded in
    study.json for the workers; a study keeps the store it started with."""
    from harness.grid.plan import grid_plan, plan_table

    plan = grid_plan(exp)  # refuses a design that cannot show its factor before anything is recorded
    print(plan_table(exp, plan), flush=True)
    folder = study_dir(exp, runs_dir)
    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna_storage or f"sqlite:///{(folder / 'optuna.sqlite').resolve()}"
    store_url = _study_store(folder, store_url)
    store = CellStore(store_url, schema=folder.name) if store_url else CellStore(folder / "grid.sqlite")  # reachable?
    _check_store_holds_this_study(store, folder)
    shutil.copyfile(exp.path, folder / "experiment.yaml")  # once the store is known good
    info = {**exp.study_json(), "plan": plan, "optuna_storage": storage, "data_dir": data_dir,
            "store": store_url}  # workers read it
    write_json(folder / "study.json", info)
    if exp.tune.trials and exp.nuisance:
        from harness.grid import tune

        tune.create_studies(exp, storage)  # before any worker starts
        store.add(tune_cells(exp, runs_dir, plan))
    else:
        store.add([c for arm in exp.arms for c in run_cells(exp, arm, runs_dir, None)])
    return folder


def _study_store(folder: Path, store_url: str | None) -> str | None:
    """The store a study records: `--store` (checked by check_store), else the one the study started with; a store
    other than the one it started with is refused, as its finished cells live there."""
    from harness.grid.store import check_store

    before = (read_json(folder / "study.json") or {}).get("store")
    if store_url is None:
        return before
    store_url = check_store(store_url)
    started = before or ("SQLite in the study folder" if (folder / "grid.sqlite").is_file() else None)
    if started is not None and started != store_url:
        raise UserError(f"--store {store_url}: {folder} was started with the store {started}; give that one, or "
                        f"another --runs-dir")
    return store_url


def _check_store_holds_this_study(store: CellStore, folder: Path) -> None:
    """A PostgreSQL schema is named after the study folder: one of the same name under another runs folder would share
    its cells, so a store whose cells live elsewhere is refused before anything runs. (A SQLite file is the folder's
    own, which may have been moved: not checked.)"""
    from harness.grid.store import is_postgres

    if not is_postgres(store.path):
        return
    other = next((r["run_dir"] for r in store.rows() if not Path(r["run_dir"]).is_relative_to(folder)), None)
    if other is not None:
        raise UserError(f"--store {store.path}: schema {folder.name!r} already holds cells of another runs folder "
                        f"({other}); use another database, or the same --runs-dir")


def _progress(folder: Path, procs: list) -> None:
    store = open_store(folder)
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

    from harness.grid.stopping import PARENT_ENV

    gpus = torch.cuda.device_count()
    procs, logs = [], folder / "logs"
    logs.mkdir(exist_ok=True)
    try:
        for i in range(workers):
            env = {**os.environ, PARENT_ENV: str(os.getpid())}  # it stops when this process dies, even by kill -9
            if gpus:  # one cell per GPU (or per group of GPUs, for DDP inside a cell)
                ids = range(i * devices_per_worker, (i + 1) * devices_per_worker)
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g % gpus) for g in ids)
            else:  # share the CPU cores instead of oversubscribing them
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
            log = open(logs / f"worker_{i}.log", "a")
            # Sessions of their own: a stop reaches a worker only through this process (harness.grid.stopping).
            procs.append(subprocess.Popen([sys.executable, "-m", "harness", "grid", "worker", str(folder)], env=env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        _progress(folder, procs)
    except BaseException:  # SIGTERM/SIGINT (Interrupted), or this process failing: no worker may outlive it
        _stop_workers(folder, procs)
        raise
    if any(p.wait() for p in procs):
        print(f"some workers exited with an error; see {logs}/", file=sys.stderr)
    return {worker_id(p.pid): str(logs / f"worker_{i}.log") for i, p in enumerate(procs)}


def _stop_workers(folder: Path, procs: list[subprocess.Popen]) -> None:
    """Forward the stop to each worker (SIGINT: harness.grid.stopping says why), kill what is left after
    WORKER_GRACE_S, and hand back to pending any cell a killed worker still held."""
    from harness.grid.stopping import WORKER_GRACE_S, stop_processes

    print(f"stopping {len(procs)} worker(s) (pids {' '.join(str(p.pid) for p in procs)}); cells they hold go back "
          f"to pending", file=sys.stderr, flush=True)
    stop_processes(procs, signal.SIGINT, WORKER_GRACE_S)
    open_store(folder).release([worker_id(p.pid) for p in procs])


def launch_submitit(folder: Path, workers: int, cluster: str | None, slurm: dict, wait: bool = False) -> str:
    """A job array of workers; each re-queues itself on pre-emption (submitit's checkpoint hook). Returns the array's
    job id. The local executor always waits; a SLURM array is waited for with `wait` (`grid run --wait`)."""
    executor = submitit_executor(folder, cluster, workers, slurm)
    jobs = executor.map_array(SubmititWorker(), [folder] * workers)
    array = jobs[0].job_id.split("_")[0]
    print(f"submitted {len(jobs)} worker(s): {array}; `python -m harness grid status {folder}`", flush=True)
    if cluster == "local":
        for job in jobs:
            job.result()
    elif wait:
        wait_for_array(array, folder)
    return array


def wait_for_array(array: str, folder: Path, poll_s: float = POLL_S) -> None:
    """Until no task of the SLURM array is in the queue (pending, running, requeued), printing the cells' counts as
    they change. squeue, not submitit's job states: those come from sacct, which a cluster without an accounting
    database (and a task requeued on pre-emption) cannot answer."""
    store = open_store(folder)
    last, failures = None, 0
    while True:
        r = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%T"], capture_output=True, text=True)
        if r.returncode and "Invalid job id" in r.stderr:
            return  # the array ended long enough ago that slurmctld has forgotten it
        if r.returncode:  # slurmctld busy or restarting: try again, for a while
            failures += 1
            if failures > 30:
                raise RuntimeError(f"squeue -j {array} failed {failures} times in a row: {r.stderr.strip()}")
        else:
            failures = 0
            tasks = r.stdout.split()
            if not tasks:
                return
            c = store.counts()
            line = (f"[grid {folder.name}] array {array}: {tasks.count('RUNNING')} task(s) running, "
                    f"{len(tasks) - tasks.count('RUNNING')} queued; cells: "
                    + ", ".join(f"{v} {k}" for k, v in c.items() if v))
            if line != last:
                print(line, flush=True)
                last = line
        time.sleep(poll_s)


class SubmititWorker:
    """Picklable worker for submitit; `checkpoint` makes SLURM pre-emption requeue the worker, which resumes.

    Pre-emption's USR2 (submitit's signal, `--signal=USR2@90`) first goes through harness.grid.stopping, as a stop
    signal does for a local worker: a single-device cell runs on to the end of its optimizer step, saves last.ckpt
    there and goes back to pending. Only then does submitit's own handler run: it pickles `checkpoint`'s resubmission,
    requeues the task (`scontrol requeue`) and exits. Called straight from the signal, as submitit installs it, that
    handler would exit mid-step, and the cell would lose what it trained since its last periodic checkpoint."""

    def __call__(self, folder: Path) -> int:
        from harness.grid import stopping

        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue (None outside submitit)
        if callable(requeue):
            signal.signal(signal.SIGUSR2, stopping.on_signal)
        try:
            return work(folder)
        except stopping.Interrupted as e:
            if e.signum == signal.SIGUSR2 and callable(requeue):
                requeue(signal.SIGUSR2, None)  # exits once the task is requeued
            raise

    def checkpoint(self, folder: Path):
        import submitit

        return submitit.helpers.DelayedSubmission(SubmititWorker(), folder)


def cell_dir(folder: Path, row: dict) -> Path:
    """A cell's folder under the study folder as given now (the store records it as `grid run` was given it, which
    may be relative to another working directory)."""
    recorded = Path(row["run_dir"])
    parts = recorded.parts
    if folder.name in parts:
        return folder.joinpath(*parts[len(parts) - parts[::-1].index(folder.name):])
    return recorded


def _state_note(folder: Path, row: dict) -> str:
    """What the folder says against the store: a finished cell whose folder or result.json is gone or unreadable, a
    cell to resume whose checkpoint is cut short (torch saves a zip archive, whose directory is at its end: reading
    that directory, not the tensors, keeps this cheap for any checkpoint size)."""
    run_dir = cell_dir(folder, row)
    if row["status"] in ("pending", "running"):
        for ckpt in sorted((run_dir / "checkpoints").glob("*.ckpt")):
            if zip_damage(ckpt):
                return (f"{row['status']}, but {ckpt} cannot be read: `grid run --restart-cell {row['arm']} "
                        f"{row['seed']}`")
        return ""
    if row["status"] not in ("finished", "diverged"):
        return ""
    if not run_dir.is_dir():
        return f"{row['status']}, but its folder is missing: `grid run --restart-cell {row['arm']} {row['seed']}`"
    result = run_dir / "result.json"
    if not result.is_file():
        return f"{row['status']}, but result.json is missing"
    if not isinstance(read_json(result), dict):
        return f"{row['status']}, but result.json is unreadable"
    return ""


def status_table(folder: Path) -> str:
    """Every cell's status, and where a finished cell's folder disagrees with the store; reads, never writes."""
    if not (folder / "study.json").is_file() and not (folder / "grid.sqlite").is_file():
        raise UserError(f"{folder}: no study.json or grid.sqlite here; expected a study folder made by `grid run`")
    store = open_store(folder, read_only=True)
    rows = store.rows()
    lines = [f"{'kind':5} {'arm':32} {'seed':>4} {'status':9} {'tries':>5} {'minutes':>7}  error"]
    for r in rows:
        minutes = f"{r['seconds'] / 60:.1f}" if r["seconds"] else ""
        note = _state_note(folder, r) if r["kind"] == "run" else ""
        lines.append(f"{r['kind']:5} {r['arm']:32} {r['seed']:>4} {r['status']:9} {r['attempts']:>5} {minutes:>7}  "
                     f"{note or (r['error'] or '').strip().split(chr(10))[0][:300]}")
    c = store.counts()
    lines.append(", ".join(f"{k} {v}" for k, v in c.items() if v))
    return "\n".join(lines)


def restart_cell(folder: Path, arm: str, seed: int) -> Path | None:
    """`grid run --restart-cell ARM SEED`: the cell goes back to pending, to run from scratch (an unreadable
    checkpoint, a finished cell whose folder is gone). Its folder, if any, is kept aside under
    <study>/restarted/<arm>/seed_<k>-<time>/, where the analysis does not look; returns that path."""
    store = open_store(folder)
    cells = [r for r in store.rows() if r["kind"] == "run"]
    row = next((r for r in cells if r["arm"] == arm and r["seed"] == seed), None)
    if row is None:
        arms = sorted({r["arm"] for r in cells})
        seeds = sorted({r["seed"] for r in cells})
        raise UserError(f"--restart-cell {arm} {seed}: no cell of this study; its arms: {', '.join(arms) or 'none'}; "
                        f"seeds: {', '.join(map(str, seeds)) or 'none'}")
    if row["status"] == "running" and (row["lease_until"] or 0) > time.time():
        raise UserError(f"--restart-cell {arm} {seed}: the cell is running now (worker {row['worker']}); stop that "
                        f"`grid run` first")
    run_dir, kept = cell_dir(folder, row), None
    if run_dir.exists():
        kept = folder / "restarted" / arm / f"{run_dir.name}-{time.strftime('%Y%m%dT%H%M%S')}"
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.replace(run_dir, kept)
    store.restart(row["cell_id"])
    print(f"[grid {folder.name}] {arm} seed {seed}: was {row['status']}, now pending, to run from scratch"
          + (f"; its folder is kept at {kept}" if kept else ""), flush=True)
    return kept


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
             data_dir: str | None = None, wandb: str | None = None, wait: bool = False,
             store: str | None = None, restart: tuple[tuple[str, int], ...] = ()) -> Path:
    """store: the cell store's URL (`--store`; None: SQLite in the study folder, or the store the study started
    with). wandb: every cell's train.wandb (offline | online | disabled); None keeps the configs' own. wait: with the
    slurm backend, wait for the array and end as the local backends do (CellsFailed naming failed cells); without
    it, return once the array is submitted. restart: (arm, seed) cells to run again from scratch (restart_cell)."""
    check_runs_dir(runs_dir)
    exp = load_experiment(path, scale)  # fails before anything is recorded
    for arm, seed in restart:
        if arm not in {a.name for a in exp.arms} or seed not in exp.seeds:
            raise UserError(f"--restart-cell {arm} {seed}: no such cell at this scale; its arms: "
                            f"{', '.join(a.name for a in exp.arms)}; seeds: {', '.join(map(str, exp.seeds))}")
    if (study_dir(exp, runs_dir) / "grid.sqlite").is_file():  # a store that cannot be read: before the plan
        CellStore(study_dir(exp, runs_dir) / "grid.sqlite", read_only=True)
    check_inputs(exp)
    if wandb is not None:
        exp = exp.with_run_overrides({"train.wandb": wandb})
    data_dir = check_data_dir(exp, data_dir)
    if backend == "slurm":  # a --slurm parameter submitit refuses, or a machine without SLURM: before any record
        check_slurm(workers, slurm or {})
    folder = prepare_study(exp, runs_dir, optuna_storage, data_dir, store)
    for arm, seed in restart:
        restart_cell(folder, arm, seed)
    if backend == "local":
        logs = launch_local(folder, workers, devices_per_worker)
    else:
        array = launch_submitit(folder, workers, "local" if backend == "submitit-local" else "slurm", slurm or {},
                                wait)
        logs = {}
    print(status_table(folder))
    if backend == "slurm" and wait:
        # Worker ids are host:pid, which SLURM does not give: point at the array tasks' stderr, where a failed cell's
        # error and traceback are (submitit names it <array>_<task>_0_log.err; a requeued task appends to its own).
        raise_if_failed(folder, logs, f"{folder / 'submitit'}/{array}_*_log.err")
        left = [r for r in open_store(folder).rows() if r["status"] in ("pending", "running")]
        if left:  # the array ended (scancel, time limit) before every cell did
            raise CellsFailed(f"SLURM array {array} ended with {len(left)} cell(s) not done in {folder}; "
                              f"`grid run` again runs only those")
    elif backend != "slurm":  # the local backends waited for every cell
        other = (f"{folder / 'submitit'}/" if backend == "submitit-local"
                 else f"an earlier `grid run`: its terminal, or {folder / 'logs'}/ with --workers > 1")
        raise_if_failed(folder, logs, other)
    return folder


def check_inputs(exp: Experiment) -> None:
    """Every arm's corpus and given tokenizer exist, before the plan prepares data (and torch loads): a missing
    path is one line naming the arm, not a failure after planning."""
    from harness.data.pipeline import check_paths

    for arm in exp.arms:
        try:
            check_paths(exp.config(arm, exp.seeds[0], "runs").data)
        except UserError as e:
            raise UserError(f"{exp.path}: arm {arm.name}: {e}") from None


def check_runs_dir(runs_dir: str) -> None:
    """--runs-dir: a folder, or a path whose nearest existing part is one (it is created)."""
    for path in (Path(runs_dir), *Path(runs_dir).parents):
        if path.exists():
            if not path.is_dir():
                raise UserError(f"--runs-dir {runs_dir}: not a folder ({path} is a file)")
            return


class CellsFailed(Exception):
    """`grid run` ran, but cells failed: the CLI prints the message and exits 1 (exit 2 is bad input)."""


def raise_if_failed(folder: Path, logs: dict[str, str], other: str) -> None:
    """CellsFailed naming every failed cell (kind, arm, seed), its recorded error and where its worker logged
    (`logs`: worker id -> log; `other` for a worker not in it: under submitit, or in an earlier `grid run`)."""
    failed = [r for r in open_store(folder).rows() if r["status"] == "failed"]
    if not failed:
        return
    lines = [f"{len(failed)} cell(s) failed in {folder} (`python -m harness grid status {folder}` lists every cell):"]
    for r in failed:
        error = (r["error"] or "no error recorded").strip().splitlines()[0][:200]
        lines.append(f"  {r['kind']} {r['arm']} seed {r['seed']}: {error} [log: {logs.get(r['worker'], other)}]")
    raise CellsFailed("\n".join(lines))
