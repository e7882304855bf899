"""Tokenizing texts into a few fixed shapes so jitted encoders compile once per bucket.

Uses the model folder's own fast tokenizer, offline. Texts are truncated to max_length (counting
the special tokens, and the EOS when append_eos), then padded to the smallest length bucket that
holds the longest text of the batch.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


# Files one of which a folder must hold for transformers to build its real tokenizer. Without them
# AutoTokenizer silently builds an empty tokenizer of the special tokens only (every text -> [UNK]).
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                         "sentencepiece.bpe.model")
MIN_VOCAB_SIZE = 32  # fewer tokens than this is a special-tokens-only tokenizer, not a real one


class TokenizerError(ValueError):
    """A folder without a usable tokenizer; the message names the folder and the files looked for."""


def check_tokenizer_folder(path: str | os.PathLike) -> None:
    """Refuses a folder holding none of TOKENIZER_VOCAB_FILES (checked before any weight is read)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer folder {path!r} does not exist")
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_VOCAB_FILES):
        raise TokenizerError(
            f"{path}: no tokenizer files (looked for {', '.join(TOKENIZER_VOCAB_FILES)}); copy the model's "
            f"tokenizer files into this folder or point the model path at a folder that has them")


def load_tokenizer(path: str | os.PathLike):
    """The folder's fast tokenizer (transformers.PreTrainedTokenizerFast), never from the hub."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    check_tokenizer_folder(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    except Exception as e:  # transformers raises several types for an unreadable folder
        raise TokenizerError(f"{path}: cannot load a tokenizer from this folder ({e})") from e
    if not getattr(tok, "is_fast", False):
        raise TokenizerError(f"{path}: only fast tokenizers (tokenizer.json) are supported")
    if len(tok) < MIN_VOCAB_SIZE:
        raise TokenizerError(f"{path}: the tokenizer has only {len(tok)} tokens (special tokens only?); "
                             f"check its files ({', '.join(TOKENIZER_VOCAB_FILES)})")
    return tok


def default_buckets(max_length: int) -> tuple[int, ...]:
    """Powers of two from 16 up to max_length, max_length itself last: (16, 32, 64, 128, 256)."""
    buckets, b = [], 16
    while b < max_length:
        buckets.append(b)
        b *= 2
    buckets.append(max_length)
    return tuple(buckets)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length (the largest bucket when none is)."""
    for b in buckets:
        if b >= length:
            return b
    return buckets[-1]


def finish_token_ids(rows: Sequence[Sequence[int]], eos_id: int, max_length: int) -> list[list[int]]:
    """Truncated rows with the EOS appended (within max_length), unless a row already ends with it."""
    return [list(row) if row and row[-1] == eos_id else list(row[: max_length - 1]) + [eos_id] for row in rows]


class TextTokenizer:
    """texts -> (input_ids int32 [B, T], attention_mask int32 [B, T]) with T from a few buckets."""

    def __init__(
        self,
        tokenizer,
        max_length: int,
        padding_side: str = "right",
        append_eos: bool = False,
        buckets: Sequence[int] | None = None,
    ):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}: expected 'right' or 'left'")
        if max_length < 2:
            raise ValueError(f"max_length={max_length} must be at least 2")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.padding_side = padding_side
        self.append_eos = append_eos
        self.buckets = tuple(sorted(b for b in (buckets or default_buckets(max_length)) if b <= max_length))
        if not self.buckets or self.buckets[-1] != self.max_length:
            self.buckets = self.buckets + (self.max_length,)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
        self.pad_id = int(pad_id)
        if append_eos and tokenizer.eos_token_id is None:
            raise ValueError("append_eos=True but the tokenizer has no EOS token")

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Unpadded, truncated ids per text (special tokens included, EOS appended if configured)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str")
        ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=self.max_length)["input_ids"]
        if self.append_eos:
            ids = finish_token_ids(ids, self.tokenizer.eos_token_id, self.max_length)
        return ids

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pad rows to `length` (default: the bucket of the longest row) on the configured side."""
        longest = max((len(r) for r in ids), default=1)
        t = length or bucket_for(longest, self.buckets)
        input_ids = np.full((len(ids), t), self.pad_id, np.int32)
        mask = np.zeros((len(ids), t), np.int32)
        for i, row in enumerate(ids):
            row = row[:t]
            n = len(row)
            if self.padding_side == "right":
                input_ids[i, :n], mask[i, :n] = row, 1
            else:
                input_ids[i, t - n:], mask[i, t - n:] = row, 1
        return input_ids, mask

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.pad(self.token_ids(texts))
