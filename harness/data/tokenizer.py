"""The paper's two text encodings (§4.4) with HF `tokenizers`, always with RoBERTa's special tokens at ids 0..4: trained
here, or a given tokenizer.json renumbered so that its special tokens take those ids."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer, Tokenizer

from harness.config import DataConfig
from harness.errors import UserError
from harness.tokens import SPECIAL_TOKENS


def train_tokenizer(sentences: Iterable[str], cfg: DataConfig, out: Path) -> Tokenizer:
    """Train on `sentences`, save tokenizer.json to `out`, return the loaded tokenizer."""
    if cfg.tokenizer == "byte_bpe":
        # add_prefix_space: sentences are encoded one at a time, so each must start like a mid-text word ("Ġword").
        tok = ByteLevelBPETokenizer(add_prefix_space=True)
        tok.train_from_iterator(sentences, vocab_size=cfg.vocab_size, min_frequency=2,
                                special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    else:
        tok = BertWordPieceTokenizer(unk_token="<unk>", sep_token="</s>", cls_token="<s>", pad_token="<pad>",
                                     mask_token="<mask>", lowercase=cfg.lowercase, strip_accents=cfg.lowercase)
        tok.train_from_iterator(sentences, vocab_size=cfg.vocab_size, min_frequency=2,
                                special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.save(str(out))
    if cfg.tokenizer == "wordpiece":
        _sort_wordpiece_vocab(out)
    loaded = Tokenizer.from_file(str(out))
    assert _special_ids(loaded, f"data.corpus={cfg.corpus}") == list(range(len(SPECIAL_TOKENS)))
    if loaded.get_vocab_size() <= len(SPECIAL_TOKENS) + 1:
        raise UserError(f"data.corpus={cfg.corpus}: the tokenizer learned no vocabulary (is the corpus empty?)")
    return loaded


def _sort_wordpiece_vocab(path: Path) -> None:
    """Number the trained WordPiece vocabulary after the special tokens in string order. tokenizers numbers its "##"
    pieces in the order of a Rust HashMap, which differs from run to run (on tiny: the same 1,500 tokens, with 112
    ids swapped), so the same corpus gave different ids and an arm could not be re-run exactly. WordPiece splits text
    by the vocabulary alone, so the ids can be any order."""
    spec = json.loads(path.read_text(encoding="utf-8"))
    vocab, n = spec["model"]["vocab"], len(SPECIAL_TOKENS)
    rest = sorted(token for token, i in vocab.items() if i >= n)
    spec["model"]["vocab"] = {**{t: i for t, i in vocab.items() if i < n}, **{t: n + k for k, t in enumerate(rest)}}
    path.write_text(json.dumps(spec, ensure_ascii=False))


_CHECK_TEXT = "The renumbered tokenizer splits text as the original does, e.g. naïve cafés (1,234.5 km)."


def use_tokenizer_file(path: str, out: Path) -> Tokenizer:
    """Load a given tokenizer.json, find its special tokens by name (RoBERTa's, SPECIAL_TOKENS) and renumber ids so
    they are 0..4 in that order, save it to `out` and return it. The harness has one id space (data, masking, the
    model's padding, fine-tuning and the HF export all use 0..4); renumbering swaps ids, so text maps to the same
    tokens: RoBERTa's <mask> (50264) becomes 4 and its '.' (4) becomes 50264. A BERT vocabulary names them [CLS],
    [SEP], ... and is refused, naming the token it lacks: the HF export writes RoBERTa's names."""
    where = f"data.tokenizer_path={path}"
    try:
        spec = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        original = Tokenizer.from_str(json.dumps(spec))
    except Exception as e:  # a missing, non-JSON or malformed file: tokenizers raises a bare Exception
        raise UserError(f"{where}: expected a `tokenizers` JSON file ({textwrap.shorten(str(e), 160)})") from None
    vocab = spec.get("model", {}).get("vocab")
    if not isinstance(vocab, dict):
        raise UserError(f"{where}: expected a BPE, WordPiece or WordLevel model (a vocab of token -> id), got "
                        f"{spec.get('model', {}).get('type')!r}")
    found = _special_ids(original, where)
    order = list(range(max(original.get_vocab(with_added_tokens=True).values()) + 1))  # order[new id] = old id
    for new, old in enumerate(found):
        at = order.index(old)
        order[new], order[at] = order[at], order[new]
    renumber = {old: new for new, old in enumerate(order) if old != new}
    spec["model"]["vocab"] = {token: renumber.get(i, i) for token, i in vocab.items()}
    # tokenizers (0.2x) numbers an added token that is not in the model's vocab itself, after the vocab, ignoring the
    # file's id: so the special tokens go into the vocab, at their new ids.
    spec["model"]["vocab"].update({name: i for i, name in enumerate(SPECIAL_TOKENS)})
    for added in spec.get("added_tokens") or []:
        added["id"] = renumber.get(added["id"], added["id"])
    spec["post_processor"] = _renumber_processor(spec.get("post_processor"), renumber)
    out.write_text(json.dumps(spec, ensure_ascii=False))
    loaded = Tokenizer.from_file(str(out))
    assert _special_ids(loaded, where) == list(range(len(SPECIAL_TOKENS)))
    if loaded.encode(_CHECK_TEXT).tokens != original.encode(_CHECK_TEXT).tokens:
        raise UserError(f"{where}: renumbering its special tokens changed how it splits text; use a tokenizer whose "
                        f"model keeps ids in a token -> id vocab")
    return loaded


def _special_ids(tok: Tokenizer, where: str) -> list[int]:
    """The id of each of SPECIAL_TOKENS in `tok`."""
    ids = [tok.token_to_id(name) for name in SPECIAL_TOKENS]
    missing = [name for name, i in zip(SPECIAL_TOKENS, ids) if i is None]
    if missing:
        raise UserError(f"{where}: expected RoBERTa's special tokens {' '.join(SPECIAL_TOKENS)}; this tokenizer has "
                        f"no {' '.join(missing)}")
    return ids


def _renumber_processor(node: Any, renumber: dict[int, int]) -> Any:
    """Special-token ids inside a post-processor: Roberta/BertProcessing's ["</s>", 2] pairs, TemplateProcessing's
    "ids" lists, and Sequence's processors."""
    if isinstance(node, list):
        if len(node) == 2 and isinstance(node[0], str) and isinstance(node[1], int):
            return [node[0], renumber.get(node[1], node[1])]
        return [_renumber_processor(x, renumber) for x in node]
    if isinstance(node, dict):
        return {k: ([renumber.get(i, i) for i in v] if k == "ids" else _renumber_processor(v, renumber))
                for k, v in node.items()}
    return node
