"""Corpus → tokenizer → binarized train/valid splits, cached by a content hash of (corpus, tokenizer, settings).

On disk, per split (`train`, `valid`), in `cache_root()/binarized/<key>/`:
  <split>.tokens.bin      token ids, uint16 when the vocab fits (else uint32), all sentences back to back
  <split>.sentences.npy   int64 (S+1,) offsets of each sentence into tokens
  <split>.documents.npy   int64 (D+1,) offsets of each document into sentences
  <split>.size_keys.npy   float64 (D,) hash of each document in [0, 1): data-size subsets take the lowest keys,
                          so a smaller subset is always contained in a larger one
plus tokenizer.json and meta.json (written last: its presence marks the folder complete). Later, what runs derive
from a split and would otherwise rebuild per run and per rank: examples/<key>/ (each input format's example index,
harness.data.formats.cached_examples, with its candidates.npy) and train.unigram_counts.npy (the yardstick's).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harness.config import DataConfig
from harness.data.corpus import Corpus, cache_root, prepare_corpus, read_documents
from harness.data.sources import file_sha256
from harness.data.tokenizer import train_tokenizer, use_tokenizer_file
from harness.errors import UserError

VERSION = 2  # bump when the binarized layout or split rule changes
MIN_VALID_DOCS = 2
ENCODE_BATCH = 20_000  # sentences per encode_batch call (Rust-parallel inside)
# The tokenizer trains on every k-th training document, k chosen so that the sample holds about this much text; a
# smaller training split is used whole (the demo's 36 MB). Byte-level BPE's merges are settled by the frequencies of
# common words, which a few hundred MB fix (the paper did not train one on its 160 GB at all: it reused GPT-2's 50K
# vocabulary, learned on WebText); training on 256 MB takes minutes and a few GB of memory, where the whole of a
# 16-160 GB corpus would take hours and more memory than a node has.
TOKENIZER_SAMPLE_BYTES = 256_000_000


@dataclass(frozen=True)
class PreparedData:
    dir: Path
    tokenizer_path: Path
    vocab_size: int
    corpus_stats: dict
    meta: dict

    def split(self, name: str) -> Split:
        return Split.load(self.dir, name, self.meta["dtype"])


@dataclass(frozen=True)
class Split:
    tokens: np.ndarray  # (N,) memmap of token ids
    sentences: np.ndarray  # (S+1,) int64
    documents: np.ndarray  # (D+1,) int64
    size_keys: np.ndarray  # (D,) float64 in [0, 1)

    @classmethod
    def load(cls, folder: Path, name: str, dtype: str) -> Split:
        return cls(
            tokens=np.memmap(folder / f"{name}.tokens.bin", dtype=dtype, mode="r"),
            sentences=np.load(folder / f"{name}.sentences.npy"),
            documents=np.load(folder / f"{name}.documents.npy"),
            size_keys=np.load(folder / f"{name}.size_keys.npy"),
        )

    @property
    def n_docs(self) -> int:
        return len(self.documents) - 1

    def doc_tokens(self) -> np.ndarray:
        """(D,) tokens per document."""
        return np.diff(self.sentences[self.documents])


def doc_hash(sentences: list[str], salt: str) -> float:
    """A document's position in [0, 1), from its content: stable across machines and runs."""
    h = hashlib.blake2b("\n".join(sentences).encode(), digest_size=8, person=salt.encode()[:16])
    return int.from_bytes(h.digest(), "big") / 2**64


def _key(corpus: Corpus, cfg: DataConfig) -> str:
    settings = [VERSION, corpus.key, *cfg.tokenizer_settings]
    if cfg.tokenizer_path:  # the file's content, not only its name
        settings.append(file_sha256(Path(cfg.tokenizer_path).expanduser()))
    elif corpus.stats["bytes"] > TOKENIZER_SAMPLE_BYTES:  # the sample's size matters only where it bites
        settings.append(TOKENIZER_SAMPLE_BYTES)
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]


def prepare(cfg: DataConfig, verbose: bool = False, workers: int | None = None) -> PreparedData:
    """Everything a training run needs from the corpus; a no-op when the cache already holds it. `workers`: the
    corpus's sentence-splitting processes (None: every core)."""
    if cfg.tokenizer_path and not Path(cfg.tokenizer_path).expanduser().is_file():  # before any work
        raise UserError(f"data.tokenizer_path={cfg.tokenizer_path}: no such file (expected a tokenizer.json)")
    corpus = prepare_corpus(cfg.corpus, decode_errors=cfg.decode_errors, verbose=verbose, workers=workers)
    kind = "given" if cfg.tokenizer_path else f"{cfg.tokenizer}-{cfg.vocab_size}"
    out = cache_root() / "binarized" / f"{kind}-{_key(corpus, cfg)}"
    if not (out / "meta.json").exists():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        binarize(corpus.path, cfg, tmp, corpus.stats, verbose)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    elif verbose:
        print(f"cached: {out}")
    meta = json.loads((out / "meta.json").read_text())
    if verbose:
        _summary(meta)
    return PreparedData(out, out / "tokenizer.json", meta["vocab_size"], corpus.stats, meta)


def binarize(corpus_path: Path, cfg: DataConfig, out: Path, corpus_stats: dict, verbose: bool) -> None:
    """Stream documents.txt three times (keys, tokenizer training, encoding), holding per-document numbers only, never
    the text: memory grows with the number of documents and sentences (8 bytes each), not with their length."""
    t0 = time.perf_counter()
    valid_keys, size_keys, n_sentences, doc_bytes = [], [], [], []
    for doc in read_documents(corpus_path):
        valid_keys.append(doc_hash(doc, "valid"))
        size_keys.append(doc_hash(doc, "size"))
        n_sentences.append(len(doc))
        doc_bytes.append(sum(len(s.encode()) for s in doc))
    n_bytes = sum(doc_bytes)
    t_keys = time.perf_counter()
    keys = np.array(valid_keys)
    # The documents hashing below valid_fraction, but at least MIN_VALID_DOCS (pair formats need two documents).
    n_valid = min(max(int((keys < cfg.valid_fraction).sum()), MIN_VALID_DOCS), len(keys) // 2)
    is_valid = np.zeros(len(keys), dtype=bool)
    is_valid[np.argsort(keys)[:n_valid]] = True
    if cfg.tokenizer_path:
        tok = use_tokenizer_file(cfg.tokenizer_path, out / "tokenizer.json")
        if verbose:
            print(f"tokenizer: {cfg.tokenizer_path} ({tok.get_vocab_size():,} tokens; data.tokenizer and "
                  f"data.vocab_size are not used)", flush=True)
    else:  # the training split only, so validation text stays unseen
        sample = tokenizer_sample(np.array(doc_bytes), ~is_valid)
        if verbose:
            print(f"training the {cfg.tokenizer} tokenizer ({cfg.vocab_size:,} tokens) on {sample.sum():,} of "
                  f"{len(keys) - n_valid:,} training documents ...", flush=True)
        tok = train_tokenizer((s for d in _split_docs(corpus_path, sample) for s in d), cfg, out / "tokenizer.json")
    t_tok = time.perf_counter()
    vocab_size = tok.get_vocab_size()
    dtype = "uint16" if vocab_size <= 2**16 else "uint32"
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # encode on every core; loader workers never tokenize
    counts = {}
    sentences, sizes = np.array(n_sentences, dtype=np.int64), np.array(size_keys, dtype=np.float64)
    for name, member in (("train", ~is_valid), ("valid", is_valid)):
        counts[name] = _write_split(tok, _split_docs(corpus_path, member), sentences[member], sizes[member], out,
                                    name, dtype, verbose)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # DataLoader workers fork later: keep tokenizers quiet
    meta = {
        "version": VERSION,
        "vocab_size": vocab_size,
        "dtype": dtype,
        "tokenizer": f"given: {cfg.tokenizer_path}" if cfg.tokenizer_path else cfg.tokenizer,
        "corpus": corpus_stats.get("name", cfg.corpus),
        "splits": counts,
        "seconds": {"keys": round(t_keys - t0, 2), "tokenizer": round(t_tok - t_keys, 2),
                    "encode_and_write": round(time.perf_counter() - t_tok, 2),
                    "total": round(time.perf_counter() - t0, 2)},
        "mb_per_s": round(n_bytes / 1e6 / (time.perf_counter() - t0), 3),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def tokenizer_sample(doc_bytes: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Which documents the tokenizer trains on: every k-th training document, in corpus order, with the smallest k
    that keeps the sample within TOKENIZER_SAMPLE_BYTES (k = 1, all of them, for a smaller training split)."""
    stride = max(1, -(-int(doc_bytes[train].sum()) // TOKENIZER_SAMPLE_BYTES))
    rank = np.cumsum(train) - 1  # position of each training document among the training documents
    return train & (rank % stride == 0)


def _split_docs(corpus_path: Path, member: np.ndarray) -> Iterator[list[str]]:
    """The documents of one split, in corpus order: those whose entry in `member` is True."""
    return (doc for doc, keep in zip(read_documents(corpus_path), member, strict=True) if keep)


def _sentence_batches(docs: Iterator[list[str]], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.extend(doc)
        while len(batch) >= n:
            yield batch[:n]
            batch = batch[n:]
    if batch:
        yield batch


def _write_split(tok, docs: Iterator[list[str]], doc_sentences: np.ndarray, size_keys: np.ndarray, out: Path,
                 name: str, dtype: str, verbose: bool) -> dict:
    n_sentences = int(doc_sentences.sum())
    lengths = np.zeros(n_sentences, dtype=np.int64)
    with open(out / f"{name}.tokens.bin", "wb") as f:
        i = 0
        for batch in tqdm(_sentence_batches(docs, ENCODE_BATCH), total=-(-n_sentences // ENCODE_BATCH),
                          desc=f"binarize {name}", unit="batch", disable=not verbose):
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                ids = np.asarray(enc.ids, dtype=dtype)
                f.write(ids.tobytes())
                lengths[i] = len(ids)
                i += 1
    assert i == n_sentences, f"{name}: encoded {i} sentences, expected {n_sentences}"
    sent_offsets = np.concatenate([[0], np.cumsum(lengths)])
    doc_offsets = np.concatenate([[0], np.cumsum(doc_sentences)]).astype(np.int64)
    np.save(out / f"{name}.sentences.npy", sent_offsets)
    np.save(out / f"{name}.documents.npy", doc_offsets)
    np.save(out / f"{name}.size_keys.npy", size_keys)
    return {"documents": len(doc_sentences), "sentences": n_sentences, "tokens": int(sent_offsets[-1])}


def _summary(meta: dict) -> None:
    s = meta["splits"]
    print(f"tokenizer: {meta['tokenizer']} with {meta['vocab_size']:,} tokens; ids stored as {meta['dtype']}")
    for name in ("train", "valid"):
        print(f"  {name}: {s[name]['documents']:,} documents, {s[name]['sentences']:,} sentences, "
              f"{s[name]['tokens']:,} tokens")

