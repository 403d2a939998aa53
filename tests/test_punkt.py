"""The fast sentence-splitting path gives today's text exactly: harness.data.punkt against nltk's Punkt (training and
splitting), the Treebank detokenizer against nltk's, and `tiny` prepared end to end against the nltk path, byte for
byte. The opt-in splitter (data.splitter=blingfire) is its own corpus. Timings are the benchmarks' (`make bench`)."""

import dataclasses
import itertools
import json
from collections import defaultdict
from pathlib import Path

import pytest

import harness.data.corpus as corpus_module
import harness.data.sources as sources_module
from harness.config import DataConfig, load_config
from harness.data.corpus import REGISTRY_CORPORA, _registry_stream, prepare_corpus
from harness.data.pipeline import prepare
from harness.data.punkt import Punkt
from harness.data.sources import BROWN, detokenize, fetch, parse_brown, read_brown
from harness.errors import UserError
from harness.files import cache_root

nltk_punkt = pytest.importorskip("nltk.tokenize.punkt")
from nltk.tokenize.treebank import TreebankWordDetokenizer  # noqa: E402

# Where Punkt's decisions turn: abbreviations, initials, ordinals and numbers, ellipses, quotes and brackets after the
# mark (realigned), curly quotes and guillemets, several whitespace kinds (a tab or a line break is "whitespace at
# offset 0" of a context, which nltk counts as none), lines and paragraphs, and nothing at all.
EDGE_TEXTS = [
    "", "   ", "No mark at all", "One. Two! Three? Four",
    "Mr. Smith met Dr. Jones at 5 p.m. on Jan. 3. They talked.", "J. S. Bach wrote it. W. A. Mozart did not.",
    "It cost $3.50. That was 2.5 times more. The 3rd. time was free.", "Wait... what? Really...! Yes.",
    '"Stop." he said. "Go!" she cried. (Not now.) Later.',
    "He said \u201cno.\u201d Then \u2018yes.\u2019 \u00abOui.\u00bb Fin.",
    "U.S.A. is big. The U.S. Army came. E.g. this one.", "Line one.\nLine two.\n\nA new paragraph. Here.",
    "Tab\tseparated. Next\tone.\u00a0And after a no-break space. End.", "Ends with a period.   ",
    "a. b. c. D. E.", "-- Dash. --Another. Word--word. End.", "1. First. 2. Second. 10. Tenth item.",
    "Sentence one.Sentence two without space. Then a normal one.", "What?! No!? Yes?!... Fine.",
    "(a.) (B.) [C.] {D.} end.", "St. Louis is in Mo. The Gov. said so. Gen. Lee left.",
]


def _tiny_paragraphs() -> list[str]:
    """The paragraphs of `tiny` that Punkt splits, normalised as the corpus spools them."""
    prepare_corpus("tiny")  # fetches its archives into the session's cache
    return [u for _, presplit, units in _registry_stream("tiny", cache_root() / "downloads") if not presplit
            for u in map(corpus_module._normalise, units) if u]


def _nltk_learned(params) -> list:
    return json.loads(json.dumps([sorted(params.abbrev_types), sorted(map(list, params.collocations)),
                                  sorted(params.sent_starters), sorted(params.ortho_context.items())]))


def _nltk_params(punkt: Punkt):
    params = nltk_punkt.PunktParameters()
    params.abbrev_types, params.collocations = set(punkt.abbrev_types), set(punkt.collocations)
    params.sent_starters, params.ortho_context = set(punkt.sent_starters), defaultdict(int, punkt.ortho_context)
    return params


def _check_against_nltk(paragraphs: list[str], sample_every: int) -> None:
    """Trained on every k-th paragraph, the same parameters as nltk's trainer (to the zero entries of its table);
    each paragraph split into the same sentences as nltk's tokenizer with those parameters."""
    sample = "\n\n".join(itertools.islice(paragraphs, 0, None, sample_every))
    trainer = nltk_punkt.PunktTrainer()
    trainer.train(sample, finalize=True)
    ours = Punkt.train(sample)
    assert json.loads(json.dumps(ours.learned())) == _nltk_learned(trainer.get_params())
    ours.abbrev_types.update(corpus_module.TITLE_ABBREVIATIONS)  # as the corpus trains it
    theirs = nltk_punkt.PunktSentenceTokenizer(_nltk_params(ours))
    for text in [*EDGE_TEXTS, *paragraphs]:
        assert ours.tokenize(text) == theirs.tokenize(text), text[:200]
    untrained = nltk_punkt.PunktSentenceTokenizer()
    for text in EDGE_TEXTS:
        assert Punkt().tokenize(text) == untrained.tokenize(text), text


def test_punkt_trains_and_splits_as_nltk_on_tiny():
    paragraphs = _tiny_paragraphs()
    assert sum(map(len, paragraphs)) > 500_000
    _check_against_nltk(paragraphs, sample_every=2)


def test_punkt_parameters_round_trip_through_their_saved_form():
    punkt = Punkt.train("Mr. Smith and Mrs. Jones met in St. Louis. They went home. J. S. Bach played. " * 20)
    again = Punkt.from_learned(json.loads(json.dumps(punkt.learned())))
    assert again.learned() == punkt.learned() and again.tokenize(EDGE_TEXTS[4]) == punkt.tokenize(EDGE_TEXTS[4])


# Token lists as the Brown Corpus gives them (tokenised, `` and '' for quotes), and the contractions, brackets, dashes,
# currency and percentages the detokenizer rejoins; the last two are not ASCII (case-insensitive matching there is not
# str.lower's, so every rule runs).
EDGE_TOKENS = [
    [], ["Hello"], ["``", "Stop", ",", "''", "he", "said", "."],
    ["I", "can", "not", "go", ";", "we", "gon", "na", "win"], ["'T", "is", "so", "and", "'t", "was", "."],
    ["CAN", "NOT", "Gim", "me", "lem", "me", "more", "'n", "wan", "na", "go"],
    ["He", "did", "n't", "--", "she", "'ll", "see", "(", "it", ")", "."], ["$", "5", "or", "50", "%", "#", "1", "..."],
    ["She", "said", ":", "``", "Why", "?", "''", "and", "left", "!"],
    ["The", "dog", "'s", "bone", "'", "s", "end", "."], ["[", "a", "]", "{", "b", "}", "<", "c", ">", ",", "d", "."],
    ["\u00c7a", "va", "?", "Je", "ne", "sais", "pas", "."],
    ["Stra\u00dfe", "can", "not", "be", "\u212a", "gon", "na", "."],  # a Kelvin sign: (?i) matches it to k
]


def test_detokenizer_matches_nltk_on_tiny_brown_and_edge_cases():
    nltk_detokenizer = TreebankWordDetokenizer()
    for tokens in EDGE_TOKENS:
        assert detokenize(tokens) == nltk_detokenizer.detokenize(tokens), tokens
    brown = next(p for p in REGISTRY_CORPORA["tiny"] if p.source is BROWN)
    archive = fetch(BROWN, cache_root() / "downloads")
    samples = list(itertools.islice(read_brown(archive), brown.start, brown.stop, brown.step))
    ours = [parse_brown(raw) for raw in samples]
    reference = _with_nltk_detokenizer(lambda: [parse_brown(raw) for raw in samples])
    assert ours == reference and sum(map(len, ours)) > 3000


def _with_nltk_detokenizer(fn):
    saved = sources_module.detokenize
    sources_module.detokenize = TreebankWordDetokenizer().detokenize
    try:
        return fn()
    finally:
        sources_module.detokenize = saved


class NltkPunkt:
    """The path before harness.data.punkt: nltk's trainer and tokenizer, behind the interface the corpus uses."""

    def __init__(self, params=None):
        self.params = params or nltk_punkt.PunktParameters()
        self.abbrev_types = self.params.abbrev_types
        self.tokenizer = nltk_punkt.PunktSentenceTokenizer(self.params)

    @classmethod
    def train(cls, text: str):
        trainer = nltk_punkt.PunktTrainer()
        trainer.train(text, finalize=True)
        return cls(trainer.get_params())

    def learned(self) -> list:
        p = self.params
        return [sorted(p.abbrev_types), sorted(map(list, p.collocations)), sorted(p.sent_starters),
                sorted(p.ortho_context.items())]

    @classmethod
    def from_learned(cls, learned: list):
        params = nltk_punkt.PunktParameters()
        abbrev, colloc, starters, ortho = learned
        params.abbrev_types, params.collocations = set(abbrev), {tuple(c) for c in colloc}
        params.sent_starters, params.ortho_context = set(starters), defaultdict(int, map(tuple, ortho))
        return cls(params)

    def tokenize(self, text: str) -> list[str]:
        return self.tokenizer.tokenize(text)


def _prepare_in(cache: Path, monkeypatch, cfg: DataConfig):
    cache.mkdir()
    (cache / "downloads").symlink_to(cache_root() / "downloads")
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    return prepare(cfg, workers=1)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name not in ("meta.json", "timing.json") and "splitters" not in p.parts}


def test_tiny_prepared_byte_for_byte_as_by_the_nltk_path(tmp_path, monkeypatch):
    """`tiny` end to end (gather, Punkt's training, splitting, tokenizer, encoding) with nltk's Punkt and Treebank
    detokenizer, then with ours, in fresh caches: the same corpus key, sentence shards, keys and binarized files."""
    prepare_corpus("tiny")  # the session's downloads
    cfg = DataConfig(corpus="tiny", vocab_size=1000)
    with monkeypatch.context() as patch:
        patch.setattr(corpus_module, "Punkt", NltkPunkt)
        patch.setattr(sources_module, "detokenize", TreebankWordDetokenizer().detokenize)
        before = _prepare_in(tmp_path / "nltk", monkeypatch, cfg)
    after = _prepare_in(tmp_path / "ours", monkeypatch, cfg)
    assert before.dir.name == after.dir.name
    old, new = _files(tmp_path / "nltk"), _files(tmp_path / "ours")
    assert sum(name.startswith("sentences/") for name in new) == 3  # documents.txt, keys.npy, stats.json
    assert old.keys() == new.keys() and all(old[name] == new[name] for name in old)
    assert [p.name for p in (tmp_path / "nltk" / "splitters").iterdir()] == [
        p.name for p in (tmp_path / "ours" / "splitters").iterdir()]


def test_blingfire_is_its_own_corpus(tmp_path, monkeypatch):
    """data.splitter=blingfire: another corpus key (and another binarized key), prose split by blingfire (nothing
    trained), sentences already split left as they are, the default's corpus untouched; a bad value is refused."""
    import blingfire

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    prose = ("Mr. Smith went to Washington. He said hello! Did anyone answer? Nobody did.\n\n"
             "A second paragraph starts here. It has two sentences.\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "prose.txt").write_text(prose)
    (tmp_path / "mine" / "lines.txt").write_text("One sentence per line here.\nAnd another one, Mr. Jones.\n")
    fire = prepare_corpus(str(tmp_path / "mine"), splitter="blingfire")
    assert not list((tmp_path / "cache" / "splitters").glob("*"))  # nothing trained
    docs = list(fire.documents())
    assert docs[0] == ["One sentence per line here.", "And another one, Mr. Jones."]  # presplit: as it was
    assert docs[1] == [s for p in prose.split("\n\n") for s in blingfire.text_to_sentences(p.strip()).split("\n")]
    punkt = prepare_corpus(str(tmp_path / "mine"))
    assert fire.key != punkt.key and not set(fire.shards) & set(punkt.shards)
    assert list(punkt.documents())[1][:2] == ["Mr. Smith went to Washington.", "He said hello!"]
    assert prepare_corpus(str(tmp_path / "mine"), splitter="blingfire").key == fire.key  # cached
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "sharded"))  # the same on 2 processes and in small shards
    assert list(prepare_corpus(str(tmp_path / "mine"), splitter="blingfire", workers=2, shard_bytes=100).documents()) \
        == docs
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(corpus=str(tmp_path / "mine"), vocab_size=300, valid_fraction=0.4)
    assert prepare(cfg, workers=1).dir != prepare(dataclasses.replace(cfg, splitter="blingfire"), workers=1).dir
    with pytest.raises(UserError, match="data.splitter: expected one of"):
        load_config(None, ["data.splitter=spacy"])
    with pytest.raises(UserError, match="data.splitter: expected one of"):
        prepare_corpus(str(tmp_path / "mine"), splitter="spacy")


def test_the_default_splitter_keeps_cell_ids():
    """data.splitter and data.tokenizer_sample_mb came after studies had run: at their defaults a cell's id
    (config_hash) is what it was without them, so a resumed grid finds its finished cells; set, each is part of it."""
    import hashlib

    from harness.grid.experiment import config_hash

    cfg = load_config("configs/base.yaml")  # sets neither (the demo sets its tokenizer's sample)
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("runs_dir", "num_workers", "wandb")}
    del d["data"]["splitter"], d["data"]["tokenizer_sample_mb"]
    assert config_hash(cfg) == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    for setting in ("data.splitter=blingfire", "data.tokenizer_sample_mb=9"):
        assert config_hash(load_config("configs/base.yaml", [setting])) != config_hash(cfg)


@pytest.mark.slow
def test_punkt_and_detokenizer_match_nltk_on_the_whole_demo_corpus():
    """Every paragraph of the demo corpus (32 M characters), all 500 Brown samples, and its 106 Wikipedia articles
    rendered from tokens as from mwparserfromhell's tree (~1 min)."""
    import mwparserfromhell

    from harness.data.sources import WIKIPEDIA, _NotPlain, _render, _render_wikitext, read_wikipedia

    prepare_corpus("demo")
    downloads = cache_root() / "downloads"
    paragraphs = [u for _, presplit, units in _registry_stream("demo", downloads) if not presplit
                  for u in map(corpus_module._normalise, units) if u]
    stride = max(1, -(-sum(map(len, paragraphs)) // corpus_module.SAMPLE_BYTES))
    _check_against_nltk(paragraphs, sample_every=stride)
    samples = list(read_brown(fetch(BROWN, downloads)))
    assert [parse_brown(raw) for raw in samples] == _with_nltk_detokenizer(lambda: [parse_brown(r) for r in samples])
    fast = 0
    for wikitext in read_wikipedia(fetch(WIKIPEDIA, downloads)):
        try:
            rendered = _render_wikitext(wikitext)
        except _NotPlain:
            continue
        assert rendered == _render(mwparserfromhell.parse(wikitext))
        fast += 1
    assert fast >= 100


def test_demo_corpus_key_is_unchanged():
    """The demo corpus's cache key, on which every measured table's data is found: the splitter at its default adds
    nothing to it (a recorded value; a change of nltk's or mwparserfromhell's version changes it, as it should)."""
    versions = corpus_module._fingerprint()
    if (versions["nltk"], versions["mwparserfromhell"]) != ("3.10.4", "0.7.2"):
        pytest.skip(f"the recorded key is for nltk 3.10.4 and mwparserfromhell 0.7.2, not {versions}")
    assert corpus_module._registry_key("demo") == corpus_module._registry_key("demo", "punkt") == "d8c598cd9949a05c"
    assert corpus_module._registry_key("demo", "blingfire") != "d8c598cd9949a05c"


def test_boundary_agreement_counts_the_same_cut_once_whatever_the_whitespace():
    """make bench's agreement of blingfire with Punkt: a boundary is where a sentence ends, counted in non-space
    characters, so two splitters that cut at the same place agree whatever spaces each keeps."""
    from harness.benchmarks.data import _boundaries, _boundaries_punkt

    text = "One. Two three.  Four!"
    punkt = Punkt()
    assert _boundaries_punkt(text, punkt.spans(text)) == {4, 13} == _boundaries(["One. ", "Two three.", " Four!"])
    assert _boundaries(["One. Two three.", "Four!"]) == {13} and _boundaries(["Only one."]) == set()
