"""Benchmarks that train many small things run them as processes of their own, two at a time on one thread each (one
per core, as `grid run --workers 2` runs cells), so that a candidate's CPU-seconds are its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def two_at_a_time(jobs: list[tuple[list[str], Path]], label: str) -> None:
    """Run `python ARGV` for each (ARGV, log file), OMP/MKL on one thread, two at a time. A failure is printed with its
    log and the others go on; whatever way this returns, the running ones are stopped by their PIDs, never by name."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    todo, running = list(jobs), []
    try:
        while todo or running:
            while todo and len(running) < 2:
                argv, log = todo.pop(0)
                print(f"{label}: {' '.join(argv)}", flush=True)
                with open(log, "w") as out:
                    running.append((subprocess.Popen([sys.executable, *argv], env=env, stdout=out,
                                                     stderr=subprocess.STDOUT), log))
            time.sleep(2)
            for p, log in [(p, log) for p, log in running if p.poll() is not None]:
                running.remove((p, log))
                if p.returncode:
                    print(f"{label}: {' '.join(p.args[1:])} failed (exit {p.returncode}); see {log}", flush=True)
    finally:
        for p, _ in running:
            p.terminate()
            p.wait()
