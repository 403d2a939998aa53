"""Punkt (Kiss & Strunk 2006, "Unsupervised Multilingual Sentence Boundary Detection") as NLTK 3.10 implements it:
the same training and the same decisions, in a fraction of the time, without importing nltk.

Why not nltk's own classes: since 3.10 every nltk regex runs through `nltk.redos` (the `regex` engine behind a timeout
wrapper) and every token is a `PunktToken` whose properties run a regex each; training on Punkt's 3 MB sample took
~7 CPU-s and splitting ran at ~2.5 MB/s, the largest costs of `data prepare` after encoding. Here the same patterns run
on the same engine (`regex`, so `\\w`, `\\s` and `$` mean what they mean there), a token's properties are computed once
per distinct token, and a candidate boundary's decision once per distinct context (its word, the mark and the next
token: the only text nltk looks at to decide it). Importing nltk (with scipy) cost ~0.8 s on its own.

`Punkt.train` gives nltk's `PunktTrainer` parameters exactly (abbreviations, collocations, sentence starters and the
orthographic table, down to the zero entries nltk's defaultdict gains while training) and `Punkt.tokenize` nltk's
`PunktSentenceTokenizer.tokenize` sentences exactly; tests/test_punkt.py compares both with the installed nltk on the
tiny corpus and on edge cases, and on the demo corpus (slow).
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import regex

# nltk.tokenize.punkt.PunktLanguageVars' patterns for English, as nltk builds them, with the flags it compiles them
# with (tests compare what they find with the installed nltk's).
SENT_END_CHARS = (".", "?", "!")
INTERNAL_PUNCTUATION = ",:;"
_NON_WORD = r"(?:[)\";}\]\*:@\'\({\[\u2018\u2019\u201c\u201d\xab\xbb\?!])"  # "cannot appear within words"
_MULTI_CHAR = r"(?:\-{2,}|\.{2,}|(?:\.\s){2,}\.)"  # hyphen and ellipsis are multi-character punctuation
_WORD_START = r"[^\(\"\`{\[:;&\#\*@\)}\]\-,]"  # excludes some characters from starting word tokens
WORD_PATTERN = rf"""(
        {_MULTI_CHAR}
        |
        (?={_WORD_START})\S+?  # Accept word characters until end is found
        (?= # Sequences marking a word's end
            \s|                                 # White-space
            $|                                  # End-of-string
            {_NON_WORD}|{_MULTI_CHAR}|          # Punctuation
            ,(?=$|\s|{_NON_WORD}|{_MULTI_CHAR}) # Comma if at end of word
        )
        |
        \S
    )"""
PERIOD_CONTEXT_PATTERN = r"""
        {SentEndChars}             # a potential sentence ending
        (?=(?P<after_tok>
            {NonWord}              # either other punctuation
            |
            \s+(?P<next_tok>\S+)     # or whitespace and some other token
        ))""".format(NonWord=_NON_WORD, SentEndChars=r"[\.\?!]")
REALIGN_PATTERN = r'["\')\]}\u2018\u2019\u201c\u201d\xab\xbb]+?(?:\s+|(?=--)|$)'

_WORD = regex.compile(WORD_PATTERN, regex.UNICODE | regex.VERBOSE)
_PERIOD_CONTEXT = regex.compile(PERIOD_CONTEXT_PATTERN, regex.UNICODE | regex.VERBOSE)
_REALIGN = regex.compile(REALIGN_PATTERN, regex.MULTILINE)
_ELLIPSIS = regex.compile(r"\.\.+$")
_NUMERIC = regex.compile(r"^-?[\.,]?\d[\d,\.-]*\.?$")
_INITIAL = regex.compile(r"[^\W\d]\.$", regex.UNICODE)
_ALPHA = regex.compile(r"[^\W\d]+$", regex.UNICODE)
_NON_PUNCT = regex.compile(r"[^\W\d]", regex.UNICODE)

# Orthographic contexts, nltk's flags: beginning / middle / unknown position in a sentence, upper / lower case.
BEG_UC, MID_UC, UNK_UC, BEG_LC, MID_LC, UNK_LC = (1 << k for k in range(1, 7))
UC, LC = BEG_UC | MID_UC | UNK_UC, BEG_LC | MID_LC | UNK_LC
_ORTHO = {("initial", "upper"): BEG_UC, ("internal", "upper"): MID_UC, ("unknown", "upper"): UNK_UC,
          ("initial", "lower"): BEG_LC, ("internal", "lower"): MID_LC, ("unknown", "lower"): UNK_LC}
_PUNCTUATION = tuple(";:,.!?")  # PunktSentenceTokenizer.PUNCTUATION: sentences do not start with these

# PunktTrainer's constants
ABBREV, ABBREV_BACKOFF, COLLOCATION, SENT_STARTER, MIN_COLLOC_FREQ = 0.3, 5, 7.88, 30, 1

_WHITESPACE_BUT_SPACE = string.whitespace.replace(" ", "")
# A context that is an ASCII word with its period, a space and an ASCII word: _WORD's tokens are the two words, and the
# second's first pass finds nothing (no period, not a mark).
_PLAIN_CONTEXT = regex.compile(r"([A-Za-z]+\.) ([A-Za-z]+)")
_NO_MARK = (False, False, False)
_MEMO_LIMIT = 1 << 18  # decisions remembered before the memo starts afresh (~40 MB; the demo has 144K contexts)


def _type(tok: str) -> str:
    """PunktToken.type: lowercased, a number as ##number##."""
    return _NUMERIC.sub("##number##", tok.lower())


def _no_period(typ: str) -> str:
    """PunktToken.type_no_period."""
    return typ[:-1] if len(typ) > 1 and typ[-1] == "." else typ


def _words(text: str) -> Iterator[tuple[str, bool, bool]]:
    """(token, parastart, linestart) as PunktBaseClass._tokenize_words gives them."""
    parastart = False
    for line in text.split("\n"):
        if line.strip():
            toks = _WORD.findall(line)
            if toks:
                yield toks[0], parastart, True
                parastart = False
                for tok in toks[1:]:
                    yield tok, False, False
        else:
            parastart = True


@dataclass
class Punkt:
    """Punkt's learned parameters (nltk's PunktParameters) and the sentence splitter they make."""

    abbrev_types: set[str] = field(default_factory=set)
    collocations: set[tuple[str, str]] = field(default_factory=set)
    sent_starters: set[str] = field(default_factory=set)
    ortho_context: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._decided: dict[str, bool] = {}  # context -> has a sentence break (the memo of `_breaks`)

    # ---- saving -------------------------------------------------------------------------------------------------

    def learned(self) -> list:
        """The parameters as sorted JSON-able lists: what the splitter's name hashes (as harness.data.corpus did with
        nltk's parameters, so names and the shard names made from them stay as they were)."""
        return [sorted(self.abbrev_types), sorted(map(list, self.collocations)), sorted(self.sent_starters),
                sorted(self.ortho_context.items())]

    @classmethod
    def from_learned(cls, learned: list) -> Punkt:
        abbrev, colloc, starters, ortho = learned
        return cls(set(abbrev), {tuple(c) for c in colloc}, set(starters), dict(map(tuple, ortho)))

    # ---- splitting ----------------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """The sentences of `text`: nltk's PunktSentenceTokenizer(params).tokenize(text)."""
        return [text[a:b] for a, b in self.spans(text)]

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of each sentence: nltk's span_tokenize, boundaries realigned."""
        slices = []
        last = 0
        decided = self._decided
        for match, context in self._candidates(text):
            breaks = decided.get(context)
            if breaks is None:
                if len(decided) >= _MEMO_LIMIT:
                    decided.clear()
                breaks = decided[context] = self._breaks(context)
            if breaks:
                slices.append((last, match.end()))
                last = match.start("next_tok") if match.group("next_tok") else match.end()
        slices.append((last, len(text.rstrip())))
        # _realign_boundaries: closing quotes and brackets after the mark belong to the sentence before it
        out = []
        realign = 0
        for k, (start, stop) in enumerate(slices):
            start += realign
            if k + 1 == len(slices):
                if start < stop:
                    out.append((start, stop))
                break
            start2, stop2 = slices[k + 1]
            m = _REALIGN.match(text, start2, stop2) if start2 < stop2 else None
            if m:
                out.append((start, start2 + len(m.group(0).rstrip())))
                realign = m.end() - start2
            else:
                realign = 0
                if start < stop:
                    out.append((start, stop))
        return out

    def _candidates(self, text: str) -> Iterator[tuple[regex.Match, str]]:
        """nltk's _match_potential_end_contexts: each possible boundary that does not overlap the word before the
        next one, with its context (the word before the mark, the mark, and what follows it: one slice)."""
        other_space = any(c in text for c in _WHITESPACE_BUT_SPACE)
        prev_start = prev_stop = 0
        prev = None
        for match in _PERIOD_CONTEXT.finditer(text):
            at = match.start()
            # the last whitespace between the previous mark and this one; nltk takes one at offset 0 as none
            space = text.rfind(" ", prev_stop, at)
            if other_space:
                space = max(space, *(text.rfind(c, prev_stop, at) for c in _WHITESPACE_BUT_SPACE))
            start = space + 1 if space > prev_stop else prev_start
            if prev is not None and prev_stop <= start:
                yield prev, text[prev_start:prev.end("after_tok")]
            prev, prev_start, prev_stop = match, start, at
        if prev is not None:
            yield prev, text[prev_start:prev.end("after_tok")]

    def _breaks(self, context: str) -> bool:
        """nltk's text_contains_sentbreak: is any token of `context` but the last a sentence break, after both passes
        of annotation?"""
        if plain := _PLAIN_CONTEXT.fullmatch(context):  # "word. Word" (65% of the demo's): no tokenizing
            tok, next_tok = plain.groups()
            return self._second_pass(tok, self._first_pass(tok), next_tok, _NO_MARK)
        toks = _WORD.findall(context) if "\n" not in context else [tok for tok, _, _ in _words(context)]
        first = [self._first_pass(tok) for tok in toks]
        return any(self._second_pass(toks[i], first[i], toks[i + 1], first[i + 1]) for i in range(len(toks) - 1))

    def _first_pass(self, tok: str) -> tuple[bool, bool, bool]:
        """(sentbreak, abbr, ellipsis) from the token alone (PunktBaseClass._first_pass_annotation)."""
        if tok in SENT_END_CHARS:
            return True, False, False
        if _ELLIPSIS.match(tok):
            return False, False, True
        if tok.endswith(".") and not tok.endswith(".."):
            low = tok[:-1].lower()
            if low in self.abbrev_types or low.split("-")[-1] in self.abbrev_types:
                return False, True, False
            return True, False, False
        return False, False, False

    def _second_pass(self, tok: str, first: tuple[bool, bool, bool], next_tok: str,
                     next_first: tuple[bool, bool, bool]) -> bool:
        """Whether `tok` ends a sentence given the token after it (PunktSentenceTokenizer._second_pass_annotation)."""
        sentbreak, abbr, ellipsis = first
        if not tok.endswith("."):
            return sentbreak
        typ = _no_period(_type(tok))
        next_type = _type(next_tok)
        next_typ = _no_period(next_type) if next_first[0] else next_type
        initial = _INITIAL.match(tok) is not None
        if (typ, next_typ) in self.collocations:
            return False
        if (abbr or ellipsis) and not initial:
            starter = self._ortho_heuristic(next_tok, next_typ)
            if starter is True:
                return True
            if next_tok[0].isupper() and next_typ in self.sent_starters:
                return True
        if initial or typ == "##number##":
            starter = self._ortho_heuristic(next_tok, next_typ)
            if starter is False:
                return False
            if (starter == "unknown" and initial and next_tok[0].isupper()
                    and not (self.ortho_context.get(next_typ, 0) & LC)):
                return False
        return sentbreak

    def _ortho_heuristic(self, tok: str, typ: str) -> bool | str:
        """Does `tok` (of type-without-sentence-period `typ`) start a sentence: True, False or 'unknown'."""
        if tok in _PUNCTUATION:
            return False
        ortho = self.ortho_context.get(typ, 0)
        if tok[0].isupper() and (ortho & LC) and not (ortho & MID_UC):
            return True
        if tok[0].islower() and ((ortho & UC) or not (ortho & BEG_LC)):
            return False
        return "unknown"

    # ---- training -----------------------------------------------------------------------------------------------

    @classmethod
    def train(cls, text: str) -> Punkt:
        """Parameters learned from `text`, as nltk's PunktTrainer().train(text, finalize=True).get_params()."""
        return _Trainer(text).params


class _Trainer:
    """PunktTrainer._train_tokens and finalize_training, over lists of tokens instead of PunktToken objects: each
    distinct token's type and tests are computed once."""

    def __init__(self, text: str):
        p = self.params = Punkt()
        toks, parastart, linestart = [], [], []
        for tok, para, line in _words(text):
            toks.append(tok)
            parastart.append(para)
            linestart.append(line)
        types = {tok: _type(tok) for tok in set(toks)}
        typ = [types[tok] for tok in toks]
        fd = self.type_fdist = Counter(typ)
        n = self.n = len(toks)
        num_period_toks = sum(tok.endswith(".") for tok in toks)

        # abbreviations from type statistics (_reclassify_abbrev_types over the unique types; the order does not matter:
        # a type is only removed for the score that added it)
        for t in set(typ):
            if not _NON_PUNCT.search(t) or t == "##number##":
                continue
            if t.endswith("."):
                if t in p.abbrev_types:
                    continue
                t, is_add = t[:-1], True
            else:
                if t not in p.abbrev_types:
                    continue
                is_add = False
            num_periods = t.count(".") + 1
            num_nonperiods = len(t) - num_periods + 1
            count_with_period = fd[t + "."]
            count_without_period = fd[t]
            log_likelihood = _dunning_log_likelihood(count_with_period + count_without_period, num_period_toks,
                                                     count_with_period, n)
            f_length = math.exp(-num_nonperiods)
            f_periods = num_periods
            f_penalty = math.pow(num_nonperiods, -count_without_period)
            score = log_likelihood * f_length * f_periods * f_penalty
            if score >= ABBREV:
                if is_add:
                    p.abbrev_types.add(t)
            elif not is_add:
                p.abbrev_types.remove(t)

        firsts = {tok: p._first_pass(tok) for tok in types}
        first = [firsts[tok] for tok in toks]
        initial = {tok: _INITIAL.match(tok) is not None for tok in types}
        no_sentperiod = [_no_period(t) if f[0] else t for t, f in zip(typ, first)]

        # _get_orthography_data
        ortho = p.ortho_context
        context = "internal"
        for i, tok in enumerate(toks):
            if parastart[i] and context != "unknown":
                context = "initial"
            if linestart[i] and context == "internal":
                context = "unknown"
            case = "lower" if tok[0].islower() else "upper" if tok[0].isupper() else "none"
            flag = _ORTHO.get((context, case), 0)
            if flag:
                ortho[no_sentperiod[i]] = ortho.get(no_sentperiod[i], 0) | flag
            sentbreak, abbr, ellipsis = first[i]
            if sentbreak:
                context = "unknown" if typ[i].startswith("##number##") or initial[tok] else "initial"
            elif ellipsis or abbr:
                context = "unknown"
            else:
                context = "internal"

        self.sentbreak_count = sum(f[0] for f in first)
        self.sent_starter_fdist: Counter = Counter()
        self.collocation_fdist: Counter = Counter()
        for i in range(n - 1):
            tok1, tok2 = toks[i], toks[i + 1]
            if not tok1.endswith("."):
                continue
            sentbreak, abbr, _ = first[i]
            # _is_rare_abbrev_type
            if not abbr and sentbreak:
                t = no_sentperiod[i]
                count = fd[t] + fd[t[:-1]]
                if t not in p.abbrev_types and count < ABBREV_BACKOFF:
                    rare = False
                    if tok2[:1] in INTERNAL_PUNCTUATION:
                        rare = True
                    elif tok2[0].islower():
                        # nltk reads a defaultdict here, which keeps the type with 0: so does this table
                        o = ortho.setdefault(no_sentperiod[i + 1], 0)
                        rare = bool(o & BEG_UC) and not (o & MID_UC)
                    if rare:
                        p.abbrev_types.add(_no_period(typ[i]))
            number_or_initial = typ[i].startswith("##number##") or initial[tok1]
            if sentbreak and not number_or_initial and _ALPHA.match(tok2):
                self.sent_starter_fdist[typ[i + 1]] += 1
            if (sentbreak and number_or_initial and _NON_PUNCT.search(typ[i])
                    and _NON_PUNCT.search(typ[i + 1])):
                self.collocation_fdist[(_no_period(typ[i]), no_sentperiod[i + 1])] += 1
        self._finalize()

    def _finalize(self) -> None:
        """finalize_training: frequent sentence starters, then collocations."""
        p, fd, n = self.params, self.type_fdist, self.n
        for t, at_break in self.sent_starter_fdist.items():
            if not t:
                continue
            count = fd[t] + fd[t + "."]
            if count < at_break:
                continue
            ll = _col_log_likelihood(self.sentbreak_count, count, at_break, n)
            if ll >= SENT_STARTER and n / self.sentbreak_count > count / at_break:
                p.sent_starters.add(t)
        for (t1, t2), col_count in self.collocation_fdist.items():
            if t2 in p.sent_starters:
                continue
            c1 = fd[t1] + fd[t1 + "."]
            c2 = fd[t2] + fd[t2 + "."]
            if c1 > 1 and c2 > 1 and MIN_COLLOC_FREQ < col_count <= min(c1, c2):
                ll = _col_log_likelihood(c1, c2, col_count, n)
                if ll >= COLLOCATION and n / c1 > c2 / col_count:
                    p.collocations.add((t1, t2))


def _dunning_log_likelihood(count_a: int, count_b: int, count_ab: int, n: int) -> float:
    """PunktTrainer._dunning_log_likelihood, the same float operations in the same order."""
    p1 = count_b / n
    p2 = 0.99
    null_hypo = count_ab * math.log(p1 + 1e-8) + (count_a - count_ab) * math.log(1.0 - p1 + 1e-8)
    alt_hypo = count_ab * math.log(p2) + (count_a - count_ab) * math.log(1.0 - p2)
    likelihood = null_hypo - alt_hypo
    return -2.0 * likelihood


def _col_log_likelihood(count_a: int, count_b: int, count_ab: int, n: int) -> float:
    """PunktTrainer._col_log_likelihood, the same float operations in the same order."""
    p = count_b / n
    p1 = count_ab / count_a
    try:
        p2 = (count_b - count_ab) / (n - count_a)
    except ZeroDivisionError:
        p2 = 1
    try:
        summand1 = count_ab * math.log(p) + (count_a - count_ab) * math.log(1.0 - p)
    except ValueError:
        summand1 = 0
    try:
        summand2 = (count_b - count_ab) * math.log(p) + (n - count_a - count_b + count_ab) * math.log(1.0 - p)
    except ValueError:
        summand2 = 0
    if count_a == count_ab or p1 <= 0 or p1 >= 1:
        summand3 = 0
    else:
        summand3 = count_ab * math.log(p1) + (count_a - count_ab) * math.log(1.0 - p1)
    if count_b == count_ab or p2 <= 0 or p2 >= 1:
        summand4 = 0
    else:
        summand4 = (count_b - count_ab) * math.log(p2) + (n - count_a - count_b + count_ab) * math.log(1.0 - p2)
    likelihood = summand1 + summand2 - summand3 - summand4
    return -2.0 * likelihood

