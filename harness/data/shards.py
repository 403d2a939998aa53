"""Shards: the units that data preparation caches, resumes and spreads over a SLURM job array.

A shard is a run of a corpus's documents holding about SHARD_BYTES of text. Two stages work shard by shard, each
shard's output independent of every other: sentence splitting (harness.data.corpus) and encoding
(harness.data.pipeline). An output is written under a temporary name and renamed when complete (`publish`), so a
killed worker never leaves a half shard visible, and a re-run does only the shards whose output is missing. The
shards' outputs are named by what they are made from, so any run that needs the same shard finds it.

`run_tasks` runs a stage's missing shards: here on `workers` cores (`local`), or as one job array through submitit, the
engine `grid run` uses (`slurm`; `submitit-local` runs the same jobs as local processes, for tests). An array task
uses the cores SLURM gave it (`--slurm cpus_per_task=N`). Inside a shard, `ordered_map` hands blocks of whole records
(`blocks`) to that many processes, one core each, and takes their results back in order.
"""

from __future__ import annotations

import fcntl
import itertools
import multiprocessing
import os
import shutil
import signal
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from harness.cluster import check_slurm, submitit_executor
from harness.errors import UserError
from harness.files import cache_root

# 128 MB of text: about two minutes of sentence splitting and encoding on one core here (~1 MB/s), so a killed run
# loses little and SLURM's start-up cost per task is small beside the work; 16 GB (the paper's BOOKS + WIKI) is 125
# shards and 160 GB 1,250: arrays of sensible size. Memory does not depend on it: every stage streams.
SHARD_BYTES = 128_000_000
MAX_ARRAY = 1000  # tasks per job array; SLURM's default MaxArraySize is 1001
# Inside a shard, work goes to a stage's processes in blocks of about this much text: ~1 s of splitting or encoding,
# far more than sending it costs; 4 blocks per process are in flight, so memory is bounded by the window.
BLOCK_BYTES = 1_000_000


@dataclass(frozen=True)
class Backend:
    """Where the per-shard stages run: `local` (this process, `workers` cores), `slurm` (a job array with at most
    `workers` tasks at a time and the submitit parameters in `slurm`) or `submitit-local`."""

    name: str = "local"
    workers: int = 1
    slurm: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a mistyped --slurm parameter, or --backend slurm on a machine without SLURM, fails now, before any work
        if self.name == "slurm":
            check_slurm(self.workers, self.slurm)  # creates nothing, not even the cache folder
        elif self.name != "local":
            self.executor()

    def executor(self):
        cluster = "local" if self.name == "submitit-local" else "slurm"
        return submitit_executor(cache_root() / "data-prepare", cluster, self.workers, self.slurm)


def temporary(path: Path) -> Path:
    """Where `path` is written before `publish`: beside it, unique to this process on this host."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def sweep(folder: Path) -> None:
    """Remove what killed processes of this host left under temporary names in `folder` (another host's are left: its
    processes cannot be seen from here)."""
    prefix = f".tmp-{socket.gethostname()}-"
    for path in folder.glob(f".*{prefix}*") if folder.is_dir() else ():
        pid = path.name.rpartition(prefix)[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def publish(tmp: Path, path: Path) -> None:
    """Rename the finished file or folder `tmp` to `path`. Where another worker published the same shard first (its
    bytes are the same), ours is dropped."""
    try:
        os.rename(tmp, path)
    except OSError:
        if not path.exists():
            raise
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing): concurrent prepares of the same data (DDP ranks, grid
    workers) wait for the first, then find its result, rather than sharing and removing each other's work. The
    kernel releases it when its process dies, even by kill -9."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


Task = tuple[Callable, tuple]  # fn(*args, workers=N) writes one shard's output and publishes it; args[0]: its input
# Shards of at least this share of the largest one run a process each (run_tasks): taken largest first as processes
# free up, the processes finish within about a quarter of a shard's time of each other.
EVEN = 0.75


def run_tasks(tasks: list[Task], what: str, backend: Backend, verbose: bool) -> None:
    """Run every task, which writes one shard's output, on `backend`; each is already known to be missing."""
    if not tasks:
        return
    if backend.name == "local":
        # The largest shards, a multiple of the workers of about one size (EVEN), each in a process of its own on one
        # core: no process then reads and writes the others' blocks. The rest (fewer, or smaller) one after another,
        # each on all the workers, in blocks: two shards of 38 and 12 MB on 2 workers take 25 MB's time, not 38.
        workers = backend.workers
        sized = sorted(((os.path.getsize(task[1][0]), task) for task in tasks), key=lambda s: -s[0])  # input bytes
        tasks = [task for _, task in sized]
        even = sum(size >= EVEN * sized[0][0] for size, _ in sized)
        whole = even - even % workers if workers > 1 else 0
        with tqdm(total=len(tasks), desc=what, unit="shard", disable=not verbose or len(tasks) < 2) as bar:
            for _ in ordered_map(_on_one_core, tasks[:whole], workers):
                bar.update()
            for fn, args in tasks[whole:]:
                fn(*args, workers=workers)
                bar.update()
        return
    executor = backend.executor()
    logs = Path(executor.folder)
    executor.update_parameters(name=f"harness-{what.replace(' ', '-')}")
    jobs = []
    for start in range(0, len(tasks), MAX_ARRAY):
        jobs += executor.map_array(_in_task, tasks[start:start + MAX_ARRAY])
    if verbose:
        print(f"{what}: {len(jobs)} shard(s) submitted as job array(s) {sorted({j.job_id.split('_')[0] for j in jobs})}"
              f"; logs in {logs}", flush=True)
    failed = []
    for job in tqdm(jobs, desc=what, unit="shard", disable=not verbose):
        try:
            job.result()
        except Exception as e:  # submitit re-raises the task's error, or reports a task SLURM killed
            failed.append(f"{job.job_id}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
    if failed:
        raise UserError(f"{what}: {len(failed)} of {len(jobs)} shard task(s) failed ({'; '.join(failed[:3])}); logs "
                        f"in {logs}; finished shards are kept, so a re-run does only these")


def _on_one_core(task: Task) -> None:
    fn, args = task
    fn(*args, workers=1)


def _in_task(task: Task) -> None:
    fn, args = task
    fn(*args, workers=len(os.sched_getaffinity(0)))  # processes on the cores SLURM gave this task


def blocks(path: Path, sep: bytes) -> Iterator[bytes]:
    """The file's bytes in consecutive blocks of about BLOCK_BYTES, each ending just after a `sep` (the last at the end
    of the file): whole records, for a worker to parse."""
    carry = b""
    with open(path, "rb") as f:
        while block := f.read(BLOCK_BYTES):
            data = carry + block
            cut = data.rfind(sep) + len(sep)
            if cut < len(sep):  # no separator yet: one record longer than a block
                carry = data
                continue
            yield data[:cut]
            carry = data[cut:]
    if carry:
        yield carry


_NOTHING = object()


def ordered_map(fn: Callable, items: Iterable, workers: int, initializer: Callable | None = None,
                initargs: tuple = ()) -> Iterator:
    """fn(item) for every item, in order: here when workers is 1, else on `workers` processes with at most 4 items per
    process in flight (Pool.imap would read every item ahead, so memory would grow with the input). Each process runs
    initializer(*initargs) first. Nothing to map starts no process."""
    if workers <= 1:
        if initializer:
            initializer(*initargs)
        yield from map(fn, items)
        return
    items = iter(items)
    first = next(items, _NOTHING)
    if first is _NOTHING:
        return
    # SIGTERM is held back while the workers fork, so none can get the pool's stop before it has its own handler
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pool = multiprocessing.Pool(workers, initializer=_start_worker, initargs=(initializer, initargs))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    with pool:
        items = itertools.chain([first], items)
        pending: deque = deque()
        for item in items:
            if len(pending) == 4 * workers:
                yield pending.popleft().get()
            pending.append(pool.apply_async(fn, (item,)))
        while pending:
            yield pending.popleft().get()


def _start_worker(initializer: Callable, initargs: tuple) -> None:
    # A forked worker inherits its parent's handlers; in a SLURM array task that is submitit's, which ignores SIGTERM,
    # and the pool stops its workers with SIGTERM: they would never end, and the task would hang at its last shard.
    # Until this line the parent's handler is in place (under `grid run`, harness.grid.stopping's), so ordered_map
    # forks with SIGTERM blocked: a stop sent before now waits, and ends the worker here. Without that, a pool stopped
    # as it started once left a worker alive and its parent waiting for it for good (tests/test_shards.py).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if initializer:
        initializer(*initargs)
