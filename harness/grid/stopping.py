"""Stopping a grid on SIGTERM or SIGINT: every process `grid run` started exits within STOP_S, and the cells they held
go back to pending at once, so a re-run (or another worker) resumes them from their last checkpoint.

The chain, each link stopping the next by PID, never by name:
  - `grid run` with --workers N: its workers run in sessions of their own (a terminal's Ctrl+C reaches only
    `grid run`), and it forwards the stop to each worker as SIGINT, waits WORKER_GRACE_S, then SIGKILLs each worker's
    process group (its DataLoader workers and DDP ranks with it) and hands back any cell a killed worker still held;
  - a worker (or `grid run` itself with one worker) raises Interrupted: its cell is handed back to pending and the
    worker exits 128 + signal. A single-device pretraining cell first runs on to the end of its optimizer step, for at
    most STEP_WAIT_S, and saves checkpoints/last.ckpt there (StopAtStep); a step that would take longer is abandoned
    and the cell resumes from its last periodic checkpoint. Why SIGINT between the two: Lightning takes SIGTERM as
    its own and stops a fit after the current micro-batch, mid-accumulation, where no exact checkpoint can be saved,
    while SIGINT is left to us;
  - a multi-device cell's `python -m harness pretrain` runs in a session of its own too; the worker sends its rank 0
    SIGTERM, which Lightning's DDP launcher forwards to the other ranks, waits CHILD_GRACE_S, then SIGKILLs the group.
    Its ranks do not checkpoint on the signal (they would have to agree on a step first): the cell resumes from its
    last periodic checkpoint.
A `grid run` killed outright (kill -9, the OOM killer) can forward nothing: the kernel sends each of its workers the
SIGINT instead (`stop_with_parent`), so they stop as above and no worker trains on for nobody. The lease heartbeat is
a thread of the worker, so it stops with it. Under submitit (SLURM) SIGTERM stays submitit's,
and SubmititWorker routes submitit's pre-emption signal (SIGUSR2) through `on_signal` first: the cell stops at the
end of its step as above, then submitit requeues the task. A worker submitit ends otherwise hands its cell back all
the same (`work` releases it on any exit that is not the cell's own end).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Every process of the grid is gone STOP_S after the signal. The graces nest inside it with room for the kills, the
# store's release and interpreter exit on a loaded machine (measured on 2 busy cores: `grid run --workers 2` of tiny
# single-device cells stopped in 12 s; one worker with a 2-rank DDP cell on CPU in 13 s, and in 23.5 s once when its
# ranks used all of a 20 s grace):
STOP_S = 30.0
WORKER_GRACE_S = 20.0  # `grid run` waits this long for its workers, then kills their process groups
CHILD_GRACE_S = 10.0  # a worker waits this long for its DDP cell after SIGTERM, then kills its process group (its ranks
# do not checkpoint on the signal: waiting longer would buy a tidy exit, not progress)
STEP_WAIT_S = 8.0  # a single-device cell runs on this long at most to reach the end of its optimizer step
PARENT_ENV = "HARNESS_GRID_RUN_PID"  # set by `grid run` for the workers it starts: the process they must not outlive
_PR_SET_PDEATHSIG = 1  # prctl(2)


class Interrupted(BaseException):
    """SIGTERM or SIGINT reached a grid process: it hands its cell back to pending and exits with 128 + signum.
    A BaseException, so that no `except Exception` records it as the cell's failure."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class _State:
    signum: int | None = None  # the first stop signal received
    at = 0.0  # when (time.monotonic)
    deferred = False  # a single-device fit with StopAtStep is running: it stops itself at the end of its step
    raised = False  # Interrupted is on its way: later signals must not interrupt the clean-up


STATE = _State()


def on_signal(signum: int, frame) -> None:
    """The handler of a stop signal: raise Interrupted now, or, while StopAtStep runs a fit, note it for the end of
    the optimizer step. `stop_on_signals` installs it for SIGTERM and SIGINT, SubmititWorker for SIGUSR2."""
    if STATE.signum is None:
        STATE.signum, STATE.at = signum, time.monotonic()
    if STATE.deferred or STATE.raised:
        return
    STATE.raised = True
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within it, SIGTERM and SIGINT raise Interrupted in this process's main thread (deferred while StopAtStep runs
    a fit); the previous handlers come back after it (tests call the CLI in-process)."""
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        STATE.signum, STATE.deferred, STATE.raised = None, False, False


def stop_with_parent() -> None:
    """In a worker that `grid run` started (PARENT_ENV names it): have the kernel send this process SIGINT, the stop
    `grid run` would forward, when `grid run` dies, even by kill -9 (Linux's PR_SET_PDEATHSIG; elsewhere nothing). A
    worker started by hand keeps running when its shell ends. Call it with the stop handlers installed."""
    parent = os.environ.pop(PARENT_ENV, None)  # popped: the worker's own children have another parent
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
    if os.getppid() != int(parent):  # `grid run` died before the kernel was asked
        os.kill(os.getpid(), signal.SIGINT)


def interrupted_by(exc: BaseException) -> Interrupted | None:
    """The Interrupted that `exc` stands for: itself, or Lightning's SIGTERMException (a SystemExit raised when
    SIGTERM stops a fit) once a stop signal was received; None for anything else."""
    if isinstance(exc, Interrupted):
        return exc
    if STATE.signum is not None and isinstance(exc, (SystemExit, KeyboardInterrupt)):
        return Interrupted(STATE.signum)
    return None


def stop_at_step(run_dir: Path):
    """The Lightning callback for a single-device pretraining cell of a grid worker: once a stop signal is received,
    it raises Interrupted at the end of the current optimizer step, after saving checkpoints/last.ckpt there (written
    to a temporary name, then renamed: a kill mid-write leaves the previous one); where the step does not end within
    STEP_WAIT_S, after the current micro-batch without saving. Lightning is imported here, not with this module."""
    import lightning.pytorch as L

    class StopAtStep(L.Callback):
        def __init__(self) -> None:
            self.ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
            self.step = -1

        def on_fit_start(self, trainer, pl_module) -> None:
            STATE.deferred = STATE.signum is None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.step = trainer.global_step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if STATE.signum is None:
                return
            if trainer.global_step != self.step:  # this micro-batch ended an optimizer step
                tmp = self.ckpt.with_name(".last.ckpt.part")  # not *.ckpt: never read as a checkpoint
                trainer.save_checkpoint(tmp)
                os.replace(tmp, self.ckpt)
                print(f"{run_dir}: stopped at step {trainer.global_step}, saved {self.ckpt.name}", flush=True)
            elif time.monotonic() - STATE.at < STEP_WAIT_S:
                return
            self._stop()

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            if STATE.signum is not None:  # the step before validation was checkpointed (val_every) or is redone
                self._stop()

        def on_fit_end(self, trainer, pl_module) -> None:
            STATE.deferred = False

        def on_exception(self, trainer, pl_module, exception) -> None:
            STATE.deferred = False

        @staticmethod
        def _stop() -> None:
            STATE.deferred, STATE.raised = False, True
            raise Interrupted(STATE.signum)

    return StopAtStep()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty: every member exited


def stop_processes(procs: list[subprocess.Popen], signum: int, grace_s: float) -> None:
    """Send `signum` to each process still running, wait up to grace_s for all of them, then SIGKILL the process group
    of each (every one was started with start_new_session=True, so its group is its own and holds its children)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        _kill_group(p.pid)  # stragglers, and children a graceful exit left behind
        p.wait()
