"""Encoder: texts -> float32 numpy embeddings with a Flax model, its params and its tokenizer.

Texts are tokenized once and packed (boom_jax/packing.py): longest first, each into the first row of
a token budget with room for it, several texts per row with segment ids (attention stays within a text,
positions restart per text), so almost no position is padding. Texts of up to `pack_length` tokens
(default 128) share rows of that length, which keeps the attention's cost per token low; longer texts
share rows of the bucket of the longest. Each forward pass takes about `batch_size` x 64 token positions
(`packing.plan_encode_calls`: e.g. 16 rows of 128 at batch_size 32; the last call of a width a smaller
row bucket), so jit compiles a handful of shapes once and reuses them. With
`packing=False` texts are sorted by length, cut into batches and each batch is padded to a (batch size,
length) bucket instead. Results come back in input order, the same either way. With a `mesh`, every call's
rows are split over the mesh's devices (data parallel, params replicated; row counts rounded up to a
multiple of the device count), e.g. `data_mesh()` for all the devices JAX sees. Loading one from a folder
(HF / sentence-transformers, model folder, train workdir) is boom_jax/hf/encoders.py's `load_encoder`, above
this layer.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from boom_jax.models.config import ModelConfig
from boom_jax.models.registry import build_model
from boom_jax.packing import call_buckets, fill_rows, plan_encode_calls
from boom_jax.tokenization import TextTokenizer, bucket_for

Params = dict[str, Any]


@functools.lru_cache(maxsize=16)
def jitted_forward(cfg: ModelConfig):
    """The jitted (params, input_ids, attention_mask) -> embeddings function of `cfg`, shared by all
    Encoders of the same config so each (batch, length) shape compiles once per process."""
    module = build_model(cfg)

    def forward(params, input_ids, attention_mask):
        return module.apply({"params": params}, input_ids, attention_mask, deterministic=True)

    return jax.jit(forward)


@functools.lru_cache(maxsize=16)
def jitted_packed_forward(cfg: ModelConfig, num_segments: int):
    """The jitted (params, input_ids, segment_ids) -> [R, num_segments, D] function of `cfg`."""
    module = build_model(cfg)

    def forward(params, input_ids, segment_ids):
        return module.apply({"params": params}, input_ids, segment_ids, deterministic=True,
                            num_segments=num_segments)

    return jax.jit(forward)


def data_mesh(devices: Sequence[Any] | None = None) -> Mesh | None:
    """A one-axis ("data",) mesh over `devices` (default: every device JAX sees); None for one device."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), ("data",)) if len(devices) > 1 else None


class Encoder:
    """A ready-to-use text encoder (see `encode`). `packing`: pack texts into rows (module docstring);
    `pack_length`: the row length for texts that fit in it (longer texts share rows of the bucket of the longest);
    `mesh`: split each call's rows over its devices (None = one device)."""

    def __init__(self, cfg: ModelConfig, params: Params, tokenizer, buckets: Sequence[int] | None = None,
                 packing: bool = True, pack_length: int = 128, mesh: Mesh | None = None):
        self.cfg = cfg
        self.packing = packing
        self.pack_length = pack_length
        self.mesh = mesh
        self.params = jax.tree_util.tree_map(jnp.asarray, params)
        if mesh is not None:
            self.params = jax.device_put(self.params, NamedSharding(mesh, PartitionSpec()))
            self._rows = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
        self.tokenizer = tokenizer
        self.text_tokenizer = TextTokenizer(
            tokenizer, cfg.max_seq_length, cfg.padding_side, cfg.append_eos, buckets=buckets
        )
        self._apply = jitted_forward(cfg)

    def resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str:
        """The text to put before each input: `prompt`, or cfg.prompts[prompt_name]."""
        if prompt is not None and prompt_name is not None:
            raise ValueError("give either prompt or prompt_name, not both")
        if prompt_name is not None:
            if prompt_name not in self.cfg.prompts:
                raise KeyError(f"prompt_name={prompt_name!r} is not among the model's prompts {sorted(self.cfg.prompts)}")
            return self.cfg.prompts[prompt_name]
        return prompt or ""

    def encode(
        self,
        texts: Sequence[str],
        prompt: str | None = None,
        prompt_name: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """float32 [N, D] embeddings in input order (L2-normalized when cfg.normalize)."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of texts, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        prefix = self.resolve_prompt(prompt, prompt_name)
        texts = [prefix + t for t in texts] if prefix else list(texts)
        out = np.zeros((len(texts), self.cfg.embedding_dim), np.float32)
        if not texts:
            return out
        ids = self.text_tokenizer.token_ids(texts)
        if self.packing:
            return self._encode_packed(ids, batch_size, show_progress_bar, out)
        order = np.argsort([-len(r) for r in ids], kind="stable")
        row_buckets = call_buckets(batch_size)
        starts = range(0, len(order), batch_size)
        if show_progress_bar:
            starts = tqdm(starts, desc="encode", unit="batch")
        pending = []
        for start in starts:
            idx = order[start:start + batch_size]
            rows = [ids[i] for i in idx]
            input_ids, mask = self.text_tokenizer.pad(rows)
            n = self._round_rows(bucket_for(len(rows), row_buckets))
            if n > len(rows):
                input_ids = np.concatenate([input_ids, np.full((n - len(rows), input_ids.shape[1]), self.text_tokenizer.pad_id, np.int32)])
                mask = np.concatenate([mask, np.zeros((n - len(rows), mask.shape[1]), np.int32)])
            pending.append((idx, self._apply(self.params, *self._place(input_ids, mask))))
            if len(pending) > 2:  # keep a couple of batches in flight, bound memory
                i, emb = pending.pop(0)
                out[i] = np.asarray(emb)[: len(i)]
        for i, emb in pending:
            out[i] = np.asarray(emb)[: len(i)]
        return out

    def _encode_packed(self, ids: list[list[int]], batch_size: int, progress: bool, out: np.ndarray) -> np.ndarray:
        """Texts packed into rows by `packing.plan_encode_calls` (short texts share rows of `pack_length`,
        longer ones rows of the bucket of the longest; about `batch_size` x 64 positions per call)."""
        calls = plan_encode_calls([len(r) for r in ids], batch_size, self.pack_length, self.text_tokenizer.buckets,
                                  row_multiple=1 if self.mesh is None else self.mesh.size)
        if progress:
            calls = tqdm(calls, desc="encode", unit="batch")
        pending = []
        for call in calls:
            input_ids, segment_ids = fill_rows([ids[i] for i in call.texts], call.row, call.slot, call.offset, call.rows,
                                               call.row_length, self.text_tokenizer.pad_id)
            emb = jitted_packed_forward(self.cfg, call.segments)(self.params, *self._place(input_ids, segment_ids))
            pending.append((call, emb))
            if len(pending) > 2:  # keep a couple of calls in flight, bound memory
                done, e = pending.pop(0)
                out[done.texts] = np.asarray(e)[done.row, done.slot]
        for done, e in pending:
            out[done.texts] = np.asarray(e)[done.row, done.slot]
        return out

    def _round_rows(self, rows: int) -> int:
        """`rows` rounded up to a multiple of the mesh's device count (every device gets whole rows)."""
        n = 1 if self.mesh is None else self.mesh.size
        return -(-rows // n) * n

    def _place(self, *arrays: np.ndarray) -> tuple:
        """The call's row arrays, split over the mesh's devices when there is one."""
        return arrays if self.mesh is None else tuple(jax.device_put(a, self._rows) for a in arrays)
