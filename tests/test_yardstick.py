"""The held-out yardstick: the same sequences and positions for every arm, all shown as <mask>, and its unigram
reference; a pretraining run logs it and writes it into result.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch

from harness.callbacks import StepMetrics
from harness.config import load_config
from harness.data import yardstick
from harness.data.datamodule import PretrainDataModule
from harness.data.pipeline import prepare
from harness.pretrain import PretrainModule, pretrain, run_dir_of
from harness.tokens import IGNORE_INDEX, MASK

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def _data(fmt: str, *overrides: str) -> tuple:
    cfg = load_config(TINY, [f"data.input_format={fmt}", "train.wandb=disabled", "train.num_workers=0", *overrides])
    dm = PretrainDataModule(prepare(cfg.data), cfg.data, cfg.optim, cfg.train.seed, num_workers=0)
    dm.setup()
    return cfg, dm


def _validate(module: PretrainModule, cfg, dm: PretrainDataModule) -> dict:
    metrics = StepMetrics(cfg, 1.0)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[metrics], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    return metrics.last_val


def test_identical_weights_score_identically_on_the_yardstick_whatever_the_input_format():
    cfg, full = _data("full_sentences")
    torch.manual_seed(0)
    module = PretrainModule(cfg, full.prepared.vocab_size)
    scores = {}
    for fmt, seed in (("full_sentences", "0"), ("doc_sentences", "0"), ("sentence_pair_nsp", "3"),
                      ("segment_pair_nsp", "1"), ("doc_sentences", "7")):
        arm_cfg, dm = _data(fmt, f"train.seed={seed}")
        scores[fmt, seed] = _validate(module, arm_cfg, dm)
    yard = {k: v["val/yardstick_ppl"] for k, v in scores.items()}
    own = {k: v["val/ppl"] for k, v in scores.items()}
    assert len(set(yard.values())) == 1, yard  # the same sequences, positions and masks: exactly equal
    assert len(set(own.values())) > 1, own  # each arm's own-format set is other text


def test_yardstick_masks_every_selected_position_and_ignores_data_size():
    _, dm = _data("sentence_pair_nsp", "data.data_fraction=0.3", "data.random_token_prob=0.1")
    _, full = _data("full_sentences")
    assert len(dm.yardstick_set) == len(full.yardstick_set)  # the whole valid split, whatever the data size
    for i in range(20):
        item = dm.yardstick_set[(i, 0)]
        selected = item["labels"] != IGNORE_INDEX
        assert selected.any() and "token_type_ids" not in item
        assert (item["input_ids"][selected] == MASK).all()  # no random, no kept token
        np.testing.assert_array_equal(item["labels"], full.yardstick_set[(i, 0)]["labels"])
    assert dm.yardstick_unigram_ppl == full.yardstick_unigram_ppl


def test_unigram_ppl_is_the_no_context_reference():
    counts = yardstick.unigram_counts(np.array([5, 5, 5, 6], dtype=np.uint16), vocab_size=8)
    assert counts.tolist() == [0, 0, 0, 0, 0, 3, 1, 0]
    # add-one: p(5) = 4/12, so a target that is always 5 scores 3
    assert math.isclose(yardstick.unigram_ppl(counts, np.array([5, 5])), 3.0)


def test_a_run_logs_the_yardstick_and_records_it(tmp_path):
    cfg = load_config(TINY, [f"train.runs_dir={tmp_path}", "train.wandb=disabled", "train.num_workers=0",
                             "optim.max_steps=20", "optim.warmup_steps=2", "train.val_every=10",
                             "data.input_format=segment_pair_nsp"])
    result = pretrain(cfg)
    saved = json.loads((run_dir_of(cfg) / "result.json").read_text())
    assert saved == result
    assert 0 < result["final_yardstick_ppl"] < math.inf and result["final_valid_ppl"] != result["final_yardstick_ppl"]
    assert result["yardstick_unigram_ppl"] > 1
    assert result["epochs"] == result["steps"] / result["steps_per_epoch"]
    header = (run_dir_of(cfg) / "metrics.csv").read_text().splitlines()[0]
    assert "val/yardstick_ppl" in header


def test_bigram_reference_by_hand():
    """Text 1 2 1 2 1 3 (V = 4): c(1, 2) = 2 of c(1 as left) = 3; the add-one unigram gives P(2) = 3/10, P(3) = 2/10.
    Target 2 after 1: 0.8 x 2/3 + 0.2 x 0.3; target 3 after 0, never seen on the left: the unigram's 0.2."""
    tokens = np.array([1, 2, 1, 2, 1, 3], dtype=np.uint16)
    counts = np.bincount(tokens, minlength=4)
    ppl = yardstick.bigram_ppl(tokens, counts, prev=np.array([1, 0]), targets=np.array([2, 3]))
    assert ppl == pytest.approx(1 / math.sqrt((0.8 * 2 / 3 + 0.2 * 0.3) * 0.2))
