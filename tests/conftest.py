"""Test session settings: a repo-local data cache (ignored by git), offline W&B and HF."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HARNESS_CACHE", str(REPO / ".cache" / "harness"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
