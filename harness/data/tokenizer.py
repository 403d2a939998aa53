"""Train the paper's two text encodings (§4.4) with HF `tokenizers`, both with RoBERTa's special tokens at ids 0..4."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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
    loaded = Tokenizer.from_file(str(out))
    for i, special in enumerate(SPECIAL_TOKENS):
        assert loaded.token_to_id(special) == i, f"special token {special} got id {loaded.token_to_id(special)}"
    if loaded.get_vocab_size() <= len(SPECIAL_TOKENS) + 1:
        raise UserError(f"data.corpus={cfg.corpus}: the tokenizer learned no vocabulary (is the corpus empty?)")
    return loaded
