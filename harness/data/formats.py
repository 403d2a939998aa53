"""The paper's four input formats (§4.2, Table 2) as views over one binarized split.

A view is a table of examples, each a list of token spans; nothing is copied. Special tokens are added when an
example is assembled: `<s> A </s>` or `<s> A </s> B </s>` (BERT's [CLS] A [SEP] B [SEP]), and FULL-SENTENCES
puts an extra `</s>` where a sequence crosses into the next document (fairseq's `sample_break_mode=complete`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from array import array
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from harness.config import NSP_FORMATS, DataConfig, InputFormat
from harness.data.pipeline import PreparedData, Split
from harness.errors import UserError

SEP = (-1, -1)  # a span row meaning "document separator </s>"


@dataclass(frozen=True)
class Examples:
    spans: np.ndarray  # (S, 2) int64 token ranges [start, end); a row (-1, -1) is a document separator
    offsets: np.ndarray  # (E+1,) int64: example i is spans[offsets[i]:offsets[i+1]]
    b_start: np.ndarray  # (E,) int64: span index where segment B starts (== offsets[i+1] when there is no B)
    nsp: np.ndarray | None  # (E,) int64, 1 = B really follows A, 0 = B drawn from another document
    docs: np.ndarray  # (E,) int64: the document each example starts in (for tests and analysis)
    lengths: np.ndarray  # (E,) int64: tokens including special tokens

    def __len__(self) -> int:
        return len(self.lengths)


def select_documents(split: Split, cfg: DataConfig) -> np.ndarray:
    """Document ids for the configured data size (Table 4), in corpus order; subsets nest by document hash."""
    if cfg.data_tokens:
        order = np.argsort(split.size_keys, kind="stable")
        covered = np.cumsum(split.doc_tokens()[order])
        n = int(np.searchsorted(covered, cfg.data_tokens)) + 1
        return np.sort(order[:n])
    return np.flatnonzero(split.size_keys < cfg.data_fraction)


class _Builder:
    """Accumulates examples; segments are lists of [start, end] spans (SEP for a document separator). Kept in typed
    arrays, 8 bytes a number (a list of tuples takes ~10x that), so building a view needs about the memory of the view
    itself."""

    def __init__(self, with_nsp: bool):
        self.spans = array("q")  # start, end, start, end, ...
        self.offsets, self.b_start, self.nsp, self.docs, self.lengths = array("q", [0]), *(array("q") for _ in range(4))
        self.with_nsp = with_nsp

    def add(self, doc: int, a: list, b: list | None = None, is_next: int = 0) -> None:
        for span in a:
            self.spans.extend(span)
        self.b_start.append(len(self.spans) // 2)
        n_tokens = _n_tokens(a) + 2
        if b is not None:
            for span in b:
                self.spans.extend(span)
            n_tokens += _n_tokens(b) + 1
            self.nsp.append(is_next)
        self.offsets.append(len(self.spans) // 2)
        self.docs.append(doc)
        self.lengths.append(n_tokens)

    def build(self) -> Examples:
        def numpy(values: array) -> np.ndarray:
            return np.frombuffer(values, dtype=np.int64) if values else np.zeros(0, dtype=np.int64)

        return Examples(
            spans=numpy(self.spans).reshape(-1, 2),
            offsets=numpy(self.offsets),
            b_start=numpy(self.b_start),
            nsp=numpy(self.nsp) if self.with_nsp else None,
            docs=numpy(self.docs),
            lengths=numpy(self.lengths),
        )


def _n_tokens(spans: list) -> int:
    return sum(1 if s[0] < 0 else s[1] - s[0] for s in spans)


def _pieces(split: Split, doc: int, cap: int) -> list[list[int]]:
    """A document's sentences as token spans; a sentence longer than `cap` is cut into pieces of at most `cap`."""
    out = []
    for s in range(split.documents[doc], split.documents[doc + 1]):
        start, end = int(split.sentences[s]), int(split.sentences[s + 1])
        for p in range(start, end, cap):
            out.append([p, min(p + cap, end)])
    return out


def _packed(split: Split, docs: np.ndarray, max_len: int, cross_docs: bool) -> Examples:
    """FULL-SENTENCES (cross_docs) and DOC-SENTENCES: whole sentences packed up to max_len tokens."""
    cap = max_len - 2  # room for <s> ... </s>
    out = _Builder(with_nsp=False)
    cur: list = []
    cur_len, cur_doc, pending_sep = 0, 0, False
    for d in docs:
        for piece in _pieces(split, int(d), cap):
            n = piece[1] - piece[0] + (1 if pending_sep and cur else 0)
            if cur and cur_len + n > cap:
                out.add(cur_doc, cur)
                cur, cur_len = [], 0
                n = piece[1] - piece[0]
            if not cur:
                cur_doc = int(d)
            elif pending_sep:
                cur.append(list(SEP))
            pending_sep = False
            cur.append(piece)
            cur_len += n
        if cross_docs:
            pending_sep = True
        elif cur:
            out.add(cur_doc, cur)
            cur, cur_len = [], 0
    if cur:
        out.add(cur_doc, cur)
    return out.build()


def _truncate_pair(a: list, b: list, cap: int, rng: np.random.Generator) -> None:
    """Trim one token at a time from the longer segment until the pair fits, from its front or its end at random
    (BERT's create_pretraining_data.truncate_seq_pair: "to add more randomness and avoid biases")."""
    la, lb = _n_tokens(a), _n_tokens(b)
    while la + lb > cap:
        seg = a if la > lb else b
        if rng.random() < 0.5:
            seg[0][0] += 1
            if seg[0][0] == seg[0][1]:
                seg.pop(0)
        else:
            seg[-1][1] -= 1
            if seg[-1][1] == seg[-1][0]:
                seg.pop()
        la, lb = _n_tokens(a), _n_tokens(b)


def _random_other_doc(rng: np.random.Generator, docs: np.ndarray, d: int) -> int:
    for _ in range(10):
        other = int(docs[rng.integers(len(docs))])
        if other != d:
            return other
    return int(docs[(np.searchsorted(docs, d) + 1) % len(docs)])


def _segment_pairs(split: Split, docs: np.ndarray, max_len: int, rng: np.random.Generator, p_next: float) -> Examples:
    """SEGMENT-PAIR+NSP: BERT's create_instances_from_document without short sequences (RoBERTa §4.2)."""
    cap = max_len - 3  # <s> A </s> B </s>
    out = _Builder(with_nsp=True)
    for d in map(int, docs):
        pieces = _pieces(split, d, cap)
        chunk: list = []
        chunk_len, i = 0, 0
        while i < len(pieces):
            chunk.append(list(pieces[i]))
            chunk_len += pieces[i][1] - pieces[i][0]
            if i == len(pieces) - 1 or chunk_len >= cap:
                # A chunk of one segment has no true continuation: it is always a random-next negative, never cut
                # mid-sentence (BERT's create_instances_from_document forces is_random_next; no coin is drawn).
                is_next = int(len(chunk) > 1 and rng.random() < p_next)
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) > 1 else 1
                a, b = chunk[:a_end], chunk[a_end:]
                if not is_next:
                    b = _random_segment(split, _random_other_doc(rng, docs, d), cap - _n_tokens(a), rng)
                    i -= len(chunk) - len(a)  # put the unused sentences back, as BERT does
                _truncate_pair(a, b, cap, rng)
                out.add(d, a, b, is_next)
                chunk, chunk_len = [], 0
            i += 1
    return out.build()


def _random_segment(split: Split, doc: int, target: int, rng: np.random.Generator) -> list:
    """Sentences from a random point of `doc` until `target` tokens are reached."""
    pieces = _pieces(split, doc, max(target, 1))
    start = int(rng.integers(len(pieces)))
    seg, n = [], 0
    for p in pieces[start:]:
        seg.append(list(p))
        n += p[1] - p[0]
        if n >= target:
            break
    return seg


def _sentence_pairs(split: Split, docs: np.ndarray, max_len: int, rng: np.random.Generator, p_next: float) -> Examples:
    """SENTENCE-PAIR+NSP: one natural sentence each side; half the B sentences come from another document."""
    cap = max_len - 3
    out = _Builder(with_nsp=True)
    for d in map(int, docs):
        sents = _pieces(split, d, cap)
        i = 0
        while i < len(sents) - 1:
            a = [list(sents[i])]
            if rng.random() < p_next:
                b, is_next, i = [list(sents[i + 1])], 1, i + 2
            else:
                other = _pieces(split, _random_other_doc(rng, docs, d), cap)
                b, is_next, i = [list(other[rng.integers(len(other))])], 0, i + 1
            _truncate_pair(a, b, cap, rng)
            out.add(d, a, b, is_next)
    return out.build()


def build_examples(split: Split, cfg: DataConfig, seed: int, input_format: InputFormat | None = None) -> Examples:
    """The view of `split` in `input_format` (default cfg.input_format); deterministic given `seed`."""
    fmt = input_format or cfg.input_format
    docs = select_documents(split, cfg)
    rng = np.random.default_rng([seed, 0x5E6])  # NSP pairing and cut points
    if fmt in ("segment_pair_nsp", "sentence_pair_nsp") and len(docs) < 2:
        raise UserError(f"data.corpus={cfg.corpus}: {fmt} needs at least 2 documents (random B segments come "
                        f"from another document); this split has {len(docs)}")
    if fmt == "full_sentences":
        ex = _packed(split, docs, cfg.max_seq_len, cross_docs=True)
    elif fmt == "doc_sentences":
        ex = _packed(split, docs, cfg.max_seq_len, cross_docs=False)
    elif fmt == "segment_pair_nsp":
        ex = _segment_pairs(split, docs, cfg.max_seq_len, rng, cfg.nsp_positive_prob)
    else:  # sentence_pair_nsp, the last value DataConfig admits
        ex = _sentence_pairs(split, docs, cfg.max_seq_len, rng, cfg.nsp_positive_prob)
    if len(ex) == 0:
        raise UserError(f"data.corpus={cfg.corpus}: documents too short for {fmt} (it needs documents with at "
                        f"least 2 sentences); got no examples from {len(docs)} documents")
    return ex


def cached_examples(prepared: PreparedData, split_name: str, cfg: DataConfig, seed: int,
                    input_format: InputFormat | None = None) -> tuple[Examples, Path]:
    """`build_examples` of a prepared split, built once and kept beside the binarized data in
    examples/<key>/ (one .npy per array, memory-mapped when read), so runs and ranks that share the view share the
    work: the key holds what the view depends on (split, format, sequence length, data size, and for the NSP
    formats the seed and pairing rate). Returns the examples and their folder, where callers keep more per-view
    arrays (`cached_array`)."""
    fmt = input_format or cfg.input_format
    what = [split_name, fmt, cfg.max_seq_len, cfg.data_fraction, cfg.data_tokens]
    if fmt in NSP_FORMATS:  # only the NSP formats draw (pairs, cut points, which end a pair is trimmed from)
        what += [seed, cfg.nsp_positive_prob, "trim-either-end"]  # the marker: views from before that are stale
    folder = prepared.dir / "examples" / hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
    names = [f.name for f in fields(Examples)]
    if not (folder / "done").exists():
        ex = build_examples(prepared.split(split_name), cfg, seed, fmt)
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name in names:
            if getattr(ex, name) is not None:
                np.save(tmp / f"{name}.npy", getattr(ex, name))
        (tmp / "done").write_text(json.dumps(what) + "\n")
        try:
            tmp.rename(folder)
        except OSError:  # another rank or run finished the same view first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") if (folder / f"{n}.npy").exists() else None
              for n in names}
    return Examples(**arrays), folder


def cached_array(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """np.load(path), computing and saving it (atomically) the first time."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
        np.save(tmp, compute())
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")
