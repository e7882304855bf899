"""A persistent token store: every distinct training text tokenized once, its ids kept on disk.

Per-epoch tokenization costs more than the rest of the data pipeline together (a fast tokenizer encodes
a few thousand texts per CPU second and an example has 1 query + G passages). A `TokenStore` holds the
truncated token ids of a fixed list of texts as one flat int32 array plus offsets; the batcher then only
looks texts up and pads with numpy. `load_or_build_store` keeps one .npz per (tokenizer, max_length,
append_eos, texts) fingerprint in a cache folder, written atomically, and reloads it on the next run.

The ids are exactly those of `TextTokenizer.token_ids` (tests compare them on the built-in corpus for a
BERT and a Qwen3 tokenizer); they come from a private copy of the Rust tokenizer (`encode_batch_fast`, no
offsets, no Python dicts per text), which is what makes the one cold pass cheaper than transformers' call.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from absl import logging

from boom_jax.atomic_io import atomic_write
from boom_jax.tokenization import bucket_for, finish_token_ids

STORE_FORMAT = 1
ENCODE_CHUNK = 4096  # texts per encode call (one tqdm step each)
MAX_CHARS_PER_TOKEN = 16  # no wordpiece/BPE token of real text is longer; cuts far past max_length


def cap_chars(texts: list[str], tokenizer: Any) -> list[str]:
    """Cuts texts far longer than the tokenizer's max_length (in characters) before tokenizing.

    Fast tokenizers encode the whole text and truncate afterwards, so a 10,000-character passage costs
    as much as 80 short ones; its first max_length tokens lie well inside max_length * 16 characters.
    """
    max_length = getattr(tokenizer, "max_length", None)
    if not max_length:
        return texts
    limit = int(max_length) * MAX_CHARS_PER_TOKEN
    return [t[:limit] if len(t) > limit else t for t in texts]


def default_token_cache_dir(workdir: str | None = None) -> str:
    """Where stores live when the config leaves data.token_cache_dir empty: WORKDIR/token_cache, else
    $BOOM_JAX_CACHE/tokens or ~/.cache/boom_jax/tokens."""
    if workdir:
        return os.path.join(workdir, "token_cache")
    root = os.environ.get("BOOM_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "boom_jax")
    return os.path.join(root, "tokens")


def tokenizer_fingerprint(text_tokenizer: Any) -> str:
    """SHA-256 of everything that decides a text's ids: the tokenizer's pipeline (its tokenizer.json
    without the call-time truncation/padding state), max_length, append_eos, EOS id and truncation side."""
    tok = text_tokenizer.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        pipeline = Tokenizer.from_str(backend.to_str())  # a copy, so the shared tokenizer is left alone
        pipeline.no_truncation()
        pipeline.no_padding()
        h = hashlib.sha256(pipeline.to_str().encode())
    else:  # a slow tokenizer: its vocabulary and settings
        h = hashlib.sha256(json.dumps([sorted(tok.get_vocab().items()), repr(getattr(tok, "init_kwargs", ""))],
                                      default=str).encode())
    h.update(json.dumps({"format": STORE_FORMAT, "cut": CUT_CHARS_PER_TOKEN, "class": type(tok).__name__, "max_length": text_tokenizer.max_length,
                         "append_eos": bool(text_tokenizer.append_eos), "eos": tok.eos_token_id,
                         "side": getattr(tok, "truncation_side", "right"),
                         "max_chars_per_token": MAX_CHARS_PER_TOKEN}, sort_keys=True).encode())
    return h.hexdigest()


def texts_fingerprint(texts: Sequence[str]) -> str:
    """SHA-256 of a list of texts (their lengths too, so no two lists collide by joining)."""
    h = hashlib.sha256(np.asarray([len(t) for t in texts], dtype=np.int64).tobytes())
    h.update("\x00".join(texts).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _rust_encoder(text_tokenizer: Any):
    """A private copy of the Rust tokenizer truncating like transformers does, or None when the
    tokenizer is not a fast one (then the TextTokenizer itself is called)."""
    tok = text_tokenizer.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not getattr(tok, "is_fast", False):
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.enable_truncation(text_tokenizer.max_length, direction=getattr(tok, "truncation_side", "right"))
    return copy


CUT_CHARS_PER_TOKEN = 5  # where the whitespace cut goes: max_length * 5 characters (most texts fill max_length)
_CUT_POINT = re.compile(r"\S ")  # a space right after a non-space: no pre-token spans it
_CUT_SAFE_PRE_TOKENIZERS = ("BertPreTokenizer", "Whitespace", "WhitespaceSplit", "ByteLevel", "Metaspace")
_CUT_SAFE_NORMALIZERS = ("BertNormalizer", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "Strip", "Prepend")
_GPT_SPLIT_MARK = r"\s+(?!\S)"  # the GPT-2 / Qwen split pattern ends words at whitespace runs like this


def _component_safe(spec: Any, safe: tuple[str, ...]) -> bool:
    if spec is None:
        return True
    kind = spec.get("type")
    if kind == "Sequence":
        return all(_component_safe(s, safe) for s in spec.get("pretokenizers", spec.get("normalizers", [])))
    if kind == "Split":
        pattern = spec.get("pattern")
        return isinstance(pattern, dict) and _GPT_SPLIT_MARK in pattern.get("Regex", "")
    return kind in safe


def whitespace_cut_is_exact(spec: dict) -> bool:
    """Whether cutting a text right before a space that follows a non-space keeps the ids of everything
    before the cut: true when the normalizer works per character and the pre-tokenizer splits at such
    spaces (BERT, whitespace, byte-level, metaspace, the GPT/Qwen split regex), so the model (WordPiece,
    BPE, Unigram) sees the same pre-tokens before the cut."""
    return (_component_safe(spec.get("normalizer"), _CUT_SAFE_NORMALIZERS)
            and _component_safe(spec.get("pre_tokenizer"), _CUT_SAFE_PRE_TOKENIZERS))


def whitespace_cut(texts: list[str], max_length: int) -> list[str]:
    """Texts longer than max_length * CUT_CHARS_PER_TOKEN characters cut at the first safe space after
    that point (others returned as the same objects)."""
    limit = max_length * CUT_CHARS_PER_TOKEN
    out = []
    for text in texts:
        if len(text) > limit:
            m = _CUT_POINT.search(text, limit - 1)
            if m is not None:
                text = text[:m.start() + 1]
        out.append(text)
    return out


def _encode_rows(encoder: Any, texts: list[str], max_length: int, cut: bool) -> list[list[int]]:
    """Truncated ids of texts. With `cut`, long texts are encoded up to a whitespace cut first; a cut
    text that still fills max_length has exactly the full text's truncated ids (the tokens before the
    cut are the same, and truncation keeps only the first ones); the others are encoded whole again."""
    if not cut:
        return [e.ids for e in encoder.encode_batch_fast(texts, add_special_tokens=True)]
    short = whitespace_cut(texts, max_length)
    rows = [e.ids for e in encoder.encode_batch_fast(short, add_special_tokens=True)]
    redo = [k for k, (a, b) in enumerate(zip(short, texts)) if a is not b and len(rows[k]) < max_length]
    if redo:
        for k, e in zip(redo, encoder.encode_batch_fast([texts[k] for k in redo], add_special_tokens=True)):
            rows[k] = e.ids
    return rows


def encode_texts(text_tokenizer: Any, texts: Sequence[str], progress: bool = False,
                 desc: str = "tokenizing") -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 ids, int64 offsets [N + 1]) of texts, equal to `text_tokenizer.token_ids(cap_chars(texts))`
    (the ids the batcher gets without a store)."""
    from tqdm.auto import tqdm

    encoder = _rust_encoder(text_tokenizer)
    cut = (encoder is not None and encoder.truncation["direction"] == "right"
           and whitespace_cut_is_exact(json.loads(encoder.to_str())))
    eos = text_tokenizer.tokenizer.eos_token_id
    chunks, lengths = [], []
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, leave=False) as bar:
        for start in range(0, len(texts), ENCODE_CHUNK):
            part = cap_chars(list(texts[start:start + ENCODE_CHUNK]), text_tokenizer)
            if encoder is not None:
                rows = _encode_rows(encoder, part, text_tokenizer.max_length, cut)
                if text_tokenizer.append_eos:
                    rows = finish_token_ids(rows, eos, text_tokenizer.max_length)
            else:
                rows = text_tokenizer.token_ids(part)
            lengths.extend(len(r) for r in rows)
            chunks.append(np.fromiter((i for r in rows for i in r), dtype=np.int32))
            bar.update(len(part))
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    return flat, offsets


class TokenStore:
    """Truncated token ids of a fixed list of distinct texts for one TextTokenizer.

    `indices(texts)` maps texts to rows (KeyError names an unknown text); `pad(rows)` gives (ids, mask)
    exactly as `TextTokenizer.pad` would from the same ids, vectorized.
    """

    def __init__(self, texts: Sequence[str], flat: np.ndarray, offsets: np.ndarray, text_tokenizer: Any):
        if len(offsets) != len(texts) + 1 or offsets[-1] != len(flat):
            raise ValueError(f"token store of {len(texts)} texts has {len(offsets)} offsets for {len(flat)} ids")
        self._index = {t: i for i, t in enumerate(texts)}
        self.flat = np.ascontiguousarray(flat, dtype=np.int32)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.lengths = np.diff(self.offsets)
        self.buckets = tuple(text_tokenizer.buckets)
        self.pad_id = int(text_tokenizer.pad_id)
        self.left = text_tokenizer.padding_side == "left"
        self._gather = np.append(self.flat, np.int32(self.pad_id))  # the last slot pads

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, text: str) -> bool:
        return text in self._index

    def ids(self, text: str) -> np.ndarray:
        """The (unpadded) ids of one text."""
        i = self._index[text]
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def indices(self, texts: Iterable[str]) -> np.ndarray:
        index = self._index
        try:
            return np.array([index[t] for t in texts], dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"text not in the token store: {str(e.args[0])[:80]!r}") from None

    def pad(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) int32 [len(rows), T], T the bucket of the longest row."""
        lengths = self.lengths[rows]
        t = bucket_for(int(lengths.max()) if len(rows) else 1, self.buckets)
        cols = np.arange(t, dtype=np.int64)
        start = (t - lengths) if self.left else np.zeros_like(lengths)
        rel = cols[None, :] - start[:, None]
        mask = (rel >= 0) & (rel < lengths[:, None])
        where = np.where(mask, self.offsets[rows][:, None] + rel, len(self.flat))
        return self._gather[where], mask.astype(np.int32)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.pad(self.indices(texts))


def load_or_build_store(texts: Iterable[str], text_tokenizer: Any, cache_dir: str | None,
                        progress: bool = True, desc: str = "tokenizing") -> TokenStore:
    """The store of the distinct `texts` (first-appearance order): read from `cache_dir` when a store with
    the same fingerprint is there, else tokenized (one tqdm bar) and, when cache_dir is given, saved
    atomically (temp file + rename, so concurrent builders never leave half a file)."""
    distinct = list(dict.fromkeys(texts))
    key = hashlib.sha256(f"{tokenizer_fingerprint(text_tokenizer)}:{texts_fingerprint(distinct)}".encode()).hexdigest()
    path = os.path.join(cache_dir, f"tokens-{key[:40]}.npz") if cache_dir else None
    if path and os.path.exists(path):
        try:
            with np.load(path) as data:
                if str(data["key"]) == key:
                    return TokenStore(distinct, data["ids"], data["offsets"], text_tokenizer)
        except (OSError, ValueError, KeyError):  # unreadable or foreign file: rebuild and replace it
            pass
    flat, offsets = encode_texts(text_tokenizer, distinct, progress=progress, desc=desc)
    if path:
        try:
            _save_atomic(path, flat, offsets, key)
        except OSError as e:  # a read-only or full disk costs the next run a rebuild, not this one
            logging.warning("token store not saved to %s: %s", path, e)
    return TokenStore(distinct, flat, offsets, text_tokenizer)


def _save_atomic(path: str, flat: np.ndarray, offsets: np.ndarray, key: str) -> None:
    """Writes the store to a temp file next to `path` and renames it (never a half-written store)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, ids=flat, offsets=offsets, key=np.asarray(key))

    atomic_write(path, write)
