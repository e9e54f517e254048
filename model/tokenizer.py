"""The caption tokenizer: cleaned, lower-cased text -> byte-level BPE ids, 77 per caption.

Byte-level BPE (HF `tokenizers`) covers every UTF-8 string, so there is no unknown token and
decode(encode(text)) gives the cleaned text back whenever it fits. The vocabulary is trained on
the corpus's own captions (`Tokenizer.train`) and travels with a checkpoint as a JSON string
(`to_str` / `from_str`).

Layout of one encoded caption, `context_length` ids:
    [SOT_ID, bpe ids ..., EOT_ID, PAD_ID, PAD_ID, ...]
Ids 0, 1 and 2 are padding, start-of-text and end-of-text in every vocabulary this module trains,
whatever its size; the model reads its text feature at EOT_ID (`TextConfig.eot_id`). A caption
longer than context_length - 2 BPE tokens is truncated, keeping EOT_ID as the last id.
"""

from __future__ import annotations

import html
import os
import re
from typing import Iterable, Sequence

import ftfy
import torch
from tokenizers import Tokenizer as BPETokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

PAD_TOKEN, SOT_TOKEN, EOT_TOKEN = "<pad>", "<start_of_text>", "<end_of_text>"
PAD_ID, SOT_ID, EOT_ID = 0, 1, 2
SPECIAL_TOKENS = (PAD_TOKEN, SOT_TOKEN, EOT_TOKEN)  # in id order: the trainer adds them first
CONTEXT_LENGTH = 77
_WHITESPACE = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """Fix mojibake, unescape HTML (twice: web alt text is often escaped twice), collapse
    whitespace, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip().lower()


class Tokenizer:
    def __init__(self, bpe: BPETokenizer, context_length: int = CONTEXT_LENGTH):
        for token, expected_id in zip(SPECIAL_TOKENS, (PAD_ID, SOT_ID, EOT_ID)):
            if bpe.token_to_id(token) != expected_id:
                raise ValueError(f"{token} has id {bpe.token_to_id(token)}, expected {expected_id}")
        if context_length < 3:
            raise ValueError(f"context_length must leave room for SOT, one token and EOT, got {context_length}")
        # A caption that contains the text "<end_of_text>" must not end itself early: encode
        # special-token strings found in the input as ordinary bytes.
        bpe.encode_special_tokens = True
        self._bpe = bpe
        self.context_length = context_length

    # -- building and storing --------------------------------------------------------------

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int, context_length: int = CONTEXT_LENGTH) -> "Tokenizer":
        """Train a byte-level BPE of at most `vocab_size` ids (256 bytes + 3 special tokens +
        merges) on cleaned captions. Merges need a pair seen at least twice, so a small corpus
        can give fewer ids than asked for. The same captions give the same vocabulary."""
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size <= len(alphabet) + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must exceed {len(alphabet) + len(SPECIAL_TOKENS)} (bytes + special tokens)")
        bpe = BPETokenizer(models.BPE())
        # GPT-2's split into words, numbers and punctuation runs before merging, with the space
        # kept on the following word, so merges never cross a word boundary.
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=alphabet,  # all 256 bytes, seen or not: no unknown tokens later
            show_progress=False,
        )
        bpe.train_from_iterator((clean_caption(caption) for caption in captions), trainer=trainer)
        return cls(bpe, context_length)

    @classmethod
    def from_str(cls, json_text: str, context_length: int = CONTEXT_LENGTH) -> "Tokenizer":
        return cls(BPETokenizer.from_str(json_text), context_length)

    @classmethod
    def from_file(cls, path: str | os.PathLike, context_length: int = CONTEXT_LENGTH) -> "Tokenizer":
        return cls(BPETokenizer.from_file(str(path)), context_length)

    def to_str(self) -> str:
        """The vocabulary and merges as JSON (HF `tokenizers` format), e.g. for a checkpoint."""
        return self._bpe.to_str()

    def save(self, path: str | os.PathLike) -> None:
        self._bpe.save(str(path))

    # DataLoader workers receive the tokenizer by pickle, and the HF object's own pickling drops
    # `encode_special_tokens`; rebuild through __init__ so the workers encode as the parent does.
    def __getstate__(self) -> dict:
        return {"json": self.to_str(), "context_length": self.context_length}

    def __setstate__(self, state: dict) -> None:
        self.__init__(BPETokenizer.from_str(state["json"]), state["context_length"])

    # -- ids -------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._bpe.get_vocab_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def sot_id(self) -> int:
        return SOT_ID

    @property
    def eot_id(self) -> int:
        return EOT_ID

    def encode(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Captions -> LongTensor [n, context_length]: SOT, BPE ids, EOT, then PAD_ID zeros."""
        if isinstance(texts, str):
            texts = [texts]
        encodings = self._bpe.encode_batch([clean_caption(text) for text in texts], add_special_tokens=False)
        tokens = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)
        for row, encoding in enumerate(encodings):
            ids = [SOT_ID, *encoding.ids[: self.context_length - 2], EOT_ID]
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """One caption's ids (special tokens and padding dropped) -> text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._bpe.decode([i for i in ids if i not in (PAD_ID, SOT_ID, EOT_ID)], skip_special_tokens=True)

    def decode_batch(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in ids]
