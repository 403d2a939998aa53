"""Data benchmarks on the demo corpus: preprocessing throughput and loader throughput (dynamic masking)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from harness.config import DataConfig, OptimConfig
from harness.data.corpus import prepare_corpus
from harness.data.datamodule import PretrainDataModule
from harness.data.pipeline import binarize, prepare
from harness.data.shards import Backend

SEQ_LEN = 128  # the pretraining benchmark's sequence length
MICRO_BATCH = 32
BATCHES = 300


def run() -> dict:
    cfg = DataConfig(corpus="demo", max_seq_len=SEQ_LEN, masking="dynamic", input_format="full_sentences")
    corpus = prepare_corpus(cfg.corpus)
    mb = corpus.stats["bytes"] / 1e6
    with tempfile.TemporaryDirectory() as tmp:  # re-run tokenizer training + binarization, bypassing the cache
        t0 = time.perf_counter()
        binarize(corpus, cfg, Path(tmp) / "out", Backend(workers=os.cpu_count() or 1), verbose=False)
        preprocess_s = time.perf_counter() - t0
    prepared = prepare(cfg)
    dm = PretrainDataModule(prepared, cfg, OptimConfig(batch_size=MICRO_BATCH, micro_batch_size=MICRO_BATCH), seed=0,
                            num_workers=2)
    t0 = time.perf_counter()
    dm.setup()
    setup_s = time.perf_counter() - t0
    it = iter(dm.train_dataloader())
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    seqs = sum(next(it)["input_ids"].shape[0] for _ in range(BATCHES))
    loader_s = time.perf_counter() - t0
    return {
        "corpus_mb": round(mb, 2),
        "preprocess_s": round(preprocess_s, 2),
        "preprocess_mb_per_s": round(mb / preprocess_s, 3),
        "view_setup_s": round(setup_s, 2),
        "seq_len": SEQ_LEN,
        "loader_seq_per_s": round(seqs / loader_s, 1),
        "loader_tokens_per_s": round(seqs * SEQ_LEN / loader_s, 1),
    }
