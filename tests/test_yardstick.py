"""The held-out yardstick: the same sequences and positions for every arm, all shown as <mask>, and its unigram
reference; a pretraining run logs it and writes it into result.json."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import fields, replace
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch

from harness.callbacks import StepMetrics
from harness.config import DataConfig, load_config
from harness.data import yardstick
from harness.data.datamodule import PretrainDataModule
from harness.data.pipeline import prepare
from harness.pretrain import PretrainModule, pretrain, run_dir_of
from harness.tokens import BOS, EOS, IGNORE_INDEX, MASK

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
    short = {k: v["val/short_yardstick_ppl"] for k, v in scores.items()}
    own = {k: v["val/ppl"] for k, v in scores.items()}
    assert len(set(yard.values())) == 1, yard  # the same sequences, positions and masks: exactly equal
    assert len(set(short.values())) == 1, short  # so is the short-context yardstick
    assert len(set(own.values())) > 1, own  # each arm's own-format set is other text
    assert set(short.values()) != set(yard.values())  # one sentence of context is not a window's


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


def test_the_short_yardstick_is_the_windows_text_one_sentence_at_a_time():
    """Its sequences are `<s> sentence </s>`, each a sentence of the split (or a piece of one past max_seq_len - 2),
    together exactly the text of the yardstick's windows in order; every chosen position shows <mask>; its unigram
    reference is its own, scored at its own positions."""
    _, dm = _data("sentence_pair_nsp", "data.data_fraction=0.3", "data.random_token_prob=0.1")
    windows, short = dm.yardstick_set, dm.short_yardstick_set
    n = min(dm.valid_sequences, len(windows))

    def text(ds, count: int) -> list[int]:
        ids = np.concatenate([ds.assemble(i)[0] for i in range(count)])
        return ids[(ids != BOS) & (ids != EOS)].tolist()

    assert text(short, len(short)) == text(windows, n) and len(short) > n  # tiny: 230 sentences in 159 windows
    bounds = set(np.asarray(dm.prepared.split("valid").sentences).tolist())
    cap = dm.cfg.max_seq_len - 2
    for i in range(len(short)):
        ids = short.assemble(i)[0]
        assert ids[0] == BOS and ids[-1] == EOS and (ids[1:-1] != EOS).all()
        start, end = (int(x) for x in short.ex.spans[i])
        assert start in bounds or (start - max(b for b in bounds if b <= start)) % cap == 0  # a sentence or a piece
        item = short[(i, 0)]
        selected = item["labels"] != IGNORE_INDEX
        assert "token_type_ids" not in item and (item["input_ids"][selected] == MASK).all()
    labels = np.concatenate([short[(i, 0)]["labels"] for i in range(len(short))])
    counts = np.bincount(np.asarray(dm.prepared.split("train").tokens), minlength=dm.prepared.vocab_size)
    targets = labels[labels != IGNORE_INDEX]
    expected = math.exp(-np.mean(np.log((counts[targets] + 1.0) / (counts.sum() + len(counts)))))
    assert dm.short_yardstick_unigram_ppl == pytest.approx(expected, rel=1e-9)
    assert dm.short_yardstick_unigram_ppl != dm.yardstick_unigram_ppl


def test_unigram_ppl_is_the_no_context_reference():
    counts = yardstick.unigram_counts(np.array([5, 5, 5, 6], dtype=np.uint16), vocab_size=8)
    assert counts.tolist() == [0, 0, 0, 0, 0, 3, 1, 0]
    # add-one: p(5) = 4/12, so a target that is always 5 scores 3
    assert math.isclose(yardstick.unigram_ppl(counts, np.array([5, 5])), 3.0)


def test_a_run_logs_the_yardstick_and_records_it(tmp_path):
    cfg = load_config(TINY, [f"train.runs_dir={tmp_path}", "train.wandb=disabled", "train.num_workers=0",
                             "optim.max_steps=20", "optim.warmup_steps=2", "train.val_every=10",
                             "data.input_format=segment_pair_nsp"])
    pretrain(cfg)
    result = json.loads((run_dir_of(cfg) / "result.json").read_text())
    assert 0 < result["final_yardstick_ppl"] < math.inf and result["final_valid_ppl"] != result["final_yardstick_ppl"]
    assert result["final_yardstick_ppl"] == pytest.approx(math.exp(result["final_yardstick_loss"]), rel=1e-12)
    # the last validation the learning curve logged is the one result.json records
    rows = list(csv.DictReader((run_dir_of(cfg) / "metrics.csv").open()))
    last = [r for r in rows if r.get("val/yardstick_ppl")][-1]
    assert int(float(last["step"])) == 20
    assert float(last["val/yardstick_ppl"]) == pytest.approx(result["final_yardstick_ppl"], rel=1e-6)
    # the unigram reference, recomputed here from the training split's raw tokens (add-one frequencies) at the
    # targets of the yardstick's first 512 sequences, the ones validation scores
    _, dm = _data("segment_pair_nsp")
    vocab = dm.prepared.vocab_size
    counts = np.bincount(np.asarray(dm.prepared.split("train").tokens), minlength=vocab).astype(float)
    labels = np.concatenate([dm.yardstick_set[(i, 0)]["labels"] for i in range(min(512, len(dm.yardstick_set)))])
    targets = labels[labels != IGNORE_INDEX]
    expected = math.exp(-np.mean(np.log((counts[targets] + 1) / (counts.sum() + vocab))))
    assert result["yardstick_unigram_ppl"] == pytest.approx(expected, rel=1e-9)
    assert result["steps"] == 20 and result["epochs"] == 20 / result["steps_per_epoch"]
    assert float(last["val/short_yardstick_ppl"]) == pytest.approx(result["final_short_yardstick_ppl"], rel=1e-6)
    assert result["short_yardstick_unigram_ppl"] == dm.short_yardstick_unigram_ppl


def test_the_analysis_refuses_exactly_what_the_yardstick_depends_on():
    """Change one data setting at a time: those that change the yardstick's config are what it depends on, less the
    two it keeps but never uses (static masks: it masks dynamically; decode errors: a run either decodes or stops).
    The analysis must refuse a study whose arms differ in exactly those (analysis.load.YARDSTICK_KEYS)."""
    from analysis.load import YARDSTICK_KEYS

    base = DataConfig(input_format="segment_pair_nsp")
    other = {"corpus": "tiny", "tokenizer": "wordpiece", "vocab_size": 8000, "lowercase": True,
             "tokenizer_path": "t.json", "input_format": "doc_sentences", "masking": "static",
             "nsp_positive_prob": 0.6, "static_masks": 3, "mask_prob": 0.2, "random_token_prob": 0.05,
             "leave_unmasked_prob": 0.05, "max_seq_len": 256, "data_fraction": 0.5, "data_tokens": 1000,
             "valid_fraction": 0.1, "decode_errors": "replace", "splitter": "blingfire", "tokenizer_sample_mb": 9.0}
    assert set(other) == {f.name for f in fields(DataConfig)}, "a new data setting: say whether the yardstick uses it"
    kept = {k for k, v in other.items()
            if yardstick.yardstick_config(replace(base, **{k: v})) != yardstick.yardstick_config(base)}
    assert kept - {"static_masks", "decode_errors"} == set(yardstick.DEPENDS_ON)
    assert YARDSTICK_KEYS == tuple(f"data.{k}" for k in yardstick.DEPENDS_ON)


def test_bigram_reference_by_hand():
    """Text 1 2 1 2 1 3 (V = 4): c(1, 2) = 2 of c(1 as left) = 3; the add-one unigram gives P(2) = 3/10, P(3) = 2/10.
    Target 2 after 1: 0.8 x 2/3 + 0.2 x 0.3; target 3 after 0, never seen on the left: the unigram's 0.2."""
    tokens = np.array([1, 2, 1, 2, 1, 3], dtype=np.uint16)
    counts = np.bincount(tokens, minlength=4)
    ppl = yardstick.bigram_ppl(tokens, counts, prev=np.array([1, 0]), targets=np.array([2, 3]))
    assert ppl == pytest.approx(1 / math.sqrt((0.8 * 2 / 3 + 0.2 * 0.3) * 0.2))
