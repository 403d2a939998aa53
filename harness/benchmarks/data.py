"""Data benchmarks on the demo corpus: preparation end to end against the tokenizer's own encoding rate, the sentence
splitters alone, and loader throughput (dynamic masking).

Preparation (issue 32) is what a user waits for: `python -m harness data prepare --config configs/demo.yaml
--workers 1` in a fresh process and an empty cache (the registry archives already fetched), start-up, gathering,
Punkt's training, splitting, tokenizer training, encoding and writing included: `preprocess_mb_per_s`. Beside it the
ceiling no preparation can pass, the same text through the prepared tokenizer's own `encode_batch` on one thread
(`encode_ceiling_mb_per_s`, text in memory, in a fresh process, as the encode stage runs it), measured before and after
the runs it is compared with (a machine shared with others drifts; the mean of the two is the ceiling), and their
ratio, `preprocess_vs_ceiling`. The same ratio in CPU seconds (user + system of the child and its workers, which other
tenants inflate less than wall time) is `preprocess_cpu_vs_ceiling`. Each stage's seconds and share of the wall clock
come from the run's own records (corpus timing.json, binarized meta.json); what they leave is start-up, the cache
lookups and the final concatenation. The encode stage calls `encode_batch_fast` (the same ids, no character offsets):
its own ceiling, `encode_fast_ceiling_mb_per_s`, is measured first and last.

The same for data.splitter=blingfire (the opt-in splitter); for the demo's text as a user's own files of prose
(`own_prose`: .jsonl, a document a line, so gathering reads text instead of parsing the registry's archives, and Punkt
splits it again); and for text already one sentence per line with its tokenizer given (`presplit_given`: the demo's
sentences as .txt files and its trained tokenizer as data.tokenizer_path: nothing to split or train, the rate a corpus
at scale sees) on 1 and 2 workers. The splitters alone (`splitters`) run in this process on the demo's paragraphs as
the corpus spools them: Punkt's training and splitting, nltk's on the first PARAGRAPH_SAMPLE characters for
comparison, and blingfire, with blingfire's boundary agreement with Punkt (the share of boundaries both make, of those
either makes). `load_avg` is the machine's 1-minute load at the start and the end: above the core count, wall-clock
figures are slowed by other processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from harness.config import DataConfig, OptimConfig, load_config
from harness.data.corpus import _normalise, _registry_stream, prepare_corpus
from harness.data.datamodule import PretrainDataModule
from harness.data.pipeline import prepare
from harness.data.punkt import Punkt
from harness.files import cache_root

REPO = Path(__file__).resolve().parents[2]
SEQ_LEN = 128  # the pretraining benchmark's sequence length
MICRO_BATCH = 32
BATCHES = 300
PARAGRAPH_SAMPLE = 3_000_000  # characters nltk's Punkt splits for the comparison (~1 s for ours, ~4 s for nltk's)
PRESPLIT_FILES = 8  # the demo's sentences as this many .txt files
RSS_SAMPLE_S = 0.1
CEILING_BATCH = 10_000  # sentences per encode_batch call: ~1.3 MB, as the encode stage's blocks; bounded memory


def run() -> dict:
    load = [round(os.getloadavg()[0], 2)]
    out = _preparation() | _loader()
    load.append(round(os.getloadavg()[0], 2))
    return {**out, "load_avg": {"start": load[0], "end": load[1], "cores": os.cpu_count()}}


def _preparation() -> dict:
    # The demo as `make data` prepares it (the same bytes as every run below makes): its sentences and tokenizer for
    # the ceiling, measured first, between the blingfire and the presplit runs, and last.
    demo = load_config(REPO / "configs" / "demo.yaml").data
    tokenizer = prepare(demo).tokenizer_path
    (documents,) = prepare_corpus(demo.corpus).shards
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        tmp = Path(tmp)
        ceiling = [encode_ceiling(tokenizer, documents)]
        fast = [encode_ceiling(tokenizer, documents, fast=True)]
        default = prepare_run(tmp / "default", ["--config", "configs/demo.yaml"])
        blingfire = prepare_run(tmp / "blingfire", ["--config", "configs/demo.yaml", "data.splitter=blingfire"])
        prose = _write_documents(documents, tmp / "prose", prose=True)
        own = prepare_run(tmp / "own_prose", ["--config", "configs/demo.yaml", "--corpus", str(prose)])
        ceiling.append(encode_ceiling(tokenizer, documents))
        presplit = _write_documents(documents, tmp / "presplit", prose=False)
        given = ["--config", "configs/demo.yaml", "--corpus", str(presplit), f"data.tokenizer_path={tokenizer}"]
        one = prepare_run(tmp / "given_1", given)
        two = prepare_run(tmp / "given_2", given, workers=2)
        ceiling.append(encode_ceiling(tokenizer, documents))
        fast.append(encode_ceiling(tokenizer, documents, fast=True))
        startup = prepare_run(tmp / "default", ["--config", "configs/demo.yaml"], fresh=False)  # a cache hit
    mb = default["corpus_mb"]

    def versus(r: dict, first: int) -> dict:
        """A run against the ceiling measured before (ceiling[first]) and after it."""
        seconds = (ceiling[first]["seconds"] + ceiling[first + 1]["seconds"]) / 2
        cpu_s = (ceiling[first]["cpu_s"] + ceiling[first + 1]["cpu_s"]) / 2
        return {"mb_per_s": round(r["corpus_mb"] / r["wall_s"], 3),
                "vs_ceiling": round(seconds / r["wall_s"] * r["corpus_mb"] / mb, 3),
                "cpu_vs_ceiling": round(cpu_s / r["cpu_s"] * r["corpus_mb"] / mb, 3),
                **{k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mb", "stages_s", "shares")}}

    ours = versus(default, 0)
    return {
        "corpus_mb": mb,
        "preprocess_s": default["wall_s"],
        "preprocess_mb_per_s": ours["mb_per_s"],
        "encode_ceiling_mb_per_s": round(mb / ((ceiling[0]["seconds"] + ceiling[1]["seconds"]) / 2), 3),
        "encode_ceiling_runs": ceiling,
        "encode_fast_ceiling_mb_per_s": round(mb / ((fast[0]["seconds"] + fast[1]["seconds"]) / 2), 3),
        "encode_fast_ceiling_runs": fast,
        "preprocess_vs_ceiling": ours["vs_ceiling"],
        "preprocess_cpu_vs_ceiling": ours["cpu_vs_ceiling"],
        "preprocess_cpu_s": default["cpu_s"],
        "preprocess_stages_s": default["stages_s"],
        "preprocess_stage_shares": default["shares"],
        "preprocess_peak_rss_mb": default["peak_rss_mb"],
        "startup_and_cache_hit_s": startup["wall_s"],
        "blingfire": versus(blingfire, 0),
        "own_prose": versus(own, 0),
        "presplit_given": {"1_worker": versus(one, 1), "2_workers": versus(two, 1),
                           "speedup_2_workers": round(one["wall_s"] / two["wall_s"], 2)},
        "splitters": splitters_alone(),
    }


def prepare_run(cache: Path, args: list[str], workers: int = 1, fresh: bool = True, cwd: Path = REPO) -> dict:
    """`python -m harness data prepare ARGS --workers N` in a fresh process, in `cache` (created empty, the registry
    archives linked in, unless not `fresh`): wall and CPU seconds, peak RSS of the largest process, and the stages
    its records time."""
    if fresh:
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        (cache / "downloads").symlink_to(cache_root() / "downloads")
    env = {**os.environ, "HARNESS_CACHE": str(cache)}
    env.pop("RAYON_NUM_THREADS", None)  # `data prepare` sets it from --workers
    cmd = [sys.executable, "-m", "harness", "data", "prepare", *args, "--workers", str(workers)]
    log = cache.with_name(cache.name + ".log")
    largest = 0
    with open(log, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        while True:
            # its own usage with its reaped workers'; not ru_maxrss, which starts at this (torch-sized) process's
            # RSS, as a forked child's does: the resident memory of its processes is sampled instead
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                largest = max(largest, *(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
            except psutil.Error:  # a worker ended between listing and reading
                pass
            time.sleep(RSS_SAMPLE_S)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {log.read_text()[-2000:]}")
    corpus = next((cache / "corpus").glob("*/stats.json")).parent
    meta = json.loads(next((cache / "binarized").glob("*/meta.json")).read_text())
    timing = json.loads((corpus / "timing.json").read_text())["seconds"]
    stages = {"gather": timing["read"], "punkt_training": timing["punkt_training"], "splitting": timing["splitting"],
              "tokenizer": meta["seconds"]["tokenizer"], "encode_and_write": meta["seconds"]["encode_and_write"]}
    stages["start_up_and_rest"] = wall - sum(stages.values())
    return {"corpus_mb": round(json.loads((corpus / "stats.json").read_text())["bytes"] / 1e6, 2),
            "wall_s": round(wall, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(largest / 2**20),  # of the largest of its processes, sampled
            "stages_s": {k: round(v, 2) for k, v in stages.items()},
            "shares": {k: round(v / wall, 3) for k, v in stages.items()}}


def encode_ceiling(tokenizer: Path, documents: Path, fast: bool = False) -> dict:
    """The tokenizer's own one-thread encode_batch (`fast`: encode_batch_fast, no character offsets, as the encode
    stage calls) over every sentence of `documents`, timed in a fresh process (rayon reads its thread count once per
    process) with the text already in memory: {seconds, cpu_s}."""
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "harness.benchmarks.data", str(tokenizer), str(documents),
                           "encode_batch_fast" if fast else "encode_batch"], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ceiling_main(tokenizer: str, documents: str, method: str) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer)
    encode = getattr(tok, method)
    sentences = [line for line in Path(documents).read_text(encoding="utf-8").split("\n") if line]
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(sentences), CEILING_BATCH):
        encode(sentences[start:start + CEILING_BATCH], add_special_tokens=False)
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}))


def _write_documents(documents: Path, folder: Path, prose: bool) -> Path:
    """The documents of a documents.txt (one sentence per line, blank lines between documents) as a user's corpus in
    PRESPLIT_FILES files: .txt of the same layout (nothing to split), or `prose`, .jsonl with each document's sentences
    joined by spaces (Punkt splits them again)."""
    folder.mkdir()
    docs = documents.read_text(encoding="utf-8").rstrip("\n").split("\n\n")
    per_file = -(-len(docs) // PRESPLIT_FILES)
    for i in range(PRESPLIT_FILES):
        part = docs[i * per_file:(i + 1) * per_file]
        if prose:
            text = "".join(json.dumps({"text": d.replace("\n", " ")}, ensure_ascii=False) + "\n" for d in part)
            (folder / f"part_{i}.jsonl").write_text(text, encoding="utf-8")
        else:
            (folder / f"part_{i}.txt").write_text("".join(d + "\n\n" for d in part), encoding="utf-8")
    return folder


def splitters_alone() -> dict:
    """Punkt (ours and, on a sample, nltk's) and blingfire on the demo's paragraphs in this process, and blingfire's
    agreement with Punkt's boundaries."""
    import blingfire

    t0 = time.perf_counter()
    paragraphs = [u for _, presplit, units in _registry_stream("demo", cache_root() / "downloads") if not presplit
                  for u in map(_normalise, units) if u]
    gather_s = time.perf_counter() - t0
    mb = sum(len(p.encode()) for p in paragraphs) / 1e6
    stride = max(1, -(-sum(map(len, paragraphs)) // 3_000_000))  # the corpus's Punkt sample (SAMPLE_BYTES)
    sample = "\n\n".join(paragraphs[::stride])
    t0 = time.perf_counter()
    punkt = Punkt.train(sample)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = [punkt.spans(p) for p in paragraphs]
    punkt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = [blingfire.text_to_sentences(p).split("\n") for p in paragraphs]
    blingfire_s = time.perf_counter() - t0
    head, chars = [], 0
    for p in paragraphs:
        head.append(p)
        chars += len(p)
        if chars >= PARAGRAPH_SAMPLE:
            break
    from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTrainer  # the reference: after the timings above

    t0 = time.perf_counter()
    trainer = PunktTrainer()
    trainer.train(sample, finalize=True)
    nltk_train_s = time.perf_counter() - t0
    reference = PunktSentenceTokenizer(trainer.get_params())
    t0 = time.perf_counter()
    for p in head:
        reference.tokenize(p)
    nltk_s = time.perf_counter() - t0
    fresh = Punkt.from_learned(punkt.learned())  # its memo of decided contexts empty, as nltk's has none
    t0 = time.perf_counter()
    for p in head:
        fresh.tokenize(p)
    ours_head_s = time.perf_counter() - t0
    both = only_punkt = only_blingfire = 0
    for p, spans, sentences in zip(paragraphs, ours, theirs, strict=True):
        a, b = _boundaries_punkt(p, spans), _boundaries(sentences)
        both += len(a & b)
        only_punkt += len(a - b)
        only_blingfire += len(b - a)
    return {
        "paragraphs_mb": round(mb, 2), "gather_s": round(gather_s, 2),
        "punkt_training_s": round(train_s, 2), "nltk_punkt_training_s": round(nltk_train_s, 2),
        "punkt_mb_per_s": round(mb / punkt_s, 2), "blingfire_mb_per_s": round(mb / blingfire_s, 2),
        "punkt_vs_nltk_on_sample": round(nltk_s / ours_head_s, 2),
        "punkt_training_vs_nltk": round(nltk_train_s / train_s, 2),
        "blingfire_agreement": {
            "identical_share": round(both / (both + only_punkt + only_blingfire), 4),
            "punkt_boundaries_kept": round(both / (both + only_punkt), 4),
            "blingfire_boundaries_punkt_makes": round(both / (both + only_blingfire), 4),
            "punkt_boundaries": both + only_punkt, "blingfire_boundaries": both + only_blingfire},
    }


def _boundaries_punkt(text: str, spans: list[tuple[int, int]]) -> set[int]:
    """Where Punkt's sentences end, counted in non-space characters of the paragraph (the last end not counted)."""
    return _boundaries([text[a:b] for a, b in spans])


def _boundaries(sentences: list[str]) -> set[int]:
    """Where each sentence but the last ends, in non-space characters from the paragraph's start: the same point for
    two splitters whatever whitespace each keeps at the cut."""
    ends, at = set(), 0
    for s in sentences[:-1]:
        at += len("".join(s.split()))
        ends.add(at)
    return ends


def _loader() -> dict:
    cfg = DataConfig(corpus="demo", max_seq_len=SEQ_LEN, masking="dynamic", input_format="full_sentences")
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
        "view_setup_s": round(setup_s, 2),
        "seq_len": SEQ_LEN,
        "loader_seq_per_s": round(seqs / loader_s, 1),
        "loader_tokens_per_s": round(seqs * SEQ_LEN / loader_s, 1),
    }


if __name__ == "__main__":  # the ceiling's own process (encode_ceiling)
    _ceiling_main(*sys.argv[1:])
