"""The grid on a real SLURM cluster: a one-node cluster (.ci/slurm.sh: slurm-wlm and munge, no cgroups, no
accounting), driven the way a user drives it, `grid run --backend slurm --wait`.

A job array of 2 concurrent workers runs every cell once; pre-emption, gentle (submitit's USR2: it checkpoints the
worker and requeues the task) and hard (`scontrol requeue`: TERM, then KILL), resumes the interrupted cell from its
last checkpoint with the metrics of an uninterrupted run; `scancel` of the array, then `grid run` again, runs only the
cells left; Optuna trials from 2 array tasks share PostgreSQL; a 2-process DDP cell in an array task trains exactly
as the local 2-process run. Marked `slurm`: `make test-slurm` runs them, `.ci/run` starts the cluster first and sets
HARNESS_TEST_SLURM=1, under which a test that would skip fails instead.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.grid.store import CellStore

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
EXPECTED = os.environ.get("HARNESS_TEST_SLURM") == "1"  # set by .ci/run: no cluster is a failure there
QUICK = {"optim.warmup_steps": 2, "train.val_every": 10, "train.log_every": 5, "train.num_workers": 0,
         "train.wandb": "disabled"}
FORMATS = ["full_sentences", "doc_sentences"]
# A cell long enough to signal in its middle: ~10 steps/s on one loaded core, a checkpoint every 10 steps, and after
# `scontrol requeue` SLURM waits KillWait (5 s in .ci/slurm.sh) between TERM (which submitit ignores) and KILL.
LONG = {"optim.max_steps": 160, "train.checkpoint_every": 10, "train.val_every": 40}
ENV = {"OMP_NUM_THREADS": "1"}  # one core per worker, two workers on the two cores


def _unavailable(reason: str) -> None:
    if EXPECTED:
        pytest.fail(f"HARNESS_TEST_SLURM=1 (.ci/run), but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_conf() -> str:
    """The test cluster's slurm.conf, in os.environ["SLURM_CONF"] for every SLURM command and job: the one .ci/run
    started, else .ci/slurm.sh starts (or reuses) it where SLURM is installed."""
    if not (shutil.which("sbatch") and shutil.which("slurmctld") and shutil.which("munged")):
        _unavailable("no SLURM here (sbatch, slurmctld, munged); `apt-get install slurm-wlm munge` or run .ci/run")
    if not os.environ.get("SLURM_CONF"):
        r = subprocess.run([str(REPO / ".ci" / "slurm.sh")], capture_output=True, text=True, timeout=300)
        if r.returncode == 3:
            _unavailable(r.stderr.strip())
        assert r.returncode == 0, r.stderr
        os.environ["SLURM_CONF"] = r.stdout.strip().splitlines()[-1].split("=", 1)[1]
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %P %T %c %m"], capture_output=True, text=True, timeout=60)
    if r.returncode or not re.search(r"\b(idle|mixed|allocated)\b", r.stdout):
        _unavailable(f"no SLURM node up (sinfo: {r.stdout.strip() or r.stderr.strip()}); run .ci/slurm.sh")
    print(f"sinfo: {r.stdout.strip()}")
    return os.environ["SLURM_CONF"]


def experiment(path: Path, scientific: dict, overrides: dict, seeds=(0,), tune: dict | None = None, **top) -> Path:
    doc = {"study": path.stem, "table": 2, "base": TINY, "scientific": scientific,
           "nuisance": {"optim.peak_lr": {"low": 1e-4, "high": 3e-3, "log": True}},
           "scales": {"smoke": {"overrides": {**QUICK, **overrides}, "seeds": list(seeds), "tune": tune or {}}}, **top}
    path.write_text(yaml.safe_dump(doc))
    return path


STARTED: list[tuple[subprocess.Popen, Path]] = []  # this test's `grid run`s and their study folders


@pytest.fixture(autouse=True)
def _leave_nothing_running():
    yield
    _stop_started()


def _stop_started() -> None:
    """A failed test leaves no `grid run` (stopped by its PID) and no job of its arrays in the queue."""
    while STARTED:
        proc, runs = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        jobs = {p.name.split("_")[0] for p in runs.glob("*/submitit/*_submitted.pkl")}
        if jobs:
            subprocess.run(["scancel", *sorted(jobs)], capture_output=True, timeout=60)


def grid_run(path: Path, runs: Path, *args: str) -> subprocess.Popen:
    """`grid run` as a user types it, in the background; .communicate() for its output."""
    proc = subprocess.Popen([sys.executable, "-m", "harness", "grid", "run", str(path), "--scale", "smoke",
                             "--runs-dir", str(runs), *args], cwd=REPO, env={**os.environ, **ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append((proc, runs))
    return proc


def on_slurm(path: Path, runs: Path, workers: int = 2, slurm: str = "", *args: str) -> subprocess.Popen:
    opts = ",".join(o for o in ("slurm_partition=debug,timeout_min=20,cpus_per_task=1", slurm) if o)
    return grid_run(path, runs, "--backend", "slurm", "--workers", str(workers), "--wait", "--slurm", opts, *args)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def statuses(folder: Path) -> list[tuple[str, int, str, int]]:
    return [(r["arm"], r["seed"], r["status"], r["attempts"]) for r in CellStore(folder / "grid.sqlite").rows()]


def squeue() -> list[str]:
    r = subprocess.run(["squeue", "-h", "-r", "-o", "%i %j %T %M %R"], capture_output=True, text=True, timeout=60)
    return r.stdout.strip().splitlines()


def array_id(folder: Path, timeout: float = 120) -> str:
    """The array's job id (a plain job id for one worker: submitit makes no array of one), from submitit's pickles
    (written before sbatch returns)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ids = {p.name.split("_")[0] for p in (folder / "submitit").glob("*_submitted.pkl")}
        if ids:
            return ids.pop()
        time.sleep(0.2)
    raise AssertionError(f"no submitit job in {folder / 'submitit'}")


def task_logs(folder: Path, array: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((folder / "submitit").glob(f"{array}_*_log.*"))}


def claims(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[grid ") and " seed " in line and "attempt" in line]


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; squeue: {squeue()}")


def final_metrics(run_dir: Path) -> dict:
    r = json.loads((run_dir / "result.json").read_text())
    return {k: r[k] for k in ("steps", "final_train_loss", "final_valid_loss", "final_yardstick_loss")}


def losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(float(r["step"])): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def last_logged_step(run_dir: Path) -> int:
    return max(losses(run_dir), default=0) if (run_dir / "metrics.csv").is_file() else 0


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.ckpt"))


def test_smoke_grid_as_an_array_of_two_concurrent_tasks_runs_every_cell_once(tmp_path, slurm_conf):
    path = experiment(tmp_path / "array.yaml", {"data.input_format": FORMATS}, {"optim.max_steps": 10}, seeds=(0, 1))
    proc = on_slurm(path, tmp_path / "runs", workers=2)
    folder = tmp_path / "runs" / "array-smoke"
    array = array_id(folder)
    seen: set[str] = set()
    most_running = 0
    while proc.poll() is None:  # the queue as the array runs: both tasks at once, each on the node
        lines = [line for line in squeue() if line.startswith(f"{array}_")]
        running = [line for line in lines if " RUNNING " in line]
        if len(running) > most_running:
            print("squeue:", *running, sep="\n  ")
        most_running = max(most_running, len(running))
        seen.update(line.split()[0] for line in running)
        time.sleep(0.5)
    code, out, err = finish(proc)
    assert code == 0, err[-3000:]
    assert most_running == 2 and seen == {f"{array}_0", f"{array}_1"}, seen
    rows = statuses(folder)
    assert len(rows) == 4 and all(r[2:] == ("finished", 1) for r in rows), rows
    assert "finished 4" in out and re.search(r"^kind +arm +seed status", out, re.M), out  # the status table
    logs = task_logs(folder, array)
    assert sum(len(claims(t)) for t in logs.values()) == 4, logs  # four claims in all: every cell exactly once
    assert all(claims(t) for name, t in logs.items() if name.endswith("_log.out")), logs  # both tasks worked


SIGNALS = {"gentle": ["scancel", "-s", "USR2"], "hard": ["scontrol", "requeue"]}


def test_wait_exits_1_naming_the_failed_cell_and_the_array_logs(tmp_path, slurm_conf):
    """A cell whose fine-tuning fails (an SST-2 label outside {0, 1}, which only reading the file finds): `--wait`
    ends as the local backends do, exit 1 naming the cell, its error and the array task's log."""
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    (glue / "SST-2" / "train.tsv").write_text("sentence\tlabel\na good film\t1\na bad film\t7\n")
    (glue / "SST-2" / "dev.tsv").write_text("sentence\tlabel\na good film\t1\n")
    path = experiment(tmp_path / "fails.yaml", {"data.input_format": ["full_sentences"]}, {"optim.max_steps": 5},
                      finetune={"tasks": ["sst2"], "protocol": "smoke"}, single_arm=True)
    code, out, err = finish(on_slurm(path, tmp_path / "runs", 1, "", "--data-dir", str(glue)))
    folder = tmp_path / "runs" / "fails-smoke"
    assert code == 1 and "error: 1 cell(s) failed" in err, (code, err[-3000:])
    line = next(x for x in err.splitlines() if x.startswith("  run full_sentences seed 0: "))
    assert "train.tsv:3: label '7' is not one of ['0', '1']" in line, line
    (log,) = folder.glob(line.rsplit("[log: ", 1)[1].removesuffix("]").removeprefix(f"{folder}/"))
    assert "run full_sentences seed 0 failed" in log.read_text(), line
    assert re.search(r"^run +full_sentences +0 failed", out, re.M), out  # the status table, before the error


@pytest.fixture(scope="module")
def preempted(tmp_path_factory, slurm_conf) -> dict:
    """The LONG cell three times at once: uninterrupted under the local backend, and as two 1-task arrays, one
    pre-empted gently, one hard, once it has logged a step past a checkpoint at step >= 20 (in parallel: each costs
    two process starts and a requeue delay, mostly waiting). Returns, per pre-emption: the run folder, the step
    logged and the checkpoints there when it was signalled, the squeue lines before and after, the resume step(s),
    the logs."""
    try:
        return _preempt_both(tmp_path_factory.mktemp("preempt"))
    finally:
        _stop_started()


def _preempt_both(tmp: Path) -> dict:
    path = experiment(tmp / "long.yaml", {"data.input_format": ["full_sentences"]}, LONG, single_arm=True)
    reference = grid_run(path, tmp / "uninterrupted")
    procs = {name: on_slurm(path, tmp / name, workers=1) for name in SIGNALS}
    folder = {name: tmp / name / "long-smoke" for name in SIGNALS}
    run_dir = {name: folder[name] / "full_sentences" / "seed_0" for name in SIGNALS}
    jobs = {name: array_id(folder[name]) for name in SIGNALS}  # one task: a plain job, no array
    info: dict[str, dict] = {}
    deadline = time.time() + 300
    while len(info) < len(SIGNALS) and time.time() < deadline:
        for name in set(SIGNALS) - set(info):
            ckpts = checkpoint_steps(run_dir[name])  # signalled between checkpoints: past step 20's
            logged = last_logged_step(run_dir[name])  # read after the checkpoints: a later one is not missed
            if ckpts and ckpts[-1] >= 20 and logged > ckpts[-1]:
                info[name] = {"logged_step": logged, "checkpoints": ckpts,
                              "squeue": [line for line in squeue() if line.split()[0] == jobs[name]],
                              "finished_before": (run_dir[name] / "result.json").exists()}
                subprocess.run([*SIGNALS[name], jobs[name]], check=True)
        time.sleep(0.2)
    assert len(info) == len(SIGNALS), f"no checkpoint at step 20 in 300 s: {info}; squeue: {squeue()}"
    while not all("requeued_squeue" in i for i in info.values()) and time.time() < deadline + 60:
        for name, i in info.items():
            back = [line for line in squeue() if line.split()[0] == jobs[name] and " PENDING " in line]
            if back and "requeued_squeue" not in i:
                i["requeued_squeue"] = back
        time.sleep(0.2)
    for name, proc in [*procs.items(), ("uninterrupted", reference)]:
        code, out, err = finish(proc)
        assert code == 0, (name, err[-3000:])
    for name, i in info.items():
        i["run_dir"] = run_dir[name]
        i["log"] = "\n".join(task_logs(folder[name], jobs[name]).values())
        i["resume_steps"] = [int(s) for s in re.findall(r"resuming from step (\d+)", i["log"])]
        i["job"] = jobs[name]
    info["uninterrupted"] = {"metrics": final_metrics(tmp / "uninterrupted" / "long-smoke" / "full_sentences" /
                                                      "seed_0")}
    return info


def _assert_resumed_with_the_same_metrics(info: dict, uninterrupted: dict) -> None:
    run_dir = info["run_dir"]
    print(f"signalled at logged step {info['logged_step']} (checkpoints {info['checkpoints']}); squeue then: "
          f"{info['squeue']}; after: {info.get('requeued_squeue')}; resumed from step(s) {info['resume_steps']}")
    assert not info["finished_before"] and info.get("requeued_squeue"), info["squeue"]
    assert statuses(run_dir.parents[1]) == [("full_sentences", 0, "finished", 2)]  # claimed before and after requeue
    (resume,) = info["resume_steps"]
    assert max(info["checkpoints"]) <= resume < LONG["optim.max_steps"], info
    steps = list(losses(run_dir))
    assert len(steps) == len(set(steps)) and steps[-1] == LONG["optim.max_steps"]  # no step logged twice
    got, want = final_metrics(run_dir), uninterrupted["metrics"]
    print(f"final metrics after pre-emption: {got}\nuninterrupted:                  {want}")
    assert got["steps"] == want["steps"] == LONG["optim.max_steps"]
    for key in ("final_train_loss", "final_valid_loss", "final_yardstick_loss"):
        assert got[key] == pytest.approx(want[key], abs=1e-5), key


def test_gentle_preemption_usr2_checkpoints_requeues_and_the_cell_resumes(preempted):
    """USR2 is what SLURM sends before a time limit or pre-emption (submitit's `--signal=USR2@90`): the cell runs on
    to the end of its optimizer step, saves last.ckpt and goes back to pending; then submitit calls
    SubmititWorker.checkpoint, requeues the task with `scontrol requeue` and exits; the requeued task claims the cell
    again and resumes at that step."""
    info = preempted["gentle"]
    assert "Caught signal SIGUSR2" in info["log"] and f"Requeued job {info['job']}" in info["log"], info["log"]
    # The cell saved last.ckpt at the end of the step it was in when signalled, past its last periodic checkpoint,
    # and the requeued task resumed exactly there.
    stopped = [int(s) for s in re.findall(r"stopped at step (\d+), saved last\.ckpt", info["log"])]
    print(f"saved at the signal: step(s) {stopped}")
    assert stopped == info["resume_steps"] and stopped[0] >= info["logged_step"] > max(info["checkpoints"]), info
    _assert_resumed_with_the_same_metrics(info, preempted["uninterrupted"])


def test_hard_preemption_scontrol_requeue_resumes_from_the_last_checkpoint(preempted):
    """`scontrol requeue`: TERM (submitit ignores it), KILL KillWait later, the task back in the queue as it was
    submitted; it reclaims the cell and resumes from its last checkpoint."""
    info = preempted["hard"]
    assert "Caught signal SIGUSR2" not in info["log"]
    _assert_resumed_with_the_same_metrics(info, preempted["uninterrupted"])


def test_scancel_the_array_then_grid_run_again_runs_only_the_missing_cells(tmp_path, slurm_conf):
    # Each cell must outlast scancel's grace (submitit ignores the TERM; srun waits up to 7 s, its log says, before its
    # KILL), or the cells running at the scancel finish in it and the next ones too: at 60 steps (~4 s a cell on a
    # quiet core) every cell did, and the array ended with nothing left to resume.
    path = experiment(tmp_path / "cancel.yaml", {"data.input_format": FORMATS}, {"optim.max_steps": 240},
                      seeds=(0, 1))
    folder = tmp_path / "runs" / "cancel-smoke"
    first = on_slurm(path, tmp_path / "runs", workers=2)
    array = array_id(folder)
    wait_for(lambda: CellStore(folder / "grid.sqlite").counts()["finished"] >= 1, 240, "a finished cell")
    subprocess.run(["scancel", array], check=True)
    code, out, err = finish(first)
    assert code == 1 and f"SLURM array {array} ended with" in err, (code, err[-3000:])  # --wait saw it end early
    done = {(r["arm"], r["seed"]): Path(r["run_dir"], "result.json").stat().st_mtime
            for r in CellStore(folder / "grid.sqlite").rows() if r["status"] == "finished"}
    missing = [r for r in statuses(folder) if r[2] != "finished"]
    print(f"after scancel: {len(done)} cell(s) finished, left: {missing}")
    assert missing, "every cell finished before scancel: nothing left to test"

    again = on_slurm(path, tmp_path / "runs", workers=2)
    code, out, err = finish(again)
    assert code == 0, err[-3000:]
    arrays = {p.name.split("_")[0] for p in (folder / "submitit").glob("*_submitted.pkl")}
    (second,) = arrays - {array}
    reran = [line for t in task_logs(folder, second).values() for line in claims(t)]
    assert len(reran) == len(missing), reran  # only the cells left, each once
    rows = statuses(folder)
    assert all(r[2] == "finished" for r in rows), rows
    for (arm, seed), mtime in done.items():  # finished before scancel: not run again
        row = next(r for r in CellStore(folder / "grid.sqlite").rows() if (r["arm"], r["seed"]) == (arm, seed))
        assert row["attempts"] == 1 and Path(row["run_dir"], "result.json").stat().st_mtime == mtime


def test_optuna_trials_from_two_array_tasks_share_postgresql(tmp_path, slurm_conf, postgres_url):
    import optuna

    path = experiment(tmp_path / f"pgslurm{os.getpid()}.yaml", {"data.input_format": FORMATS},
                      {"optim.max_steps": 30}, seeds=(0, 1), tune={"trials": 2, "tokens": 6000})
    folder = tmp_path / "runs" / f"pgslurm{os.getpid()}-smoke"
    proc = on_slurm(path, tmp_path / "runs", 2, "", "--optuna-storage", postgres_url)
    code, out, err = finish(proc, timeout=420)
    try:
        assert code == 0, err[-3000:]
        rows = CellStore(folder / "grid.sqlite").rows()
        assert sorted((r["kind"], r["status"]) for r in rows).count(("run", "finished")) == 4
        assert all(r["status"] in ("finished", "pruned") and r["attempts"] == 1 for r in rows), rows
        logs = task_logs(folder, array_id(folder))
        tune_claims = {name: [c for c in claims(t) if "] tune " in c] for name, t in logs.items()
                       if name.endswith("_log.out")}
        assert sum(map(len, tune_claims.values())) == 4 and all(tune_claims.values()), tune_claims  # both tasks
        for arm in FORMATS:
            study = optuna.load_study(study_name=f"{folder.name}/{arm}", storage=postgres_url)
            assert len(study.trials) == 2
            best = study.best_trial.params["optim.peak_lr"]
            for seed in (0, 1):
                cell = json.loads((folder / arm / f"seed_{seed}" / "cell.json").read_text())
                assert cell["nuisance"]["optim.peak_lr"] == pytest.approx(best)
    finally:
        for arm in FORMATS:
            try:
                optuna.delete_study(study_name=f"{folder.name}/{arm}", storage=postgres_url)
            except KeyError:
                pass


def test_ddp_cell_in_an_array_task_trains_exactly_like_the_local_two_process_run(tmp_path, slurm_conf):
    """A 2-device cell (gloo on CPU) inside a one-task array job launches its own 2 ranks (runner._without_slurm):
    its loss curve equals the same cell's under the local backend, step for step."""
    overrides = {"train.devices": 2, "optim.batch_size": 16, "optim.micro_batch_size": 8, "optim.max_steps": 6,
                 "train.log_every": 1, "train.val_every": 1000, "train.precision": "32", "model.dropout": 0.0}
    path = experiment(tmp_path / "ddp.yaml", {"data.input_format": ["full_sentences"]}, overrides, single_arm=True)
    local = grid_run(path, tmp_path / "local")
    slurm = on_slurm(path, tmp_path / "slurm", 1, "cpus_per_task=2")
    for name, proc in (("local", local), ("slurm", slurm)):
        code, out, err = finish(proc)
        assert code == 0, (name, err[-3000:])
    a = losses(tmp_path / "local" / "ddp-smoke" / "full_sentences" / "seed_0")
    b = losses(tmp_path / "slurm" / "ddp-smoke" / "full_sentences" / "seed_0")
    print(f"loss curve, local DDP: {a}\nloss curve, DDP under SLURM: {b}")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    system = json.loads((tmp_path / "slurm" / "ddp-smoke" / "full_sentences" / "seed_0" / "system.json").read_text())
    assert system["devices"] == 2


def test_data_prepare_runs_its_shards_as_a_job_array(tmp_path, slurm_conf):
    """`data prepare --backend slurm` on tiny in shards of 0.3 MB: the splitting and the encoding each go out as a job
    array of five tasks, two at a time, and the prepared files are those of one process on this machine."""
    from harness.config import load_config
    from harness.data.pipeline import prepare
    from harness.files import cache_root

    reference = prepare(load_config(TINY).data, workers=1)  # in the session's cache
    cache = tmp_path / "cache"  # on the one node's disk, which its jobs share
    cache.mkdir()
    (cache / "downloads").symlink_to(cache_root() / "downloads")
    command = [sys.executable, "-m", "harness", "data", "prepare", "--config", TINY, "--backend", "slurm",
               "--workers", "2", "--shard-mb", "0.3", "--slurm", "slurm_partition=debug,timeout_min=20,cpus_per_task=1"]
    try:
        r = subprocess.run(command, cwd=REPO, env={**os.environ, **ENV, "HARNESS_CACHE": str(cache)},
                           capture_output=True, text=True, timeout=600)
    finally:  # a failed run leaves no task of its arrays in the queue
        jobs = {p.name.split("_")[0] for p in cache.glob("data-prepare/submitit/*_submitted.pkl")}
        if jobs:
            subprocess.run(["scancel", *sorted(jobs)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("5 shard(s) submitted as job array(s)") == 2  # split, then encode
    out = next((cache / "binarized").glob("*/meta.json")).parent
    names = ["tokenizer.json", *(f"{s}.{p}" for s in ("train", "valid") for p in ("tokens.bin", "sentences.npy",
                                                                               "documents.npy", "size_keys.npy"))]
    assert {n: (out / n).read_bytes() for n in names} == {n: (reference.dir / n).read_bytes() for n in names}
