"""Tokenizers: the model's own (Hugging Face), or a hashing (or byte) tokenizer for the tiny test models.

All turn texts (and optional second texts, or instructions and their answers) into lists of token
ids, so that data can be tokenized once up front and batches padded on the fly.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

TINY_VOCAB = 1000


class HashTokenizer:
    """Word-level tokenizer that hashes lower-cased words into a fixed vocabulary (no files needed).

    Ids: 0 padding, 1 [CLS], 2 [SEP], 3.. hashed words. Good enough for a randomly initialised test
    model; never used with a pretrained one.
    """

    pad_token_id = 0

    def __init__(self, vocab_size: int = TINY_VOCAB) -> None:
        self.vocab_size = vocab_size

    def _ids(self, text: str) -> list[int]:
        return [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in re.findall(r"\w+|[^\w\s]", text.lower())]

    def encode(self, text: str, pair: str | None, max_length: int) -> list[int]:
        ids = [1, *self._ids(text), 2]
        if pair is not None:
            ids += [*self._ids(pair), 2]
        return [*ids[: max_length - 1], 2] if len(ids) > max_length else ids


class ByteTokenizer:
    """UTF-8 bytes as tokens, for the tiny random causal LM of the tests: no files, and it decodes, so
    that generations can be read. Ids: 0 padding, 1 begin, 2 end of answer, 3.. the 256 byte values."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    OFFSET = 3
    vocab_size = OFFSET + 256
    chat_template = None

    def ids(self, text: str) -> list[int]:
        return [self.OFFSET + b for b in text.encode("utf-8")]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        data = bytes(i - self.OFFSET for i in ids if i >= self.OFFSET)
        return data.decode("utf-8", errors="replace")


@dataclass
class Encoded:
    """Token ids of a set of examples, unpadded, with their labels (a class, or a causal LM example's
    category). ``answer_starts``: for instructions, where each example's answer begins; the loss is
    taken on the tokens from there on only."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray
    pad_id: int
    answer_starts: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices) -> Encoded:
        return Encoded(
            [self.input_ids[i] for i in indices],
            [self.token_type_ids[i] for i in indices] if self.token_type_ids else None,
            self.labels[np.asarray(indices, dtype=np.int64)],
            self.pad_id,
            [self.answer_starts[i] for i in indices] if self.answer_starts is not None else None,
        )


def encode(tokenizer, texts: list[str], pairs: list[str] | None, labels, max_length: int) -> Encoded:
    """Tokenize all examples once, truncating to ``max_length`` tokens."""
    labels = np.asarray(labels, dtype=np.int64)
    if isinstance(tokenizer, HashTokenizer):
        ids = [tokenizer.encode(t, pairs[i] if pairs else None, max_length) for i, t in enumerate(texts)]
        return Encoded(ids, None, labels, tokenizer.pad_token_id)
    out = (
        tokenizer(texts, pairs, truncation=True, max_length=max_length)
        if pairs
        else tokenizer(texts, truncation=True, max_length=max_length)
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(
        list(out["input_ids"]), list(out["token_type_ids"]) if "token_type_ids" in out else None, labels, pad
    )
