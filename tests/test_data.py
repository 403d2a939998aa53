"""The data half on the real tiny corpus: formats, masking, token budgets, determinism, caching, bad input."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from harness.config import DataConfig, OptimConfig
from harness.data.corpus import prepare_corpus
from harness.data.datamodule import MaskedLMDataset, PretrainDataModule, candidate_counts, plan_epoch
from harness.data.formats import _truncate_pair, build_examples, select_documents
from harness.data.masking import is_candidate, mask_tokens
from harness.data.pipeline import Split, prepare
from harness.data.shards import SHARD_BYTES
from harness.data.tokenizer import train_tokenizer
from harness.errors import UserError
from harness.files import cache_root
from harness.tokens import BOS, EOS, IGNORE_INDEX, MASK, SPECIAL_TOKENS

FORMATS = ["segment_pair_nsp", "sentence_pair_nsp", "full_sentences", "doc_sentences"]
CFG = DataConfig(corpus="tiny", vocab_size=2000, max_seq_len=64)


@pytest.fixture(scope="session")
def prepared():
    return prepare(CFG)


@pytest.fixture(scope="session")
def train(prepared):
    return prepared.split("train")


def doc_of(split, token_pos: np.ndarray) -> np.ndarray:
    """The document holding each token position."""
    sentence = np.searchsorted(split.sentences, token_pos, side="right") - 1
    return np.searchsorted(split.documents, sentence, side="right") - 1


def content_spans(ex, i):
    rows = ex.spans[ex.offsets[i] : ex.offsets[i + 1]]
    return rows, rows[:, 0] >= 0


def test_prepared_layout(prepared, train):
    assert prepared.vocab_size <= 2000 and prepared.meta["dtype"] == "uint16"
    assert train.n_docs > 50 and len(train.tokens) == train.sentences[-1] > 200_000
    valid = prepared.split("valid")
    assert valid.n_docs >= 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_sequence_exceeds_max_length(prepared, train, fmt):
    cfg = replace(CFG, input_format=fmt)
    ex = build_examples(train, cfg, seed=0)
    assert ex.lengths.max() <= cfg.max_seq_len
    ds = MaskedLMDataset(train, ex, cfg, prepared.vocab_size, seed=0)
    for i in range(0, len(ex), max(1, len(ex) // 300)):
        ids, _ = ds.assemble(i)
        assert len(ids) == ex.lengths[i] and ids[0] == BOS and ids[-1] == EOS


def test_doc_sentences_never_cross_a_document(train):
    ex = build_examples(train, replace(CFG, input_format="doc_sentences"), seed=0)
    for i in range(len(ex)):
        rows, _ = content_spans(ex, i)
        assert (rows[:, 0] >= 0).all(), "DOC-SENTENCES never needs a document separator"
        docs = doc_of(train, np.concatenate([rows[:, 0], rows[:, 1] - 1]))
        assert (docs == docs[0]).all(), f"example {i} crosses documents {set(docs)}"


def test_full_sentences_separator_at_each_boundary(prepared, train):
    cfg = replace(CFG, input_format="full_sentences")
    ex = build_examples(train, cfg, seed=0)
    ds = MaskedLMDataset(train, ex, cfg, prepared.vocab_size, seed=0)
    crossings = 0
    for i in range(len(ex)):
        rows, content = content_spans(ex, i)
        docs = doc_of(train, rows[content, 0])
        changes = int((np.diff(docs) != 0).sum())
        assert (~content).sum() == changes, f"example {i}: {changes} boundaries, {(~content).sum()} separators"
        # each separator sits exactly between spans of two different documents
        for j in np.flatnonzero(~content):
            assert 0 < j < len(rows) - 1 and doc_of(train, rows[j - 1 : j, 0]) != doc_of(train, rows[j + 1 : j + 2, 0])
        ids, _ = ds.assemble(i)
        assert (ids[1:-1] == EOS).sum() == changes
        crossings += changes
    assert crossings > 10


@pytest.mark.parametrize("fmt", ["segment_pair_nsp", "sentence_pair_nsp"])
def test_nsp_labels_balanced_and_negatives_from_another_document(train, fmt):
    # SEGMENT-PAIR at 256 tokens: at 64 most chunks are one sentence, which is always a negative (as in BERT), so
    # positives fall to ~41%; at 256 few chunks are, and the coin drawn for the others gives ~49%.
    cfg = replace(CFG, input_format=fmt, max_seq_len=256 if fmt == "segment_pair_nsp" else CFG.max_seq_len)
    labels, seed = [], 0
    while len(labels) < 10_000:
        ex = build_examples(train, cfg, seed=seed)
        labels.extend(ex.nsp.tolist())
        if seed == 0:  # the B segment of a negative comes from another document, of a positive from the same
            for i in range(len(ex)):
                rows = ex.spans[ex.offsets[i] : ex.offsets[i + 1]]
                a, b = rows[: ex.b_start[i] - ex.offsets[i]], rows[ex.b_start[i] - ex.offsets[i] :]
                same = doc_of(train, a[:1, 0])[0] == doc_of(train, b[:1, 0])[0]
                assert same == bool(ex.nsp[i]), f"example {i}"
        seed += 1
    assert abs(np.mean(labels[:10_000]) - 0.5) <= 0.02


def test_a_one_sentence_chunk_is_a_random_next_negative():
    """A chunk holding one segment has no true continuation: BERT makes it a negative with B from another
    document, never a positive cut mid-sentence. Document 0 here is one 20-token sentence; 1 and 2 have several."""
    lengths = [[20], [8, 9, 7, 10], [6, 12, 9]]  # tokens per sentence, per document
    bounds = np.cumsum([0] + [n for doc in lengths for n in doc])
    split = Split(tokens=np.arange(bounds[-1]), sentences=bounds,
                  documents=np.cumsum([0] + [len(doc) for doc in lengths]), size_keys=np.zeros(len(lengths)))
    cfg = replace(CFG, input_format="segment_pair_nsp", max_seq_len=64)
    for seed in range(20):
        ex = build_examples(split, cfg, seed=seed)
        (i,) = np.flatnonzero(ex.docs == 0)
        rows = ex.spans[ex.offsets[i] : ex.offsets[i + 1]]
        a, b = rows[: ex.b_start[i] - ex.offsets[i]], rows[ex.b_start[i] - ex.offsets[i] :]
        assert ex.nsp[i] == 0 and a.tolist() == [[0, 20]], f"seed {seed}"  # the whole sentence, uncut
        assert len(b) and (doc_of(split, b[:, 0]) != 0).all(), f"seed {seed}"


def test_a_pair_that_does_not_fit_is_trimmed_from_either_end_at_random():
    """BERT's truncate_seq_pair trims the longer segment a token at a time, from its front or its end by a coin flip.
    A of 10 tokens (sentences 0-3 and 3-10) and B of 4 must fit in 8, so A loses 6. Coins 0.1 (front), 0.9 (end),
    0.1, 0.1, 0.9, 0.9: front 0->1, end 10->9, front 1->2, 2->3 (the first sentence is gone), end 9->8, 8->7."""

    class Coins:
        def __init__(self, draws: list[float]):
            self.draws = iter(draws)

        def random(self) -> float:
            return next(self.draws)

    a, b = [[0, 3], [3, 10]], [[20, 24]]
    _truncate_pair(a, b, 8, Coins([0.1, 0.9, 0.1, 0.1, 0.9, 0.9]))
    assert a == [[3, 7]] and b == [[20, 24]]


def test_masking_rates_over_a_million_tokens():
    rng = np.random.default_rng(0)
    selected = masked = randomised = kept = candidates = 0
    for i in range(8_000):
        ids = np.concatenate([[BOS], rng.integers(5, 2000, size=126), [EOS]])
        inputs, labels = mask_tokens(ids, CFG, 2000, seed=1, index=i, key=0)
        sel = labels != IGNORE_INDEX
        assert not sel[0] and not sel[-1], "special tokens are never selected"
        candidates += 126
        selected += sel.sum()
        masked += (inputs[sel] == MASK).sum()
        kept += (inputs[sel] == ids[sel]).sum()
        randomised += ((inputs[sel] != MASK) & (inputs[sel] != ids[sel])).sum()
    assert candidates >= 1_000_000
    assert abs(selected / candidates - 0.15) <= 0.005
    # a random replacement can draw the original token (1 in ~2000), which then counts as kept
    assert abs(masked / selected - 0.8) <= 0.005
    assert abs(randomised / selected - 0.1) <= 0.005
    assert abs(kept / selected - 0.1) <= 0.005


def test_padding_is_never_masked(prepared, train):
    cfg = replace(CFG, input_format="sentence_pair_nsp")
    dm = PretrainDataModule(prepared, cfg, OptimConfig(batch_size=32, micro_batch_size=32), seed=0, num_workers=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["attention_mask"] is not None
    assert (batch["labels"][~batch["attention_mask"]] == IGNORE_INDEX).all()


def masks_by_epoch(prepared, train, masking, epochs):
    cfg = replace(CFG, masking=masking, static_masks=3)
    ex = build_examples(train, cfg, seed=0)
    ds = MaskedLMDataset(train, ex, cfg, prepared.vocab_size, seed=0)
    from harness.data.masking import epoch_key

    return [np.concatenate([ds[(i, epoch_key(cfg, e))]["labels"] for i in range(20)]) for e in range(epochs)]


def test_static_masks_repeat_every_k_epochs(prepared, train):
    masks = masks_by_epoch(prepared, train, "static", 7)
    for e in range(7):
        for f in range(7):
            assert np.array_equal(masks[e], masks[f]) == (e % 3 == f % 3)


def test_dynamic_masks_differ_every_epoch(prepared, train):
    masks = masks_by_epoch(prepared, train, "dynamic", 7)
    assert all(not np.array_equal(masks[e], masks[f]) for e in range(7) for f in range(e))


def batches(dm, n):
    it = iter(dm.train_dataloader())
    return [next(it) for _ in range(n)]


def test_identical_batches_with_0_and_2_workers(prepared):
    cfg = replace(CFG, input_format="segment_pair_nsp")
    optim = OptimConfig(batch_size=16, micro_batch_size=8)
    runs = []
    for workers in (0, 2):
        dm = PretrainDataModule(prepared, cfg, optim, seed=3, num_workers=workers)
        dm.setup()
        dm.train_sampler.set_epoch(2)
        runs.append(batches(dm, 6))
    for a, b in zip(*runs):
        for key in ("input_ids", "labels", "token_type_ids", "nsp_labels"):
            assert np.array_equal(a[key].numpy(), b[key].numpy()), key


def test_ranks_split_each_step_disjointly(prepared):
    optim = OptimConfig(batch_size=16, micro_batch_size=4)
    samplers = []
    for world, rank in ((1, 0), (2, 0), (2, 1)):
        dm = PretrainDataModule(prepared, CFG, optim, seed=0, num_workers=0, world_size=world, rank=rank)
        dm.setup()
        samplers.append([[item[0] for item in mb] for mb in dm.train_sampler])
    single, r0, r1 = samplers
    assert len(r0) == len(r1) == len(single) // 2  # 4 micro-batches per step on 1 rank, 2 per rank on 2 ranks
    for step in range(len(r0) // 2):
        a = set(sum(r0[2 * step : 2 * step + 2], []))
        b = set(sum(r1[2 * step : 2 * step + 2], []))
        assert not a & b and a | b == set(sum(single[4 * step : 4 * step + 4], []))


def test_every_micro_batch_carries_its_whole_steps_totals(prepared):
    """step_predicted / step_sequences: the masked tokens and sequences of all micro-batches of both ranks."""
    cfg = replace(CFG, input_format="sentence_pair_nsp")  # token-budget steps: unequal micro-batches
    optim = OptimConfig(batch_size=16, micro_batch_size=4)  # 2 ranks x 2 micro-batches per step
    per_rank = []
    for rank in (0, 1):
        dm = PretrainDataModule(prepared, cfg, optim, seed=0, num_workers=0, world_size=2, rank=rank)
        dm.setup()
        dm.train_sampler.set_epoch(1)
        per_rank.append(batches(dm, 6))
    for step in range(3):
        micro = [b for r in per_rank for b in r[2 * step : 2 * step + 2]]
        predicted = [int((b["labels"] != IGNORE_INDEX).sum()) for b in micro]
        sequences = [b["input_ids"].size(0) for b in micro]
        assert len(set(predicted)) > 1 and len(set(sequences)) > 1  # a per-micro-batch mean would weigh them unevenly
        assert {b["step_predicted"] for b in micro} == {sum(predicted)}
        assert {b["step_sequences"] for b in micro} == {sum(sequences)}


def test_candidate_counts_follow_the_masking_rule(prepared, train):
    """Also when the text holds special ids (a literal "<s>" or "<mask>" in a document is one token)."""
    tokens = np.array(train.tokens)
    tokens[::97], tokens[5::89] = MASK, BOS
    split = replace(train, tokens=tokens)
    for fmt in ("doc_sentences", "segment_pair_nsp"):
        ex = build_examples(split, replace(CFG, input_format=fmt), seed=0)
        ds = MaskedLMDataset(split, ex, CFG, prepared.vocab_size, seed=0)
        expected = [int(is_candidate(ds.assemble(i)[0]).sum()) for i in range(len(ex))]
        assert candidate_counts(split.tokens, ex).tolist() == expected


def test_mean_tokens_per_step_equal_across_formats(prepared, train):
    optim = OptimConfig(batch_size=32, micro_batch_size=32)
    cfg = replace(CFG, max_seq_len=128)  # long enough that sentence pairs are much shorter than packed sequences
    means = {}
    for fmt in FORMATS:
        dm = PretrainDataModule(prepared, replace(cfg, input_format=fmt), optim, seed=0, num_workers=0)
        dm.setup()
        steps = dm.train_sampler.steps()
        means[fmt] = np.mean([dm.train_examples.lengths[s].sum() for s in steps])
    ref = means["full_sentences"]
    assert all(abs(m / ref - 1) <= 0.05 for m in means.values()), means
    # and the short formats really do get more sequences per step
    dm = PretrainDataModule(prepared, replace(cfg, input_format="sentence_pair_nsp"), optim, seed=0, num_workers=0)
    dm.setup()
    assert np.mean([len(s) for s in dm.train_sampler.steps()]) > 1.2 * optim.batch_size


def test_plan_is_a_function_of_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(10, 64, size=1000)
    a = plan_epoch(lengths, 0, 1, 16, token_budget=600)
    assert [x.tolist() for x in a] == [x.tolist() for x in plan_epoch(lengths, 0, 1, 16, token_budget=600)]
    assert [x.tolist() for x in a] != [x.tolist() for x in plan_epoch(lengths, 0, 2, 16, token_budget=600)]


def test_data_size_subsets_nest(train):
    half = set(select_documents(train, replace(CFG, data_fraction=0.5)))
    quarter = set(select_documents(train, replace(CFG, data_fraction=0.25)))
    assert quarter < half < set(range(train.n_docs))
    by_tokens = select_documents(train, replace(CFG, data_tokens=50_000))
    assert train.doc_tokens()[by_tokens].sum() >= 50_000
    assert set(by_tokens) <= set(select_documents(train, replace(CFG, data_tokens=100_000)))


def test_second_prepare_is_a_no_op(prepared):
    meta = prepared.dir / "meta.json"
    before = meta.stat().st_mtime_ns
    again = prepare(CFG)
    assert again.dir == prepared.dir and meta.stat().st_mtime_ns == before


BINARIZED = ["tokenizer.json"] + [f"{split}.{part}" for split in ("train", "valid")
                                  for part in ("tokens.bin", "sentences.npy", "documents.npy", "size_keys.npy")]


def fresh_cache(path, monkeypatch):
    """An empty cache that shares the session's downloads, so nothing is fetched twice."""
    path.mkdir()
    (path / "downloads").symlink_to(cache_root() / "downloads")
    monkeypatch.setenv("HARNESS_CACHE", str(path))


def test_sharded_output_equals_single_process_output(prepared, tmp_path, monkeypatch):
    """tiny prepared by one process as one shard, then in shards of 0.3 MB (five) on 1 and on 2 workers, each in a
    fresh cache: the same files byte for byte, so the same tokens, sentence offsets, document offsets and size keys
    (and, being the same as the session's, the same tables)."""
    files = {}
    for workers, shard_bytes in ((1, SHARD_BYTES), (1, 300_000), (2, 300_000)):
        fresh_cache(tmp_path / f"cache_{workers}_{shard_bytes}", monkeypatch)
        p = prepare(CFG, workers=workers, shard_bytes=shard_bytes)
        assert p.meta["shards"] == (1 if shard_bytes == SHARD_BYTES else 5)
        files[workers, shard_bytes] = {name: (p.dir / name).read_bytes() for name in BINARIZED}
    assert files[1, SHARD_BYTES] == files[1, 300_000] == files[2, 300_000]
    assert files[1, SHARD_BYTES] == {name: (prepared.dir / name).read_bytes() for name in BINARIZED}


def test_a_crash_in_either_stage_resumes_with_the_missing_shards_only(prepared, tmp_path, monkeypatch):
    """A worker dies after two of five shards, first while splitting sentences, then (re-run) while encoding; the
    next run splits and encodes only the shards not finished, and the result is the uninterrupted one."""
    import harness.data.corpus as corpus_module
    import harness.data.pipeline as pipeline_module

    fresh_cache(tmp_path / "cache", monkeypatch)
    done = {"split": [], "encode": []}

    def dying(stage, fn, after):
        def task(*args, workers):
            if len(done[stage]) == after:
                raise MemoryError("killed")
            fn(*args, workers=workers)
            done[stage].append(args[-1])
        return task

    split, encode = corpus_module.split_shard, pipeline_module.encode_shard
    monkeypatch.setattr(corpus_module, "split_shard", dying("split", split, 2))
    with pytest.raises(MemoryError):
        prepare(CFG, workers=1, shard_bytes=300_000)
    monkeypatch.setattr(corpus_module, "split_shard", dying("split", split, 5))
    monkeypatch.setattr(pipeline_module, "encode_shard", dying("encode", encode, 2))
    with pytest.raises(MemoryError):
        prepare(CFG, workers=1, shard_bytes=300_000)
    assert len(done["split"]) == len(set(done["split"])) == 5  # three after the crash, none twice
    monkeypatch.setattr(pipeline_module, "encode_shard", dying("encode", encode, 5))
    p = prepare(CFG, workers=1, shard_bytes=300_000)
    assert len(done["encode"]) == len(set(done["encode"])) == 5
    assert {name: (p.dir / name).read_bytes() for name in BINARIZED} == {
        name: (prepared.dir / name).read_bytes() for name in BINARIZED}
    assert not p.dir.with_name(p.dir.name + ".partial").exists()


def test_wordpiece_tokenizer(tmp_path):
    cfg = replace(CFG, tokenizer="wordpiece", vocab_size=1500)
    p = prepare(cfg)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(p.tokenizer_path))
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    assert p.split("train").sentences[-1] > 100_000


def test_wordpiece_ids_are_the_same_every_time_and_split_text_as_trained(tmp_path, monkeypatch):
    """tokenizers numbers WordPiece's "##" pieces in a HashMap's order, different in every run; ours are sorted, so two
    trainings on the same text write the same file, and it splits text into the trainer's own pieces."""
    import harness.data.tokenizer as tokenizer_module

    cfg = replace(CFG, tokenizer="wordpiece", vocab_size=1500)
    sentences = [s for doc in prepare_corpus("tiny").documents() for s in doc]
    ours = [train_tokenizer(iter(sentences), cfg, tmp_path / f"{i}.json") for i in range(2)]
    assert (tmp_path / "0.json").read_bytes() == (tmp_path / "1.json").read_bytes()
    monkeypatch.setattr(tokenizer_module, "_sort_wordpiece_vocab", lambda path: None)
    trainers = train_tokenizer(iter(sentences), cfg, tmp_path / "as_trained.json")
    assert sorted(trainers.get_vocab()) == sorted(ours[0].get_vocab())
    sample = sentences[::10]
    assert [e.tokens for e in ours[0].encode_batch(sample)] == [e.tokens for e in trainers.encode_batch(sample)]


def _roberta_like_tokenizer(path, text_of) -> None:
    """A byte-level BPE laid out like RoBERTa's: <mask> added last (RoBERTa's is 50264), the others not at 0..4."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=True)
    tok.train_from_iterator(text_of, vocab_size=600, special_tokens=["<unk>", "</s>", "<pad>", "<s>"],
                            show_progress=False)
    tok.add_special_tokens(["<mask>"])
    tok.save(str(path))


def test_given_tokenizer_is_renumbered_by_name_and_splits_text_as_before(tmp_path, train):
    from tokenizers import Tokenizer

    given = tmp_path / "roberta_like.json"
    _roberta_like_tokenizer(given, (s for d in prepare_corpus("tiny").documents() for s in d))
    original = Tokenizer.from_file(str(given))
    assert [original.token_to_id(t) for t in SPECIAL_TOKENS] == [3, 2, 1, 0, 600]
    p = prepare(replace(CFG, tokenizer_path=str(given)))
    tok = Tokenizer.from_file(str(p.tokenizer_path))
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]  # ours, whatever the file said
    assert p.vocab_size == original.get_vocab_size() == 601
    ours = p.split("train")
    sentence = next(iter(prepare_corpus("tiny").documents()))[0]
    first = ours.tokens[ours.sentences[0] : ours.sentences[1]]
    assert [tok.id_to_token(int(i)) for i in first] == original.encode(sentence).tokens  # the same pieces
    assert not np.isin(ours.tokens, [0, 1, 2, 3, 4]).any()  # no text token took a special id


def test_given_tokenizer_errors_name_the_file_and_what_is_missing(tmp_path):
    from tokenizers import Tokenizer

    bert_like = tmp_path / "bert_like.json"
    _roberta_like_tokenizer(bert_like, ["a few words of text", "and some more words"])
    spec = Tokenizer.from_file(str(bert_like)).to_str().replace('"<mask>"', '"[MASK]"')
    bert_like.write_text(spec)
    not_json = tmp_path / "vocab.txt"
    not_json.write_text("hello\nworld\n")
    cases = {str(bert_like): "has no <mask>", str(not_json): "expected a `tokenizers` JSON file",
             str(tmp_path / "missing.json"): "no such file"}
    for path, expected in cases.items():
        with pytest.raises(UserError, match=f"data.tokenizer_path={path}: .*{expected}"):
            prepare(replace(CFG, tokenizer_path=path))


def test_tokenizer_sample_takes_every_kth_training_document():
    from harness.data.pipeline import tokenizer_sample

    train = np.array([True, False, True, True, True, True])
    doc_bytes = np.full(6, 10)  # 50 training bytes: every 3rd training document (ranks 0 and 3)
    assert tokenizer_sample(doc_bytes, train, 20).tolist() == [True, False, False, False, True, False]
    assert tokenizer_sample(doc_bytes, train, 1000).tolist() == train.tolist()  # a smaller split: all of it


def test_a_smaller_tokenizer_sample_is_other_data(prepared):
    """data.tokenizer_sample_mb below tiny's training split: another cache folder and tokenizer, the same documents
    and sentences; the default (256 MB, whole split here) keeps the folder every run so far prepared."""
    assert CFG.tokenizer_settings == (CFG.tokenizer, CFG.vocab_size, CFG.lowercase, CFG.valid_fraction)
    assert prepare(CFG).dir == prepared.dir
    small = prepare(replace(CFG, tokenizer_sample_mb=0.3))
    assert small.dir != prepared.dir
    assert (small.dir / "tokenizer.json").read_bytes() != (prepared.dir / "tokenizer.json").read_bytes()
    for name in ("train", "valid"):
        assert {k: v for k, v in small.meta["splits"][name].items() if k != "tokens"} == {
            k: v for k, v in prepared.meta["splits"][name].items() if k != "tokens"}
    with pytest.raises(UserError, match=r"data.tokenizer_sample_mb: expected a positive number of MB, got 0"):
        replace(CFG, tokenizer_sample_mb=0)


def test_example_index_is_built_once_and_read_back_identical(prepared, monkeypatch):
    import harness.data.formats as formats

    cfg = replace(CFG, input_format="segment_pair_nsp", max_seq_len=48)
    built, folder = formats.cached_examples(prepared, "train", cfg, seed=11)
    assert (folder / "done").exists() and folder.parent == prepared.dir / "examples"

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt an example index that is cached")

    monkeypatch.setattr(formats, "build_examples", no_rebuild)
    again, same_folder = formats.cached_examples(prepared, "train", cfg, seed=11)
    assert same_folder == folder
    for name in ("spans", "offsets", "b_start", "nsp", "docs", "lengths"):
        assert np.array_equal(getattr(again, name), getattr(built, name)), name
    with pytest.raises(AssertionError, match="rebuilt"):  # another seed draws other NSP pairs: its own index
        formats.cached_examples(prepared, "train", cfg, seed=12)


def test_pair_formats_reject_one_sentence_documents(tmp_path):
    corpus = tmp_path / "short"
    corpus.mkdir()
    text = "\n\n".join(f"Document number {i} has only this one sentence in it." for i in range(400))
    (corpus / "docs.txt").write_text(text + "\n")
    cfg = DataConfig(corpus=str(corpus), vocab_size=300, input_format="sentence_pair_nsp", max_seq_len=32)
    p = prepare(cfg)
    with pytest.raises(UserError, match="too short for sentence_pair_nsp"):
        build_examples(p.split("train"), cfg, seed=0)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--corpus", "/no/such/corpus"], "/no/such/corpus"),
        (["--corpus", "tiny", "data.input_format=pairs"], "data.input_format"),
        (["--corpus", "tiny", "data.masking=sometimes"], "data.masking"),
        (["--corpus", "tiny", "data.vocab_size=100"], "data.vocab_size"),
        (["--corpus", "tiny", "data.nope=1"], "data.nope"),
        (["--corpus", "tiny", "--workers", "0"], "--workers: expected an integer >= 1"),
        (["--corpus", "tiny", "--shard-mb", "0"], "--shard-mb: expected a positive number"),
        (["--corpus", "tiny", "--slurm", "cpus_per_task=4"], "--slurm: parameters for the array tasks"),
        (["--corpus", "tiny", "--backend", "slurm", "--slurm", "cpus_per_tsk=4"], "--slurm: "),
        (["--corpus", "tiny", "data.tokenizer_path=/no/such/tokenizer.json"], "data.tokenizer_path"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, expected):
    r = subprocess.run([sys.executable, "-m", "harness", "data", "prepare", *args], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in r.stderr


@pytest.mark.slow
def test_demo_on_two_workers_killed_and_resumed_equals_one_process(tmp_path, monkeypatch):
    """The demo corpus (38 MB) prepared by one process in one shard, and by `data prepare --workers 2` in shards of
    8 MB that is killed (SIGKILL to its process group) once its first shard is encoded, then run again: the same files
    byte for byte. The re-run encodes only the shards the killed run had not finished."""
    import os
    import signal
    import time

    from harness.config import load_config

    demo = load_config("configs/demo.yaml").data
    fresh_cache(tmp_path / "one", monkeypatch)
    reference = prepare(demo, workers=1)
    assert reference.meta["shards"] == 1
    fresh_cache(tmp_path / "two", monkeypatch)
    command = [sys.executable, "-m", "harness", "data", "prepare", "--config", "configs/demo.yaml", "--workers", "2",
               "--shard-mb", "8"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    encoded = tmp_path / "two" / "binarized"
    try:
        while proc.poll() is None and not any(p.name[0] != "." for p in encoded.glob("*.partial/shards/*")):
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group its own PID names: it and its splitting workers
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"
    kept = [p for p in encoded.glob("*.partial/shards/*") if p.name[0] != "."]
    assert 1 <= len(kept) < 5
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    left = 5 - len(kept)  # the progress bar counts the shards the re-run encodes
    assert "encode: 100%" in again.stderr and f" {left}/{left} " in again.stderr.split("encode: 100%")[-1]
    p = prepare(demo)
    assert p.meta["shards"] == 5
    assert not list((tmp_path / "two").rglob("*.tmp-*"))  # what the killed run left half-written is swept
    assert {name: (p.dir / name).read_bytes() for name in BINARIZED} == {
        name: (reference.dir / name).read_bytes() for name in BINARIZED}


@pytest.mark.slow
def test_sigterm_stops_data_prepare_and_its_workers(tmp_path, monkeypatch):
    """`data prepare --workers 2` of the demo in shards of 8 MB (each encoded by a process of its own), sent SIGTERM
    while it encodes: it exits 128 + 15 with one line, and no process of its group runs on."""
    import contextlib
    import os
    import signal
    import time

    fresh_cache(tmp_path / "cache", monkeypatch)
    command = [sys.executable, "-m", "harness", "data", "prepare", "--config", "configs/demo.yaml", "--workers", "2",
               "--shard-mb", "8"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        while proc.poll() is None and not list((tmp_path / "cache" / "binarized").glob("*.partial/shards")):
            time.sleep(0.2)
        time.sleep(1)  # the shards' processes started
        proc.send_signal(signal.SIGTERM)  # to it alone, by its PID
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert err.strip().splitlines()[-1] == "error: stopped by SIGTERM; every process it started has stopped"
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # its group (its workers) is empty
    finally:  # whatever a failure left running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_submitit_backend_prepares_the_same_data(prepared, tmp_path, monkeypatch):
    """`data prepare --backend submitit-local`: the shards split and encoded as submitit jobs (the executor that
    stands in for SLURM), the same files as one process."""
    fresh_cache(tmp_path / "cache", monkeypatch)
    r = subprocess.run([sys.executable, "-m", "harness", "data", "prepare", "--config", "configs/tiny.yaml",
                        "--backend", "submitit-local", "--shard-mb", "0.3"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "5 shard(s) submitted" in r.stdout
    p = prepare(CFG)
    assert {name: (p.dir / name).read_bytes() for name in BINARIZED} == {
        name: (prepared.dir / name).read_bytes() for name in BINARIZED}
