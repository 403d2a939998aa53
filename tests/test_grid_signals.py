"""SIGTERM to `grid run`: every process it started is gone within 30 s, its cells are pending at once, and a re-run
finishes the grid from their checkpoints. A kill -9 of `grid run` leaves no worker training either."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from harness.grid.runner import run_grid
from harness.grid.store import CellStore

REPO = Path(__file__).resolve().parents[1]
STOP_S = 30.0  # the promise of harness.grid.stopping
STEPS = 150


def write_experiment(path: Path, overrides: dict) -> Path:
    quick = {"optim.warmup_steps": 2, "train.log_every": 5, "train.num_workers": 0, "train.wandb": "disabled"}
    doc = {"study": path.stem, "table": 2, "base": str(REPO / "configs" / "tiny.yaml"),
           "scientific": {"data.input_format": ["full_sentences", "doc_sentences"]},
           "scales": {"smoke": {"overrides": {**quick, **overrides}, "seeds": [0]}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def grid_run(path: Path, runs: Path, *extra: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness", "grid", "run", str(path), "--scale", "smoke",
                             "--runs-dir", str(runs), *extra], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def descendants(pid: int) -> dict[int, float]:
    """Every process below `pid`, by PID with its start time (a PID reused later is another process)."""
    return {p.pid: p.create_time() for p in psutil.Process(pid).children(recursive=True)}


def alive(procs: dict[int, float]) -> list[int]:
    left = []
    for pid, started in procs.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


def running_cells(folder: Path) -> list[dict]:
    if not (folder / "grid.sqlite").is_file():
        return []
    return [r for r in CellStore(folder / "grid.sqlite").rows() if r["status"] == "running"]


def sigterm_and_check(proc: subprocess.Popen, folder: Path, workers: set[int]) -> tuple[str, dict[int, float]]:
    """SIGTERM to `grid run` mid-cell; returns its output and the processes it had started, all checked gone."""
    procs = descendants(proc.pid)
    assert workers <= set(procs), (workers, procs)  # the store's worker ids are processes of this grid
    t0 = time.time()
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=STOP_S + 30)
    took = time.time() - t0
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert took < STOP_S, f"stopped in {took:.1f} s"
    assert alive(procs) == [], f"left running: {alive(procs)}"
    print(f"SIGTERM to grid run {proc.pid}: exit {proc.returncode} after {took:.1f} s; its processes before the "
          f"signal {sorted(procs)} (workers per the store {sorted(workers)}); still alive after: {alive(procs)}")
    rows = CellStore(folder / "grid.sqlite").rows()
    assert [(r["status"], r["worker"]) for r in rows] == [("pending", None)] * len(rows)  # at once, no lease expiry
    return out, procs


@pytest.mark.slow  # two workers each importing Lightning, twice, on 2 shared cores: ~1-2 minutes
def test_sigterm_stops_every_worker_within_30_s_and_a_rerun_finishes_the_grid(tmp_path, one_thread):
    path = write_experiment(tmp_path / "sig.yaml", {"optim.max_steps": STEPS, "train.checkpoint_every": 20,
                                                    "train.val_every": STEPS})
    folder = tmp_path / "runs" / "sig-smoke"
    proc = grid_run(path, tmp_path / "runs", "--workers", "2", start_new_session=True)
    cells = [folder / arm / "seed_0" / "checkpoints" for arm in ("full_sentences", "doc_sentences")]
    # Mid-cell: both cells claimed, each with a periodic checkpoint, none finished.
    wait_for(lambda: len(running_cells(folder)) == 2 and all(any(c.glob("step_*")) for c in cells), 300,
             "both cells to run past their first checkpoint")
    workers = {int(r["worker"].rsplit(":", 1)[1]) for r in running_cells(folder)}
    out, _ = sigterm_and_check(proc, folder, workers)
    for c in cells:  # each stopped at the end of an optimizer step and checkpointed there, past its periodic ones
        step = torch.load(c / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
        periodic = max(int(p.stem.split("_")[1]) for p in c.glob("step_*.ckpt"))
        assert periodic <= step < STEPS and not (c.parent / "result.json").exists()
    for log in (folder / "logs").glob("worker_*.log"):
        assert "stopped at step" in log.read_text() and "pending again" in log.read_text()

    again = grid_run(path, tmp_path / "runs", "--workers", "2")
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    rows = CellStore(folder / "grid.sqlite").rows()
    assert [(r["status"], r["attempts"]) for r in rows] == [("finished", 2)] * 2
    logs = "".join(log.read_text() for log in (folder / "logs").glob("worker_*.log"))
    for c in cells:
        assert f"{c.parent}: resuming from step" in logs
        with (c.parent / "metrics.csv").open() as f:
            steps = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("train/loss")]
        assert len(steps) == len(set(steps)) and steps[-1] == STEPS  # the resumed run logged no step twice

    clean = run_grid(str(path), "smoke", str(tmp_path / "clean"))  # the same cells, never stopped
    for arm in ("full_sentences", "doc_sentences"):
        a, b = (json.loads((f / arm / "seed_0" / "result.json").read_text()) for f in (folder, clean))
        for key in ("steps", "tokens_seen", "final_train_loss", "final_valid_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (arm, key)


@pytest.mark.slow  # two workers importing Lightning on 2 shared cores: ~1 minute
def test_kill_9_of_grid_run_and_its_workers_stop_by_themselves_within_30_s(tmp_path, one_thread):
    """Nothing can forward a kill -9: the kernel sends each worker the SIGINT instead (stop_with_parent), so each stops
    at the end of its step as on a forwarded stop, hands its cell back, and no process is left training."""
    # Cells far longer than STOP_S (a worker that missed the signal would still be training), checkpointed early.
    path = write_experiment(tmp_path / "kill.yaml", {"optim.max_steps": 5000, "train.checkpoint_every": 20,
                                                     "train.val_every": 5000})
    folder = tmp_path / "runs" / "kill-smoke"
    proc = grid_run(path, tmp_path / "runs", "--workers", "2", start_new_session=True)
    cells = [folder / arm / "seed_0" / "checkpoints" for arm in ("full_sentences", "doc_sentences")]
    wait_for(lambda: len(running_cells(folder)) == 2 and all(any(c.glob("step_*")) for c in cells), 300,
             "both cells to run past their first checkpoint")
    procs = descendants(proc.pid)
    t0 = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    try:
        wait_for(lambda: alive(procs) == [], STOP_S, "every process of the grid to end by itself")
    finally:  # a failed test leaves nothing training either
        for pid in alive(procs):
            os.kill(pid, signal.SIGKILL)
    print(f"kill -9 of grid run {proc.pid}: its processes {sorted(procs)} all ended {time.time() - t0:.1f} s later")
    rows = CellStore(folder / "grid.sqlite").rows()
    assert [(r["status"], r["worker"]) for r in rows] == [("pending", None)] * len(rows)
    for log in (folder / "logs").glob("worker_*.log"):
        assert "stopped at step" in log.read_text() and "pending again" in log.read_text()


@pytest.mark.slow  # a 2-process DDP cell on CPU (gloo) under `grid run`: ~1 minute on 2 cores
def test_sigterm_stops_a_ddp_cells_ranks_within_30_s(tmp_path):
    # One worker (grid run itself), whose cell runs as `python -m harness pretrain` with 2 ranks: the worker stops
    # rank 0 (Lightning forwards the signal to rank 1), then kills the cell's process group when they linger.
    path = write_experiment(tmp_path / "ddp.yaml", {"optim.max_steps": 5000, "train.checkpoint_every": 10,
                                                    "train.val_every": 5000, "train.devices": 2,
                                                    "optim.micro_batch_size": 4})
    doc = yaml.safe_load(path.read_text())
    doc["scientific"] = {"data.input_format": ["full_sentences"]}
    doc["single_arm"] = True  # one cell: a one-arm grid has to say so
    path.write_text(yaml.safe_dump(doc))
    folder = tmp_path / "runs" / "ddp-smoke"
    proc = grid_run(path, tmp_path / "runs", start_new_session=True)
    ckpt = folder / "full_sentences" / "seed_0" / "checkpoints"
    wait_for(lambda: any(ckpt.glob("step_*")), 300, "the DDP cell's first checkpoint")
    ranks = descendants(proc.pid)
    assert len([pid for pid in ranks if "pretrain" in " ".join(psutil.Process(pid).cmdline())]) == 2  # rank 0 and 1
    out, _ = sigterm_and_check(proc, folder, set())
    assert not (ckpt.parent / "result.json").exists()
