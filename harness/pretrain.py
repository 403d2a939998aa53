"""Pretraining: a thin LightningModule (loss, AdamW, schedule) and the Trainer around it (precision, DDP,
checkpoints, loggers; the callbacks are in harness.callbacks, accumulation and exact resume in harness.steps),
writing one run folder per (study, arm, seed).

The run folder `runs/<study>/<arm>/seed_<k>/` is the data format the analysis layer reads:
  config.yaml      the resolved Config, written before training
  data.json        statistics of the prepared corpus
  system.json      device, precision, and the MFU denominator with where it came from
  tokenizer.json   copied from the prepared data
  metrics.csv      one row per logged step: train/* every train.log_every steps, val/* every train.val_every
  checkpoints/     last.ckpt (+ step_XXXXXXX.ckpt every train.checkpoint_every steps)
  wandb/           the W&B run (offline unless train.wandb=online)
  result.json      written last and atomically, only when training completed (status finished or diverged)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import textwrap
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from harness import speed
from harness.callbacks import ProgressBar, RunCSVLogger, StepMetrics, Sums
from harness.config import RESULT_STATUSES, Config, load_config, read_yaml, run_dir_of, with_overrides
from harness.data import yardstick
from harness.errors import UserError
from harness.files import read_json, write_json
from harness.model import MaskedLM
from harness.schedule import lr_factor
from harness.steps import StepBook, loss_denominators

# Lightning warnings that do not apply here: StepBook makes mid-epoch resume exact, and a resumed run's folder
# holds checkpoints by design.
for _message in ("You're resuming from a checkpoint that ended before the epoch ended",
                 "Checkpoint directory .* exists and is not empty", "The dirpath has changed from"):
    warnings.filterwarnings("ignore", message=_message)
WANDB_PROJECT = "roberta-ablations"
# Dense bf16 tensor-core peaks per GPU from NVIDIA's data sheets (FLOP/s); the first name contained in the device
# name wins, so the specific variants come first.
NOMINAL_BF16_PEAK = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12),
)


# ---------------------------------------------------------------------------------------------------------------
# The LightningModule: model, loss and optimiser


class PretrainModule(L.LightningModule):
    """MaskedLM + cross-entropy at the selected positions (+ NSP) + AdamW with warmup and linear decay.

    The loss is normalised per optimizer step, as fairseq's: the MLM loss summed over the masked tokens of all its
    micro-batches and ranks over their total count, and NSP likewise per sequence (`training_step`), so every masked
    token weighs the same however a step is cut. The logged metrics are exact token-weighted means over whole steps
    (`StepMetrics`)."""

    def __init__(self, cfg: Config, vocab_size: int, unigram_counts: Any = None):
        """`unigram_counts` (V,): the arm's training token counts, which model.output_bias_init=unigram starts the
        MLM bias from (None where a checkpoint's weights will replace the init)."""
        super().__init__()
        self.cfg = cfg
        self.model = MaskedLM(cfg.model, vocab_size, nsp=cfg.data.nsp, seed=cfg.train.seed)
        if cfg.model.output_bias_init == "unigram" and unigram_counts is not None:
            with torch.no_grad():
                self.model.mlm_head.bias.copy_(torch.as_tensor(yardstick.log_unigram(unigram_counts)))
        self.train_sums, self.val_sums, self.yardstick_sums = Sums(), Sums(), Sums()
        self.short_yardstick_sums = Sums()  # the short-context yardstick (yardstick.SHORT_LOADER_INDEX)

    def _loss(self, batch: dict, sums: Sums, n_predicted: float | None = None, n_sequences: float | None = None
              ) -> Tensor:
        """MLM loss summed over the micro-batch's masked tokens / n_predicted (+ NSP's summed over its sequences /
        n_sequences); both default to this micro-batch's own counts, a plain mean. Adds the exact sums to `sums`."""
        out = self.model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"), batch["labels"])
        mlm_sum = F.cross_entropy(out.mlm_logits.float(), out.mlm_targets, reduction="sum")  # fp32 logits
        loss = mlm_sum / (max(out.mlm_targets.numel(), 1) if n_predicted is None else n_predicted)
        nsp_sum = nsp_correct = torch.zeros((), device=mlm_sum.device)
        if out.nsp_logits is not None:
            nsp_logits = out.nsp_logits.float()
            nsp_sum = F.cross_entropy(nsp_logits, batch["nsp_labels"], reduction="sum")
            nsp_correct = (nsp_logits.argmax(-1) == batch["nsp_labels"]).sum()
            loss = loss + nsp_sum / (nsp_logits.size(0) if n_sequences is None else n_sequences)
        dev = torch.stack([mlm_sum, nsp_sum, nsp_correct]).detach().double()
        sums.add(dev, [out.mlm_targets.numel(), batch["input_ids"].size(0), int(batch["n_tokens"])])
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._loss(batch, self.train_sums,
                          *loss_denominators(batch, self.trainer.accumulate_grad_batches, self.trainer.world_size))

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx not in (yardstick.LOADER_INDEX, yardstick.SHORT_LOADER_INDEX):
            self._loss(batch, self.val_sums)
            return
        # The yardsticks have no segment B: MLM only, whatever heads the model has.
        out = self.model(batch["input_ids"], batch.get("attention_mask"), None, batch["labels"])
        mlm_sum = F.cross_entropy(out.mlm_logits.float(), out.mlm_targets, reduction="sum")
        zero = torch.zeros((), device=mlm_sum.device)
        sums = self.yardstick_sums if dataloader_idx == yardstick.LOADER_INDEX else self.short_yardstick_sums
        sums.add(torch.stack([mlm_sum, zero, zero]).detach().double(),
                 [out.mlm_targets.numel(), batch["input_ids"].size(0), int(batch["n_tokens"])])

    def configure_optimizers(self) -> dict:
        o = self.cfg.optim
        # BERT decays weights (embeddings included) but not biases or LayerNorm: exactly the parameters below 2-D.
        params = list(self.parameters())
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=o.peak_lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                      **speed.adamw_kwargs(self.device.type))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(lr_factor, warmup=o.warmup_steps, total=o.max_steps, decay=o.decay_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["harness"] = {"config": self.cfg.to_dict(), "vocab_size": self.model.vocab_size}


# ---------------------------------------------------------------------------------------------------------------
# Systems: device, precision, MFU denominator, Trainer


def system_info(cfg: Config, run_dir: Path, accelerator: str, precision: str) -> dict:
    """Device description and the MFU denominator: the nominal dense bf16 peak on a known GPU (times devices), else
    a measured matmul peak in the training dtype, kept in system.json so every session of a run uses one number."""
    world = cfg.train.devices
    info = {"accelerator": accelerator, "devices": world, "precision": precision, "torch": torch.__version__,
            "lightning": L.__version__}
    if accelerator == "gpu":
        name = torch.cuda.get_device_name()
        info["device"] = name
        for key, peak in NOMINAL_BF16_PEAK:
            if key in name:
                info.update(peak_flops_per_device=peak, peak_source=f"nominal dense bf16 peak of {key} (data sheet)")
                break
    else:
        info["device"] = f"cpu ({os.cpu_count()} cores)"
    if "peak_flops_per_device" not in info:
        cached = read_json(run_dir / "system.json") or {}
        if all(cached.get(k) == info[k] for k in ("device", "precision")) and "peak_flops_per_device" in cached:
            info.update(peak_flops_per_device=cached["peak_flops_per_device"], peak_source=cached["peak_source"])
        else:
            dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
            n = 4096 if accelerator == "gpu" else 2048
            peak = speed.matmul_gflops(dtype, n=n, device="cuda" if accelerator == "gpu" else "cpu") * 1e9
            info.update(peak_flops_per_device=peak, peak_source=f"measured {n}x{n} {dtype} matmul (median of 3)")
    # CPU processes of a DDP run share one machine, whose measured peak is the whole denominator
    info["mfu_denominator"] = info["peak_flops_per_device"] * (world if accelerator == "gpu" else 1)
    return info


def preflight(cfg: Config) -> str:
    """Checks that need the machine, before any work starts; returns the accelerator. The rules between config
    sections are Config's own (harness.config.Config.__post_init__), checked when a config is built."""
    t = cfg.train
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" and t.devices > torch.cuda.device_count():
        raise UserError(f"train.devices: expected at most the {torch.cuda.device_count()} visible GPUs, "
                        f"got {t.devices}")
    if accelerator == "gpu" and t.precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        raise UserError(f"train.precision: this GPU has no bf16 support, got {t.precision!r}; use '32' or 'auto'")
    return accelerator


def build_trainer(cfg: Config, run_dir: Path, book: StepBook, callbacks: tuple = ()) -> L.Trainer:
    """Precision, devices/DDP, accumulation, schedule of validation and checkpoints, loggers and progress bar."""
    t, o = cfg.train, cfg.optim
    accelerator = preflight(cfg)
    precision = speed.resolve_precision(t.precision, accelerator)
    if accelerator == "gpu":
        torch.set_float32_matmul_precision("high")  # TF32 for whatever still runs in fp32
    else:
        speed.tune_cpu_allocator()  # keep large freed buffers mapped between steps
    info = system_info(cfg, run_dir, accelerator, precision)
    if rank_zero_only.rank == 0:
        write_json(run_dir / "system.json", info)

    strategy: Any = "auto"
    if t.devices > 1:
        strategy = DDPStrategy(process_group_backend="nccl" if accelerator == "gpu" else "gloo",
                               gradient_as_bucket_view=True)
    every = t.checkpoint_every or t.val_every
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="step_{step:07d}", auto_insert_metric_name=False,
        every_n_train_steps=every, save_last=True, save_top_k=-1 if t.checkpoint_every else 0,
        enable_version_counter=False)
    loggers: list = [RunCSVLogger(run_dir)]
    if t.wandb != "disabled":
        loggers.append(_wandb_logger(cfg, run_dir, info))
    # Under SLURM, submitit owns pre-emption: it checkpoints the grid worker and requeues the job (harness.grid.runner).
    # Lightning 2.6 would also requeue on its own (USR1, hpc_ckpt files that our resume does not read): turned off.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    return L.Trainer(
        accelerator=accelerator, devices=t.devices, strategy=strategy, precision=precision, plugins=plugins,
        max_steps=t.stop_at_step or o.max_steps, max_epochs=-1, accumulate_grad_batches=book.accumulate,
        gradient_clip_val=o.grad_clip if o.grad_clip > 0 else None, gradient_clip_algorithm="norm",
        val_check_interval=t.val_every * book.accumulate, check_val_every_n_epoch=None,  # in micro-batches
        num_sanity_val_steps=0 if book.resume_step else -1,  # a fresh run validates once at step 0, on the whole split
        logger=loggers, enable_autolog_hparams=False, log_every_n_steps=t.log_every,
        callbacks=[book, StepMetrics(cfg, info["mfu_denominator"]), checkpoint, ProgressBar(),
                   *callbacks],
        use_distributed_sampler=False,  # the data module splits each step across ranks itself
        default_root_dir=run_dir, enable_model_summary=False,
    )


def _wandb_logger(cfg: Config, run_dir: Path, info: dict) -> Any:
    from lightning.pytorch.loggers import WandbLogger

    d, t = cfg.data, cfg.train
    id_file = run_dir / "wandb" / "harness_run_id"  # one W&B run across resumed sessions
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = hashlib.blake2b(f"{run_dir.resolve()}:{time.time_ns()}".encode(), digest_size=6).hexdigest()
        if rank_zero_only.rank == 0:
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id)
    size = f"data_tokens={d.data_tokens}" if d.data_tokens else f"data_fraction={d.data_fraction:g}"
    tags = [d.input_format, d.masking, d.tokenizer, size, f"corpus={Path(d.corpus).name}"[:64]]
    return WandbLogger(project=WANDB_PROJECT, group=t.study, job_type="pretrain", name=f"{t.arm}/seed_{t.seed}",
                       save_dir=str(run_dir), offline=t.wandb != "online", config={**cfg.to_dict(), "system": info},
                       tags=tags, id=run_id, resume="allow")


# ---------------------------------------------------------------------------------------------------------------
# The run folder


def _write_run_files(run_dir: Path, cfg: Config, prepared: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, run_dir / "config.yaml")
    shutil.copyfile(prepared.tokenizer_path, run_dir / "tokenizer.json")
    write_json(run_dir / "data.json", {"prepared_dir": str(prepared.dir), "vocab_size": prepared.vocab_size,
                                       "corpus_stats": prepared.corpus_stats})


@dataclass(frozen=True)
class PretrainedRun:
    """A run folder read back by `load_run`: what the HF export and fine-tuning build an encoder from."""

    dir: Path
    config: Config
    tokenizer_path: Path
    weights: dict[str, Tensor] | None  # MaskedLM state dict from checkpoints/last.ckpt; None when not loaded
    vocab_size: int  # rows of the checkpoint's embedding (may exceed the tokenizer's), else the tokenizer's size
    status: str  # result.json's status ("finished", "diverged"), or "incomplete" without one


def load_run(run_dir: Path, weights: bool = True) -> PretrainedRun:
    """Read a run folder back: config.yaml, tokenizer.json and, with `weights`, the MaskedLM weights of
    checkpoints/last.ckpt. A missing or malformed file is a UserError naming it and what was expected."""
    from tokenizers import Tokenizer

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    config_path, tokenizer_path = run_dir / "config.yaml", run_dir / "tokenizer.json"
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    missing = [p for p in (config_path, tokenizer_path, *([ckpt_path] if weights else [])) if not p.is_file()]
    if missing:
        raise UserError(f"{run_dir}: not a pretraining run folder (runs/<study>/<arm>/seed_<k>) or not finished; "
                        f"missing {', '.join(map(str, missing))}")
    raw = read_yaml(config_path, "run config")
    try:
        config = with_overrides(raw)
    except UserError as e:
        raise UserError(f"{config_path}: {e}") from None
    try:
        n_tokens = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        why = textwrap.shorten(str(e), 200)
        raise UserError(f"{tokenizer_path}: expected a `tokenizers` JSON file ({why})") from None
    result = read_json(run_dir / "result.json")
    status = "incomplete" if result is None else result.get("status", "unknown")
    if not weights:
        return PretrainedRun(run_dir, config, tokenizer_path, None, n_tokens, status)

    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file gets the same message
        why = f"{type(e).__name__}: {textwrap.shorten(str(e), 200)}"
        raise UserError(f"{ckpt_path}: cannot read this checkpoint ({why}); expected a Lightning checkpoint of a "
                        f"pretraining run") from None
    saved = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    state = {k.removeprefix("model."): v for k, v in (saved or {}).items() if k.startswith("model.")}
    if "encoder.embed.word.weight" not in state:
        raise UserError(f"{ckpt_path}: expected a pretraining checkpoint, with 'model.encoder.embed.word.weight' in "
                        f"its state_dict")
    vocab_size = state["encoder.embed.word.weight"].shape[0]
    if n_tokens > vocab_size:
        raise UserError(f"{tokenizer_path}: {n_tokens} tokens, more than the checkpoint's vocabulary of {vocab_size}")
    with torch.device("meta"):  # shapes only, no memory: weights that do not fit config.yaml's model fail here
        model = MaskedLM(config.model, vocab_size, nsp=config.data.nsp, seed=0)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:
        why = textwrap.shorten(str(e), 300)
        raise UserError(f"{ckpt_path}: weights do not match {config_path} ({why})") from None
    return PretrainedRun(run_dir, config, tokenizer_path, state, vocab_size, status)


# ---------------------------------------------------------------------------------------------------------------
# Entry points


def pretrain(cfg: Config, callbacks: tuple = ()) -> dict:
    """Train one run into its folder (resuming from checkpoints/last.ckpt when there is one) and return the result
    written to result.json. A folder whose result.json says finished is returned as is, without training."""
    from harness.data.datamodule import PretrainDataModule
    from harness.data.pipeline import prepare

    preflight(cfg)
    run_dir = run_dir_of(cfg)
    done = read_json(run_dir / "result.json")
    if done is not None and done.get("status") in RESULT_STATUSES:
        if rank_zero_only.rank == 0:
            print(f"{run_dir}: already {done['status']} ({done.get('steps')} steps); delete the folder to retrain")
        return done
    book = StepBook(cfg, run_dir)

    prepared = prepare(cfg.data, verbose=rank_zero_only.rank == 0)
    if rank_zero_only.rank == 0:
        _write_run_files(run_dir, cfg, prepared)
        book.start_metrics(run_dir / "metrics.csv")
        if book.checkpoint:
            print(f"{run_dir}: resuming from step {book.resume_step} ({book.checkpoint.name})")
    trainer = build_trainer(cfg, run_dir, book, callbacks=callbacks)
    data = PretrainDataModule(prepared, cfg.data, cfg.optim, cfg.train.seed, cfg.train.num_workers,
                              world_size=trainer.world_size, rank=trainer.global_rank)
    # The model's init has its own generators (MaskedLM's seed); this covers any other draw, e.g. the default init
    # torch modules make before MaskedLM overwrites it.
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    counts = data.train_unigram_counts() if cfg.model.output_bias_init == "unigram" and not book.checkpoint else None
    module = PretrainModule(cfg, prepared.vocab_size, counts)
    metrics = next(cb for cb in trainer.callbacks if isinstance(cb, StepMetrics))
    if book.revalidate:
        # Killed during the validation after its checkpoint: score that step again, as the uninterrupted run did
        # (Lightning skips the sanity check of a resumed fit). Validation draws nothing random; fit restores all.
        metrics.validating_step = book.resume_step
        trainer.validate(module, datamodule=data, ckpt_path=book.checkpoint, verbose=False)
        metrics.validating_step = None
    trainer.fit(module, datamodule=data, ckpt_path=book.checkpoint)

    last_step = cfg.train.stop_at_step or cfg.optim.max_steps  # a tuning trial stops early on its own schedule
    if metrics.diverged_at is None and trainer.global_step < last_step:
        raise RuntimeError(f"{run_dir}: training stopped at step {trainer.global_step} of {last_step}")
    every = cfg.train.checkpoint_every or cfg.train.val_every
    if trainer.global_step % every:  # last.ckpt holds the final weights (export and fine-tuning read it)
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    if metrics.last_val.get("step") != trainer.global_step:
        trainer.validate(module, datamodule=data, verbose=False)
    result = {
        "status": "diverged" if metrics.diverged_at is not None else "finished",
        "steps": trainer.global_step,
        "tokens_seen": metrics.tokens_seen,
        "final_train_loss": metrics.last_train.get("train/loss"),
        "final_valid_loss": metrics.last_val.get("val/loss"),
        "final_valid_ppl": metrics.last_val.get("val/ppl"),
        "final_valid_nsp_acc": metrics.last_val.get("val/nsp_acc"),
        "final_yardstick_loss": metrics.last_val.get("val/yardstick_loss"),
        "final_yardstick_ppl": metrics.last_val.get("val/yardstick_ppl"),
        "yardstick_unigram_ppl": data.yardstick_unigram_ppl,
        "yardstick_bigram_ppl": data.yardstick_bigram_ppl,
        "final_short_yardstick_ppl": metrics.last_val.get("val/short_yardstick_ppl"),
        "short_yardstick_unigram_ppl": data.short_yardstick_unigram_ppl,
        "steps_per_epoch": data.steps_per_epoch,
        "epochs": trainer.global_step / data.steps_per_epoch,
        "diverged_at_step": metrics.diverged_at,
        "train_time_s": round(metrics.train_time_s, 3),
        "wall_time_s": round(metrics.wall_time_s, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in result.items()}  # JSON
    if trainer.is_global_zero:
        write_json(run_dir / "result.json", result)
    if cfg.train.wandb != "disabled":  # close this run's W&B run, so the next run in this process gets its own
        import wandb

        wandb.finish()
    return result


def pretrain_from_cli(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    result = pretrain(cfg)
    if rank_zero_only.rank == 0:
        print(f"{run_dir_of(cfg)}: {json.dumps(result)}")
