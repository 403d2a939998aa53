"""A stored loss curve catches silent changes to what training computes (as torchtitan's tests/assets/losses/).

tests/assets/loss_curve_tiny.json holds the first 50 training losses (train/loss, logged every step) of
configs/tiny.yaml on the tiny corpus: fp32 (train.precision='32'), one torch thread, the config's dropout and its own
schedule (200 steps, warmup 20), stopped after step 50 (train.stop_at_step), so the curve covers the warmup and the
start of the decay exactly as the config runs them. Every step must match within TOLERANCE.

TOLERANCE = 1e-3 (absolute, per step): on CPU in fp32 with one thread two fresh runs of this setting agree to
0.0 (measured: identical losses, max |diff| 0.0 over the 50 steps), so anything above float noise is a change; yet
the bound is far below what a small change of the masking does: data.mask_prob 0.16 instead of 0.15 moves the curve
by up to 0.29 (step 43; 0.018 at step 1) and by more than 1e-3 at 49 of the 50 steps. 1e-3 leaves room for another
BLAS or CPU kernel (fp32 rounding, ~1e-6 relative on losses ~7) without letting a change of masking, data order,
initialisation, schedule or loss normalisation through.

The losses depend on the tokens, so the file is keyed to the packages that make them (the corpus is pinned by
sha256): with another version of tokenizers or nltk the test skips, saying so, rather than fail. To re-record the
curve on purpose (a deliberate change of what training computes, or new package versions), run
`UPDATE_LOSS_CURVE=1 python -m pytest tests/test_loss_curve.py` and commit the file with the reason.
"""

from __future__ import annotations

import csv
import importlib.metadata
import os
import platform
from pathlib import Path

import pytest
import torch

from harness.config import load_config
from harness.files import read_json, write_json
from harness.pretrain import pretrain, run_dir_of

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
ASSET = REPO / "tests" / "assets" / "loss_curve_tiny.json"
STEPS = 50
SETTINGS = ["train.precision='32'", "train.log_every=1", f"train.stop_at_step={STEPS}"]
TOKEN_PACKAGES = ("tokenizers", "nltk")  # train the tokenizer and split the sentences: they shape the tokens
TOLERANCE = 1e-3


def loss_curve(runs_dir: Path, *extra: str) -> list[float]:
    """train/loss at steps 1..STEPS of tiny.yaml under SETTINGS (+ extra), on one thread."""
    cfg = load_config(TINY, [f"train.runs_dir={runs_dir}", "train.wandb=disabled", *SETTINGS, *extra])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(cfg)
    finally:
        torch.set_num_threads(threads)
    with (run_dir_of(cfg) / "metrics.csv").open() as f:
        losses = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    assert sorted(losses) == list(range(1, STEPS + 1))
    return [losses[step] for step in range(1, STEPS + 1)]


def test_first_50_losses_of_tiny_match_the_stored_curve(tmp_path):
    versions = {name: importlib.metadata.version(name) for name in TOKEN_PACKAGES}
    if os.environ.get("UPDATE_LOSS_CURVE") == "1":
        write_json(ASSET, {
            "what": f"train/loss at steps 1..{STEPS} of configs/tiny.yaml with these overrides, one torch thread; "
                    "tests/test_loss_curve.py",
            "config": "configs/tiny.yaml", "overrides": SETTINGS, "torch_threads": 1,
            "versions": versions,  # the test runs only with these
            "recorded_with": {"torch": torch.__version__, "python": platform.python_version(),
                              "machine": platform.machine()},  # for the record; not checked
            "losses": loss_curve(tmp_path),
        })
        pytest.skip(f"re-recorded {ASSET.relative_to(REPO)}: review its diff and commit it with the reason")
    stored = read_json(ASSET)
    assert stored is not None, f"{ASSET} is missing; record it with UPDATE_LOSS_CURVE=1"
    if stored["versions"] != versions:
        pytest.skip(f"{ASSET.name} was recorded with {stored['versions']}, here {versions}: other tokens; "
                    "re-record with UPDATE_LOSS_CURVE=1")
    assert stored["overrides"] == SETTINGS
    losses = loss_curve(tmp_path)
    diffs = [abs(a - b) for a, b in zip(losses, stored["losses"], strict=True)]
    worst = max(range(STEPS), key=diffs.__getitem__)
    assert diffs[worst] <= TOLERANCE, (
        f"step {worst + 1}: loss {losses[worst]:.6f}, stored {stored['losses'][worst]:.6f} (|diff| {diffs[worst]:.2e} "
        f"> {TOLERANCE}); {sum(d > TOLERANCE for d in diffs)} of {STEPS} steps differ. A deliberate change: "
        "re-record with UPDATE_LOSS_CURVE=1")
