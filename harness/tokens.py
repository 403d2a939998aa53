"""RoBERTa's special tokens, their ids, and the label of positions the loss skips: every layer takes them from here."""

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # trained first, so their ids are 0..4 in this order
BOS, PAD, EOS, UNK, MASK = range(len(SPECIAL_TOKENS))  # the ids of the tokens above
IGNORE_INDEX = -100  # label at positions that are not predicted (torch cross_entropy's default ignore_index)
