"""Pretraining on the tiny corpus: every format x masking learns, a resumed run replays the uninterrupted loss curve
exactly, bad input fails before any work with one line, and a finished run is not trained again."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
import yaml

from harness import cli
from harness.config import Config, load_config
from harness.data.datamodule import PretrainDataModule
from harness.data.formats import select_documents
from harness.data.pipeline import prepare
from harness.errors import UserError
from harness.pretrain import PretrainModule, pretrain, run_dir_of
from harness.schedule import lr_factor
from harness.steps import loss_denominators

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
FORMATS = ["segment_pair_nsp", "sentence_pair_nsp", "full_sentences", "doc_sentences"]
MASKINGS = ["static", "dynamic"]


def tiny(runs_dir: Path, *overrides: str) -> Config:
    return load_config(TINY, [f"train.runs_dir={runs_dir}", "train.wandb=disabled", *overrides])


def column(run_dir: Path, key: str) -> dict[int, float]:
    """step -> value of one metrics.csv column; each step must be logged once."""
    with (run_dir / "metrics.csv").open() as f:
        rows = [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]
    assert len({s for s, _ in rows}) == len(rows), f"{key}: a step logged twice"
    return dict(rows)


@pytest.fixture(scope="session")
def tiny_data():
    """The tiny corpus prepared once for the session (every config here shares its tokenizer settings)."""
    return prepare(load_config(TINY).data)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_lr_schedule_warms_up_then_decays_to_zero(lr_trace):
    f = [lr_factor(s, warmup=4, total=10) for s in range(11)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0  # step 0 trains at 1/warmup of the peak, not at 0
    assert all(a > b for a, b in zip(f[4:], f[5:])) and f[10] == 0.0
    assert lr_factor(0, warmup=0, total=10) == 1.0
    # the module's scheduler is this schedule over optim.max_steps (fine-tuning's: test_finetune.py)
    cfg = load_config(TINY, ["optim.max_steps=10", "optim.warmup_steps=4"])
    lrs = lr_trace(PretrainModule(cfg, vocab_size=400).configure_optimizers(), 10)
    assert lrs == pytest.approx([cfg.optim.peak_lr * x for x in f]) and lrs[0] > 0 and lrs[10] == 0.0


def test_warmup_stable_decay_holds_the_peak_then_decays_over_the_last_steps(lr_trace):
    f = [lr_factor(s, warmup=2, total=10, decay=4) for s in range(11)]
    assert f == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    cfg = load_config(TINY, ["optim.max_steps=10", "optim.warmup_steps=2", "optim.decay_fraction=0.4"])
    lrs = lr_trace(PretrainModule(cfg, vocab_size=400).configure_optimizers(), 10)
    assert cfg.optim.decay_steps == 4 and lrs == pytest.approx([cfg.optim.peak_lr * x for x in f])
    # 1.0, the default, is the paper's linear decay from the end of warmup
    assert load_config(TINY, ["optim.max_steps=10", "optim.warmup_steps=2"]).optim.decay_steps == 8
    with pytest.raises(UserError, match=r"optim.decay_fraction: expected a fraction in \(0, 1\]"):
        load_config(TINY, ["optim.decay_fraction=0"])


def test_unigram_output_bias_starts_the_model_at_the_unigram_perplexity(tmp_path, tiny_data):
    """model.output_bias_init=unigram: at step 0 the yardstick scores the unigram reference (the hidden states'
    logits are ~N(0, 0.2)), where a zero bias scores about the vocabulary size; a data-size subset counts only its
    own documents."""
    step0 = {}
    for init in ("zero", "unigram"):
        cfg = tiny(tmp_path, f"model.output_bias_init={init}", "optim.max_steps=1", "optim.warmup_steps=0",
                   "train.val_every=1", f"train.arm={init}")
        result = pretrain(cfg)
        step0[init] = column(run_dir_of(cfg), "val/yardstick_ppl")[0] / result["yardstick_unigram_ppl"]
    assert 0.97 < step0["unigram"] < 1.05 and step0["zero"] > 2.5, step0
    cfg = tiny(tmp_path, "data.data_tokens=5000")
    data = PretrainDataModule(tiny_data, cfg.data, cfg.optim, seed=0)
    train = tiny_data.split("train")
    bounds = train.sentences[train.documents]
    docs = select_documents(train, cfg.data)
    expected = np.bincount(np.concatenate([train.tokens[bounds[d]:bounds[d + 1]] for d in docs]),
                           minlength=tiny_data.vocab_size)
    whole = PretrainDataModule(tiny_data, tiny(tmp_path).data, cfg.optim, seed=0).train_unigram_counts()
    assert (data.train_unigram_counts() == expected).all() and expected.sum() < whole.sum()
    assert (whole == np.bincount(train.tokens, minlength=tiny_data.vocab_size)).all()


# Every format x masking learns; the default run keeps one NSP and one no-NSP cell (each masking once), the other six
# run under `make test-slow` (as .ci/run does) to keep `make test` within its 15 minutes.
DEFAULT_CELLS = {("segment_pair_nsp", "static"), ("full_sentences", "dynamic")}


@pytest.mark.parametrize("fmt, masking", [
    pytest.param(f, m, marks=() if (f, m) in DEFAULT_CELLS else pytest.mark.slow) for f in FORMATS for m in MASKINGS])
def test_tiny_pretraining_lowers_validation_perplexity(tmp_path, tiny_data, fmt, masking):
    wandb = "offline" if (fmt, masking) == ("full_sentences", "dynamic") else "disabled"  # one run covers W&B
    cfg = tiny(tmp_path, f"data.input_format={fmt}", f"data.masking={masking}", f"train.wandb={wandb}")
    result = pretrain(cfg)
    run = run_dir_of(cfg)
    assert result["status"] == "finished" and result["steps"] == 200
    assert json.loads((run / "result.json").read_text()) == result
    ppl = column(run, "val/ppl")
    assert sorted(ppl) == [0, 50, 100, 150, 200]  # step 0, then every train.val_every
    assert ppl[200] < ppl[0], ppl
    assert result["final_valid_ppl"] == ppl[200]
    assert sorted(column(run, "train/loss")) == list(range(10, 201, 10))
    assert result["tokens_seen"] == column(run, "train/tokens")[200] > 0
    assert 0 < column(run, "train/mfu")[200] < 1
    if cfg.data.nsp:
        assert 0 <= result["final_valid_nsp_acc"] <= 1 and len(column(run, "train/nsp_acc")) == 20
    else:
        assert result["final_valid_nsp_acc"] is None
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.to_dict()
    for name in ("tokenizer.json", "data.json", "system.json", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert (run / "wandb").is_dir() == (wandb == "offline")


class SaveAt(L.Callback):
    """Checkpoints at chosen optimizer steps, the way ModelCheckpoint does (right after the step)."""

    def __init__(self, steps: set[int], folder: Path):
        self.steps, self.folder = steps, folder

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in self.steps and not (path := self.folder / f"{step}.ckpt").exists():
            trainer.save_checkpoint(path)


def test_loss_denominators_split_the_step_totals_over_micro_batches_and_ranks():
    # 30 masked tokens and 8 sequences in a step of 2 micro-batches on each of 3 ranks: Lightning divides by 2, DDP
    # averages over 3, so each micro-batch divides its sums by 30 / 6 and 8 / 6.
    assert loss_denominators({"step_predicted": 30, "step_sequences": 8}, 2, 3) == (5.0, 8 / 6)
    assert loss_denominators({"step_predicted": 0, "step_sequences": 4}, 1, 1) == (1.0, 4.0)  # nothing masked: no 0/0


def test_resume_replays_the_uninterrupted_loss_curve(tmp_path, tiny_data):
    """Dropout on, gradient accumulation, padded variable-length batches, a data-loader worker, and resumes before,
    at and after an epoch boundary: every per-step loss after the resume matches the uninterrupted run."""
    overrides = ["data.input_format=doc_sentences", "data.data_tokens=20000", "optim.batch_size=8",
                 "optim.micro_batch_size=4", "train.log_every=1", "train.val_every=5", "train.num_workers=1"]
    probe = tiny(tmp_path, *overrides)
    data = PretrainDataModule(tiny_data, probe.data, probe.optim, seed=0, num_workers=0)
    data.setup()
    epoch = data.steps_per_epoch
    resume_at = {epoch - 3, epoch, epoch + 2}
    steps = epoch + 6
    overrides.append(f"optim.max_steps={steps}")

    full = tiny(tmp_path, *overrides, "train.arm=full")
    pretrain(full, callbacks=(SaveAt(resume_at, tmp_path),))
    reference = column(run_dir_of(full), "train/loss")
    assert sorted(reference) == list(range(1, steps + 1))

    for step in sorted(resume_at):
        # An interrupted run: its folder, minus result.json, with last.ckpt from `step` and metrics logged beyond it.
        cfg = tiny(tmp_path, *overrides, f"train.arm=resumed_at_{step}")
        run = run_dir_of(cfg)
        shutil.copytree(run_dir_of(full), run)
        (run / "result.json").unlink()
        shutil.copy(tmp_path / f"{step}.ckpt", run / "checkpoints" / "last.ckpt")
        result = pretrain(cfg)
        assert result["steps"] == steps
        resumed = column(run, "train/loss")  # also checks no step is logged twice
        assert sorted(resumed) == list(range(1, steps + 1))
        assert sorted(column(run, "val/ppl")) == [*range(0, steps, 5), steps]  # none repeated, none missing
        worst = max(abs(resumed[s] - reference[s]) for s in range(step + 1, steps + 1))
        assert worst < 1e-5, f"resumed at {step} (epoch has {epoch} steps): max loss difference {worst}"
        assert result["tokens_seen"] == column(run_dir_of(full), "train/tokens")[steps]


def test_finished_run_is_not_trained_again(tmp_path, tiny_data, capsys):
    cfg = tiny(tmp_path, "optim.max_steps=3", "optim.warmup_steps=1")
    first = pretrain(cfg)
    ckpt = run_dir_of(cfg) / "checkpoints" / "last.ckpt"
    stamp = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    assert pretrain(cfg) == first
    assert "already finished" in capsys.readouterr().out
    assert ckpt.stat().st_mtime_ns == stamp


def test_cli_bad_input_exits_2_with_one_line(tmp_path, tiny_data, capsys):
    # A run left with a checkpoint (not finished), then asked to continue with another peak LR.
    cfg = tiny(tmp_path, "optim.max_steps=2", "optim.warmup_steps=1", "train.arm=half_done")
    pretrain(cfg)
    (run_dir_of(cfg) / "result.json").unlink()
    mismatch = ["optim.max_steps=2", "optim.warmup_steps=1", "train.arm=half_done", "optim.peak_lr=5e-4"]
    cases = {
        "model.preset: expected one of": ["model.preset=huge"],
        "model.n_heads: expected a positive divisor of model.hidden=128": ["model.n_heads=3"],
        "data.max_seq_len: expected at most model.max_positions=64": ["data.max_seq_len=128"],
        "optim.batch_size: expected a multiple of": ["optim.batch_size=20", "optim.micro_batch_size=8"],
        "checkpoint was made with a different config (optim.peak_lr: 0.001 vs 0.0005)": mismatch,
    }
    capsys.readouterr()
    for expected, args in cases.items():  # in-process: the same code path as the command, without importing torch
        argv = ["pretrain", "--config", str(TINY), f"train.runs_dir={tmp_path}", "train.wandb=disabled", *args]
        assert cli.main(argv) == 2, expected
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (expected, lines)
    assert not (run_dir_of(cfg) / "result.json").exists()

    # and once through a real process: exit status 2, one line on stderr
    proc = subprocess.run([sys.executable, "-m", "harness", "pretrain", "--config", str(TINY),
                           f"train.runs_dir={tmp_path}", *mismatch], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "checkpoint was made with a different config" in proc.stderr


class StepGradient(L.Callback):
    """The first optimizer step's gradient (before clipping) and its micro-batches' masked tokens and sequences."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}
        self.predicted: list[int] = []
        self.sequences: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            self.predicted.append(int((batch["labels"] != -100).sum()))
            self.sequences.append(batch["input_ids"].size(0))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()}


@pytest.mark.parametrize("fmt", ["doc_sentences", "sentence_pair_nsp"])
def test_step_gradient_does_not_depend_on_how_the_step_is_cut(tmp_path, tiny_data, fmt):
    """fairseq's normalisation: a step's gradient is that of its loss summed over all its masked tokens (NSP: over
    all its sequences) divided by their total count, so one micro-batch and four of unequal sizes agree."""
    runs = {}
    # seed 3: SENTENCE-PAIR's first step holds 7 sequences, so its four micro-batches hold unequal counts (2, 2, 2, 1)
    for micro in (8, 2):
        cfg = tiny(tmp_path, f"data.input_format={fmt}", "optim.batch_size=8", f"optim.micro_batch_size={micro}",
                   "optim.max_steps=1", "optim.warmup_steps=1", "model.dropout=0.0", "train.precision='32'",
                   "train.num_workers=0", "train.val_every=1000", f"train.arm=micro_{micro}", "train.seed=3")
        runs[micro] = StepGradient()
        pretrain(cfg, callbacks=(runs[micro],))
    whole, cut = runs[8], runs[2]
    assert len(whole.predicted) == 1 and len(cut.predicted) == 4
    assert sum(cut.predicted) == whole.predicted[0] and len(set(cut.predicted)) > 1, cut.predicted
    assert sum(cut.sequences) == whole.sequences[0]
    if fmt == "sentence_pair_nsp":  # unequal sequence counts too, so NSP's per-sequence weighting is tested
        assert len(set(cut.sequences)) > 1, cut.sequences
    assert whole.grads.keys() == cut.grads.keys()
    for name, grad in whole.grads.items():
        torch.testing.assert_close(cut.grads[name], grad, atol=1e-6, rtol=0, msg=name)


def test_a_resume_redoes_the_validation_its_checkpoint_step_lost(tmp_path, tiny_data):
    """A worker killed during the validation right after its checkpoint (issue 26): the resumed run validates that
    step again, so metrics.csv has every validation row, with the values the uninterrupted run logged."""
    overrides = ["optim.max_steps=20", "optim.warmup_steps=2", "train.val_every=10", "train.log_every=5",
                 "train.checkpoint_every=10", "train.num_workers=0"]
    full = tiny(tmp_path, *overrides, "train.arm=full")
    pretrain(full)
    reference = column(run_dir_of(full), "val/ppl")
    assert sorted(reference) == [0, 10, 20]

    cfg = tiny(tmp_path, *overrides, "train.arm=killed")
    run = run_dir_of(cfg)
    shutil.copytree(run_dir_of(full), run)
    (run / "result.json").unlink()
    for name in ("last.ckpt", "step_0000020.ckpt"):  # killed after step 10's checkpoint...
        (run / "checkpoints" / name).unlink()
    with (run / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if int(r["step"]) <= 10]
    for r in rows:  # ...during step 10's validation: its row never written
        if int(r["step"]) == 10:
            r.update({k: "" for k in fields if k.startswith("val/")})
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    assert sorted(column(run, "val/ppl")) == [0]

    pretrain(cfg)
    resumed = column(run, "val/ppl")  # also checks that no step is logged twice
    assert sorted(resumed) == [0, 10, 20]
    for step in (10, 20):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5), step
