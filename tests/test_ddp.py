"""Data parallelism on CPU (gloo): two processes see disjoint halves of each step and train exactly like one process
accumulating the same two halves, and exactly like one process with micro-batch 2B: the loss is normalised per
optimizer step, by the masked tokens (NSP: sequences) of all micro-batches and ranks, so halves with unequal counts
weigh each token the same wherever it was computed.

Each run is this file executed as a script (`python tests/test_ddp.py OUT DEVICES MICRO FORMAT`): Lightning's DDP
launcher re-executes the same command for rank 1, and a callback records the sequences every rank trained on, each
micro-batch's masked tokens and sequences, and the first step's gradient.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
BATCH = 16  # sequences per optimizer step in both runs; one micro-batch per rank, so no accumulation
EXACT_TOL = 1e-5  # float summation order only
GRAD_TOL = 1e-6  # the first step's gradient, same weights and sequences however the step is cut


class Run(NamedTuple):
    losses: dict[int, float]  # step -> train/loss (MLM)
    nsp_losses: dict[int, float]  # step -> train/nsp_loss (NSP formats, else empty)
    ranks: list[dict[str, list[str]]]  # per rank: step -> hashes of the sequences it trained on
    counts: list[dict[str, list[list[int]]]]  # per rank: step -> [masked tokens, sequences] per micro-batch
    grads: dict[str, Any]  # parameter name -> step 1's gradient as the optimizer sees it (rank 0, after all-reduce)


def _run_script(out: Path, devices: int, micro: int, fmt: str) -> None:
    import lightning.pytorch as L
    import torch

    from harness.config import load_config
    from harness.pretrain import pretrain

    class RecordBatches(L.Callback):
        """Per rank: for each optimizer step, a hash of every sequence's (masked) tokens."""

        def __init__(self) -> None:
            self.steps: dict[int, list[str]] = {}
            self.counts: dict[int, list[list[int]]] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            for b in range(ids.size(0)):
                row = ids[b] if mask is None else ids[b][mask[b]]
                digest = hashlib.blake2b(row.numpy().tobytes(), digest_size=8).hexdigest()
                self.steps.setdefault(trainer.global_step + 1, []).append(digest)
            counts = [int((batch["labels"] != -100).sum()), ids.size(0)]
            self.counts.setdefault(trainer.global_step + 1, []).append(counts)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            if trainer.global_step == 0 and trainer.global_rank == 0:
                torch.save({n: p.grad for n, p in pl_module.named_parameters()}, out / "grads.pt")

        def on_train_end(self, trainer, pl_module) -> None:
            (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))
            (out / f"rank{trainer.global_rank}_counts.json").write_text(json.dumps(self.counts))

    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        f"train.runs_dir={out}", f"train.devices={devices}", f"optim.micro_batch_size={micro}",
        f"optim.batch_size={BATCH}", f"optim.max_steps={STEPS}", "optim.warmup_steps=2", "model.dropout=0.0",
        "train.log_every=1", "train.val_every=1000", "train.wandb=disabled", "train.num_workers=0",
        f"data.input_format={fmt}", "train.precision='32'",
    ])
    pretrain(cfg, callbacks=(RecordBatches(),))


def _launch(out: Path, devices: int, micro: int, fmt: str = "full_sentences") -> Run:
    import torch

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, str(out), str(devices), str(micro), fmt], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics,) = out.glob("*/*/seed_0/metrics.csv")
    with metrics.open() as f:
        rows = [r for r in csv.DictReader(f) if r["train/loss"]]
    return Run(losses={int(r["step"]): float(r["train/loss"]) for r in rows},
               nsp_losses={int(r["step"]): float(r["train/nsp_loss"]) for r in rows if r.get("train/nsp_loss")},
               ranks=[json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)],
               counts=[json.loads((out / f"rank{r}_counts.json").read_text()) for r in range(devices)],
               grads=torch.load(out / "grads.pt"))


def _assert_same_training(a: Run, b: Run) -> None:
    """Every step's logged losses agree to EXACT_TOL, and the first step's gradients to GRAD_TOL."""
    assert sorted(a.losses) == sorted(b.losses) == list(range(1, STEPS + 1))
    assert sorted(a.nsp_losses) == sorted(b.nsp_losses)
    for step in range(1, STEPS + 1):
        assert abs(a.losses[step] - b.losses[step]) < EXACT_TOL, (step, a.losses[step], b.losses[step])
        if step in a.nsp_losses:
            assert abs(a.nsp_losses[step] - b.nsp_losses[step]) < EXACT_TOL, (step, a.nsp_losses, b.nsp_losses)
    assert a.grads.keys() == b.grads.keys()
    for name, grad in a.grads.items():
        assert (grad - b.grads[name]).abs().max().item() < GRAD_TOL, name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """1 rank x 2B, 1 rank x B accumulating 2, 2 ranks x B: the same 16 sequences per step."""
    one = _launch(tmp_path_factory.mktemp("one_rank"), devices=1, micro=BATCH)
    accumulated = _launch(tmp_path_factory.mktemp("one_rank_accumulating"), devices=1, micro=BATCH // 2)
    two = _launch(tmp_path_factory.mktemp("two_ranks"), devices=2, micro=BATCH // 2)
    return one, accumulated, two


def test_ranks_see_disjoint_halves_of_each_step(runs):
    single, rank0, rank1 = runs[0].ranks[0], *runs[2].ranks
    assert sorted(single, key=int) == sorted(rank0, key=int) == sorted(rank1, key=int) == [str(s) for s in
                                                                                           range(1, STEPS + 1)]
    for step in single:
        a, b = rank0[step], rank1[step]
        assert len(a) == len(b) == BATCH // 2
        assert not set(a) & set(b), f"step {step}: ranks share sequences"
        assert sorted(a + b) == sorted(single[step]), f"step {step}: the two ranks together differ from one rank"


def test_two_ranks_train_exactly_like_one_rank_accumulating_the_same_halves(runs):
    _, accumulated, two = runs
    _assert_same_training(accumulated, two)


def test_two_ranks_train_exactly_like_one_rank_with_twice_the_micro_batch(runs):
    one, _, two = runs
    rank0, rank1 = two.counts
    assert any(rank0[s][0][0] != rank1[s][0][0] for s in rank0)  # the halves' masked-token counts differ
    _assert_same_training(one, two)


def test_nsp_step_on_two_ranks_accumulating_equals_one_micro_batch(tmp_path_factory):
    """SENTENCE-PAIR+NSP fills steps to a token budget, so its 4 micro-batches (2 ranks x 2) differ in sequences
    and masked tokens: both losses must still weigh every token and every pair the same."""
    one = _launch(tmp_path_factory.mktemp("nsp_one"), devices=1, micro=BATCH, fmt="sentence_pair_nsp")
    two = _launch(tmp_path_factory.mktemp("nsp_two"), devices=2, micro=BATCH // 4, fmt="sentence_pair_nsp")
    micro = [c for rank in two.counts for c in rank["1"]]
    assert len(micro) == 4 and [sum(c) for c in zip(*micro)] == one.counts[0]["1"][0]
    assert len({m for m, _ in micro}) > 1 and len({n for _, n in micro}) > 1, micro
    _assert_same_training(one, two)


if __name__ == "__main__":
    _run_script(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
