"""Corpus → tokenizer → binarized train/valid splits, cached by a content hash of (corpus, tokenizer, settings).

On disk, per split (`train`, `valid`), in `cache_root()/binarized/<key>/`:
  <split>.tokens.bin      token ids, uint16 when the vocab fits (else uint32), all sentences back to back
  <split>.sentences.npy   int64 (S+1,) offsets of each sentence into tokens
  <split>.documents.npy   int64 (D+1,) offsets of each document into sentences
  <split>.size_keys.npy   float64 (D,) hash of each document in [0, 1): data-size subsets take the lowest keys,
                          so a smaller subset is always contained in a larger one
plus tokenizer.json and meta.json (written last: its presence marks the folder complete). Until then the tokenizer
and each sentence shard's encoding (harness.data.shards) wait in `<key>.partial/`, where a crashed run resumes; the
shards are then concatenated, so the loader sees one memmap per split whatever the shards were. Later, what runs derive
from a split and would otherwise rebuild per run and per rank: examples/<key>/ (each input format's example index,
harness.data.formats.cached_examples, with its candidates.npy) and train.unigram_counts.npy (the yardstick's).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from harness.config import DataConfig
from harness.data.corpus import REGISTRY_CORPORA, Corpus, prepare_corpus
from harness.data.shards import (
    SHARD_BYTES,
    Backend,
    blocks,
    locked,
    ordered_map,
    publish,
    run_tasks,
    sweep,
    temporary,
)
from harness.data.sources import file_sha256
from harness.data.tokenizer import train_tokenizer, use_tokenizer_file
from harness.errors import UserError
from harness.files import cache_root

VERSION = 2  # bump when the binarized layout or split rule changes
MIN_VALID_DOCS = 2


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
        """Every array memory-mapped, read-only: a run whose views are cached reads little of them, and the processes
        of a node share the pages (the sentence offsets alone are ~13 GB at 160 GB of text)."""

        def mapped(suffix: str) -> np.ndarray:  # a plain ndarray over the mapping: np.memmap's own indexing is slow
            return np.asarray(np.load(folder / f"{name}.{suffix}", mmap_mode="r"))

        return cls(
            tokens=np.memmap(folder / f"{name}.tokens.bin", dtype=dtype, mode="r"),
            sentences=mapped("sentences.npy"),
            documents=mapped("documents.npy"),
            size_keys=mapped("size_keys.npy"),
        )

    @property
    def n_docs(self) -> int:
        return len(self.documents) - 1

    def doc_tokens(self) -> np.ndarray:
        """(D,) tokens per document."""
        return np.diff(self.sentences[self.documents])


def _key(corpus: Corpus, cfg: DataConfig) -> str:
    settings = [VERSION, corpus.key, *cfg.tokenizer_settings]
    if cfg.tokenizer_path:  # the file's content, not only its name
        settings.append(file_sha256(Path(cfg.tokenizer_path).expanduser()))
    elif corpus.stats["bytes"] > _sample_bytes(cfg):  # the sample's size matters only where it bites
        settings.append(_sample_bytes(cfg))
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]


def check_paths(cfg: DataConfig) -> None:
    """data.corpus (a registry corpus or an existing path) and data.tokenizer_path (a file, when given), as `prepare`
    reads them: commands check them before torch loads, so a mistyped path is refused at once."""
    if cfg.corpus not in REGISTRY_CORPORA and not Path(cfg.corpus).expanduser().exists():
        raise UserError(f"data.corpus={cfg.corpus}: no such file or folder (expected "
                        f"{', '.join(map(repr, REGISTRY_CORPORA))} or a path to .txt/.jsonl text)")
    if cfg.tokenizer_path and not Path(cfg.tokenizer_path).expanduser().is_file():
        raise UserError(f"data.tokenizer_path={cfg.tokenizer_path}: no such file (expected a tokenizer.json)")


def prepare(cfg: DataConfig, verbose: bool = False, workers: int | None = None, backend: Backend | None = None,
            shard_bytes: int = SHARD_BYTES) -> PreparedData:
    """Everything a training run needs from the corpus; a no-op when the cache already holds it. `workers`: processes
    that gather, split and encode (None: every core; the tokenizer trains on RAYON_NUM_THREADS threads, which `data
    prepare --workers` sets), or with `backend` where the shards are split and encoded. The result depends on
    neither, nor on `shard_bytes`; a crashed prepare resumes at the shards it had not finished."""
    check_paths(cfg)  # before any work
    backend = backend or Backend(workers=workers or os.cpu_count() or 1)
    corpus = prepare_corpus(cfg.corpus, decode_errors=cfg.decode_errors, verbose=verbose, backend=backend,
                            shard_bytes=shard_bytes, splitter=cfg.splitter)
    kind = "given" if cfg.tokenizer_path else f"{cfg.tokenizer}-{cfg.vocab_size}"
    out = cache_root() / "binarized" / f"{kind}-{_key(corpus, cfg)}"
    if not (out / "meta.json").exists():
        with locked(cache_root() / "locks" / out.name):
            if not (out / "meta.json").exists():
                binarize(corpus, cfg, out, backend, verbose)
    elif verbose:
        print(f"cached: {out}")
    meta = json.loads((out / "meta.json").read_text())
    if verbose:
        _summary(meta)
    return PreparedData(out, out / "tokenizer.json", meta["vocab_size"], corpus.stats, meta)


def held_out(keys: np.ndarray, valid_fraction: float) -> np.ndarray:
    """Which documents (DOCUMENT_KEYS rows, in corpus order) form the valid split: those hashing below
    valid_fraction, but at least MIN_VALID_DOCS (pair formats need two documents) and at most half."""
    n_valid = min(max(int((keys["valid"] < valid_fraction).sum()), MIN_VALID_DOCS), len(keys) // 2)
    is_valid = np.zeros(len(keys), dtype=bool)
    is_valid[np.argsort(keys["valid"])[:n_valid]] = True
    return is_valid


def held_out_documents(cfg: DataConfig) -> Iterator[list[str]]:
    """The text of the valid split's documents, in corpus order, each as its list of sentences: text no run trains
    on, which the built fine-tuning tasks (harness.finetune.built) are made of."""
    corpus = prepare_corpus(cfg.corpus, decode_errors=cfg.decode_errors, splitter=cfg.splitter)
    valid = held_out(np.concatenate([np.load(s.with_name("keys.npy")) for s in corpus.shards]), cfg.valid_fraction)
    for document, is_valid in zip(corpus.documents(), valid, strict=True):
        if is_valid:
            yield document


def binarize(corpus: Corpus, cfg: DataConfig, out: Path, backend: Backend, verbose: bool) -> None:
    """Pass 2: read the documents' keys that splitting stored, train the tokenizer on a sample of the training split,
    encode each sentence shard into its own token file and sentence lengths (the missing ones, on `backend`), then
    concatenate them into one file per split. Holds per-document numbers only, never the text: memory grows with the
    number of documents (32 bytes each, DOCUMENT_KEYS), not with their length. The tokenizer and the encoded shards
    wait in `out`.partial until the end, so a crashed run resumes there."""
    work = out.with_name(out.name + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    for folder in (out.parent, work, work / "shards"):  # what killed runs left half-written
        sweep(folder)
    t0 = time.perf_counter()
    per_shard = [np.load(shard.with_name("keys.npy")) for shard in corpus.shards]
    shard_docs = np.cumsum([0, *map(len, per_shard)])
    keys = np.concatenate(per_shard)
    n_bytes = int(keys["bytes"].sum())
    t_keys = time.perf_counter()
    is_valid = held_out(keys, cfg.valid_fraction)
    tok = _tokenizer(corpus, cfg, keys["bytes"], is_valid, work / "tokenizer.json", verbose)
    t_tok = time.perf_counter()
    vocab_size = tok.get_vocab_size()
    dtype = "uint16" if vocab_size <= 2**16 else "uint32"
    encoded = [work / "shards" / f"{i:05d}" for i in range(len(corpus.shards))]
    encoded[0].parent.mkdir(exist_ok=True)
    run_tasks([(encode_shard, (str(shard), is_valid[shard_docs[i]:shard_docs[i + 1]], str(work / "tokenizer.json"),
                               dtype, str(encoded[i])))
               for i, shard in enumerate(corpus.shards) if not encoded[i].exists()], "encode", backend, verbose)
    tmp = temporary(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copyfile(work / "tokenizer.json", tmp / "tokenizer.json")
    counts = {}
    for name, member in (("train", ~is_valid), ("valid", is_valid)):
        counts[name] = _concatenate(encoded, name, keys["sentences"][member], keys["size"][member], tmp)
    meta = {
        "version": VERSION,
        "vocab_size": vocab_size,
        "dtype": dtype,
        "tokenizer": f"given: {cfg.tokenizer_path}" if cfg.tokenizer_path else cfg.tokenizer,
        "corpus": corpus.stats.get("name", cfg.corpus),
        "shards": len(corpus.shards),
        "splits": counts,
        "seconds": {"keys": round(t_keys - t0, 2), "tokenizer": round(t_tok - t_keys, 2),
                    "encode_and_write": round(time.perf_counter() - t_tok, 2),
                    "total": round(time.perf_counter() - t0, 2)},
        "mb_per_s": round(n_bytes / 1e6 / (time.perf_counter() - t0), 3),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: it marks the folder complete
    publish(tmp, out)
    shutil.rmtree(work, ignore_errors=True)


def _tokenizer(corpus: Corpus, cfg: DataConfig, doc_bytes: np.ndarray, is_valid: np.ndarray, path: Path,
               verbose: bool) -> Tokenizer:
    """The given tokenizer (renumbered), or one trained on the training split's sample; kept at `path` for a
    re-run and for the encoding tasks."""
    if path.exists():
        return Tokenizer.from_file(str(path))
    tmp = temporary(path)
    try:
        if cfg.tokenizer_path:
            tok = use_tokenizer_file(cfg.tokenizer_path, tmp)
            if verbose:
                print(f"tokenizer: {cfg.tokenizer_path} ({tok.get_vocab_size():,} tokens; data.tokenizer and "
                      f"data.vocab_size are not used)", flush=True)
        else:  # the training split only, so validation text stays unseen
            sample = tokenizer_sample(doc_bytes, ~is_valid, _sample_bytes(cfg))
            if verbose:
                print(f"training the {cfg.tokenizer} tokenizer ({cfg.vocab_size:,} tokens) on {sample.sum():,} of "
                      f"{(~is_valid).sum():,} training documents ...", flush=True)
            sentences = (s for doc, keep in zip(corpus.documents(), sample, strict=True) if keep for s in doc)
            os.environ["TOKENIZERS_PARALLELISM"] = "true"  # on RAYON_NUM_THREADS threads (`data prepare --workers`)
            try:
                tok = train_tokenizer(sentences, cfg, tmp)
            finally:
                os.environ["TOKENIZERS_PARALLELISM"] = "false"  # processes forked later (encoding, loaders) stay quiet
    except UserError:  # a refused tokenizer leaves nothing behind
        tmp.unlink(missing_ok=True)
        shutil.rmtree(path.parent, ignore_errors=True)
        raise
    publish(tmp, path)
    return tok


def _sample_bytes(cfg: DataConfig) -> int:
    return int(cfg.tokenizer_sample_mb * 1e6)


def tokenizer_sample(doc_bytes: np.ndarray, train: np.ndarray, sample_bytes: int) -> np.ndarray:
    """Which documents the tokenizer trains on: every k-th training document, in corpus order, with the smallest k
    that keeps the sample within `sample_bytes` (k = 1, all of them, for a smaller training split;
    data.tokenizer_sample_mb says why a sample)."""
    stride = max(1, -(-int(doc_bytes[train].sum()) // sample_bytes))
    rank = np.cumsum(train) - 1  # position of each training document among the training documents
    return train & (rank % stride == 0)


def encode_shard(documents: str, valid: np.ndarray, tokenizer: str, dtype: str, out: str, workers: int) -> None:
    """One sentence shard encoded: `out`/<split>.tokens.bin (its sentences' ids back to back) and
    `out`/<split>.lengths.npy (tokens per sentence), for train and valid; `valid` marks its validation documents. A
    task of the encode stage: blocks of the shard are encoded on `workers` processes, a thread each, and written in
    order."""
    tmp = temporary(Path(out))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    lengths: dict[str, list[np.ndarray]] = {"train": [], "valid": []}

    def items() -> Iterator[tuple[bytes, np.ndarray, str]]:
        at = 0
        for block in blocks(Path(documents), b"\n\n"):  # whole documents: a blank line ends each but the last
            n = block.count(b"\n\n") + (not block.endswith(b"\n\n"))
            yield block, valid[at:at + n], dtype
            at += n
        assert at == len(valid), f"{documents}: {at} documents, expected {len(valid)}"

    with open(tmp / "train.tokens.bin", "wb") as train, open(tmp / "valid.tokens.bin", "wb") as held_out:
        files = {"train": train, "valid": held_out}
        for done in ordered_map(_encode_block, items(), workers, _use_tokenizer, (tokenizer,)):
            for name, (ids, n) in done.items():
                files[name].write(ids.tobytes())
                lengths[name].append(n)
    for name, parts in lengths.items():
        np.save(tmp / f"{name}.lengths.npy", np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
    publish(tmp, Path(out))


_TOKENIZER: Tokenizer | None = None  # the tokenizer of an encoding process, loaded once when it starts


def _use_tokenizer(path: str) -> None:
    global _TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes are the parallelism
    _TOKENIZER = Tokenizer.from_file(path)


def _encode_block(item: tuple[bytes, np.ndarray, str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A block of whole documents, split by `valid`, as {split: (its sentences' ids back to back, tokens per
    sentence)}."""
    block, valid, dtype = item
    sentences: dict[str, list[str]] = {"train": [], "valid": []}
    documents = block.decode("utf-8").rstrip("\n").split("\n\n")
    for document, is_valid in zip(documents, valid, strict=True):
        sentences["valid" if is_valid else "train"].extend(document.split("\n"))
    done = {}
    for name, batch in sentences.items():
        # encode_batch_fast: the same ids without character offsets, which nothing here reads (tokenizers >= 0.20)
        encodings = _TOKENIZER.encode_batch_fast(batch, add_special_tokens=False)
        n = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))  # len(e): no list of its ids
        done[name] = (np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=dtype,
                                  count=int(n.sum())), n)
    return done


def _concatenate(encoded: list[Path], name: str, doc_sentences: np.ndarray, size_keys: np.ndarray, out: Path) -> dict:
    """One split's shards joined: <split>.tokens.bin copied shard after shard through a 1 MB buffer, the sentence
    offsets appended to a .npy a shard at a time (memory: one shard's sentence lengths, turned into offsets in place),
    then the document offsets and size keys."""
    n_sentences = int(doc_sentences.sum())
    at, tokens = 0, 0
    with open(out / f"{name}.tokens.bin", "wb") as f, open(out / f"{name}.sentences.npy", "wb") as offsets:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int64)), "fortran_order": False,
                  "shape": (n_sentences + 1,)}
        np.lib.format.write_array_header_1_0(offsets, header)
        offsets.write(np.zeros(1, dtype=np.int64).tobytes())
        for shard in encoded:
            with open(shard / f"{name}.tokens.bin", "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
            ends = np.load(shard / f"{name}.lengths.npy").astype(np.int64, copy=False)
            np.cumsum(ends, out=ends)
            ends += tokens
            offsets.write(memoryview(ends))
            at, tokens = at + len(ends), int(ends[-1]) if len(ends) else tokens
    assert at == n_sentences, f"{name}: encoded {at} sentences, expected {n_sentences}"
    np.save(out / f"{name}.documents.npy", np.concatenate([[0], np.cumsum(doc_sentences)]).astype(np.int64))
    np.save(out / f"{name}.size_keys.npy", size_keys)
    return {"documents": len(doc_sentences), "sentences": n_sentences, "tokens": tokens}


def _summary(meta: dict) -> None:
    s = meta["splits"]
    print(f"tokenizer: {meta['tokenizer']} with {meta['vocab_size']:,} tokens; ids stored as {meta['dtype']}")
    for name in ("train", "valid"):
        print(f"  {name}: {s[name]['documents']:,} documents, {s[name]['sentences']:,} sentences, "
              f"{s[name]['tokens']:,} tokens")

