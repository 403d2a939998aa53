"""Test session settings (a repo-local data cache ignored by git, offline W&B and HF) and shared fixtures."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HARNESS_CACHE", str(REPO / ".cache" / "harness"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine every parallel op would wait
    for the other core (30 tiny training steps: 1 s on one thread, 28 s on two under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def lr_trace():
    """lr_trace(configure_optimizers() result, steps) -> the first param group's LR at each of steps + 1 steps."""

    def trace(optimizers: dict, steps: int) -> list[float]:
        optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
        lrs = []
        for _ in range(steps + 1):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return lrs

    return trace


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The CI's PostgreSQL (HARNESS_TEST_POSTGRES_URL, started by .ci/run), else one started here by .ci/postgres.sh
    on port 55433, so a session starts at most one; skips where no server binaries are installed."""
    url = os.environ.get("HARNESS_TEST_POSTGRES_URL")
    if not url:
        r = subprocess.run([str(REPO / ".ci" / "postgres.sh"), "55433"], capture_output=True, text=True)
        if r.returncode == 3:
            pytest.skip("no PostgreSQL server binaries; .ci/run installs them")
        assert r.returncode == 0, r.stderr
        url = r.stdout.strip().splitlines()[-1]
    return url
