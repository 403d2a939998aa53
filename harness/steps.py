"""Training-step bookkeeping, in one place: what one optimizer step is, how its loss is normalised, and where a
resumed run picks up.

- **Accumulation.** A step is `accumulate` micro-batches (`OptimConfig.accumulation`) on each of `world_size` ranks.
  `StepBook.accumulate` is what the Trainer is given; the data module plans its steps by the same rule, and the book
  checks at fit start that both agree.
- **Loss normalisation.** A step's loss is the sum over all its masked tokens / their count, and the sum over its
  sequences / their count for NSP, whatever the split into micro-batches and ranks: `loss_denominators`.
- **Exact resume.** A resumed run replays the uninterrupted one: `StepBook` finds the newest readable checkpoint,
  checks it was made with this config, cuts metrics.csv back to its step, puts the step sampler at the next unseen
  micro-batch, and reseeds dropout per (seed, rank, step, micro-batch), so that nothing in between (validation,
  data-loader start-up, a restart) shifts a draw.

Lightning 2.6 restores the optimizer step from a checkpoint but not the position inside an epoch for a batch sampler
it does not know (ours plans whole steps), nor does it call set_epoch on one: both are done here, through public hooks.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch

from harness.config import CANNOT_RESUME, Config, flatten
from harness.errors import UserError

# A checkpoint resumes only a run with the same values of these (anything else, e.g. the W&B mode, may differ).
RESUME_FIELDS = ("data.", "model.", "optim.", "train.seed", "train.devices")


def loss_denominators(batch: dict, accumulate: int, world_size: int) -> tuple[float, float]:
    """(masked tokens, sequences) to divide this micro-batch's summed MLM and NSP losses by. The data module gives
    every micro-batch its step's totals over all micro-batches and ranks; Lightning divides the returned loss by
    `accumulate` and DDP averages gradients over ranks, so dividing by totals / (accumulate x world size) makes the
    step's gradient that of the sum over all its masked tokens / their count."""
    chunks = accumulate * world_size
    return max(batch["step_predicted"], 1) / chunks, batch["step_sequences"] / chunks


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the most steps: a kill between writing step_N.ckpt and last.ckpt leaves last.ckpt older.
    Lightning writes a checkpoint under a temporary name and renames it, so a kill cannot tear one: a file that cannot
    be read was damaged afterwards (a full disk, a copy cut short) and stops the run naming it, rather than the run
    starting over from step 0 and overwriting its metrics without a word."""
    best, best_step = None, -1
    for path in sorted(folder.glob("*.ckpt")):
        try:
            step = int(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["global_step"])
        except Exception as e:  # noqa: BLE001 - whatever torch raises, the advice is the same
            raise UserError(f"{path}: cannot read this checkpoint ({type(e).__name__}); {CANNOT_RESUME}") from None
        if step > best_step:
            best, best_step = path, step
    return best


def check_checkpoint(path: Path, cfg: Config) -> int:
    """The checkpoint's optimizer step, after checking it was made with this run's config."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # any unreadable file gets the same advice
        raise UserError(f"{path}: cannot read this checkpoint ({type(e).__name__}); delete it to restart the run"
                        ) from None
    saved = (ckpt.get("harness") or {}).get("config")
    if saved is None:
        raise UserError(f"{path}: not a checkpoint of this harness; use a new arm or delete the run folder")
    old, new = flatten(saved), flatten(cfg.to_dict())
    for key, value in new.items():
        if key.startswith(RESUME_FIELDS) and key in old and old[key] != value:
            raise UserError(f"{path}: checkpoint was made with a different config ({key}: {old[key]!r} vs "
                            f"{value!r}); use a new arm or delete the run folder")
    return int(ckpt["global_step"])


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop rows logged after the checkpoint, which the resumed run logs again."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], [r for r in reader if int(float(r["step"])) <= last_step]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _has_row(path: Path, step: int, key: str) -> bool:
    """Whether metrics.csv holds a value of `key` at `step`."""
    if not path.is_file():
        return False
    with path.open(newline="") as f:
        return any(int(float(r["step"])) == step and r.get(key) for r in csv.DictReader(f))


def _step_seed(*parts: int) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds are < 2**63


class StepBook(L.Callback):
    """The run's steps: `accumulate`, and where it resumes (`checkpoint`, `resume_step`; None for a fresh run),
    found when the book is made, before any rank writes into the run folder."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.seed = cfg.train.seed
        self.accumulate = cfg.optim.accumulation(cfg.train.devices)
        self.checkpoint = newest_checkpoint(Path(run_dir) / "checkpoints")
        self.resume_step = check_checkpoint(self.checkpoint, cfg) if self.checkpoint else None
        # A resumed run scores its checkpoint's step again where that is a validation step whose row metrics.csv
        # lacks (killed during the validation after the checkpoint). Every rank decides from the same file, before
        # rank zero cuts it back.
        self.revalidate = self.resume_step is not None and self.resume_step % cfg.train.val_every == 0 and not (
            _has_row(Path(run_dir) / "metrics.csv", self.resume_step, "val/loss"))
        self._expect: tuple[int, int] | None = None

    def start_metrics(self, path: Path) -> None:
        """Rank zero, before training: a resumed run's metrics.csv is cut back to the checkpoint; a run killed before
        its first checkpoint starts over, and its partial curve goes too."""
        if self.resume_step is None:
            path.unlink(missing_ok=True)
        else:
            truncate_metrics(path, self.resume_step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        if (trainer.accumulate_grad_batches, data.accumulate) != (self.accumulate, self.accumulate):
            raise RuntimeError(f"accumulation disagrees: the book says {self.accumulate} micro-batches per step, the "
                               f"trainer {trainer.accumulate_grad_batches}, the data module {data.accumulate}")
        sampler = data.train_sampler
        consumed = (self.resume_step or 0) * self.accumulate  # micro-batches of this rank
        epoch, start = divmod(consumed, len(sampler))  # every epoch has the same number of steps
        sampler.set_epoch(epoch)
        sampler.set_start(start)
        self._expect = (epoch, start) if self.resume_step else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.datamodule.train_sampler.set_epoch(trainer.current_epoch)  # Lightning's own call misses it

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._expect is not None:  # first batch after a resume: Lightning's counters must agree with ours
            if (trainer.current_epoch, batch_idx) != self._expect:
                raise RuntimeError(f"resume position mismatch: Lightning is at (epoch, micro-batch) "
                                   f"{(trainer.current_epoch, batch_idx)}, the sampler at {self._expect}")
            self._expect = None
        torch.manual_seed(_step_seed(self.seed, trainer.global_rank, trainer.global_step, batch_idx))
